import Hashing

#if canImport(Glibc)
import Glibc
#endif

/// Writes an OCI image layout (image-layout.md) into a staging folder: `oci-layout`,
/// `index.json` and `blobs/sha256/...`. Blobs are written under a temporary name and renamed to
/// their digest once complete, so a blob file that exists is always whole.
public final class OCILayoutWriter {
    public let root: String
    private var nextTemporary = 0

    /// `root` must not exist yet; it is created.
    public init(root: String) throws {
        self.root = root
        for dir in [root, root + "/blobs", root + "/blobs/sha256"] {
            guard mkdir(dir, 0o755) == 0 else { throw OCIError.io(operation: "create the folder", path: dir, errno: errno) }
        }
    }

    /// A new file in `blobs/` to stream a blob into; give it to `commit` when done.
    public func makeBlobFile() throws -> BlobFile {
        nextTemporary += 1
        return try BlobFile(creating: "\(root)/blobs/.partial-\(nextTemporary)")
    }

    /// Moves a finished blob to its content address.
    public func commit(_ file: BlobFile, as digest: Digest) throws {
        try file.close()
        let target = root + "/" + digest.layoutPath
        guard rename(file.path, target) == 0 else {
            throw OCIError.io(operation: "rename into place", path: target, errno: errno)
        }
    }

    /// Writes a small blob (config, manifest) from memory.
    @discardableResult
    public func writeBlob(_ bytes: [UInt8], mediaType: String, annotations: [String: String]? = nil) throws -> Descriptor {
        let digest = Digest.of(bytes)
        let file = try makeBlobFile()
        try file.write(bytes)
        try commit(file, as: digest)
        return Descriptor(mediaType: mediaType, digest: digest, size: Int64(bytes.count), annotations: annotations)
    }

    /// Streams a layer into the layout.
    public func writeLayer(
        entries: [LayerEntry], compression: LayerCompression, mtime: Int64, progress: ((Int64) -> Void)? = nil
    ) throws -> Layer {
        let file = try makeBlobFile()
        let layer = try LayerWriter.write(
            entries: entries, compression: compression, mtime: mtime, to: file, progress: progress)
        try commit(file, as: layer.descriptor.digest)
        return layer
    }

    /// Brings a blob of another layout in: a hard link where the file system allows it, a copy
    /// otherwise. Either way its digest is checked, so a damaged base never spreads.
    public func importBlob(from source: OCILayout, _ descriptor: Descriptor) throws {
        let from = source.blobPath(descriptor.digest)
        let target = root + "/" + descriptor.digest.layoutPath
        if access(target, F_OK) == 0 { return }
        try source.verifyBlob(descriptor)
        if link(from, target) == 0 { return }
        let file = try makeBlobFile()
        let hasher = SHA256()
        let input = try SourceFile(path: from)
        defer { input.close() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: LayerWriter.blockSize, alignment: 4096)
        defer { buffer.deallocate() }
        try input.forEachBlock(buffer: buffer) { block in
            hasher.update(block)
            try file.write(block)
        }
        let actual = Digest(sha256: hasher.finalize())
        guard actual == descriptor.digest else {
            throw OCIError.digestMismatch(path: from, expected: descriptor.digest.description, actual: actual.description)
        }
        try commit(file, as: actual)
    }

    /// Writes `oci-layout` and `index.json`, the last step: a layout without them is not one.
    public func finish(index: ImageIndex) throws {
        try writeFile(root + "/oci-layout", try CanonicalJSON.encode(["imageLayoutVersion": "1.0.0"]))
        try writeFile(root + "/index.json", try CanonicalJSON.encode(index))
    }

    private func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        let file = try BlobFile(creating: path)
        try file.write(bytes)
        try file.close()
    }
}
