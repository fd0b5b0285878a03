import ArgumentParser
import Foundation
import CUDABackend
import InferenceServer

extension DeviceChoice: ExpressibleByArgument {}

/// `serve`: the OpenAI-compatible API (vLLM's routes) on the model, the entrypoint of every image.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the OpenAI API (vLLM-compatible) on a Gemma 3 model.",
        discussion: """
            Routes: POST /v1/completions, POST /v1/chat/completions (both with "stream": true), GET /v1/models, \
            GET /health (200 once the model is loaded), GET /metrics, GET /version, POST /tokenize, POST /detokenize.
            Concurrent requests are batched: up to --max-num-seqs sequences are decoded together each step; up to \
            --max-waiting more wait (beyond that, 429 with Retry-After). SIGTERM stops admitting (503), lets running \
            requests finish for --shutdown-grace seconds, cuts the rest and exits 0.
            On a GPU, before /health says ready, a short greedy decode times the settings that give the same \
            bits (INFERENCE_STAGED_WEIGHTS, INFERENCE_PREFETCH_AHEAD) on this card and keeps the fastest, in a \
            few seconds; INFERENCE_DECODE_TUNING=off skips it (inference-server doctor --help lists the GPU settings).
            Environment: MODEL_PATH (--model), PORT (--port), SERVED_MODEL_NAME (--served-model-name).
            """)

    @OptionGroup var options: ModelOptions

    @Option(help: "Folder with tokenizer.json (default: the model folder, or the GGUF file's folder).")
    var tokenizer: String?

    @Option(help: "Address to listen on.")
    var host = "0.0.0.0"

    @Option(help: "Port to listen on (default: $PORT, else 8080).")
    var port: Int?

    @Option(
        name: .customLong("served-model-name"),
        help: "Name the API answers to (repeatable; the first is listed). Default: $SERVED_MODEL_NAME, else the model's repo or folder name.")
    var servedModelNames: [String] = []

    @Option(name: .customLong("max-model-len"), help: "Prompt plus output tokens per request (default: the model's maximum).")
    var maxModelLen: Int?

    @Option(name: .customLong("max-num-seqs"), help: "Sequences decoded together in one batch.")
    var maxNumSeqs = 16

    @Option(name: .customLong("max-waiting"), help: "Requests that may wait for a place in the batch; more get 429.")
    var maxWaiting = 256

    @Option(name: .customLong("kv-cache-memory"), help: "MiB of KV cache all running requests may reserve together.")
    var kvCacheMemory = 4096

    @Option(name: .customLong("shutdown-grace"), help: "Seconds running requests may continue after SIGTERM.")
    var shutdownGrace = 8.0

    @Option(help: "Where the model runs: auto (the NVIDIA GPU when one is usable, else the CPU), cpu or cuda.")
    var device = DeviceChoice.auto

    @Option(
        name: .customLong("gpu-memory-utilization"),
        help: "Share of the GPU's memory for weights, KV cache and activations (as vLLM's flag); the KV cache gets what is left, at most --kv-cache-memory.")
    var gpuMemoryUtilization = 0.9

    @Option(
        name: .customLong("kv-cache-dtype"),
        help: "What the GPU's KV cache holds: auto (the model's bfloat16), bfloat16 or float32 (twice the memory; the CPU's numbers). Default: INFERENCE_KV_CACHE_DTYPE, else auto.")
    var kvCacheDtype: String?

    func validate() throws {
        if let kvCacheDtype, KVCacheType(name: kvCacheDtype) == nil {
            throw ValidationError("--kv-cache-dtype takes auto, bfloat16 or float32, not \(kvCacheDtype)")
        }
        if let port, !(1...65535).contains(port) { throw ValidationError("--port must be in 1...65535") }
        if let maxModelLen, maxModelLen < 1 { throw ValidationError("--max-model-len must be positive") }
        guard maxNumSeqs >= 1, maxNumSeqs <= 256 else { throw ValidationError("--max-num-seqs must be in 1...256") }
        guard maxWaiting >= 1 else { throw ValidationError("--max-waiting must be at least 1") }
        guard kvCacheMemory >= 16, kvCacheMemory <= 1 << 30 else {
            throw ValidationError("--kv-cache-memory must be between 16 and 1073741824 (MiB)")
        }
        guard shutdownGrace >= 0 else { throw ValidationError("--shutdown-grace must be >= 0") }
        guard gpuMemoryUtilization > 0, gpuMemoryUtilization <= 1 else {
            throw ValidationError("--gpu-memory-utilization must be in (0, 1]")
        }
    }

    func run() async throws {
        CPUCheck.requireEngineFeatures()
        // A parent may start us with SIGTERM blocked (threads of many runtimes block signals, and
        // children inherit the mask): unblock it, or `docker stop`/Cloud Run could not drain us.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &signals, nil)
        let path = try options.resolvedPath()
        let environment = ProcessInfo.processInfo.environment
        var names = servedModelNames
        if names.isEmpty { names = [environment["SERVED_MODEL_NAME"].flatMap { $0.isEmpty ? nil : $0 } ?? Self.defaultName(path)] }
        var server = ServerOptions(modelPath: path, servedModelNames: names)
        server.tokenizerDirectory = tokenizer
        server.host = host
        if let port {
            server.port = port
        } else if let value = environment["PORT"] {
            guard let port = Int(value), (1...65535).contains(port) else {
                throw ValidationError("PORT=\(value) is not a port number")
            }
            server.port = port
        }
        server.contextLength = maxModelLen
        server.limits = .init(maximumRunning: maxNumSeqs, maximumWaiting: maxWaiting, cacheBytes: kvCacheMemory << 20)
        server.shutdownGraceSeconds = shutdownGrace
        server.device = device
        server.gpuMemoryUtilization = gpuMemoryUtilization
        server.kvCacheType = kvCacheDtype
        do {
            try await OpenAIServer.run(server)
        } catch {
            FileHandle.standardError.write(Data("inference-server: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    /// `org/name` for a Hugging Face cache snapshot (…/models--org--name/snapshots/REV), else the
    /// folder's (or file's) name.
    static func defaultName(_ path: String) -> String {
        let parts = URL(fileURLWithPath: path).standardizedFileURL.pathComponents
        if let index = parts.lastIndex(where: { $0.hasPrefix("models--") }) {
            return parts[index].dropFirst("models--".count).replacingOccurrences(of: "--", with: "/")
        }
        let last = parts.last ?? path
        return last.hasSuffix(".gguf") ? String(last.dropLast(5)) : last
    }
}
