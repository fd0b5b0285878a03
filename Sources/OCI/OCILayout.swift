import Hashing

#if canImport(Glibc)
import Glibc
#endif

/// An OCI image layout on disk, read-only: finds the image for a platform and its blobs.
public struct OCILayout: Sendable {
    public let root: String
    public let index: ImageIndex

    public init(root: String) throws {
        self.root = root
        guard let layoutBytes = readFile(root + "/oci-layout") else {
            throw OCIError.notALayout(path: root, reason: "no oci-layout file")
        }
        struct LayoutFile: Decodable { var imageLayoutVersion: String }
        let layout = try CanonicalJSON.decode(LayoutFile.self, from: layoutBytes, path: root + "/oci-layout")
        guard layout.imageLayoutVersion.hasPrefix("1.") else {
            throw OCIError.notALayout(path: root, reason: "imageLayoutVersion \(layout.imageLayoutVersion)")
        }
        guard let indexBytes = readFile(root + "/index.json") else {
            throw OCIError.notALayout(path: root, reason: "no index.json")
        }
        index = try CanonicalJSON.decode(ImageIndex.self, from: indexBytes, path: root + "/index.json")
    }

    /// The same layout seen through another index, e.g. to pick one image of several.
    public init(root: String, replacingIndex index: ImageIndex) {
        self.root = root
        self.index = index
    }

    public func blobPath(_ digest: Digest) -> String { root + "/" + digest.layoutPath }

    /// The image tagged `tag` (`org.opencontainers.image.ref.name`), or the only one when no tag is given.
    public func select(tag: String?) throws -> Descriptor {
        let entries = index.manifests
        let tags = entries.compactMap { $0.annotations?["org.opencontainers.image.ref.name"] }
        if let tag {
            guard let match = entries.first(where: { $0.annotations?["org.opencontainers.image.ref.name"] == tag }) else {
                throw OCIError.notALayout(path: root, reason: "no image tagged '\(tag)' (tags: \(tags.joined(separator: ", ")))")
            }
            return match
        }
        guard entries.count == 1 else {
            throw OCIError.notALayout(path: root, reason: "it holds \(entries.count) images; name one as oci:DIR:TAG (tags: \(tags.joined(separator: ", ")))")
        }
        return entries[0]
    }

    /// A small blob (manifest, index, config), checked against its descriptor before it is parsed.
    public func readBlob(_ descriptor: Descriptor) throws -> [UInt8] {
        let path = blobPath(descriptor.digest)
        guard let bytes = readFile(path) else {
            throw OCIError.notALayout(path: root, reason: "blob \(descriptor.digest) is missing")
        }
        let actual = Digest.of(bytes)
        guard actual == descriptor.digest, Int64(bytes.count) == descriptor.size else {
            throw OCIError.digestMismatch(path: path, expected: descriptor.digest.description, actual: actual.description)
        }
        return bytes
    }

    /// Checks that a blob file exists with the descriptor's size.
    public func verifyBlob(_ descriptor: Descriptor) throws {
        var st = stat()
        let path = blobPath(descriptor.digest)
        guard stat(path, &st) == 0 else { throw OCIError.notALayout(path: root, reason: "blob \(descriptor.digest) is missing") }
        guard Int64(st.st_size) == descriptor.size else {
            throw OCIError.digestMismatch(
                path: path, expected: "\(descriptor.size) bytes", actual: "\(st.st_size) bytes")
        }
    }

    /// The image for `platform`: the layout's only manifest, or the one an index lists for it.
    public func image(for platform: Platform) throws -> (manifest: ImageManifest, manifestDescriptor: Descriptor, config: ImageConfiguration) {
        let descriptor = try pick(from: index.manifests, platform: platform, depth: 0)
        let manifest = try CanonicalJSON.decode(ImageManifest.self, from: try readBlob(descriptor), path: blobPath(descriptor.digest))
        let config = try CanonicalJSON.decode(
            ImageConfiguration.self, from: try readBlob(manifest.config), path: blobPath(manifest.config.digest))
        return (manifest, descriptor, config)
    }

    private func pick(from candidates: [Descriptor], platform: Platform, depth: Int) throws -> Descriptor {
        guard depth < 4 else { throw OCIError.notALayout(path: root, reason: "indexes nested too deep") }
        let matching = candidates.filter { d in
            guard let p = d.platform else { return true }
            return p.os == platform.os && p.architecture == platform.architecture
                && (platform.variant == nil || p.variant == platform.variant)
        }
        guard let chosen = matching.first else {
            throw OCIError.noMatchingPlatform(
                path: root, wanted: platform.description, available: candidates.compactMap { $0.platform?.description })
        }
        if MediaType.isIndex(chosen.mediaType) {
            let nested = try CanonicalJSON.decode(ImageIndex.self, from: try readBlob(chosen), path: blobPath(chosen.digest))
            return try pick(from: nested.manifests, platform: platform, depth: depth + 1)
        }
        guard MediaType.isManifest(chosen.mediaType) else { throw OCIError.unsupportedMediaType(chosen.mediaType) }
        return chosen
    }
}

/// Reads a whole small file; nil when it cannot be opened.
func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { if errno == EINTR { continue }; return nil }
        if n == 0 { break }
        bytes += buffer.prefix(n)
    }
    return bytes
}
