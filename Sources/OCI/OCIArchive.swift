#if canImport(Glibc)
import Glibc
#endif

/// An `oci-archive:` file: an OCI layout packed in one tar, as skopeo and podman read it.
/// Written with the same reproducible tar writer as layers, so the archive is byte-identical too.
public enum OCIArchive {
    public static func pack(layout root: String, into file: BlobFile, mtime: Int64) throws {
        var entries = [
            LayerEntry(path: "oci-layout", kind: .file(source: root + "/oci-layout", executable: false)),
            LayerEntry(path: "index.json", kind: .file(source: root + "/index.json", executable: false)),
            LayerEntry(path: "blobs/sha256", kind: .directory),
        ]
        for name in try listDirectory(root + "/blobs/sha256") {
            entries.append(LayerEntry(path: "blobs/sha256/" + name, kind: .file(source: root + "/blobs/sha256/" + name, executable: false)))
        }
        _ = try LayerWriter.write(entries: entries, compression: .none, mtime: mtime, to: file)
    }
}

func listDirectory(_ path: String) throws -> [String] {
    guard let dir = opendir(path) else { throw OCIError.io(operation: "list", path: path, errno: errno) }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}
