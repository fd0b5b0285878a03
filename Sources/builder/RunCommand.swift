import ArgumentParser
import BuilderKit
import Foundation
import OCI
import Registry

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run an image on this machine with runc (no Docker), serving on the host's network.",
        discussion: """
            The image is an OCI layout (oci:DIR[:TAG]) or a registry reference, pulled and verified \
            first. It is unpacked once into a bundle under ~/.cache/gemma-run/bundles (per manifest \
            digest) and started with `runc run`; stop it with Ctrl-C. Needs root (or rootless runc) \
            and the runc package.
            """
    )

    @Argument(help: "oci:DIR[:TAG] or HOST/REPOSITORY[:TAG][@sha256:...].")
    var image: String

    @Option(help: "Set PORT for the server (it listens there on the host's network).")
    var port: Int?

    @Option(name: .customLong("env"), help: "Extra environment variable, KEY=VALUE; repeatable.")
    var env: [String] = []

    @Option(help: "The container id runc uses. Default: builder-run-PID.")
    var name: String?

    @OptionGroup var registry: RegistryOptions

    @Argument(parsing: .postTerminator, help: "Arguments replacing the image's command, after --.")
    var arguments: [String] = []

    func run() throws {
        try reportingErrors {
            var runner = LocalRun(cacheDirectory: LocalRun.defaultCacheDirectory)
            runner.arguments = arguments
            runner.environment = try env.map { try BuildRequest.keyValue($0, option: "--env") }
            if let port { runner.environment.append(("PORT", String(port))) }
            var layoutDirectory: String
            var tag: String?
            if image.hasPrefix("oci:") {
                (layoutDirectory, tag) = RegistryOperations.splitLayoutSpec(String(image.dropFirst(4)))
            } else {
                let reference = try ImageReference(parsing: image)
                layoutDirectory = runner.cacheDirectory + "/pulled/" + reference.repository.replacingOccurrences(of: "/", with: "_")
                try FileManager.default.createDirectory(atPath: runner.cacheDirectory + "/pulled", withIntermediateDirectories: true)
                _ = try RegistryOperations.pull(
                    reference, to: .layout(layoutDirectory), client: registry.makeClient(for: reference.registry), platform: .linuxAMD64,
                    jobs: registry.jobs, progress: .standardError())
                tag = reference.tag ?? "latest"
            }
            let (bundle, digest) = try runner.prepare(layoutDirectory: layoutDirectory, tag: tag)
            let id = name ?? "builder-run-\(getpid())"
            FileHandle.standardError.write(Data("running \(digest) from \(bundle) as \(id)\n".utf8))
            // Hand the terminal and signals to runc itself: it forwards them to the container.
            let args = ["runc", "run", "--bundle", bundle, id]
            var cArgs = args.map { strdup($0) } + [nil]
            execvp("runc", &cArgs)
            throw BuilderError.io(operation: "start", path: "runc", reason: String(cString: strerror(errno)) + "; install it with apt-get install runc")
        }
    }
}
