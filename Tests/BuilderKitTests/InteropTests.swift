import Foundation
import HTTP
import OCI
import Registry
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
        // A free port: the container shares the host's network, where 8080 may be taken.
        let port = freePort()
        process["env"] = ((process["env"] as? [String]) ?? []) + ["PORT=\(port)"]
        config["process"] = process
        var linux = config["linux"] as! [String: Any]
        linux["namespaces"] = (linux["namespaces"] as! [[String: Any]]).filter { $0["type"] as? String != "network" }
        config["linux"] = linux
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))

        let id = "builder-test-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        let result = try run(["runc", "run", "--bundle", bundle, id])
        _ = try? run(["runc", "delete", "--force", id])
        // The server starts from the image's entrypoint, finds MODEL_PATH and the PORT it was given,
        // and refuses this fake model (no weights) with a message naming it: exit status 1.
        #expect(result.stderr.contains("cannot read /model"), "stdout: \(result.stdout)\nstderr: \(result.stderr)")
        #expect(result.stderr.contains("model.safetensors"))
        #expect(result.status == 1)
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

/// The registry round trips the registry issue asks for, with skopeo and umoci as the judges.
@Suite(.serialized) struct RegistryInteropTests {
    func client() -> RegistryClient {
        var options = RegistryClient.Options()
        options.retry = RetryPolicy(attempts: 6, baseDelay: 0.01, maxDelay: 0.1)
        return RegistryClient(options: options, credentials: CredentialStore(environment: [:]))
    }

    @Test func builderPushThenSkopeoPullGivesIdenticalBlobs() throws {
        let dir = try TemporaryDirectory()
        let (built, _) = try buildImage(model: try makeModel(in: dir), output: dir.path + "/image")
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        let reference = try ImageReference(parsing: "\(registry.host)/gemma/built:v1")
        let (text, result) = try RegistryOperations.push(
            layout: dir.path + "/image", to: reference, client: client(), jobs: 4, mode: .put, chunkSize: 1 << 20, progress: .silent)
        #expect(text == "\(registry.host)/gemma/built:v1@\(built.manifest.digest)")
        #expect(result.count(.uploaded) == 5)
        let copy = try run([
            "skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", "docker://\(reference)", "oci:\(dir.path)/back:v1",
        ])
        #expect(copy.status == 0, "\(copy.stderr)")
        #expect(try blobNames(dir.path + "/back") == blobNames(dir.path + "/image"))
        for name in try blobNames(dir.path + "/image") {
            #expect(try fileSHA256(dir.path + "/back/blobs/sha256/" + name) == name)
        }
    }

    @Test func anImageSkopeoPushedPullsIntoALayoutUmociUnpacks() throws {
        let dir = try TemporaryDirectory()
        _ = try buildImage(model: try makeModel(in: dir), output: dir.path + "/image")
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        // skopeo's default push gzips our uncompressed layers: a different image, made by another tool.
        let push = try run(["skopeo", "copy", "--dest-tls-verify=false", "oci:\(dir.path)/image:latest", "docker://\(registry.host)/other/tool:v2"])
        #expect(push.status == 0, "\(push.stderr)")
        let digest = try RegistryOperations.pull(
            ImageReference(parsing: "\(registry.host)/other/tool:v2"), to: .layout(dir.path + "/pulled"), client: client(),
            platform: .linuxAMD64, jobs: 4, progress: .silent)
        let inspect = try run(["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://\(registry.host)/other/tool:v2"])
        #expect(Digest.of(Array(inspect.stdout.utf8)) == digest)
        let unpack = try run(["umoci", "unpack", "--image", dir.path + "/pulled:v2", dir.path + "/bundle"])
        #expect(unpack.status == 0, "\(unpack.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir.path + "/bundle/rootfs/usr/local/bin/inference-server"))
    }

    /// A registry base is pulled, verified and extended; pushing to the same registry mounts its layers.
    @Test func aRegistryBaseIsPulledAndItsLayersMountedOnPush() throws {
        let dir = try TemporaryDirectory()
        _ = try buildImage(model: try makeModel(in: dir), output: dir.path + "/base")
        let registry = try LocalRegistry(storage: dir.path + "/registry")
        defer { registry.stop() }
        let c = client()
        _ = try RegistryOperations.push(
            layout: dir.path + "/base", to: ImageReference(parsing: "\(registry.host)/bases/server:v1"), client: c, jobs: 4, mode: .put,
            chunkSize: 1 << 20, progress: .silent)
        let gguf = try dir.write("g/tiny.gguf", randomBytes(2048))
        var request = BuildRequest(model: gguf, server: try builtServer(), output: .layout(dir.path + "/derived"))
        request.base = .registry("\(registry.host)/bases/server:v1")
        let result = try ImageBuilder(request: request, registry: c).build()
        #expect(result.baseLayers.count == 4)
        var mounts: [Digest: String] = [:]
        for layer in result.baseLayers { mounts[layer] = result.baseReference!.repository }
        let (_, pushed) = try RegistryOperations.push(
            layout: dir.path + "/derived", to: ImageReference(parsing: "\(registry.host)/apps/derived:v1"), client: c, jobs: 4, mode: .put,
            chunkSize: 1 << 20, mountSources: mounts, progress: .silent)
        #expect(pushed.count(.mounted) == 4)
        #expect(pushed.count(.uploaded) == 2, "the config and the weight (the server layer equals the base's): \(pushed.outcomes)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }.isEmpty, "no staging left")
    }
}
