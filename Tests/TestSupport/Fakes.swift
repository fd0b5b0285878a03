import Foundation
import Testing

/// Tests/Scripts/hub_server.py on loopback: the Hub API on one port and a "CDN" on another origin.
public final class HubServer: @unchecked Sendable {
    // @unchecked: owned by one test at a time.
    public let service: ServiceProcess
    public let cdnPort: Int
    public let repos: String
    public var endpoint: String { "http://127.0.0.1:\(service.port)" }

    public init(repos: String, token: String? = nil, tokenNoAccess: String? = nil, gated: [String] = [], pageSize: Int = 1000) throws {
        self.repos = repos
        let cdn = freePort()
        cdnPort = cdn
        var arguments = ["python3", repositoryRoot + "/Tests/Scripts/hub_server.py", "--port", "{port}", "--cdn-port", String(cdn), "--repos", repos, "--page-size", String(pageSize)]
        if let token { arguments += ["--token", token] }
        if let tokenNoAccess { arguments += ["--token-no-access", tokenNoAccess] }
        for repo in gated { arguments += ["--gated", repo] }
        service = try ServiceProcess(arguments) { port in try answers("http://127.0.0.1:\(port)/__stats") }
    }

    public func stop() { service.stop() }

    public func faults(_ json: String) throws {
        let result = try run(["curl", "-sf", "-X", "POST", "-H", "Content-Type: application/json", "--data", json, endpoint + "/__faults"])
        #expect(result.status == 0, "could not set faults: \(result.stderr)")
    }

    public func stats() throws -> [String: Any] {
        let text = try run(["curl", "-sf", endpoint + "/__stats"]).stdout
        return (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    public func bytesServed() throws -> Int {
        ((try stats()["bytes_served"] as? [String: Int]) ?? [:]).values.reduce(0, +)
    }
}

/// A model repository on disk: small files, a nested one and a weight file of `weightSize` bytes.
public func makeRepo(_ dir: TemporaryDirectory, name: String = "org/model", weightSize: Int = 3_000_000) throws -> [String: [UInt8]] {
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


/// Tests/Scripts/google_fakes.py on loopback, reached through gcloud's own endpoint overrides.
public final class GoogleFakes: @unchecked Sendable {
    // @unchecked: owned by one test at a time.
    public let service: ServiceProcess
    public let dir: TemporaryDirectory
    public let keyFile: String
    public var base: String { "http://127.0.0.1:\(service.port)" }

    public init(secrets: [String: String] = ["hf-token": "hf_secret_value_123"], corruptCRC: Bool = false) throws {
        dir = try TemporaryDirectory()
        let key = dir.path + "/sa.pem", pub = dir.path + "/sa.pub"
        #expect(try run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key]).status == 0)
        #expect(try run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub]).status == 0)
        var arguments = ["python3", repositoryRoot + "/Tests/Scripts/google_fakes.py", "--port", "{port}", "--sa-public-key", pub]
        for (k, v) in secrets { arguments += ["--secret", "\(k)=\(v)"] }
        if corruptCRC { arguments.append("--corrupt-crc") }
        service = try ServiceProcess(arguments) { port in try answers("http://127.0.0.1:\(port)/__requests") }
        // A service-account key file whose token_uri is the fake.
        let pem = try String(contentsOfFile: key, encoding: .utf8)
        let json: [String: Any] = [
            "type": "service_account", "project_id": "test-project", "private_key_id": "k1", "private_key": pem,
            "client_email": "builder@test-project.iam.gserviceaccount.com", "token_uri": "http://127.0.0.1:\(service.port)/token",
        ]
        keyFile = try dir.write("key.json", Array(try JSONSerialization.data(withJSONObject: json)))
    }

    public var environment: [String: String] {
        [
            "HOME": dir.path, "GCE_METADATA_HOST": "127.0.0.1:\(service.port)",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN": base + "/", "CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER": base + "/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_IAMCREDENTIALS": base + "/",
        ]
    }

    /// `settings`: the fake's other switches (metadata_identity, service_uri_here, policy_races).
    public func scenario(_ mode: String, polls: Int = 2, _ settings: [String: Any] = [:]) throws {
        var body = settings
        body["mode"] = mode
        body["polls"] = polls
        let json = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
        _ = try run(["curl", "-sf", "-X", "POST", "--data", json, base + "/__scenario"])
    }

    public func requests() throws -> [[String: Any]] {
        let text = try run(["curl", "-sf", base + "/__requests"]).stdout
        return (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]]) ?? []
    }

    public func stop() { service.stop() }
}

