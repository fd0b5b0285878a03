import CUDABackend
import Foundation
import Hummingbird
import Inference
import Logging
import ServiceLifecycle

/// Everything `inference-server serve` is configured with.
public struct ServerOptions: Sendable {
    public var host = "0.0.0.0"
    public var port = 8080
    public var modelPath: String
    public var tokenizerDirectory: String?
    /// The names `/v1/models` lists and requests may use; the first is the id.
    public var servedModelNames: [String]
    /// Prompt plus output tokens per sequence (default: the model's maximum).
    public var contextLength: Int?
    public var limits = SchedulerLimits()
    /// Where the model runs: the GPU when one is usable (`auto`), or the one named.
    public var device = DeviceChoice.auto
    /// Share of the GPU's memory the server may fill (weights, KV cache, activations), as vLLM's flag.
    public var gpuMemoryUtilization = 0.9
    /// What the GPU's KV cache holds (`--kv-cache-dtype`): auto (bf16), bfloat16 or float32; nil
    /// leaves it to INFERENCE_KV_CACHE_DTYPE, else bf16.
    public var kvCacheType: String?
    public var maximumBodyBytes = 4 << 20
    /// After SIGTERM, how long running requests may go on before they are cut (Cloud Run allows 10 s).
    public var shutdownGraceSeconds = 8.0
    public var version = "0.1.0"

    public init(modelPath: String, servedModelNames: [String]) {
        self.modelPath = modelPath
        self.servedModelNames = servedModelNames
    }
}

/// The server: HTTP (Hummingbird) in front, the model loaded behind it. SIGTERM or SIGINT drains:
/// new requests get 503, running ones finish within the grace period or are cut with an error
/// event, then the listener closes and `run` returns (exit status 0).
public enum OpenAIServer {
    public static func run(_ options: ServerOptions) async throws {
        let metrics = ServerMetrics(modelName: options.servedModelNames[0])
        let state = ModelState()
        // HEAD answers like GET without a body (probes and curl -I), as FastAPI/Starlette do for vLLM.
        let router = Router(context: ServerContext.self, options: .autoGenerateHeadEndpoints)
        Routes(state: state, metrics: metrics, maximumBodyBytes: options.maximumBodyBytes, version: options.version)
            .register(on: router)
        var logger = Logger(label: "inference-server")
        logger.logLevel = .warning
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "inference-server"),
            onServerRunning: { channel in
                log("listening on \(channel.localAddress.map { "\($0)" } ?? "\(options.host):\(options.port)")")
            },
            logger: logger)
        let engine = EngineService(options: options, state: state, metrics: metrics)
        // Graceful shutdown runs in reverse order: the engine drains first (the listener still answers,
        // with 503 for new work), then the HTTP server stops.
        let group = ServiceGroup(
            configuration: .init(services: [app, engine], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        log("stopped")
    }

    static func log(_ message: String) {
        FileHandle.standardError.write(Data("inference-server: \(message)\n".utf8))
    }
}

/// Loads the model (off the async threads: loading maps files and parses the tokenizer), starts the
/// scheduler, and on shutdown drains it.
struct EngineService: Service {
    let options: ServerOptions
    let state: ModelState
    let metrics: ServerMetrics

    func run() async throws {
        let options = self.options
        let metrics = self.metrics
        let served: ServedModel = try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                do {
                    let engine = try Engine.load(path: options.modelPath, tokenizerDirectory: options.tokenizerDirectory)
                    var environment = ProcessInfo.processInfo.environment
                    if let type = options.kvCacheType { environment["INFERENCE_KV_CACHE_DTYPE"] = type }
                    let device = try ComputeDevice.open(options.device, environment: environment) { OpenAIServer.log($0) }
                    let served = try ServedModel(
                        engine: engine, names: options.servedModelNames, contextLength: options.contextLength,
                        limits: options.limits, metrics: metrics, device: device,
                        gpuMemoryUtilization: options.gpuMemoryUtilization,
                        tuning: try DecodeTuning.Plan.server(environment: environment))
                    continuation.resume(returning: served)
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
        served.scheduler.start()
        state.set(served)
        let l = served.scheduler.limits
        OpenAIServer.log(
            "loaded \(options.modelPath) (\(served.engine.format.rawValue), \(served.engine.config.layerCount) layers) on \(served.deviceName) "
                + "in \(String(format: "%.2f", served.engine.loadSeconds)) s as \(served.names.joined(separator: ", ")); "
                + (served.packedTiles.bytes > 0
                    ? "weights packed for \(served.engine.model.tileInstructions.joined(separator: " and ")): "
                        + "\(served.packedTiles.bytes >> 20) MiB in "
                        + "\(String(format: "%.2f", served.packedTiles.seconds)) s; " : "")
                + "context \(served.contextLength), up to \(l.maximumRunning) running and \(l.maximumWaiting) waiting requests, "
                + "KV cache budget \(l.cacheBytes >> 20) MiB")

        // Wait for SIGTERM/SIGINT (or the group ending), then drain.
        try? await gracefulShutdown()
        let scheduler = served.scheduler
        state.beginDraining()
        scheduler.beginDraining()
        let inFlight = scheduler.inFlight
        OpenAIServer.log("shutting down: \(inFlight) request\(inFlight == 1 ? "" : "s") in flight, \(options.shutdownGraceSeconds) s grace")
        let deadline = ContinuousClock.now + .milliseconds(Int(options.shutdownGraceSeconds * 1000))
        while scheduler.inFlight > 0 && ContinuousClock.now < deadline {
            do { try await Task.sleep(for: .milliseconds(50)) } catch { break }  // cancelled: stop now
        }
        let cut = scheduler.inFlight
        scheduler.stop(reason: "the server is shutting down")
        if cut > 0 { OpenAIServer.log("cut \(cut) request\(cut == 1 ? "" : "s") still running after the grace period") }
    }
}
