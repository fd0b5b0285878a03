import Foundation
import Testing
import TestSupport

/// The README's main job, end to end, with real parts: the Hub test server serves the real Gemma 3
/// 270M (GGUF and its tokenizer, gated, behind a token), `builder fetch` verifies it into the cache,
/// `builder build` makes an image over scratch, `builder push` sends it to docker-registry, `builder run`
/// pulls it from the registry and starts it with runc, and the official `openai` SDK gets a completion
/// from the model inside the container. No blob of the image holds the token; SIGTERM ends it with 0.
@Suite(.serialized) struct EndToEndTests {
    static let token = "hf_e2e_secret_token_77"

    func builder(_ arguments: [String], env: [String: String]) throws -> CommandResult {
        try run(["env", "-i"] + env.map { "\($0.key)=\($0.value)" } + [packageRoot + "/.build/debug/builder"] + arguments)
    }

    /// Whether `token` occurs in the blob, decompressed if it is a gzip or zstd layer.
    func blobHoldsToken(_ path: String) throws -> Bool {
        let head = try FileHandle(forReadingFrom: URL(fileURLWithPath: path)).readData(ofLength: 4)
        let reader =
            head.starts(with: [0x1f, 0x8b]) ? "gzip -dc" : head.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) ? "zstd -dc" : "cat"
        let result = try run(["sh", "-c", "\(reader) '\(path)' | grep -a -c -F '\(Self.token)'"])
        return result.status == 0
    }

    @Test func theMainJobServesTheRealModelFromTheRegistry() throws {
        let models = packageRoot + "/models"
        let gguf = models + "/gemma-3-270m-q4_k_m.gguf"
        let tokenizer = models + "/gemma-3-270m"
        guard FileManager.default.fileExists(atPath: gguf), FileManager.default.fileExists(atPath: tokenizer + "/tokenizer.json")
        else {
            Issue.record("no real weights in \(models): scripts/get-model and ../shared/tools/get-gemma3-270m.sh fetch them")
            return
        }
        let dir = try TemporaryDirectory()
        let repo = dir.path + "/repos/google/gemma-3-270m"
        try FileManager.default.createDirectory(atPath: repo, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: repo + "/gemma-3-270m-q4_k_m.gguf", withDestinationPath: gguf)
        for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
            try FileManager.default.copyItem(atPath: tokenizer + "/" + name, toPath: repo + "/" + name)
        }
        let hub = try HubServer(repos: dir.path + "/repos", token: Self.token, gated: ["google/gemma-3-270m"])
        defer { hub.stop() }
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        let env = [
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": dir.path, "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": dir.path + "/hf-cache", "HF_TOKEN": Self.token, "XDG_CACHE_HOME": dir.path + "/cache",
        ]

        let fetched = try builder(
            ["fetch", "google/gemma-3-270m", "--include", "*.gguf", "--include", "tokenizer*", "--include", "special_tokens_map.json"],
            env: env)
        #expect(fetched.status == 0, "\(fetched.stderr)")
        let snapshot = fetched.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let built = try builder(
            ["build", "--model", snapshot, "--server", try builtServer(), "--output", "oci:\(dir.path)/image"], env: env)
        #expect(built.status == 0, "\(built.stderr)")
        let reference = "\(registry.host)/gemma/gemma-3-270m:e2e"
        let pushed = try builder(["push", "oci:\(dir.path)/image", reference], env: env)
        #expect(pushed.status == 0, "\(pushed.stderr)")
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path + "/image/blobs/sha256") {
            #expect(try !blobHoldsToken(dir.path + "/image/blobs/sha256/" + name), "the token is in blob \(name)")
        }
        for output in [fetched, built, pushed] { #expect(!output.stdout.contains(Self.token) && !output.stderr.contains(Self.token)) }

        // builder run: pulled from the registry, unpacked, started with runc on the host network.
        let port = freePort()
        let id = "builder-e2e-\(getpid())"
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["-i"] + env.map { "\($0.key)=\($0.value)" } + [
            packageRoot + "/.build/debug/builder", "run", reference, "--port", String(port), "--name", id,
        ]
        let log = dir.path + "/run.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        let logHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        server.standardOutput = logHandle
        server.standardError = logHandle
        try server.run()
        defer {
            if server.isRunning { _ = try? run(["runc", "kill", id, "KILL"]) }
            server.waitUntilExit()
            _ = try? run(["runc", "delete", "--force", id])
        }
        let url = "http://127.0.0.1:\(port)"
        var healthy = false
        for _ in 0..<600 where server.isRunning {
            if (try? run(["curl", "-sf", "-o", "/dev/null", "--max-time", "2", url + "/health"]))?.status == 0 {
                healthy = true
                break
            }
            usleep(200_000)
        }
        let logText = { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        try #require(healthy, "the container never became healthy: \(logText())")

        // The official SDK, against the model inside the container, under the name the image carries.
        let client = """
            import sys, openai
            c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0, timeout=120)
            ids = [m.id for m in c.models.list().data]
            assert ids == ["google/gemma-3-270m"], ids
            r = c.completions.create(model=ids[0], prompt="The capital of France is", max_tokens=8, temperature=0)
            assert r.usage.completion_tokens >= 1 and r.choices[0].text.strip(), r
            print(r.choices[0].text)
            """
        let answer = try run(["python3", "-c", client, url])
        #expect(answer.status == 0, "\(answer.stdout)\n\(answer.stderr)")
        #expect(!logText().contains(Self.token))

        // SIGTERM to the server in the container (as Cloud Run stops an instance): it drains and exits 0.
        _ = try run(["runc", "kill", id, "TERM"])
        for _ in 0..<300 where server.isRunning { usleep(100_000) }
        #expect(!server.isRunning, "the container did not stop after SIGTERM")
        if !server.isRunning { #expect(server.terminationStatus == 0, "exit status \(server.terminationStatus): \(logText())") }
    }
}
