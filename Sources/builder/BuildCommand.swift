import ArgumentParser
import BuilderKit
import Foundation
import OCI
import Registry

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build an OCI image from a model and a server executable; prints the manifest digest.",
        discussion: """
            Layers, in order: (1) the server and every shared library its ELF headers name, found as the \
            loader would, so an image built on scratch starts; (2) the model's small files; (3) one layer \
            per *.safetensors or *.gguf file. The model lands in /model (MODEL_PATH), the server in \
            /usr/local/bin, and the entrypoint is the server. Only the digest goes to stdout; progress \
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

    @Option(help: "The base image: 'scratch' (nothing but our layers), oci:DIR (an OCI layout on disk) or a registry reference (e.g. debian:bookworm-slim), pulled and verified.")
    var base: String = "scratch"

    @Option(help: "Push the image to this registry reference (HOST/REPOSITORY[:TAG]) once built; then stdout is REF@sha256:...")
    var push: String?

    @OptionGroup var registry: RegistryOptions

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

    @Flag(help: "Add NVRTC (the CUDA kernel compiler, about 60 MB) in its own layer and the environment NVIDIA's runtime and Cloud Run's driver mount expect, so the server can use a GPU. The driver is not added: the GPU host provides it.")
    var gpu = false

    @Option(help: "With --gpu: the libnvrtc.so.12 to add (its libnvrtc-builtins beside it). Default: INFERENCE_NVRTC, the CUDA toolkit folders, or the nvidia-cuda-nvrtc-cu12 pip wheel.")
    var nvrtc: String?

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535") }
        guard !tag.isEmpty, !tag.contains("/") else { throw ValidationError("--tag must be a plain tag such as 'latest'") }
        guard Platform(parsing: platform) != nil else { throw ValidationError("--platform takes os/arch, e.g. linux/amd64") }
    }

    func run() throws {
        try reportingErrors {
            var request = BuildRequest(model: model, server: server ?? BuildCommand.defaultServer(), output: try .init(parsing: output))
            request.base = .init(parsing: base)
            request.env = try env.map { try BuildRequest.keyValue($0, option: "--env") }
            request.labels = try labels.map { try BuildRequest.keyValue($0, option: "--label") }
            request.port = port
            request.tag = tag
            request.compression = compression
            request.weightCompression = weightCompression
            request.platform = Platform(parsing: platform)!
            request.sourceDateEpoch = try BuildRequest.sourceDateEpoch(from: ProcessInfo.processInfo.environment)
            if gpu || nvrtc != nil {
                guard let found = nvrtc ?? GPURuntime.findNVRTC() else {
                    throw ValidationError("--gpu needs NVRTC 12.2 on this machine: `pip install nvidia-cuda-nvrtc-cu12==12.2.140`, or name the library with --nvrtc")
                }
                request.nvrtc = found
            }
            let pushReference = try push.map { try ImageReference(parsing: $0) }
            var baseRegistry: String?
            if case .registry(let text) = request.base { baseRegistry = try ImageReference(parsing: text).registry }
            let client = try registry.makeClient(for: pushReference?.registry ?? baseRegistry)
            let progress: ProgressFactory = quiet ? .silent : .standardError()
            let result = try ImageBuilder(request: request, progress: progress, registry: client).build()
            guard let pushReference else {
                print(result.manifest.digest)
                return
            }
            // Base layers already in another repository of the same registry are mounted, not uploaded.
            var mounts: [OCI.Digest: String] = [:]
            if let base = result.baseReference, base.registry == pushReference.registry {
                for layer in result.baseLayers { mounts[layer] = base.repository }
            }
            guard case .layout(let dir) = request.output else {
                throw ValidationError("--push needs --output oci:DIR")
            }
            let (text, _) = try RegistryOperations.push(
                layout: dir + ":" + request.tag, to: pushReference, client: client, jobs: registry.jobs,
                mode: registry.uploadMode.mode, chunkSize: registry.chunkSize, mountSources: mounts, progress: progress)
            print(text)
        }
    }

    /// The inference-server next to this executable, as `swift build` and the builder image lay them out.
    static func defaultServer() -> String {
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent("inference-server").path
    }
}

extension LayerCompression: ExpressibleByArgument {}
