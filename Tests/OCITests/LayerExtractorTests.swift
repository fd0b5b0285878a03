import Foundation
import OCI
import Testing
import TestSupport

@Suite struct LayerExtractorTests {
    /// Two layers: the second deletes a file with a whiteout and empties a folder with an opaque one.
    @Test func appliesLayersWithWhiteouts() throws {
        let dir = try TemporaryDirectory()
        let a = try dir.write("src/a", Array("first".utf8))
        let b = try dir.write("src/b", Array("second".utf8))
        let empty = try dir.write("src/empty", [])
        let lower = try LayerWriter.write(
            entries: [
                LayerEntry(path: "etc/keep", kind: .file(source: a, executable: false)),
                LayerEntry(path: "etc/gone", kind: .file(source: a, executable: false)),
                LayerEntry(path: "data/x", kind: .file(source: a, executable: false)),
                LayerEntry(path: "bin/tool", kind: .file(source: b, executable: true)),
                LayerEntry(path: "lib64", kind: .symlink(target: "usr/lib64")),
            ], compression: .gzip, mtime: 0, to: try BlobFile(creating: dir.path + "/lower"))
        _ = lower
        _ = try LayerWriter.write(
            entries: [
                LayerEntry(path: "etc/.wh.gone", kind: .file(source: empty, executable: false)),
                LayerEntry(path: "data/.wh..wh..opq", kind: .file(source: empty, executable: false)),
                LayerEntry(path: "data/y", kind: .file(source: b, executable: false)),
            ], compression: .zstd, mtime: 0, to: try BlobFile(creating: dir.path + "/upper"))
        let root = dir.path + "/rootfs"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try LayerExtractor.apply(layer: dir.path + "/lower", into: root)
        try LayerExtractor.apply(layer: dir.path + "/upper", into: root)
        let fm = FileManager.default
        #expect(fm.fileExists(atPath: root + "/etc/keep"))
        #expect(!fm.fileExists(atPath: root + "/etc/gone"))
        #expect(!fm.fileExists(atPath: root + "/data/x"))
        #expect(try String(contentsOfFile: root + "/data/y", encoding: .utf8) == "second")
        #expect(fm.isExecutableFile(atPath: root + "/bin/tool"))
        #expect(try fm.destinationOfSymbolicLink(atPath: root + "/lib64") == "usr/lib64")
    }
}
