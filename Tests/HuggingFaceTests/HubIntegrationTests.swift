import Foundation
import HTTP
import Hashing
import Testing
import TestSupport

@testable import HuggingFace

/// `builder fetch` against the Hub-protocol test server, with Python huggingface_hub as the judge.
@Suite(.serialized) struct HubIntegrationTests {
    /// Runs Python with huggingface_hub against a cache; returns stdout, or records the failure.
    func python(_ code: String, cache: String, endpoint: String, offline: Bool = false, extra: [String] = []) throws -> CommandResult {
        var env = ["env", "HF_HUB_CACHE=\(cache)", "HF_ENDPOINT=\(endpoint)", "HF_HUB_DISABLE_XET=1", "HF_HUB_DISABLE_TELEMETRY=1"]
        if offline { env.append("HF_HUB_OFFLINE=1") }
        return try run(env + extra + ["python3", "-c", code])
    }

    @Test func fetchesVerifiesAndWritesACachePythonReads() throws {
        let dir = try TemporaryDirectory()
        let files = try makeRepo(dir)
        let server = try HubServer(repos: dir.path + "/repos", pageSize: 2)
        defer { server.stop() }
        let cache = dir.path + "/cache"
        let result = try fetcher(endpoint: server.endpoint, cache: cache).fetch(repo: "org/model")
        // A nested file, asked for by name: its symlink climbs one level per folder.
        var nested = fetcher(endpoint: server.endpoint, cache: cache)
        nested.selection = FileSelection(include: ["sub/*"])
        let sub = try nested.fetch(repo: "org/model")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: sub.snapshot + "/sub/dir/tokenizer_config.json").hasPrefix("../../../../blobs/"))

        #expect(result.files.map(\.path) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"])
        for file in result.files {
            #expect(try Data(contentsOf: URL(fileURLWithPath: result.snapshot + "/" + file.path)) == Data(files[file.path]!))
        }
        #expect(!FileManager.default.fileExists(atPath: result.snapshot + "/README.md"))
        #expect(!FileManager.default.fileExists(atPath: result.snapshot + "/original/params.json"))
        let ref = try String(contentsOfFile: cache + "/models--org--model/refs/main", encoding: .utf8)
        #expect(ref == result.commit && !ref.hasSuffix("\n"))
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: result.snapshot + "/model.safetensors")
        #expect(link == "../../blobs/" + SHA256.hash(files["model.safetensors"]!).hexString)

        // The real client finds every file offline, by branch and by commit.
        let check = try python("""
            from huggingface_hub import hf_hub_download
            for f in ["config.json", "model.safetensors", "tokenizer.json", "sub/dir/tokenizer_config.json"]:
                p = hf_hub_download("org/model", f, local_files_only=True)
                q = hf_hub_download("org/model", f, revision="\(result.commit)", local_files_only=True)
                assert p == q, (p, q)
            print("ok")
            """, cache: cache, endpoint: server.endpoint, offline: true)
        #expect(check.stdout.contains("ok"), "\(check.stdout)\(check.stderr)")
        #expect((try server.stats()["cdn_auth_leaks"] as? Int) == 0)
    }

    @Test func reusesWhatPythonDownloadedAndFetchesNothing() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir)
        let server = try HubServer(repos: dir.path + "/repos")
        defer { server.stop() }
        let cache = dir.path + "/cache"
        let download = try python("""
            from huggingface_hub import snapshot_download
            print(snapshot_download("org/model"))
            """, cache: cache, endpoint: server.endpoint)
        #expect(download.status == 0, "\(download.stderr)")
        let result = try fetcher(endpoint: server.endpoint, cache: cache).fetch(repo: "org/model")
        #expect(result.bytesFetched == 0)
        #expect(result.reused == result.files.count)
        #expect(result.snapshot == download.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    @Test func gatedModelsSayWhatToDo() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir, name: "google/gated")
        let server = try HubServer(repos: dir.path + "/repos", token: "hf_good", tokenNoAccess: "hf_noaccess", gated: ["google/gated"])
        defer { server.stop() }
        let cache = dir.path + "/cache"
        #expect(throws: HubError.gatedNeedsToken(repo: "google/gated", endpoint: server.endpoint)) {
            try fetcher(endpoint: server.endpoint, cache: cache).fetch(repo: "google/gated")
        }
        #expect(throws: HubError.gatedNotAccepted(repo: "google/gated", endpoint: server.endpoint)) {
            try fetcher(endpoint: server.endpoint, cache: cache, token: "hf_noaccess").fetch(repo: "google/gated")
        }
        #expect(throws: HubError.invalidToken(endpoint: server.endpoint)) {
            try fetcher(endpoint: server.endpoint, cache: cache, token: "hf_wrong").fetch(repo: "google/gated")
        }
        let ok = try fetcher(endpoint: server.endpoint, cache: cache, token: "hf_good").fetch(repo: "google/gated")
        #expect(ok.files.count == 4)
        #expect((try server.stats()["cdn_auth_leaks"] as? Int) == 0, "the token never reaches the CDN")
        let message = "\(HubError.gatedNotAccepted(repo: "google/gated", endpoint: server.endpoint))"
        #expect(message.contains("accept the license") && !message.contains("hf_"))
    }

    @Test func missingRepositoryAndRevision() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir)
        let server = try HubServer(repos: dir.path + "/repos")
        defer { server.stop() }
        let f = fetcher(endpoint: server.endpoint, cache: dir.path + "/cache")
        #expect(throws: HubError.revisionNotFound(repo: "org/model", revision: "v9")) { try f.fetch(repo: "org/model", revision: "v9") }
        #expect { try f.fetch(repo: "org/nothing") } throws: { "\($0)".contains("not found") }
    }

    /// Cut connections, a flipped byte, 429s and 500s: each ends in verified files, never a bad one.
    @Test func faultsEndInVerifiedFiles() throws {
        let dir = try TemporaryDirectory()
        let files = try makeRepo(dir, weightSize: 5_000_000)
        let server = try HubServer(repos: dir.path + "/repos")
        defer { server.stop() }
        try server.faults(#"{"cut_after": {"model.safetensors": 1500000, "config.json": 10}, "flip_byte": {"model.safetensors": 1}, "status_rate": {"429": 0.1, "500": 0.1}, "seed": 3}"#)
        let result = try fetcher(endpoint: server.endpoint, cache: dir.path + "/cache", threshold: 1 << 20).fetch(repo: "org/model")
        for file in result.files {
            #expect(try Data(contentsOf: URL(fileURLWithPath: result.snapshot + "/" + file.path)) == Data(files[file.path]!))
        }
        let injected = (try server.stats()["faults_injected"] as? [String: Int]) ?? [:]
        #expect((injected["cut_after"] ?? 0) >= 1 && (injected["flip_byte"] ?? 0) == 1, "\(injected)")
    }

    @Test func aFileThatStaysCorruptIsAnErrorAndNeverCached() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir)
        let server = try HubServer(repos: dir.path + "/repos")
        defer { server.stop() }
        try server.faults(#"{"flip_byte": {"model.safetensors": 100}}"#)
        let cache = dir.path + "/cache"
        #expect { try fetcher(endpoint: server.endpoint, cache: cache).fetch(repo: "org/model") } throws: { error in
            guard case HubError.verificationFailed(let path, _, _) = error else { return false }
            return path == "model.safetensors"
        }
        let blobs = try FileManager.default.contentsOfDirectory(atPath: cache + "/models--org--model/blobs")
        #expect(!blobs.contains { $0.count == 64 && !$0.contains(".") }, "no sha256 blob was cached: \(blobs)")
    }

    /// SIGKILL in the middle of a large file, then again: it completes and fetches less than all.
    @Test func aKilledFetchResumes() throws {
        let dir = try TemporaryDirectory()
        let size = 24 << 20
        let files = try makeRepo(dir, weightSize: size)
        let server = try HubServer(repos: dir.path + "/repos")
        defer { server.stop() }
        try server.faults(#"{"slow_bytes_per_second": 8000000}"#)
        let builder = repositoryRoot + "/.build/debug/builder"
        let cache = dir.path + "/cache"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: builder)
        process.arguments = ["fetch", "org/model", "--endpoint", server.endpoint, "--cache-dir", cache, "--quiet"]
        process.environment = ["HOME": dir.path, "PATH": "/usr/bin:/bin"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let sha = SHA256.hash(files["model.safetensors"]!).hexString
        let partial = cache + "/models--org--model/blobs/\(sha).incomplete"
        var waited = 0
        while waited < 300 {
            let have = (try? FileManager.default.attributesOfItem(atPath: partial)[.size] as? Int) ?? 0
            if have > size / 3 { break }
            usleep(50_000)
            waited += 1
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(FileManager.default.fileExists(atPath: partial), "killed mid-file")
        #expect(!FileManager.default.fileExists(atPath: cache + "/models--org--model/blobs/\(sha)"), "nothing looks complete")

        try server.faults("{}")
        _ = try run(["curl", "-sf", "-X", "POST", server.endpoint + "/__reset_stats"])
        let result = try fetcher(endpoint: server.endpoint, cache: cache).fetch(repo: "org/model")
        #expect(try Data(contentsOf: URL(fileURLWithPath: result.snapshot + "/model.safetensors")) == Data(files["model.safetensors"]!))
        #expect(result.bytesFetched < Int64(size), "resumed: fetched \(result.bytesFetched) of \(size)")
        #expect(!FileManager.default.fileExists(atPath: partial))
    }

    @Test func offlineModeUsesTheCacheAlone() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir)
        let cache = dir.path + "/cache"
        do {
            let server = try HubServer(repos: dir.path + "/repos")
            defer { server.stop() }
            _ = try fetcher(endpoint: server.endpoint, cache: cache).fetch(repo: "org/model")
        }
        let config = HubConfiguration(endpoint: "http://127.0.0.1:9", cacheDirectory: cache, token: nil, offline: true)
        let offline = try SnapshotFetcher(client: HubClient(configuration: config)).fetch(repo: "org/model")
        #expect(FileManager.default.fileExists(atPath: offline.snapshot + "/config.json"))
        #expect(throws: HubError.self) { try SnapshotFetcher(client: HubClient(configuration: config)).fetch(repo: "org/other") }
    }

    @Test func notEnoughSpaceFailsBeforeTheFirstByte() throws {
        let dir = try TemporaryDirectory()
        _ = try makeRepo(dir)
        let server = try HubServer(repos: dir.path + "/repos")
        defer { server.stop() }
        var f = fetcher(endpoint: server.endpoint, cache: dir.path + "/cache")
        f.freeSpaceOverride = 1000
        #expect { try f.fetch(repo: "org/model") } throws: { error in
            guard case HubError.diskFull(_, let needed, _) = error else { return false }
            return needed > 3_000_000
        }
        #expect(try server.bytesServed() == 0)
    }
}

/// The real Gemma 3 270M GGUF (scripts/get-model, which scripts/test runs) served as a repository.
@Suite struct RealModelFetchTests {
    @Test func fetchesTheRealGemmaGGUFByteForByte() throws {
        let gguf = repositoryRoot + "/models/gemma-3-270m-q4_k_m.gguf"
        guard FileManager.default.fileExists(atPath: gguf) else {
            Issue.record("\(gguf) is missing: run scripts/get-model (scripts/test does)")
            return
        }
        let dir = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir.path + "/repos/google/gemma-3-270m-gguf", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.path + "/repos/google/gemma-3-270m-gguf/gemma-3-270m-q4_k_m.gguf", withDestinationPath: gguf)
        _ = try dir.write("repos/google/gemma-3-270m-gguf/config.json", Array("{}".utf8))
        let server = try HubServer(repos: dir.path + "/repos")
        defer { server.stop() }
        var f = fetcher(endpoint: server.endpoint, cache: dir.path + "/cache", jobs: 8, threshold: 32 << 20)
        f.selection = FileSelection(include: ["*.gguf"])
        let result = try f.fetch(repo: "google/gemma-3-270m-gguf")
        #expect(result.files.map(\.path) == ["gemma-3-270m-q4_k_m.gguf"])
        #expect(try fileSHA256(result.snapshot + "/gemma-3-270m-q4_k_m.gguf") == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
    }
}

/// The Hub test server is honest only if the real client accepts it: Tests/Scripts/check_hub_server.py
/// runs huggingface_hub's snapshot_download and hf_hub_download against it (public, gated, paginated,
/// revisions, ranges, faults) and compares every byte.
@Suite struct HubServerHonestyTests {
    @Test func huggingfaceHubAcceptsTheTestServer() throws {
        let result = try run(["python3", repositoryRoot + "/Tests/Scripts/check_hub_server.py", "--python", "python3"])
        #expect(result.status == 0, "\(result.stdout.suffix(3000))\(result.stderr.suffix(2000))")
        #expect(result.stdout.contains(" 0 failed"))
    }
}
