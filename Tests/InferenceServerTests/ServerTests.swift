import Foundation
import TestSupport
import Testing

/// `inference-server serve` with the real Gemma 3 270M, driven by real clients: the official
/// `openai` SDK, raw sockets for hostile input and departing clients, SIGTERM, and a load of 32
/// concurrent streams. The checks themselves are Python scripts in Tests/Scripts (each prints what
/// failed); these tests start the server, run them, and fail with their output.
@Suite(.serialized) struct ServerTests {
    static let scripts = repositoryRoot + "/Tests/Scripts"
    static let models = repositoryRoot + "/models"
    static let modelFolder = models + "/gemma-3-270m"

    /// The debug binary `swift build` made (scripts/test builds it before testing).
    static func binary() throws -> String {
        let candidates = [
            ProcessInfo.processInfo.environment["INFERENCE_SERVER_BINARY"],
            repositoryRoot + "/.build/debug/inference-server",
            repositoryRoot + "/.build/release/inference-server",
        ].compactMap { $0 }
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            Issue.record("no inference-server binary: run `swift build` first (scripts/test does)")
            throw CocoaError(.fileNoSuchFile)
        }
        return found
    }

    /// The real weights, fetched once (idempotent) by the shared script, as the engine tests do.
    static let weights: Result<String, CocoaError> = {
        let script = repositoryRoot + "/../shared/tools/get-gemma3-270m.sh"
        if !FileManager.default.fileExists(atPath: modelFolder + "/model.safetensors"),
            FileManager.default.fileExists(atPath: script)
        {
            // One fetch at a time: test targets run in parallel (scripts/test fetches before them).
            try? FileManager.default.createDirectory(atPath: models, withIntermediateDirectories: true)
            _ = try? run(["flock", models + "/.fetch.lock", "bash", script, models])
        }
        guard FileManager.default.fileExists(atPath: modelFolder + "/tokenizer.json") else {
            return .failure(CocoaError(.fileNoSuchFile))
        }
        return .success(modelFolder)
    }()

    static func model() throws -> String {
        do {
            return try weights.get()
        } catch {
            Issue.record("no Gemma 3 270M in \(modelFolder) (../shared/tools/get-gemma3-270m.sh fetches it)")
            throw error
        }
    }

    /// A server on a free loopback port, ready once /health says 200.
    static func startServer(_ extra: [String] = []) throws -> ServiceProcess {
        try ServiceProcess(
            [
                try binary(), "serve", "--model", try model(), "--host", "127.0.0.1", "--port", "{port}",
                "--served-model-name", "google/gemma-3-1b-it", "--served-model-name", "gemma",
            ] + extra
        ) { port in
            try run(["curl", "-sf", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:\(port)/health"]).status == 0
        }
    }

    func script(_ name: String, _ arguments: [String]) throws -> CommandResult {
        let result = try run(["python3", Self.scripts + "/" + name] + arguments)
        #expect(result.status == 0, "\(name) failed:\n\(result.stdout)\n\(result.stderr)")
        return result
    }

    @Test func theOpenAISDKGetsWhatGenerateGives() throws {
        let prompt = "The capital of France is"
        let dir = try TemporaryDirectory()
        let generated = try run([
            try Self.binary(), "generate", "--model", try Self.model(), "--prompt", prompt, "--max-tokens", "16",
            "--ignore-eos", "--json", "--logprobs",
        ])
        #expect(generated.status == 0, "\(generated.stderr)")
        let expected = try dir.write("expected.json", Array(generated.stdout.utf8))
        let server = try Self.startServer()
        defer { server.stop() }
        _ = try script(
            "check_openai_server.py",
            ["--base-url", "http://127.0.0.1:\(server.port)", "--model", "gemma", "--prompt", prompt, "--expected", expected])
    }

    /// vLLM's contract beyond the common calls (check_api_contract.py), on a 64-token context so
    /// that "the rest of the context" and a prompt that fills it can be tested.
    @Test func theAPIContractMatchesVLLM() throws {
        let server = try Self.startServer(["--max-model-len", "64"])
        defer { server.stop() }
        _ = try script("check_api_contract.py", ["--base-url", "http://127.0.0.1:\(server.port)", "--model", "gemma"])
    }

    @Test func departingClientsAndSIGTERM() throws {
        _ = try script("check_lifecycle.py", ["--binary", try Self.binary(), "--model", try Self.model(), "--grace", "3"])
    }

    /// Thousands of malformed, oversized and hostile requests: every answer a 4xx with the OpenAI
    /// error body, the server alive and serving throughout, nothing left running, no leaked descriptors.
    @Test func hostileInputGetsOpenAIErrorsAndTheServerKeepsServing() throws {
        let server = try Self.startServer()
        defer { server.stop() }
        _ = try script(
            "check_bad_input.py", ["--base-url", "http://127.0.0.1:\(server.port)", "--pid", String(server.pid), "--count", "2000"])
    }

    /// 32 concurrent streaming clients (LOAD_TEST_SECONDS, default 120): zero errors, every stream well
    /// formed, memory flat.
    @Test func thirtyTwoStreamsUnderLoad() throws {
        let seconds = ProcessInfo.processInfo.environment["LOAD_TEST_SECONDS"] ?? "120"
        let server = try Self.startServer()
        defer { server.stop() }
        _ = try script(
            "load_test.py",
            ["--base-url", "http://127.0.0.1:\(server.port)", "--pid", String(server.pid), "--clients", "32", "--seconds", seconds])
    }
}
