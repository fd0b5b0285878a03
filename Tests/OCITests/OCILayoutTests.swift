import Foundation
import OCI
import Testing
import TestSupport

@Suite struct OCILayoutTests {
    /// Writes a layout with one image per platform under a nested index, then reads it back.
    @Test func picksThePlatformThroughNestedIndexes() throws {
        let dir = try TemporaryDirectory()
        let writer = try OCILayoutWriter(root: dir.path + "/layout")
        var manifests: [Descriptor] = []
        for arch in ["arm64", "amd64"] {
            let config = ImageConfiguration(
                architecture: arch, os: "linux", created: nil, config: .init(), rootfs: .init(diffIDs: []), history: [])
            let configDescriptor = try writer.writeBlob(try CanonicalJSON.encode(config), mediaType: MediaType.imageConfig)
            var d = try writer.writeBlob(
                try CanonicalJSON.encode(ImageManifest(config: configDescriptor, layers: [])), mediaType: MediaType.imageManifest)
            d.platform = Platform(architecture: arch, os: "linux")
            manifests.append(d)
        }
        let nested = try writer.writeBlob(try CanonicalJSON.encode(ImageIndex(manifests: manifests)), mediaType: MediaType.imageIndex)
        try writer.finish(index: ImageIndex(manifests: [nested]))

        let layout = try OCILayout(root: dir.path + "/layout")
        #expect(try layout.image(for: .linuxAMD64).config.architecture == "amd64")
        #expect(try layout.image(for: Platform(architecture: "arm64", os: "linux")).config.architecture == "arm64")
        #expect {
            _ = try layout.image(for: Platform(architecture: "s390x", os: "linux"))
        } throws: { "\($0)".contains("amd64") && "\($0)".contains("s390x") }
    }

    @Test func aTamperedBlobIsRejected() throws {
        let dir = try TemporaryDirectory()
        let writer = try OCILayoutWriter(root: dir.path + "/l")
        let config = ImageConfiguration(
            architecture: "amd64", os: "linux", created: nil, config: .init(), rootfs: .init(diffIDs: []), history: [])
        let c = try writer.writeBlob(try CanonicalJSON.encode(config), mediaType: MediaType.imageConfig)
        let m = try writer.writeBlob(try CanonicalJSON.encode(ImageManifest(config: c, layers: [])), mediaType: MediaType.imageManifest)
        try writer.finish(index: ImageIndex(manifests: [m]))
        let path = dir.path + "/l/" + c.digest.layoutPath
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.startIndex] = UInt8(ascii: "[")
        try bytes.write(to: URL(fileURLWithPath: path))
        #expect(throws: OCIError.self) { _ = try OCILayout(root: dir.path + "/l").image(for: .linuxAMD64) }
    }

    @Test func aFolderWithoutOciLayoutIsNotALayout() throws {
        let dir = try TemporaryDirectory()
        #expect { _ = try OCILayout(root: dir.path) } throws: { "\($0)".contains("oci-layout") }
    }
}
