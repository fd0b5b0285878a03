import Foundation
import Hashing
import OCI
import Testing

/// The repository root, found from this file's path (Tests/TestSupport/Services.swift).
public let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// A background process a test starts and stops: a registry, a token server, a proxy.
public final class ServiceProcess: @unchecked Sendable {
    // @unchecked: the Process is only touched by the test that owns this object.
    let process: Process
    public let port: Int
    /// The process id (for checks that watch its memory or signal it).
    public var pid: Int32 { process.processIdentifier }

    /// Starts `arguments` (with `{port}` replaced by a free port) and waits until `ready` answers.
    public init(_ arguments: [String], ready: (Int) throws -> Bool) throws {
        var lastError = ""
        for _ in 0..<5 {
            let port = freePort()
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = arguments.map { $0.replacingOccurrences(of: "{port}", with: String(port)) }
            p.standardOutput = FileHandle.nullDevice
            let errors = Pipe()
            p.standardError = errors
            try p.run()
            // Our copy of the write end must go, or reading the errors after a failed start blocks forever.
            try errors.fileHandleForWriting.close()
            for _ in 0..<150 {
                if !p.isRunning { break }
                if (try? ready(port)) == true {
                    process = p
                    self.port = port
                    return
                }
                usleep(100_000)
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            lastError = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        }
        Issue.record("\(arguments[0]) did not start: \(lastError)")
        throw CocoaError(.executableLoad)
    }

    /// SIGKILL: a child started from a test thread may inherit a signal mask that blocks SIGTERM.
    public func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}

/// A port nobody listens on now (bind to 0, read it back, close).
public func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// `curl` answers at all (any HTTP status) on this URL.
public func answers(_ url: String, insecure: Bool = false) throws -> Bool {
    try run(["curl", "-s", "-o", "/dev/null", "--max-time", "2"] + (insecure ? ["-k"] : []) + [url]).status == 0
}

/// A CA-less self-signed certificate for 127.0.0.1 (TLS and JWT signing in the tests).
public struct TestCertificate {
    public let key: String
    public let cert: String

    public init(in dir: String, name: String) throws {
        key = dir + "/\(name).key"
        cert = dir + "/\(name).pem"
        let result = try run([
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        guard result.status == 0 else {
            Issue.record("openssl failed: \(result.stderr)")
            throw CocoaError(.executableLoad)
        }
    }
}

/// Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1, in one of the three
/// configurations the tests use.
public final class LocalRegistry: @unchecked Sendable {
    public enum Auth {
        case none
        /// htpasswd Basic auth over TLS with a certificate made for the test.
        case basicTLS(user: String, password: String)
        /// Token auth: Bearer challenges pointing at the tests' token server.
        case token(realm: String, certificate: TestCertificate)
    }

    public let service: ServiceProcess
    public let certificate: TestCertificate?
    public var port: Int { service.port }
    public var host: String { "127.0.0.1:\(service.port)" }

    public init(storage: String, auth: Auth = .none) throws {
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        var extra = ""
        var tls: TestCertificate?
        switch auth {
        case .none: break
        case .basicTLS(let user, let password):
            let cert = try TestCertificate(in: storage, name: "tls")
            tls = cert
            let hash = try run(["htpasswd", "-Bbn", user, password])
            try hash.stdout.write(toFile: storage + "/htpasswd", atomically: true, encoding: .utf8)
            extra = """
                auth: {htpasswd: {realm: test, path: \(storage)/htpasswd}}
                """
        case .token(let realm, let certificate):
            extra = """
                auth: {token: {realm: "\(realm)", service: test-registry, issuer: test-issuer, rootcertbundle: \(certificate.cert)}}
                """
        }
        certificate = tls
        let tlsLine = tls.map { ", tls: {certificate: \($0.cert), key: \($0.key)}" } ?? ""
        let configPath = storage + "/config.yml"
        let template = """
            version: 0.1
            log: {level: error, accesslog: {disabled: true}}
            storage: {filesystem: {rootdirectory: \(storage)/data}, delete: {enabled: true}}
            http: {addr: "127.0.0.1:{port}"\(tlsLine)}
            \(extra)
            """
        let scheme = tls == nil ? "http" : "https"
        // ServiceProcess puts the port into the arguments, so the config is written by the same shell.
        let script = "cat > \(configPath) <<'EOF'\n\(template)\nEOF\nexec docker-registry serve \(configPath)"
        service = try ServiceProcess(["sh", "-c", script]) { port in
            try answers("\(scheme)://127.0.0.1:\(port)/v2/", insecure: true)
        }
    }

    public func stop() { service.stop() }
}

/// An OCI layout with `layerSizes` random uncompressed layers, written with our own writer.
public func makeLayout(at root: String, layerSizes: [Int], tag: String = "latest") throws -> (digest: Digest, layers: [Layer]) {
    let scratch = root + ".src"
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let writer = try OCILayoutWriter(root: root)
    var layers: [Layer] = []
    for (i, size) in layerSizes.enumerated() {
        let file = scratch + "/file\(i)"
        FileManager.default.createFile(atPath: file, contents: Data(randomBytes(size)))
        layers.append(try writer.writeLayer(
            entries: [LayerEntry(path: "data/file\(i)", kind: .file(source: file, executable: false))], compression: .none, mtime: 0))
    }
    let config = ImageConfiguration(
        architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z", config: .init(),
        rootfs: .init(diffIDs: layers.map(\.diffID)), history: [])
    let configDescriptor = try writer.writeBlob(try CanonicalJSON.encode(config), mediaType: MediaType.imageConfig)
    var manifest = try writer.writeBlob(
        try CanonicalJSON.encode(ImageManifest(config: configDescriptor, layers: layers.map(\.descriptor))), mediaType: MediaType.imageManifest)
    let digest = manifest.digest
    manifest.annotations = ["org.opencontainers.image.ref.name": tag]
    try writer.finish(index: ImageIndex(manifests: [manifest]))
    return (digest, layers)
}
