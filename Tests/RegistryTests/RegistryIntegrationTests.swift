import Foundation
import HTTP
import OCI
import Testing
import TestSupport

@testable import Registry

/// Push and pull against the real CNCF registry (Debian's docker-registry) in its three auth setups.
@Suite(.serialized) struct RegistryIntegrationTests {
    func fastRetries(caFile: String? = nil) -> RegistryClient.Options {
        var options = RegistryClient.Options()
        options.retry = RetryPolicy(attempts: 12, baseDelay: 0.01, maxDelay: 0.2)
        options.caFile = caFile
        return options
    }

    /// Pushes, checks with skopeo, pushes again (nothing uploaded), pulls back and compares blobs.
    func roundTrip(_ client: RegistryClient, host: String, dir: TemporaryDirectory, skopeoCreds: [String]) throws {
        let (digest, layers) = try makeLayout(at: dir.path + "/image", layerSizes: [1 << 20, 300_000, 5])
        let reference = try ImageReference(parsing: "\(host)/team/model:v1")
        var pusher = ImagePusher(client: client)
        pusher.jobs = 3
        let first = try pusher.push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: reference)
        #expect(first.digest == digest)
        #expect(first.count(.uploaded) == 4, "three layers and the config")

        let inspect = try run(["skopeo", "inspect", "--tls-verify=false"] + skopeoCreds + ["docker://\(reference)"])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        #expect(inspect.stdout.contains(digest.description))

        let second = try pusher.push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: reference)
        #expect(second.count(.existed) == 4 && second.count(.uploaded) == 0)

        let writer = try OCILayoutWriter(root: dir.path + "/pulled")
        let (descriptor, manifest) = try ImagePuller(client: client).pull(reference, into: writer)
        #expect(descriptor.digest == digest)
        #expect(manifest.layers.map(\.digest) == layers.map(\.descriptor.digest))
        for layer in layers {
            #expect(try fileSHA256(dir.path + "/pulled/" + layer.descriptor.digest.layoutPath) == layer.descriptor.digest.encoded)
        }
    }

    @Test func plainHTTPOnLoopback() throws {
        let dir = try TemporaryDirectory()
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        try roundTrip(RegistryClient(options: fastRetries()), host: registry.host, dir: dir, skopeoCreds: [])
    }

    @Test func basicAuthOverTLS() throws {
        let dir = try TemporaryDirectory()
        let registry = try LocalRegistry(storage: dir.path + "/registry", auth: .basicTLS(user: "tester", password: "right-password"))
        defer { registry.stop() }
        let ca = registry.certificate!.cert
        let good = RegistryClient(
            options: fastRetries(caFile: ca),
            credentials: CredentialStore(explicit: [registry.host: Credentials(username: "tester", secret: "right-password")], environment: [:]))
        try roundTrip(good, host: registry.host, dir: dir, skopeoCreds: ["--creds", "tester:right-password"])

        // A wrong password fails at once, naming the registry and the step, never the secret.
        let bad = RegistryClient(
            options: fastRetries(caFile: ca),
            credentials: CredentialStore(explicit: [registry.host: Credentials(username: "tester", secret: "wrong-password")], environment: [:]))
        let start = Date()
        #expect {
            _ = try ImagePusher(client: bad).push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: ImageReference(parsing: "\(registry.host)/team/other"))
        } throws: { error in
            let text = "\(error)"
            return text.contains("401") && text.contains(registry.host) && !text.contains("wrong-password")
        }
        #expect(Date().timeIntervalSince(start) < 30, "no retry loop on a refused credential")

        // Without the test CA, TLS verification fails: no silent downgrade to plain HTTP.
        let untrusting = RegistryClient(options: fastRetries(), credentials: CredentialStore(environment: [:]))
        #expect(throws: (any Error).self) { _ = try untrusting.blobExists(ImageReference(parsing: "\(registry.host)/team/model"), Descriptor(mediaType: MediaType.layer, digest: Digest.of([1]), size: 1)) }
    }

    @Test func tokenAuthLikeArtifactRegistry() throws {
        let dir = try TemporaryDirectory()
        let signing = try TestCertificate(in: dir.path, name: "jwt")
        let tokens = try ServiceProcess([
            "python3", repositoryRoot + "/Tests/Scripts/token_server.py", "--port", "{port}", "--key", signing.key, "--cert", signing.cert,
            "--password", "token-password",
        ]) { port in try answers("http://127.0.0.1:\(port)/__stats") }
        defer { tokens.stop() }
        let registry = try LocalRegistry(
            storage: dir.path + "/registry", auth: .token(realm: "http://127.0.0.1:\(tokens.port)/token", certificate: signing))
        defer { registry.stop() }
        let client = RegistryClient(
            options: fastRetries(),
            credentials: CredentialStore(explicit: [registry.host: Credentials(username: "tester", secret: "token-password")], environment: [:]))
        try roundTrip(client, host: registry.host, dir: dir, skopeoCreds: ["--creds", "tester:token-password"])

        // Tokens are cached per scope: a second push reuses them instead of asking again.
        let stats = try run(["curl", "-s", "http://127.0.0.1:\(tokens.port)/__stats"]).stdout
        let issued = (try JSONSerialization.jsonObject(with: Data(stats.utf8)) as? [String: Int])?["tokens"] ?? 0
        #expect(issued > 0 && issued <= 6, "tokens issued: \(issued)")

        // Anonymous callers get pull only: pushing is refused with a message about credentials.
        let anonymous = RegistryClient(options: fastRetries(), credentials: CredentialStore(environment: [:]))
        #expect {
            _ = try ImagePusher(client: anonymous).push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: ImageReference(parsing: "\(registry.host)/team/anon"))
        } throws: { "\($0)".contains("401") || "\($0)".contains("403") }
    }

    /// Through a proxy that drops connections and answers 500/503/429 on a share of requests, the
    /// push still completes with the right digests, and a second push uploads no blob.
    @Test func survivesInjectedFaults() throws {
        let dir = try TemporaryDirectory()
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        let proxy = try ServiceProcess([
            "python3", repositoryRoot + "/Tests/Scripts/fault_proxy.py", "--port", "{port}", "--upstream", registry.host, "--rate", "0.15",
            "--seed", "7",
        ]) { port in try answers("http://127.0.0.1:\(port)/__stats") }
        defer { proxy.stop() }

        let (digest, layers) = try makeLayout(at: dir.path + "/image", layerSizes: [2 << 20, 1 << 20, 200_000, 3000, 10])
        let client = RegistryClient(options: fastRetries())
        let reference = try ImageReference(parsing: "127.0.0.1:\(proxy.port)/faulty/image:v1")
        var pusher = ImagePusher(client: client)
        pusher.jobs = 4
        let pushed = try pusher.push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: reference)
        #expect(pushed.digest == digest)

        let statsText = try run(["curl", "-s", "http://127.0.0.1:\(proxy.port)/__stats"]).stdout
        #expect(statsText.contains("\"faults\": {\""), "faults were injected: \(statsText)")

        // skopeo, straight to the registry, sees our digests and copies the image back intact.
        let direct = "docker://\(registry.host)/faulty/image:v1"
        let copy = try run(["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", direct, "oci:\(dir.path)/copied:v1"])
        #expect(copy.status == 0, "\(copy.stderr)")
        for layer in layers {
            #expect(try fileSHA256(dir.path + "/copied/" + layer.descriptor.digest.layoutPath) == layer.descriptor.digest.encoded)
        }

        // Pulling through the faulty proxy (cut bodies included) still gives verified blobs.
        let writer = try OCILayoutWriter(root: dir.path + "/pulled")
        let (descriptor, _) = try ImagePuller(client: client).pull(reference, into: writer)
        #expect(descriptor.digest == digest)

        // With faults off, a second push sends HEADs only: no upload session is opened.
        _ = try run(["curl", "-s", "-X", "POST", "http://127.0.0.1:\(proxy.port)/__faults?rate=0"])
        let before = try uploadCount(proxy.port)
        let again = try pusher.push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: reference)
        #expect(again.count(.uploaded) == 0)
        #expect(try uploadCount(proxy.port) == before, "the proxy saw no upload request")
    }

    func uploadCount(_ port: Int) throws -> Int {
        let stats = try run(["curl", "-s", "http://127.0.0.1:\(port)/__stats"]).stdout
        let object = try JSONSerialization.jsonObject(with: Data(stats.utf8)) as? [String: Any]
        let kinds = object?["by_kind"] as? [String: Int] ?? [:]
        return kinds.filter { $0.key.hasSuffix("upload") }.values.reduce(0, +)
    }

    @Test(arguments: [RegistryClient.UploadMode.patch, .chunked])
    func otherUploadModes(_ mode: RegistryClient.UploadMode) throws {
        let dir = try TemporaryDirectory()
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        let (digest, _) = try makeLayout(at: dir.path + "/image", layerSizes: [3 << 20 + 17])
        var pusher = ImagePusher(client: RegistryClient(options: fastRetries()))
        pusher.mode = mode
        pusher.chunkSize = 1 << 20
        let result = try pusher.push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: ImageReference(parsing: "\(registry.host)/modes/\(mode.rawValue)"))
        #expect(result.digest == digest)
        let inspect = try run(["skopeo", "inspect", "--tls-verify=false", "docker://\(registry.host)/modes/\(mode.rawValue):latest"])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        #expect(inspect.stdout.contains(digest.description))
    }

    @Test func crossRepositoryMount() throws {
        let dir = try TemporaryDirectory()
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        _ = try makeLayout(at: dir.path + "/image", layerSizes: [100_000, 200_000])
        let client = RegistryClient(options: fastRetries())
        _ = try ImagePusher(client: client).push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: ImageReference(parsing: "\(registry.host)/base/one:v1"))
        var pusher = ImagePusher(client: client)
        pusher.mountFrom = "base/one"
        let mounted = try pusher.push(layout: try OCILayout(root: dir.path + "/image"), tag: nil, to: ImageReference(parsing: "\(registry.host)/derived/two:v1"))
        #expect(mounted.count(.mounted) == 3)
        #expect(mounted.count(.uploaded) == 0)
    }

    @Test func missingImageIsNotFound() throws {
        let dir = try TemporaryDirectory()
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        let writer = try OCILayoutWriter(root: dir.path + "/pulled")
        #expect {
            _ = try ImagePuller(client: RegistryClient(options: fastRetries())).pull(ImageReference(parsing: "\(registry.host)/nope/nothing:v1"), into: writer)
        } throws: { "\($0)".contains("not found") }
    }
}
