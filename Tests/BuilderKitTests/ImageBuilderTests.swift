import CUDA
import Foundation
import Hashing
import OCI
import Testing
import TestSupport

@testable import BuilderKit

/// Builds an image of `model` with the built inference-server and returns the layout.
func buildImage(model: String, output: String, configure: (inout BuildRequest) -> Void = { _ in }) throws -> (ImageBuilder.Result, OCILayout) {
    var request = BuildRequest(model: model, server: try builtServer(), output: .layout(output))
    configure(&request)
    let result = try ImageBuilder(request: request).build()
    return (result, try OCILayout(root: output))
}

func blobNames(_ layout: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: layout + "/blobs/sha256").sorted()
}

@Suite struct ImageBuilderTests {
    @Test func layersConfigAndManifestSayWhatTheImageIs() throws {
        let dir = try TemporaryDirectory()
        let model = try makeModel(in: dir)
        let (result, layout) = try buildImage(model: model, output: dir.path + "/image") {
            $0.env = [("GEMMA_EXTRA", "1"), ("PORT", "9999")]
            $0.labels = [("team", "ml")]
            $0.port = 8081
        }
        let image = try layout.image(for: .linuxAMD64)
        #expect(image.manifestDescriptor.digest == result.manifest.digest)
        let types = image.manifest.layers.map(\.mediaType)
        #expect(types == [MediaType.layerGzip, MediaType.layerGzip, MediaType.layer, MediaType.layer])

        // Every blob's name is its digest, and the diffIDs are the uncompressed layers' digests.
        for name in try blobNames(layout.root) {
            let data = try Data(contentsOf: URL(fileURLWithPath: layout.root + "/blobs/sha256/" + name))
            #expect(SHA256.hash(data).hexString == name)
        }
        #expect(image.config.rootfs.diff_ids == result.layers.map(\.diffID))
        #expect(image.config.rootfs.diff_ids[2] == image.manifest.layers[2].digest)

        let run = try #require(image.config.config)
        #expect(run.Entrypoint == ["/usr/local/bin/inference-server"])
        #expect(run.Env?.contains("MODEL_PATH=/model") == true)
        #expect(run.Env?.contains("PORT=9999") == true, "--env overrides the default PORT")
        #expect(run.Env?.contains("GEMMA_EXTRA=1") == true)
        #expect(run.ExposedPorts?.keys.sorted() == ["8081/tcp"])
        #expect(run.Labels?["team"] == "ml")
        #expect(image.config.created == "1970-01-01T00:00:00Z")
        #expect(image.config.history?.count == 4)
        #expect(image.config.history?[3].created_by?.contains("model-00002-of-00002.safetensors") == true)
        #expect(image.manifest.annotations?["org.opencontainers.image.title"] == "model")
        #expect(layout.index.manifests.first?.annotations?["org.opencontainers.image.ref.name"] == "latest")
    }

    @Test func weightLayersHoldOneFileEachInSortedOrder() throws {
        let dir = try TemporaryDirectory()
        let (_, layout) = try buildImage(model: try makeModel(in: dir), output: dir.path + "/image")
        let layers = try layout.image(for: .linuxAMD64).manifest.layers
        let first = try readTar(layout.blobPath(layers[2].digest))
        #expect(first.map(\.name) == ["model", "model/model-00001-of-00002.safetensors"])
        #expect(first.last?.sha256 == (try fileSHA256(dir.path + "/model/model-00001-of-00002.safetensors")))
        let small = try readTar(layout.blobPath(layers[1].digest))
        #expect(small.map(\.name) == ["model", "model/config.json", "model/tokenizer.json"])
        let server = try readTar(layout.blobPath(layers[0].digest)).map(\.name)
        #expect(server.contains("usr/local/bin/inference-server"))
        #expect(server.contains { $0.hasSuffix("/libc.so.6") })
        #expect(server.contains { $0.hasSuffix("libswiftCore.so") } || !server.contains { $0.contains("swift") })
    }

    /// The same inputs give the same bytes: built twice, and from a copy elsewhere with other mtimes.
    @Test func buildsAreReproducible() throws {
        let dir = try TemporaryDirectory()
        let model = try makeModel(in: dir)
        let (a, _) = try buildImage(model: model, output: dir.path + "/a")
        let (b, _) = try buildImage(model: model, output: dir.path + "/b")

        let copy = dir.path + "/elsewhere/deeper/model-copy"
        try FileManager.default.createDirectory(atPath: dir.path + "/elsewhere/deeper", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: model, toPath: copy)
        let server = dir.path + "/elsewhere/inference-server"
        try FileManager.default.copyItem(atPath: try builtServer(), toPath: server)
        for path in [copy + "/config.json", copy + "/model-00001-of-00002.safetensors", server] {
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_234_567)], ofItemAtPath: path)
        }
        chmod(copy + "/config.json", 0o600)
        var request = BuildRequest(model: copy, server: server, output: .layout(dir.path + "/c"))
        request.labels = []
        let c = try ImageBuilder(request: request).build()

        #expect(a.manifest.digest == b.manifest.digest)
        // The title label names the model folder, so the copy differs only there: compare layers.
        #expect(a.layers == c.layers)
        #expect(try blobNames(dir.path + "/a") == blobNames(dir.path + "/b"))
        let indexA = try Data(contentsOf: URL(fileURLWithPath: dir.path + "/a/index.json"))
        let indexB = try Data(contentsOf: URL(fileURLWithPath: dir.path + "/b/index.json"))
        #expect(indexA == indexB)
    }

    @Test func sourceDateEpochStampsEveryTimeAndChangesTheDigest() throws {
        let dir = try TemporaryDirectory()
        let model = try makeModel(in: dir)
        let (zero, _) = try buildImage(model: model, output: dir.path + "/zero")
        let (later, layout) = try buildImage(model: model, output: dir.path + "/later") { $0.sourceDateEpoch = 1_700_000_000 }
        #expect(zero.manifest.digest != later.manifest.digest)
        let image = try layout.image(for: .linuxAMD64)
        #expect(image.config.created == "2023-11-14T22:13:20Z")
        let members = try readTar(layout.blobPath(image.manifest.layers[1].digest))
        #expect(members.allSatisfy { $0.mtime == 1_700_000_000 })
        #expect(throws: BuilderError.self) { try BuildRequest.sourceDateEpoch(from: ["SOURCE_DATE_EPOCH": "yesterday"]) }
        #expect(try BuildRequest.sourceDateEpoch(from: ["SOURCE_DATE_EPOCH": "42"]) == 42)
    }

    @Test func anExistingFolderWithOtherFilesIsLeftAlone() throws {
        let dir = try TemporaryDirectory()
        let precious = try dir.write("out/notes.txt", Array("mine".utf8))
        #expect(throws: BuilderError.outputNotEmpty(dir.path + "/out")) {
            _ = try buildImage(model: try makeModel(in: dir), output: dir.path + "/out")
        }
        #expect(try String(contentsOfFile: precious, encoding: .utf8) == "mine")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["model", "out"])
    }

    @Test func aPreviousImageIsReplacedWhole() throws {
        let dir = try TemporaryDirectory()
        let model = try makeModel(in: dir)
        _ = try buildImage(model: model, output: dir.path + "/out") { $0.labels = [("v", "1")] }
        let (second, layout) = try buildImage(model: model, output: dir.path + "/out") { $0.labels = [("v", "2")] }
        #expect(layout.index.manifests.map(\.digest) == [second.manifest.digest])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["model", "out"])
    }

    @Test func aNonELFServerFailsAndLeavesNothing() throws {
        let dir = try TemporaryDirectory()
        let script = try dir.write("server.sh", Array("#!/bin/sh\nexec python3 -m http.server\n".utf8))
        var request = BuildRequest(model: try makeModel(in: dir), server: script, output: .layout(dir.path + "/out"))
        request.labels = []
        #expect { try ImageBuilder(request: request).build() } throws: { "\($0)".contains("not an ELF") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["model", "server.sh"])
    }

    /// Kernels are compiled ahead only for a server that holds this builder's kernel source: one of
    /// another version looks for other cache names, so it gets none (and compiles at start).
    @Test func kernelsAreCompiledAheadOnlyForAServerWithTheSameSource() throws {
        let dir = try TemporaryDirectory()
        let source = Array(GemmaKernels.source.utf8)
        let same = try dir.write("same", Array("\u{7F}ELF padding ".utf8) + source + Array(" more".utf8))
        let other = try dir.write("other", Array("\u{7F}ELF ".utf8) + source.dropLast(40))
        #expect(KernelBinaries.file(same, contains: GemmaKernels.source))
        #expect(!KernelBinaries.file(other, contains: GemmaKernels.source))
        let skipped = try KernelBinaries(nvrtc: "/nonexistent/libnvrtc.so.12", server: other, imageArchitecture: "amd64")
        #expect(skipped.entries.isEmpty && skipped.skipped?.contains("not this builder's") == true)
        // An image for another CPU: its NVRTC cannot run on this machine.
        let foreign = try KernelBinaries(nvrtc: "/nonexistent/libnvrtc.so.12", server: same, imageArchitecture: "riscv64")
        #expect(foreign.entries.isEmpty && foreign.skipped?.contains("cannot run here") == true)
        // The built server holds it, so a --gpu build compiles them (see ShipTests' GPU image).
        #expect(KernelBinaries.file(try builtServer(), contains: GemmaKernels.source))
        // Edges of the search: at the very end, longer than the file, an empty file.
        let end = try dir.write("end", Array("xx".utf8) + Array("needle".utf8))
        #expect(KernelBinaries.file(end, contains: "needle") && !KernelBinaries.file(end, contains: "needles"))
        #expect(!KernelBinaries.file(try dir.write("empty", []), contains: "n"))
    }

    /// A compile that fails midway (here: an architecture NVRTC does not know) throws and leaves no
    /// staging folder behind.
    @Test func aFailedKernelCompileLeavesNothingBehind() throws {
        guard let nvrtc = GPURuntime.findNVRTC() else { return }  // scripts/test installs it
        let dir = try TemporaryDirectory()
        #expect(throws: (any Error).self) {
            try KernelBinaries(
                nvrtc: nvrtc, server: try builtServer(), imageArchitecture: KernelBinaries.hostArchitecture, architectures: [89, 1],
                temporaryDirectory: dir.path)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
    }

    @Test func aFailureMidwayRemovesTheStagingFolder() throws {
        let dir = try TemporaryDirectory()
        let model = try makeModel(in: dir)
        // A weight whose size changes under the build (a /proc file stats as 0 bytes but has
        // content): the server layer is already written when the weight layer fails.
        try FileManager.default.createSymbolicLink(atPath: model + "/zz.safetensors", withDestinationPath: "/proc/self/status")
        for output in [BuildRequest.Output.archive(dir.path + "/image.tar"), .layout(dir.path + "/image")] {
            let request = BuildRequest(model: model, server: try builtServer(), output: output)
            #expect { try ImageBuilder(request: request).build() } throws: { "\($0)".contains("changed size") }
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["model"])
        }
    }

    @Test func aBaseImageLayersComeFirst() throws {
        let dir = try TemporaryDirectory()
        let model = try makeModel(in: dir)
        let (base, baseLayout) = try buildImage(model: model, output: dir.path + "/base") { $0.env = [("FROM_BASE", "yes")] }
        let gguf = try dir.write("single/tiny.gguf", randomBytes(4096))
        let (_, layout) = try buildImage(model: gguf, output: dir.path + "/derived") {
            $0.base = .layout(dir.path + "/base")
        }
        let derived = try layout.image(for: .linuxAMD64)
        let baseImage = try baseLayout.image(for: .linuxAMD64)
        #expect(Array(derived.manifest.layers.prefix(4)) == baseImage.manifest.layers)
        #expect(derived.manifest.layers.count == 6, "base 4 + server + one weight, no small-file layer")
        #expect(Array(derived.config.rootfs.diff_ids.prefix(4)) == base.layers.map(\.diffID))
        #expect(derived.config.config?.Env?.contains("FROM_BASE=yes") == true)
        #expect(derived.config.config?.Env?.contains("MODEL_PATH=/model/tiny.gguf") == true)
        #expect(derived.config.history?.count == 6)
        for layer in derived.manifest.layers {
            #expect(FileManager.default.fileExists(atPath: layout.blobPath(layer.digest)))
        }
    }
}
