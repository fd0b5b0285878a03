import ArgumentParser

/// `inference-server`: `serve` (the OpenAI API, not implemented yet: an honest stub), `inspect`
/// (list the model files) and `generate` (run the engine once, for people and for checks).
@main
struct InferenceServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inference-server",
        abstract: "OpenAI-compatible Gemma 3 server (serving is not implemented yet; `generate` runs the engine).",
        subcommands: [Serve.self, Inspect.self, Generate.self],
        defaultSubcommand: Serve.self
    )
}
