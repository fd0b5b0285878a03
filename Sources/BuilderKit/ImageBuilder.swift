import Foundation
import OCI
import Registry

/// `builder build`: a model and a server executable in, an OCI image out, byte for byte the same
/// for the same inputs. Layers go from what changes most to what changes least so that a new
/// server never re-uploads weights: base layers, the server and its libraries, the model's small
/// files, then one layer per weight file.
public struct ImageBuilder {
    public var request: BuildRequest
    public var progress: ProgressFactory
    /// Pulls a registry base; nil when the base is scratch or a layout.
    public var registry: RegistryClient?

    public init(request: BuildRequest, progress: ProgressFactory = .silent, registry: RegistryClient? = nil) {
        self.request = request
        self.progress = progress
        self.registry = registry
    }

    public struct Result: Sendable {
        public var manifest: Descriptor
        public var layers: [Layer]
        /// The registry base the image was built on, whose repository holds the base layers
        /// (a push to the same registry mounts them instead of uploading them).
        public var baseReference: ImageReference?
        public var baseLayers: [Digest] = []
    }

    public func build() throws -> Result {
        // Check every input before anything is written.
        let model = try ModelSource(path: request.model)
        let server = try ServerBundle(server: FileSystem.absolute(request.server))
        let gpu = try request.nvrtc.map { try GPURuntime(nvrtc: FileSystem.absolute($0), present: Set(server.entries.map(\.path))) }
        guard server.architecture == request.platform.architecture else {
            throw BuilderError.invalidOption(
                "the server is built for \(server.architecture) but the image is for \(request.platform); build the server for \(request.platform.architecture)")
        }
        let kernels = try request.nvrtc.map {
            try KernelBinaries(
                nvrtc: FileSystem.absolute($0), server: FileSystem.absolute(request.server), imageArchitecture: request.platform.architecture)
        }
        defer { kernels?.discard() }
        if let skipped = kernels?.skipped { progress.warn("the CUDA kernels are not compiled ahead: \(skipped)") }
        if kernels?.entries.isEmpty == false, let overridden = ["INFERENCE_PREBUILT_KERNELS", "INFERENCE_NVRTC"].first(where: { request.env.map(\.0).contains($0) }) {
            progress.warn("--env \(overridden) is set, so the server may not use the kernels compiled ahead")
        }
        let output = try OutputTarget(request.output)
        var pulledBase: String?
        defer { if let pulledBase { FileSystem.removeTree(pulledBase) } }
        do {
            let base: (layout: OCILayout, manifest: ImageManifest, config: ImageConfiguration)?
            var baseReference: ImageReference?
            switch request.base {
            case .scratch:
                base = nil
            case .layout(let dir):
                let layout = try OCILayout(root: FileSystem.absolute(dir))
                let image = try layout.image(for: request.platform)
                base = (layout, image.manifest, image.config)
            case .registry(let text):
                let reference = try ImageReference(parsing: text)
                let dir = output.stagingLayout + ".base"
                pulledBase = dir
                let layout = try pull(reference, into: dir)
                let image = try layout.image(for: request.platform)
                base = (layout, image.manifest, image.config)
                baseReference = reference
            }
            var result = try assemble(model: model, server: server, gpu: gpu, kernels: kernels, base: base, into: output.stagingLayout)
            result.baseReference = baseReference
            result.baseLayers = base?.manifest.layers.map(\.digest) ?? []
            try output.publish(mtime: request.sourceDateEpoch)
            return result
        } catch {
            output.discard()
            throw error
        }
    }

    private func pull(_ reference: ImageReference, into dir: String) throws -> OCILayout {
        let client = registry ?? RegistryClient()
        FileSystem.removeTree(dir)
        let writer = try OCILayoutWriter(root: dir)
        var puller = ImagePuller(client: client)
        puller.platform = request.platform
        puller.progress = progress.perBlob
        let (descriptor, _) = try puller.pull(reference, into: writer)
        try writer.finish(index: ImageIndex(manifests: [descriptor]))
        return try OCILayout(root: dir)
    }

    private func assemble(
        model: ModelSource, server: ServerBundle, gpu: GPURuntime? = nil, kernels: KernelBinaries? = nil,
        base: (layout: OCILayout, manifest: ImageManifest, config: ImageConfiguration)?, into root: String
    ) throws -> Result {
        let writer = try OCILayoutWriter(root: root)
        let created = Timestamp.rfc3339(request.sourceDateEpoch)
        let mtime = request.sourceDateEpoch
        var layers: [Layer] = []
        var history: [ImageConfiguration.History] = []

        // 1. The server and the shared objects it needs.
        let serverLayer = try writer.writeLayer(
            entries: server.entries, compression: request.compression, mtime: mtime,
            progress: progress.make("server \(FileSystem.lastComponent(server.imagePath))", total: nil))
        layers.append(serverLayer)
        history.append(.init(created: created, createdBy: "builder build: server \(server.imagePath) with \(server.libraryCount) shared objects"))

        // The GPU runtime (NVRTC) in its own layer: the same bytes on every build, stored once.
        if let gpu {
            layers.append(try writer.writeLayer(
                entries: gpu.entries, compression: request.compression, mtime: mtime, progress: progress.make("NVRTC", total: nil)))
            history.append(.init(created: created, createdBy: "builder build: NVRTC for the CUDA kernels (\(gpu.libraries.map { FileSystem.lastComponent($0) }.joined(separator: ", ")))"))
        }
        // The kernels compiled ahead for Cloud Run's GPU: they change with the server, so a layer of their own.
        if let kernels, !kernels.entries.isEmpty {
            layers.append(try writer.writeLayer(entries: kernels.entries, compression: request.compression, mtime: mtime))
            let architectures = KernelBinaries.architectures.map { "sm_\($0)" }.joined(separator: ", ")
            history.append(.init(created: created, createdBy: "builder build: CUDA kernels for \(architectures), compiled by \(kernels.compiler)"))
        }

        // 2. The model's small files: config, tokenizer, chat template.
        let modelPath = request.modelDirectory
        func imagePath(_ file: ModelSource.File) -> String { modelPath + "/" + file.relativePath }
        if !model.smallFiles.isEmpty {
            let entries = model.smallFiles.map { LayerEntry(path: imagePath($0), kind: .file(source: $0.hostPath, executable: false)) }
            layers.append(try writer.writeLayer(entries: entries, compression: request.compression, mtime: mtime))
            history.append(.init(created: created, createdBy: "builder build: model files \(model.smallFiles.map(\.relativePath).joined(separator: " "))"))
        }

        // 3. One layer per weight file, in path order.
        for weight in model.weights.sorted(by: { $0.relativePath < $1.relativePath }) {
            let entries = [LayerEntry(path: imagePath(weight), kind: .file(source: weight.hostPath, executable: false))]
            layers.append(try writer.writeLayer(
                entries: entries, compression: request.weightCompression, mtime: mtime,
                progress: progress.make("weights \(weight.relativePath)", total: weight.size)))
            history.append(.init(created: created, createdBy: "builder build: weights \(weight.relativePath)"))
        }

        // The image configuration: the base's, with our entrypoint, environment and labels.
        var labels = modelLabels(model)
        for (k, v) in request.labels { labels[k] = v }
        var runConfig = base?.config.config ?? ImageConfiguration.Config()
        var env = EnvironmentList(runConfig.Env ?? [])
        if env["PATH"] == nil { env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" }
        env["PORT"] = String(request.port)
        env["MODEL_PATH"] = model.isSingleFile ? imagePath(model.weights.first ?? model.smallFiles[0]) : modelPath
        if let origin = model.origin { env["SERVED_MODEL_NAME"] = origin.repo }
        // Cloud Run mounts the NVIDIA driver's libraries in /usr/local/nvidia/lib64; the image has no
        // ld.so.cache, so a GPU image names that folder.
        let searchPath = server.extraSearchPath + (gpu == nil ? [] : [GPURuntime.driverDirectory])
        if !searchPath.isEmpty {
            env["LD_LIBRARY_PATH"] = (searchPath + [env["LD_LIBRARY_PATH"]].compactMap { $0 }).joined(separator: ":")
        }
        if gpu != nil { for (k, v) in GPURuntime.environment { env[k] = v } }
        if let kernels, !kernels.entries.isEmpty { env["INFERENCE_PREBUILT_KERNELS"] = KernelBinaries.imageDirectory }
        for (k, v) in request.env { env[k] = v }
        runConfig.Env = env.entries
        runConfig.Entrypoint = [server.imagePath]
        runConfig.Cmd = nil  // the base's command was for the base's entrypoint
        runConfig.ExposedPorts = (runConfig.ExposedPorts ?? [:]).merging(["\(request.port)/tcp": EmptyObject()]) { a, _ in a }
        runConfig.Labels = (runConfig.Labels ?? [:]).merging(labels) { _, new in new }
        if runConfig.WorkingDir == nil || runConfig.WorkingDir == "" { runConfig.WorkingDir = "/" }

        var diffIDs = base?.config.rootfs.diff_ids ?? []
        var manifestLayers: [Descriptor] = []
        if let base {
            guard base.manifest.layers.count == diffIDs.count else {
                throw BuilderError.invalidOption("the base image's manifest has \(base.manifest.layers.count) layers but its config \(diffIDs.count) diff_ids; it is damaged")
            }
            for layer in base.manifest.layers {
                try writer.importBlob(from: base.layout, layer)
                var descriptor = layer
                descriptor.mediaType = try MediaType.ociLayerType(for: layer.mediaType)
                manifestLayers.append(descriptor)
            }
        }
        diffIDs += layers.map(\.diffID)
        manifestLayers += layers.map(\.descriptor)

        let configuration = ImageConfiguration(
            architecture: request.platform.architecture, os: request.platform.os, created: created,
            config: runConfig, rootfs: .init(diffIDs: diffIDs),
            history: (base?.config.history ?? []) + history)
        let configDescriptor = try writer.writeBlob(try CanonicalJSON.encode(configuration), mediaType: MediaType.imageConfig)

        var annotations = labels
        annotations["org.opencontainers.image.created"] = created
        let manifest = ImageManifest(config: configDescriptor, layers: manifestLayers, annotations: annotations)
        var manifestDescriptor = try writer.writeBlob(try CanonicalJSON.encode(manifest), mediaType: MediaType.imageManifest)

        manifestDescriptor.annotations = ["org.opencontainers.image.ref.name": request.tag]
        manifestDescriptor.platform = request.platform
        try writer.finish(index: ImageIndex(manifests: [manifestDescriptor]))
        manifestDescriptor.annotations = nil
        manifestDescriptor.platform = nil
        return Result(manifest: manifestDescriptor, layers: layers, baseReference: nil)
    }

    /// Labels that say which model the image serves.
    private func modelLabels(_ model: ModelSource) -> [String: String] {
        var labels: [String: String] = [
            "org.opencontainers.image.title": model.origin?.repo ?? FileSystem.lastComponent(model.root),
            "dev.gemma-run.model.files": model.allFiles.map(\.relativePath).joined(separator: ","),
        ]
        if let origin = model.origin {
            labels["dev.gemma-run.model.repo"] = origin.repo
            labels["dev.gemma-run.model.revision"] = origin.revision
        }
        for file in model.allFiles {
            if let sha = file.sha256 { labels["dev.gemma-run.model.sha256.\(file.relativePath)"] = sha }
        }
        return labels
    }
}

/// An ordered `KEY=VALUE` list in which setting a key replaces it in place.
struct EnvironmentList {
    private(set) var entries: [String]

    init(_ entries: [String]) { self.entries = entries }

    subscript(key: String) -> String? {
        get {
            entries.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }
        set {
            let index = entries.firstIndex { $0.hasPrefix(key + "=") }
            switch (index, newValue) {
            case (let i?, let v?): entries[i] = key + "=" + v
            case (let i?, nil): entries.remove(at: i)
            case (nil, let v?): entries.append(key + "=" + v)
            case (nil, nil): break
            }
        }
    }
}

/// RFC 3339 in UTC, as the OCI config's `created` wants it, from seconds since the epoch.
enum Timestamp {
    static func rfc3339(_ seconds: Int64) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}
