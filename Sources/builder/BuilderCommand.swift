import ArgumentParser

@main
struct BuilderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "builder",
        abstract: "Package an open model and its inference server into an OCI image, with no Docker daemon.",
        discussion: """
            Each image holds the inference-server executable with the shared libraries it needs, the \
            model's small files (config, tokenizer, chat template) and one layer per weight file, so a \
            new server never re-uploads the weights. Images are reproducible: the same inputs give the \
            same digest on any machine (set SOURCE_DATE_EPOCH to stamp a date; the default is 1970).

            Exit status: 0 on success, 1 on an error (the message says what to do), 64 on a usage error.
            """,
        subcommands: [FetchCommand.self, BuildCommand.self, PushCommand.self, PullCommand.self, RunCommand.self, DeployCommand.self, ShipCommand.self]
    )
}
