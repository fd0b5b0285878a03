import BuilderKit
import Foundation
import Hashing
import OCI
import Testing
import TestSupport

/// `builder ship` end to end with every outside party faked or real: the Hub test server, a real
/// docker-registry and the Google Cloud fakes (metadata server, Cloud Run API).
@Suite(.serialized) struct ShipTests {
    func ship(_ arguments: [String], env: [String: String]) throws -> CommandResult {
        try run(["env", "-i"] + env.map { "\($0.key)=\($0.value)" } + [packageRoot + "/.build/debug/builder", "ship"] + arguments)
    }

    @Test func shipsAModelAndNeverLeaksTheToken() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir, name: "google/tiny-gemma", weightSize: 2_000_000)
        let hub = try HubServer(repos: dir.path + "/repos", token: "hf_ship_secret_token_42", gated: ["google/tiny-gemma"])
        defer { hub.stop() }
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        let google = try GoogleFakes()
        defer { google.stop() }
        // The deployed service's URL leads back to the fake, so --smoke-test reaches it; it is private,
        // so the identity token comes from the metadata server (all this environment has).
        try google.scenario("ok", polls: 2, ["service_uri_here": true])

        var env = google.environment
        env["PATH"] = "/usr/bin:/bin"
        env["HF_ENDPOINT"] = hub.endpoint
        env["HF_HUB_CACHE"] = dir.path + "/hf-cache"
        env["HF_TOKEN"] = "hf_ship_secret_token_42"
        let arguments = [
            "--model", "google/tiny-gemma", "--image", "\(registry.host)/models/tiny-gemma:v1", "--project", "test-project",
            "--region", "europe-west4", "--service", "tiny-gemma", "--workdir", dir.path + "/image", "--server", try builtServer(), "--smoke-test",
        ]
        let first = try ship(arguments, env: env)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == google.base + "/__service/tiny-gemma")
        let deployed = try #require(try google.requests().last { $0["method"] as? String == "PATCH" })
        let body = try JSONSerialization.jsonObject(with: Data((deployed["body"] as? String ?? "").utf8)) as? [String: Any]
        let containers = (body?["template"] as? [String: Any])?["containers"] as? [[String: Any]]
        #expect((containers?.first?["image"] as? String)?.hasPrefix("\(registry.host)/models/tiny-gemma@sha256:") == true, "deployed by digest")

        // No blob of the image, and nothing the tools printed, holds the token.
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path + "/image/blobs/sha256") {
            let data = try Data(contentsOf: URL(fileURLWithPath: dir.path + "/image/blobs/sha256/" + name))
            #expect(data.range(of: Data("hf_ship_secret_token_42".utf8)) == nil, "token found in blob \(name)")
        }
        #expect(!first.stderr.contains("hf_ship_secret") && !first.stdout.contains("hf_ship_secret"))
        #expect((try hub.stats()["cdn_auth_leaks"] as? Int) == 0)

        // A second ship with another server binary: the weight layer is not sent again.
        let otherServer = dir.path + "/inference-server"
        try FileManager.default.copyItem(atPath: try builtServer(), toPath: otherServer)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: otherServer))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("a different build".utf8))
        try handle.close()
        var again = arguments
        again[again.firstIndex(of: "--server")! + 1] = otherServer
        again += ["--public-access", "all-users"]
        let second = try ship(again, env: env)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("2 blobs uploaded"), "only the server layer and the config: \(second.stderr.suffix(600))")
        #expect(second.stderr.contains("allUsers may now invoke tiny-gemma"))
        #expect(try google.requests().contains { ($0["path"] as? String)?.hasSuffix("/services/tiny-gemma:setIamPolicy") == true })
    }

    @Test func aGatedModelWithoutATokenStopsBeforeAnythingIsBuilt() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir, name: "google/tiny-gemma")
        let hub = try HubServer(repos: dir.path + "/repos", token: "hf_good", gated: ["google/tiny-gemma"])
        defer { hub.stop() }
        let env = ["PATH": "/usr/bin:/bin", "HOME": dir.path, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": dir.path + "/c"]
        let result = try ship([
            "--model", "google/tiny-gemma", "--image", "127.0.0.1:9/x/y", "--project", "p", "--region", "r", "--service", "s",
            "--workdir", dir.path + "/image",
        ], env: env)
        #expect(result.status == 1)
        #expect(result.stderr.contains("gated") && result.stderr.contains("accept"))
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/image"))
    }
}

/// `builder run`: our own unpacking (layers applied in order, whiteouts honoured) and runc.
@Suite(.serialized) struct RunTests {
    @Test func runsTheImageWithRunc() throws {
        let dir = try TemporaryDirectory()
        _ = try buildImage(model: try makeModel(in: dir), output: dir.path + "/image")
        let result = try run([
            "env", "XDG_CACHE_HOME=\(dir.path)/cache", packageRoot + "/.build/debug/builder", "run", "oci:\(dir.path)/image",
            "--port", String(freePort()), "--name", "builder-test-\(getpid())",
        ])
        // The server in the container finds MODEL_PATH and refuses the fake model (no weights): status 1.
        #expect(result.status == 1, "the server's status: \(result.stderr)")
        #expect(result.stderr.contains("cannot read /model"), "\(result.stderr)")
        let bundles = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/cache/gemma-run/bundles")
        #expect(bundles.count == 1)
        #expect(FileManager.default.isExecutableFile(atPath: dir.path + "/cache/gemma-run/bundles/\(bundles[0])/rootfs/usr/local/bin/inference-server"))
    }

    /// `builder build --gpu`: NVRTC in its own layer, the kernels compiled ahead for the L4 in
    /// another, and the GPU environment; inside the image (from scratch, run by runc) `inference-server
    /// doctor` finds NVRTC beside it, takes the L4's kernels from the image's cache without compiling,
    /// and compiles every kernel for the H100.
    @Test func aGPUImageCompilesTheKernelsInside() throws {
        let dir = try TemporaryDirectory()
        let builder = packageRoot + "/.build/debug/builder"
        let model = try makeModel(in: dir)
        let build = try run([builder, "build", "--model", model, "--server", try builtServer(), "--output", "oci:\(dir.path)/image", "--gpu", "--quiet"])
        #expect(build.status == 0, "\(build.stderr)")
        let layout = try OCILayout(root: dir.path + "/image")
        let image = try layout.image(for: .linuxAMD64)
        let env = image.config.config?.Env ?? []
        #expect(env.contains("NVIDIA_VISIBLE_DEVICES=all") && env.contains("NVIDIA_DRIVER_CAPABILITIES=compute,utility"))
        #expect(env.contains { $0.hasPrefix("LD_LIBRARY_PATH=") && $0.contains("/usr/local/nvidia/lib64") }, "\(env)")
        #expect(image.config.history?.contains { $0.created_by?.contains("NVRTC") == true } == true)
        #expect(env.contains("INFERENCE_PREBUILT_KERNELS=\(KernelBinaries.imageDirectory)"), "\(env)")
        #expect(image.config.history?.contains { $0.created_by?.contains("CUDA kernels for sm_89") == true } == true)
        let result = try run([
            "env", "XDG_CACHE_HOME=\(dir.path)/cache", builder, "run", "oci:\(dir.path)/image", "--name", "builder-gpu-\(getpid())",
            "--", "doctor", "--compile-kernels", "--arch", "sm_89", "--arch", "sm_90",
        ])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("at /usr/local/lib/libnvrtc.so.12"), "\(result.stdout)")
        #expect(!result.stdout.contains("FAILED"), "\(result.stdout)")
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("kernels sm_89") && $0.contains("from the cache: \(KernelBinaries.imageDirectory)/") }, "\(result.stdout)")
        #expect(lines.contains { $0.hasPrefix("kernels sm_90") && $0.contains("compiled in") }, "\(result.stdout)")
    }
}
