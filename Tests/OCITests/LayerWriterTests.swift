import Foundation
import Hashing
import OCI
import Testing
import TestSupport

@Suite struct LayerWriterTests {
    @Test func writesSortedEntriesWithParentsAndNormalisedMetadata() throws {
        let dir = try TemporaryDirectory()
        let exe = try dir.write("src/tool", randomBytes(3000))
        chmod(exe, 0o700)
        let data = try dir.write("src/data.bin", randomBytes(70_000))
        chmod(data, 0o600)  // odd host modes must not leak into the image
        let blobPath = dir.path + "/layer.tar"
        let layer = try LayerWriter.write(
            entries: [
                LayerEntry(path: "/usr/local/bin/tool", kind: .file(source: exe, executable: true)),
                LayerEntry(path: "model/weights/data.bin", kind: .file(source: data, executable: false)),
                LayerEntry(path: "lib64", kind: .symlink(target: "usr/lib64")),
            ], compression: .none, mtime: 1_700_000_000, to: try BlobFile(creating: blobPath))

        let members = try readTar(blobPath)
        #expect(members.map(\.name) == [
            "lib64", "model", "model/weights", "model/weights/data.bin", "usr", "usr/local", "usr/local/bin",
            "usr/local/bin/tool",
        ])
        for m in members {
            #expect(m.uid == 0 && m.gid == 0 && m.uname == "" && m.gname == "")
            #expect(m.mtime == 1_700_000_000)
            #expect(m.pax.isEmpty, "short ASCII names need no PAX record: \(m.name)")
        }
        let byName = Dictionary(uniqueKeysWithValues: members.map { ($0.name, $0) })
        #expect(byName["usr/local/bin/tool"]?.mode == 0o755)
        #expect(byName["model/weights/data.bin"]?.mode == 0o644)
        #expect(byName["model"]?.mode == 0o755 && byName["model"]?.type == "5")
        #expect(byName["lib64"]?.type == "2" && byName["lib64"]?.linkname == "usr/lib64")
        #expect(byName["model/weights/data.bin"]?.sha256 == (try fileSHA256(data)))

        // Uncompressed: digest and diffID are both the sha256 of the blob.
        let blobSHA = try fileSHA256(blobPath)
        #expect(layer.descriptor.digest.encoded == blobSHA)
        #expect(layer.diffID == layer.descriptor.digest)
        #expect(layer.descriptor.size == Int64(FileSystemSize.of(blobPath)))
        #expect(layer.descriptor.mediaType == MediaType.layer)
        // No padding after the end-of-archive records: the size is a multiple of 512, not 10240.
        #expect(layer.descriptor.size % 512 == 0)
    }

    @Test(arguments: [LayerCompression.gzip, .zstd])
    func compressedLayersHaveDigestOfBlobAndDiffIDOfTar(_ compression: LayerCompression) throws {
        let dir = try TemporaryDirectory()
        let text = try dir.write("a.txt", Array(String(repeating: "gemma ", count: 200_000).utf8))
        let blobPath = dir.path + "/layer"
        let layer = try LayerWriter.write(
            entries: [LayerEntry(path: "a.txt", kind: .file(source: text, executable: false))],
            compression: compression, mtime: 0, to: try BlobFile(creating: blobPath))
        #expect(layer.descriptor.digest.encoded == (try fileSHA256(blobPath)))
        #expect(layer.descriptor.size < 100_000, "1.2 MB of repeated text must compress")

        let plain = dir.path + "/plain.tar"
        let tool = compression == .gzip ? ["gzip", "-dc"] : ["zstd", "-dcq"]
        let result = try run(["sh", "-c", "\(tool.joined(separator: " ")) < '\(blobPath)' > '\(plain)'"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(layer.diffID.encoded == (try fileSHA256(plain)))
        #expect(layer.uncompressedSize == Int64(FileSystemSize.of(plain)))
        #expect(try readTar(plain).map(\.name) == ["a.txt"])
        #expect(layer.descriptor.mediaType == compression.mediaType)
    }

    @Test func gzipHeaderHasNoTimeNameOrHostOS() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("f", randomBytes(10))
        let blobPath = dir.path + "/layer.gz"
        _ = try LayerWriter.write(
            entries: [LayerEntry(path: "f", kind: .file(source: file, executable: false))],
            compression: .gzip, mtime: 0, to: try BlobFile(creating: blobPath))
        let header = Array(try Data(contentsOf: URL(fileURLWithPath: blobPath)).prefix(10))
        #expect(header[0] == 0x1f && header[1] == 0x8b)
        #expect(header[3] == 0, "no FNAME or other optional fields")
        #expect(header[4...7].allSatisfy { $0 == 0 }, "MTIME is zero")
        #expect(header[9] == 255, "OS is 'unknown'")
    }

    @Test func longAndNonASCIINamesGetPAXRecords() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("f", randomBytes(10))
        let long = (0..<30).map { "segment\($0)" }.joined(separator: "/") + "/tokenizer-modèle.json"
        let blobPath = dir.path + "/layer.tar"
        _ = try LayerWriter.write(
            entries: [LayerEntry(path: long, kind: .file(source: file, executable: false))],
            compression: .none, mtime: 0, to: try BlobFile(creating: blobPath))
        let member = try #require(try readTar(blobPath).last)
        #expect(member.name == long)
        #expect(member.pax.contains("path"))
    }

    @Test func aFileThatChangesSizeWhileArchivedIsAnError() throws {
        // /proc files report size 0 but have content: the writer must notice the mismatch.
        let dir = try TemporaryDirectory()
        #expect(throws: OCIError.self) {
            _ = try LayerWriter.write(
                entries: [LayerEntry(path: "x", kind: .file(source: "/proc/self/status", executable: false))],
                compression: .none, mtime: 0, to: try BlobFile(creating: dir.path + "/l"))
        }
    }

    @Test func unreadableSourceNamesThePath() throws {
        let dir = try TemporaryDirectory()
        #expect {
            _ = try LayerWriter.write(
                entries: [LayerEntry(path: "x", kind: .file(source: dir.path + "/missing", executable: false))],
                compression: .none, mtime: 0, to: try BlobFile(creating: dir.path + "/l"))
        } throws: { "\($0)".contains("missing") }
    }

    /// Files of 8 GiB and more do not fit the ustar size field: PAX must carry the size. The file
    /// is sparse; the 8 GiB blob is written to the temporary folder and removed afterwards.
    @Test func filesOver8GiBGetAPAXSizeRecord() throws {
        let dir = try TemporaryDirectory()
        let big = dir.path + "/big.safetensors"
        let size: Int64 = 8 << 30 + 4096
        #expect(truncate(try dir.write("big.safetensors", []), off_t(size)) == 0)
        let blobPath = dir.path + "/layer.tar"
        let layer = try LayerWriter.write(
            entries: [LayerEntry(path: "model/big.safetensors", kind: .file(source: big, executable: false))],
            compression: .none, mtime: 0, to: try BlobFile(creating: blobPath))
        #expect(layer.uncompressedSize > size)
        let member = try #require(try readTar(blobPath).last)
        #expect(member.size == size)
        #expect(member.pax.contains("size"))
    }
}

