import ArgumentParser
import BuilderKit
import Foundation
import OCI

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build an OCI image from a model and a server executable; prints the manifest digest.",
        discussion: """
            Layers, in order: (1) the server and every shared library its ELF headers name, found as the
            loader would, so an image built on scratch starts; (2) the model's small files; (3) one layer
            per *.safetensors or *.gguf file. The model lands in /model (MODEL_PATH), the server in
            /usr/local/bin, and the entrypoint is the server. Only the digest goes to stdout; progress
            and errors go to stderr.

            Example:
              builder build --model ~/.cache/huggingface/hub/models--google--gemma-3-1b-it/snapshots/<commit> \\
                --output oci:./image
            """
    )

    @Option(help: "The model: a folder (a Hugging Face snapshot or any folder of files) or a single file such as a .gguf.")
    var model: String

    @Option(help: "The server executable to run. Default: the inference-server built beside this builder.")
    var server: String?

    @Option(help: "The base image: 'scratch' (nothing but our layers) or oci:DIR (an OCI layout on disk).")
    var base: String = "scratch"

    @Option(name: .customLong("env"), help: "Set an environment variable in the image (KEY=VALUE); repeatable.")
    var env: [String] = []

    @Option(name: .customLong("label"), help: "Add an image label (KEY=VALUE); repeatable.")
    var labels: [String] = []

    @Option(help: "The port the server listens on: sets PORT and ExposedPorts.")
    var port: Int = 8080

    @Option(help: "Where to write the image: oci:DIR (an OCI layout folder) or oci-archive:FILE (the same, as one tar).")
    var output: String

    @Option(help: "The tag recorded in the layout's index.json.")
    var tag: String = "latest"

    @Option(help: "Compression of the server and model-file layers: none, gzip or zstd.")
    var compression: LayerCompression = .gzip

    @Option(help: "Compression of weight layers: none (bf16 weights barely compress), gzip or zstd.")
    var weightCompression: LayerCompression = .none

    @Option(help: "The image platform, os/arch; the server must be built for it.")
    var platform: String = "linux/amd64"

    @Flag(help: "Print no progress lines.")
    var quiet = false

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535") }
        guard !tag.isEmpty, !tag.contains("/") else { throw ValidationError("--tag must be a plain tag such as 'latest'") }
        guard Platform(parsing: platform) != nil else { throw ValidationError("--platform takes os/arch, e.g. linux/amd64") }
    }

    func run() throws {
        do {
            var request = BuildRequest(model: model, server: server ?? defaultServer(), output: try .init(parsing: output))
            request.base = try parseBase(base)
            request.env = try env.map { try BuildRequest.keyValue($0, option: "--env") }
            request.labels = try labels.map { try BuildRequest.keyValue($0, option: "--label") }
            request.port = port
            request.tag = tag
            request.compression = compression
            request.weightCompression = weightCompression
            request.platform = Platform(parsing: platform)!
            request.sourceDateEpoch = try BuildRequest.sourceDateEpoch(from: ProcessInfo.processInfo.environment)
            let builder = ImageBuilder(request: request, progress: quiet ? .silent : .standardError())
            let result = try builder.build()
            print(result.manifest.digest)
        } catch let error as ValidationError {
            throw error
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    private func parseBase(_ s: String) throws -> BuildRequest.Base {
        if s == "scratch" { return .scratch }
        if s.hasPrefix("oci:"), s.count > 4 { return .layout(String(s.dropFirst(4))) }
        throw BuilderError.invalidOption("--base must be scratch or oci:DIR (pulling from a registry is not available yet), not '\(s)'")
    }

    /// The inference-server next to this executable, as `swift build` and the builder image lay them out.
    private func defaultServer() -> String {
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent("inference-server").path
    }
}

extension LayerCompression: ExpressibleByArgument {}
