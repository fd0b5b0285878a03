import Foundation
import HTTP
import OCI

/// Pulls one platform's image into an OCI layout being written: the manifest as the registry
/// serves it (so its digest stays the same), the config and every layer, each verified against
/// its digest while it streams to disk.
public struct ImagePuller: Sendable {
    public var client: RegistryClient
    public var platform: Platform = .linuxAMD64
    public var jobs: Int = 4
    public var progress: (@Sendable (String, Int64) -> ((Int64) -> Void)?)?

    public init(client: RegistryClient) { self.client = client }

    /// Writes the blobs into `writer` and returns the descriptor for its index.json.
    public func pull(_ reference: ImageReference, into writer: OCILayoutWriter) throws -> (descriptor: Descriptor, manifest: ImageManifest) {
        var (bytes, mediaType, digest) = try client.getManifest(reference, reference.manifestReference)
        var platformOfChoice: Platform?
        if MediaType.isIndex(mediaType) {
            let index = try CanonicalJSON.decode(ImageIndex.self, from: bytes, path: reference.description)
            let candidates = index.manifests.filter {
                $0.platform.map { $0.os == platform.os && $0.architecture == platform.architecture && (platform.variant == nil || $0.variant == platform.variant) } ?? false
            }
            guard let chosen = candidates.first else {
                throw OCIError.noMatchingPlatform(path: reference.description, wanted: platform.description, available: index.manifests.compactMap { $0.platform?.description })
            }
            (bytes, mediaType, digest) = try client.getManifest(reference, chosen.digest.description)
            guard digest == chosen.digest else {
                throw RegistryError.digestMismatch(registry: reference.registry, what: "manifest", expected: chosen.digest.description, actual: digest.description)
            }
            platformOfChoice = chosen.platform
        }
        guard MediaType.isManifest(mediaType) else { throw OCIError.unsupportedMediaType(mediaType) }
        let manifest = try CanonicalJSON.decode(ImageManifest.self, from: bytes, path: reference.description)

        let blobs = [manifest.config] + manifest.layers
        let client = client, progress = progress, root = writer.root
        try parallelForEach(blobs, jobs: jobs) { blob in
            let target = root + "/" + blob.digest.layoutPath
            if FileManager.default.fileExists(atPath: target) { return }
            try client.pullBlob(reference, blob, to: target, progress: progress?("blob \(blob.digest.encoded.prefix(12))", blob.size))
        }
        try writer.writeBlob(bytes, mediaType: mediaType)
        var descriptor = Descriptor(mediaType: mediaType, digest: digest, size: Int64(bytes.count))
        descriptor.platform = platformOfChoice ?? platform
        return (descriptor, manifest)
    }
}
