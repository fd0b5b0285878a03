import Foundation
import OCI
import Testing
import TestSupport

@testable import BuilderKit

/// Our images checked by the real tools users will run them with: oci-image-tool, umoci, runc,
/// skopeo and the CNCF distribution registry. scripts/test installs them from Debian's packages.
@Suite(.serialized) struct InteropTests {
    @Test func ociImageToolValidatesTheImage() throws {
        let dir = try TemporaryDirectory()
        _ = try buildImage(model: try makeModel(in: dir), output: dir.path + "/image")
        let result = try run(["oci-image-tool", "validate", "--type", "image", dir.path + "/image"])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("Validation succeeded"))
    }

    /// umoci unpacks the layers into a bundle and runc starts the entrypoint from scratch: the
    /// server and every library it needs really are in the image.
    @Test func umociUnpacksAndRuncStartsTheServer() throws {
        let dir = try TemporaryDirectory()
        _ = try buildImage(model: try makeModel(in: dir), output: dir.path + "/image")
        let bundle = dir.path + "/bundle"
        let unpack = try run(["umoci", "unpack", "--image", dir.path + "/image:latest", bundle])
        #expect(unpack.status == 0, "\(unpack.stderr)")
        #expect(FileManager.default.fileExists(atPath: bundle + "/rootfs/model/model-00001-of-00002.safetensors"))

        // No terminal (the test has none) and the host's network namespace, as a local run uses.
        let configPath = bundle + "/config.json"
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as! [String: Any]
        var process = config["process"] as! [String: Any]
        process["terminal"] = false
        config["process"] = process
        var linux = config["linux"] as! [String: Any]
        linux["namespaces"] = (linux["namespaces"] as! [[String: Any]]).filter { $0["type"] as? String != "network" }
        config["linux"] = linux
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))

        let id = "builder-test-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        let result = try run(["runc", "run", "--bundle", bundle, id])
        _ = try? run(["runc", "delete", "--force", id])
        // The stub server lists the model it found at MODEL_PATH, then exits 3 (not serving yet).
        #expect(result.stdout.contains("found model /model with 4 files"), "stdout: \(result.stdout)\nstderr: \(result.stderr)")
        #expect(result.stdout.contains("model-00002-of-00002.safetensors (300000 bytes)"))
        #expect(result.stderr.contains("port 8080"))
        #expect(result.status == 3)
    }

    @Test func skopeoCopiesTheImageToARegistryAndKeepsOurDigest() throws {
        let dir = try TemporaryDirectory()
        let (built, _) = try buildImage(model: try makeModel(in: dir), output: dir.path + "/image")
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }

        let ref = "docker://127.0.0.1:\(registry.port)/gemma/test:v1"
        // Without --preserve-digests skopeo gzips uncompressed layers on the way to a registry,
        // which changes the manifest; with it, skopeo must push our manifest as it is.
        let copy = try run(["skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false", "oci:\(dir.path)/image:latest", ref])
        #expect(copy.status == 0, "\(copy.stderr)")
        let inspect = try run(["skopeo", "inspect", "--tls-verify=false", ref])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        let info = try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any]
        #expect(info?["Digest"] as? String == built.manifest.digest.description)
        #expect((info?["Layers"] as? [String])?.count == 4)
    }

    @Test func anOCIArchiveIsReadBySkopeoAndIsReproducible() throws {
        let dir = try TemporaryDirectory()
        let model = try makeModel(in: dir)
        var request = BuildRequest(model: model, server: try builtServer(), output: .archive(dir.path + "/a.tar"))
        let built = try ImageBuilder(request: request).build()
        request.output = .archive(dir.path + "/b.tar")
        _ = try ImageBuilder(request: request).build()
        #expect(try fileSHA256(dir.path + "/a.tar") == fileSHA256(dir.path + "/b.tar"))

        let inspect = try run(["skopeo", "inspect", "--raw", "oci-archive:\(dir.path)/a.tar"])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        #expect(Digest.of(Array(inspect.stdout.utf8)) == built.manifest.digest)
    }
}

/// A CNCF distribution registry (Debian's docker-registry) on a free loopback port.
final class LocalRegistry {
    let port: Int
    private let process: Process

    init(storage: String) throws {
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        var lastError = ""
        for _ in 0..<5 {
            let port = Int.random(in: 20000..<60000)
            let config = """
                version: 0.1
                log: {level: error}
                storage: {filesystem: {rootdirectory: \(storage)}}
                http: {addr: 127.0.0.1:\(port)}
                """
            let configPath = storage + "/config-\(port).yml"
            try config.write(toFile: configPath, atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/docker-registry")
            process.arguments = ["serve", configPath]
            process.standardOutput = FileHandle.nullDevice
            let errors = Pipe()
            process.standardError = errors
            try process.run()
            for _ in 0..<100 {
                if !process.isRunning { break }
                if try run(["curl", "-sf", "http://127.0.0.1:\(port)/v2/"]).status == 0 {
                    self.port = port
                    self.process = process
                    return
                }
                usleep(100_000)
            }
            process.terminate()
            lastError = String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self)
        }
        Issue.record("docker-registry did not start: \(lastError)")
        throw CocoaError(.executableLoad)
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}
