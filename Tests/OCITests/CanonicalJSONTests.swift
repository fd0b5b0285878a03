import OCI
import Testing
import TestSupport

@Suite struct CanonicalJSONTests {
    @Test func keysAreSortedAndNilFieldsOmitted() throws {
        let digest = try Digest(parsing: "sha256:" + String(repeating: "ab", count: 32))
        let descriptor = Descriptor(mediaType: MediaType.layer, digest: digest, size: 12, annotations: ["z": "1", "a": "2"])
        let text = String(decoding: try CanonicalJSON.encode(descriptor), as: UTF8.self)
        #expect(text == #"{"annotations":{"a":"2","z":"1"},"digest":"sha256:\#(String(repeating: "ab", count: 32))","mediaType":"application/vnd.oci.image.layer.v1.tar","size":12}"#)
    }

    @Test func escapesOnlyWhatJSONRequires() {
        let value = JSONValue.object(["k": .string("a\"b\\c\n\u{01}/é")])
        #expect(String(decoding: value.canonicalBytes, as: UTF8.self) == #"{"k":"a\"b\\c\n\u0001/é"}"#)
    }

    @Test func sameValueSameBytesWhateverTheInsertionOrder() throws {
        var a: [String: String] = [:]
        var b: [String: String] = [:]
        let keys = (0..<200).map { "key\($0)" }
        for k in keys { a[k] = k }
        for k in keys.reversed() { b[k] = k }
        #expect(try CanonicalJSON.encode(a) == CanonicalJSON.encode(b))
    }

    @Test func roundTripsAManifest() throws {
        let d = Digest.of(Array("x".utf8))
        let manifest = ImageManifest(
            config: Descriptor(mediaType: MediaType.imageConfig, digest: d, size: 1),
            layers: [Descriptor(mediaType: MediaType.layerGzip, digest: d, size: 5_000_000_000)])
        let bytes = try CanonicalJSON.encode(manifest)
        let back = try CanonicalJSON.decode(ImageManifest.self, from: bytes, path: "m")
        #expect(back == manifest)
        #expect(String(decoding: bytes, as: UTF8.self).contains(#""size":5000000000"#))
    }

    @Test func invalidJSONNamesTheFileAndField() {
        let bytes = Array(#"{"schemaVersion":2,"config":{}}"#.utf8)
        #expect {
            _ = try CanonicalJSON.decode(ImageManifest.self, from: bytes, path: "/x/manifest")
        } throws: { error in
            "\(error)".contains("/x/manifest") && "\(error)".contains("missing field")
        }
    }
}

@Suite struct DigestTests {
    @Test func parsesValidAndRejectsInvalid() throws {
        let hex = String(repeating: "0f", count: 32)
        #expect(try Digest(parsing: "sha256:" + hex).encoded == hex)
        for bad in ["sha256:" + hex.uppercased(), "sha256:abc", "md5:" + hex, hex, "sha256:" + hex + "0"] {
            #expect(throws: OCIError.self) { try Digest(parsing: bad) }
        }
    }

    @Test func platformParsing() {
        #expect(Platform(parsing: "linux/arm64/v8") == Platform(architecture: "arm64", os: "linux", variant: "v8"))
        #expect(Platform(parsing: "linux") == nil)
    }
}
