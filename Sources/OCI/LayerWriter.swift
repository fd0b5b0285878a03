import CArchive
import Hashing

#if canImport(Glibc)
import Glibc
#endif

/// One file system object in a layer, named by its path inside the image (no leading slash).
public struct LayerEntry: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        case directory
        /// A regular file whose bytes are read from `source` (symlinks followed).
        case file(source: String, executable: Bool)
        case symlink(target: String)
    }

    public var path: String
    public var kind: Kind

    public init(path: String, kind: Kind) {
        self.path = path.split(separator: "/").joined(separator: "/")
        self.kind = kind
    }
}

/// A written layer: its descriptor (digest and size of the stored blob), its diffID (digest of
/// the uncompressed tar) and how many tar bytes it holds.
public struct Layer: Hashable, Sendable {
    public var descriptor: Descriptor
    public var diffID: Digest
    public var uncompressedSize: Int64
}

/// Streams files into a tar layer through libarchive and computes digest, diffID and size in the
/// same pass that writes the blob: no layer is ever held in memory.
///
/// What makes two runs give the same bytes: entries in byte order of their paths, every parent
/// directory present, PAX format (ustar headers, plus a PAX record only where ustar cannot say it:
/// files of 8 GiB and more, long or non-ASCII names), one mtime for all, uid/gid 0, no user or
/// group names, and modes normalised to 0755 for directories and executables, 0644 otherwise.
public enum LayerWriter {
    /// Block size handed to libarchive and the file reader: large enough that per-call costs vanish.
    static let blockSize = 1 << 20

    public static func write(
        entries: [LayerEntry], compression: LayerCompression, mtime: Int64, to blob: BlobFile,
        progress: ((Int64) -> Void)? = nil
    ) throws -> Layer {
        let sorted = withParents(entries)
        // libarchive converts names through the C library's multibyte functions, and in the "C"
        // locale it crashes on non-ASCII names (strlen of a failed conversion). A UTF-8 locale for
        // this thread only leaves the process's own locale alone.
        let utf8Locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", nil)
        if utf8Locale == nil, let odd = sorted.first(where: { !$0.path.utf8.allSatisfy { $0 < 0x80 } }) {
            throw OCIError.archive(operation: "name", path: odd.path, message: "non-ASCII names need the C.UTF-8 locale, which this C library lacks")
        }
        let previousLocale = utf8Locale.map { uselocale($0) }
        defer {
            if let previousLocale, let utf8Locale {
                uselocale(previousLocale)
                freelocale(utf8Locale)
            }
        }
        let sink = try TarSink(blob: blob, compressor: try compression.makeCompressor())

        guard let archive = archive_write_new() else { throw OCIError.compression("libarchive could not allocate a writer") }
        defer { archive_write_free(archive) }
        func check(_ status: Int32, _ operation: String, _ path: String) throws {
            guard status >= ARCHIVE_WARN else {
                if let error = sink.error { throw error }
                let message = archive_error_string(archive).map { String(cString: $0) } ?? "error \(status)"
                throw OCIError.archive(operation: operation, path: path, message: message)
            }
        }
        try check(archive_write_set_format_pax_restricted(archive), "select PAX format for", blob.path)
        try check(archive_write_set_bytes_per_block(archive, Int32(blockSize)), "set the block size of", blob.path)
        // No padding after the two end-of-archive records, as Go's archive/tar writes layers.
        try check(archive_write_set_bytes_in_last_block(archive, 1), "set the last block of", blob.path)
        let context = Unmanaged.passUnretained(sink).toOpaque()
        try check(archive_write_open2(archive, context, nil, tarWriteCallback, nil, nil), "open", blob.path)

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: 4096)
        defer { buffer.deallocate() }
        var done: Int64 = 0

        for item in sorted {
            guard let entry = archive_entry_new() else { throw OCIError.compression("libarchive could not allocate an entry") }
            defer { archive_entry_free(entry) }
            archive_entry_set_pathname_utf8(entry, item.path)
            archive_entry_set_mtime(entry, time_t(mtime), 0)
            archive_entry_set_uid(entry, 0)
            archive_entry_set_gid(entry, 0)
            var source: SourceFile?
            switch item.kind {
            case .directory:
                archive_entry_set_filetype(entry, carchive_ifdir)
                archive_entry_set_perm(entry, 0o755)
            case .symlink(let target):
                archive_entry_set_filetype(entry, carchive_iflnk)
                archive_entry_set_perm(entry, 0o777)
                archive_entry_set_symlink_utf8(entry, target)
            case .file(let path, let executable):
                let file = try SourceFile(path: path)
                source = file
                archive_entry_set_filetype(entry, carchive_ifreg)
                archive_entry_set_perm(entry, executable ? 0o755 : 0o644)
                archive_entry_set_size(entry, la_int64_t(file.size))
            }
            defer { source?.close() }
            try check(archive_write_header(archive, entry), "write the header of", item.path)
            if let file = source {
                try file.forEachBlock(buffer: buffer) { block in
                    let n = archive_write_data(archive, block.baseAddress, block.count)
                    if n < 0 || n != block.count {
                        try check(Int32(ARCHIVE_FATAL), "write", item.path)
                    }
                    done += Int64(block.count)
                    progress?(done)
                }
            }
            try check(archive_write_finish_entry(archive), "finish", item.path)
        }
        try check(archive_write_close(archive), "close", blob.path)
        if let error = sink.error { throw error }
        return try sink.finish(mediaType: compression.mediaType)
    }

    /// Sorted entries with every missing parent directory added. Later duplicates of a path win.
    static func withParents(_ entries: [LayerEntry]) -> [LayerEntry] {
        var byPath: [String: LayerEntry] = [:]
        for entry in entries where !entry.path.isEmpty {
            byPath[entry.path] = entry
            var parent = entry.path
            while let slash = parent.lastIndex(of: "/") {
                parent = String(parent[..<slash])
                if byPath[parent] == nil { byPath[parent] = LayerEntry(path: parent, kind: .directory) }
            }
        }
        return byPath.values
            .map { $0.kind == .directory ? LayerEntry(directoryNamed: $0.path) : $0 }
            .sorted { Array($0.path.utf8).lexicographicallyPrecedes(Array($1.path.utf8)) }
    }
}

extension LayerEntry {
    /// Directories are written with a trailing slash, as docker and Go's archive/tar do.
    fileprivate init(directoryNamed path: String) {
        self.path = path + "/"
        self.kind = .directory
    }
}

/// Where libarchive's output goes: diffID hashing on a second thread, then compression (with the
/// digest hashed as the compressed bytes come out) or, uncompressed, straight to the blob.
private final class TarSink {
    let blob: BlobFile
    let compressor: Compressor?
    let tarHasher = ConcurrentHasher()
    let compressedHasher = SHA256()
    var uncompressedSize: Int64 = 0
    var error: Error?

    init(blob: BlobFile, compressor: Compressor?) throws {
        self.blob = blob
        self.compressor = compressor
    }

    func write(_ block: UnsafeRawBufferPointer) -> Int {
        guard error == nil else { return -1 }
        tarHasher.begin(block)
        defer { tarHasher.wait() }
        do {
            if let compressor {
                try compressor.compress(block) { chunk in
                    compressedHasher.update(chunk)
                    try blob.write(chunk)
                }
            } else {
                try blob.write(block)
            }
            uncompressedSize += Int64(block.count)
            return block.count
        } catch {
            self.error = error
            return -1
        }
    }

    func finish(mediaType: String) throws -> Layer {
        let diffID = Digest(sha256: tarHasher.finalize()[0])
        let digest: Digest
        if let compressor {
            try compressor.finish { chunk in
                compressedHasher.update(chunk)
                try blob.write(chunk)
            }
            digest = Digest(sha256: compressedHasher.finalize())
        } else {
            digest = diffID
        }
        try blob.close()
        return Layer(
            descriptor: Descriptor(mediaType: mediaType, digest: digest, size: blob.bytesWritten),
            diffID: diffID, uncompressedSize: uncompressedSize)
    }
}

private func tarWriteCallback(
    _ archive: OpaquePointer?, _ context: UnsafeMutableRawPointer?, _ buffer: UnsafeRawPointer?, _ length: Int
) -> la_ssize_t {
    let sink = Unmanaged<TarSink>.fromOpaque(context!).takeUnretainedValue()
    return la_ssize_t(sink.write(UnsafeRawBufferPointer(start: buffer, count: length)))
}
