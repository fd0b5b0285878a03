import Foundation
import HTTP
import OCI

/// Pushes an image from an OCI layout: every blob first (in parallel, skipping those the registry
/// has, mounting those it has in another repository), then the manifest, so that a registry never
/// holds a manifest whose blobs are missing. An index is pushed after its manifests.
public struct ImagePusher: Sendable {
    public struct Result: Sendable {
        public var digest: Digest
        public var outcomes: [Digest: RegistryClient.BlobOutcome]

        public func count(_ outcome: RegistryClient.BlobOutcome) -> Int { outcomes.values.filter { $0 == outcome }.count }
    }

    public var client: RegistryClient
    public var jobs: Int = 4
    public var mode: RegistryClient.UploadMode = .put
    public var chunkSize: Int64 = 64 << 20
    /// Repositories of the same registry that hold some of the blobs (e.g. the base image's).
    public var mountSources: [Digest: String] = [:]
    /// A repository of the same registry to try mounting any other blob from.
    public var mountFrom: String?
    /// Makes a progress callback for one blob (label, total bytes).
    public var progress: (@Sendable (String, Int64) -> ((Int64) -> Void)?)?

    public init(client: RegistryClient) { self.client = client }

    /// `tag` picks the image in a layout holding several (its `org.opencontainers.image.ref.name`).
    public func push(layout: OCILayout, tag: String?, to reference: ImageReference) throws -> Result {
        let root = try layout.select(tag: tag)
        var blobs: [Descriptor] = []
        var manifests: [(Descriptor, [UInt8])] = []  // children first, the root last
        func visit(_ descriptor: Descriptor, depth: Int) throws {
            let bytes = try layout.readBlob(descriptor)
            if MediaType.isIndex(descriptor.mediaType), depth < 4 {
                let index = try CanonicalJSON.decode(ImageIndex.self, from: bytes, path: layout.blobPath(descriptor.digest))
                for child in index.manifests { try visit(child, depth: depth + 1) }
            } else {
                let manifest = try CanonicalJSON.decode(ImageManifest.self, from: bytes, path: layout.blobPath(descriptor.digest))
                blobs.append(manifest.config)
                blobs += manifest.layers
            }
            manifests.append((descriptor, bytes))
        }
        try visit(root, depth: 0)

        // Largest first, so the long uploads start early and the small ones fill in around them.
        var seen = Set<Digest>()
        let unique = blobs.filter { seen.insert($0.digest).inserted }.sorted { $0.size > $1.size }
        for blob in unique { try layout.verifyBlob(blob) }
        let outcomes = OutcomeLog()
        let client = client, mode = mode, chunkSize = chunkSize, mountSources = mountSources, mountFrom = mountFrom
        let progress = progress
        try parallelForEach(unique, jobs: jobs) { blob in
            let outcome = try client.pushBlob(
                reference, blob, from: layout.blobPath(blob.digest), mountFrom: mountSources[blob.digest] ?? mountFrom, mode: mode,
                chunkSize: chunkSize, progress: progress?("blob \(blob.digest.encoded.prefix(12))", blob.size))
            outcomes.record(blob.digest, outcome)
        }

        for (descriptor, bytes) in manifests.dropLast() {
            try client.putManifest(reference, descriptor.digest.description, bytes: bytes, mediaType: descriptor.mediaType)
        }
        let (rootDescriptor, rootBytes) = manifests.last!
        if let pinned = reference.digest, pinned != rootDescriptor.digest.description {
            throw RegistryError.digestMismatch(
                registry: reference.registry, what: "the image to push", expected: pinned, actual: rootDescriptor.digest.description)
        }
        // As docker does, no tag means `latest`, unless the reference pins a digest.
        let tag = reference.tag ?? (reference.digest == nil ? "latest" : nil)
        let digest = try client.putManifest(
            reference, tag ?? rootDescriptor.digest.description, bytes: rootBytes, mediaType: rootDescriptor.mediaType)
        return Result(digest: digest, outcomes: outcomes.snapshot())
    }
}

final class OutcomeLog: @unchecked Sendable {
    // @unchecked: `values` is only touched under `lock`.
    private let lock = NSLock()
    private var values: [Digest: RegistryClient.BlobOutcome] = [:]

    func record(_ digest: Digest, _ outcome: RegistryClient.BlobOutcome) {
        lock.lock()
        values[digest] = outcome
        lock.unlock()
    }

    func snapshot() -> [Digest: RegistryClient.BlobOutcome] {
        lock.lock()
        defer { lock.unlock() }
        return values
    }
}
