import CArchive

#if canImport(Glibc)
import Glibc
#endif

/// Applies image layers to a root file system, as a container runtime's snapshotter does
/// (image-spec layer.md, "Applying Changesets"): entries are written below the root only (no `..`,
/// no absolute paths, no writing through symlinks), `.wh.NAME` deletes NAME from lower layers and
/// `.wh..wh..opq` empties its folder.
public enum LayerExtractor {
    public static func apply(layer path: String, into root: String) throws {
        guard let reader = archive_read_new() else { throw OCIError.compression("libarchive could not allocate a reader") }
        defer { archive_read_free(reader) }
        archive_read_support_filter_all(reader)
        archive_read_support_format_tar(reader)
        guard archive_read_open_filename(reader, path, 1 << 20) == ARCHIVE_OK else {
            throw OCIError.archive(operation: "open", path: path, message: errorText(reader))
        }
        guard let writer = archive_write_disk_new() else { throw OCIError.compression("libarchive could not allocate a disk writer") }
        defer { archive_write_free(writer) }
        let flags = ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT
            | ARCHIVE_EXTRACT_UNLINK
        archive_write_disk_set_options(writer, Int32(flags))

        var entry: OpaquePointer?
        while true {
            let status = archive_read_next_header(reader, &entry)
            if status == ARCHIVE_EOF { break }
            guard status >= ARCHIVE_WARN, let entry else {
                throw OCIError.archive(operation: "read", path: path, message: errorText(reader))
            }
            guard let rawName = archive_entry_pathname(entry) else { continue }
            let name = normalized(String(cString: rawName))
            if name.isEmpty { continue }
            guard !name.split(separator: "/").contains("..") else {
                throw OCIError.archive(operation: "extract", path: path, message: "entry '\(name)' escapes the root")
            }
            let base = name.split(separator: "/").last.map(String.init) ?? name
            let parent = name.contains("/") ? String(name[..<name.lastIndex(of: "/")!]) : ""
            if base == ".wh..wh..opq" {
                removeContents(of: root + "/" + parent)
                continue
            }
            if base.hasPrefix(".wh.") {
                removeTree(root + "/" + (parent.isEmpty ? "" : parent + "/") + String(base.dropFirst(4)))
                continue
            }
            archive_entry_set_pathname(entry, root + "/" + name)
            if let link = archive_entry_hardlink(entry) {
                archive_entry_set_hardlink(entry, root + "/" + normalized(String(cString: link)))
            }
            guard archive_write_header(writer, entry) >= ARCHIVE_WARN else {
                throw OCIError.archive(operation: "extract", path: name, message: errorText(writer))
            }
            if archive_entry_size(entry) > 0 {
                var buffer: UnsafeRawPointer?
                var size = 0
                var offset: la_int64_t = 0
                while true {
                    let r = archive_read_data_block(reader, &buffer, &size, &offset)
                    if r == ARCHIVE_EOF { break }
                    guard r >= ARCHIVE_WARN, archive_write_data_block(writer, buffer, size, offset) >= ARCHIVE_WARN else {
                        throw OCIError.archive(operation: "extract", path: name, message: errorText(writer))
                    }
                }
            }
            guard archive_write_finish_entry(writer) >= ARCHIVE_WARN else {
                throw OCIError.archive(operation: "finish", path: name, message: errorText(writer))
            }
        }
    }

    static func normalized(_ name: String) -> String {
        var n = Substring(name)
        while n.hasPrefix("./") { n = n.dropFirst(2) }
        while n.hasPrefix("/") { n = n.dropFirst() }
        while n.hasSuffix("/") { n = n.dropLast() }
        return String(n)
    }

    static func errorText(_ archive: OpaquePointer) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "unknown error"
    }

    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            removeContents(of: path)
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    static func removeContents(of path: String) {
        guard let names = try? listDirectory(path) else { return }
        for name in names { removeTree(path + "/" + name) }
    }
}
