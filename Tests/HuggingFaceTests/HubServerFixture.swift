import Foundation
import HTTP
import Testing
import TestSupport

@testable import HuggingFace

/// Tests/Scripts/hub_server.py on loopback: the Hub API on one port and a "CDN" on another origin.
final class HubServer {
    let service: ServiceProcess
    let cdnPort: Int
    let repos: String
    var endpoint: String { "http://127.0.0.1:\(service.port)" }

    init(repos: String, token: String? = nil, tokenNoAccess: String? = nil, gated: [String] = [], pageSize: Int = 1000) throws {
        self.repos = repos
        let cdn = freePort()
        cdnPort = cdn
        var arguments = ["python3", repositoryRoot + "/Tests/Scripts/hub_server.py", "--port", "{port}", "--cdn-port", String(cdn), "--repos", repos, "--page-size", String(pageSize)]
        if let token { arguments += ["--token", token] }
        if let tokenNoAccess { arguments += ["--token-no-access", tokenNoAccess] }
        for repo in gated { arguments += ["--gated", repo] }
        service = try ServiceProcess(arguments) { port in try answers("http://127.0.0.1:\(port)/__stats") }
    }

    func stop() { service.stop() }

    func faults(_ json: String) throws {
        let result = try run(["curl", "-sf", "-X", "POST", "-H", "Content-Type: application/json", "--data", json, endpoint + "/__faults"])
        #expect(result.status == 0, "could not set faults: \(result.stderr)")
    }

    func stats() throws -> [String: Any] {
        let text = try run(["curl", "-sf", endpoint + "/__stats"]).stdout
        return (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    func bytesServed() throws -> Int {
        ((try stats()["bytes_served"] as? [String: Int]) ?? [:]).values.reduce(0, +)
    }
}

/// A model repository on disk: small files, a nested one and a weight file of `weightSize` bytes.
func makeRepo(_ dir: TemporaryDirectory, name: String = "org/model", weightSize: Int = 3_000_000) throws -> [String: [UInt8]] {
    var files: [String: [UInt8]] = [
        "config.json": Array(#"{"model_type": "gemma3_text", "hidden_size": 640}"#.utf8),
        "tokenizer.json": Array(#"{"version": "1.0", "model": {"type": "BPE"}}"#.utf8),
        "generation_config.json": Array(#"{"do_sample": true, "top_k": 64}"#.utf8),
        "model.safetensors": randomBytes(weightSize),
        "README.md": Array("# not fetched by default\n".utf8),
        "original/params.json": Array("{}".utf8),
    ]
    files["sub/dir/tokenizer_config.json"] = Array("{}".utf8)
    for (path, bytes) in files { _ = try dir.write("repos/\(name)/\(path)", bytes) }
    return files
}

func fetcher(endpoint: String, cache: String, token: String? = nil, jobs: Int = 4, threshold: Int64 = 1 << 20) -> SnapshotFetcher {
    let config = HubConfiguration(endpoint: endpoint, cacheDirectory: cache, token: token, offline: false)
    var f = SnapshotFetcher(client: HubClient(configuration: config, retry: RetryPolicy(attempts: 8, baseDelay: 0.01, maxDelay: 0.2)))
    f.jobs = jobs
    f.parallelThreshold = threshold
    return f
}
