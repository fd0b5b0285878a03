/// A content address as the OCI image spec writes it: `algorithm:encoded` (descriptor.md#digests).
/// Only sha256 is produced; sha512 is accepted when read so that foreign layouts still parse.
public struct Digest: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public let algorithm: String
    public let encoded: String

    public init(sha256 bytes: [UInt8]) {
        precondition(bytes.count == 32, "a SHA-256 digest has 32 bytes")
        algorithm = "sha256"
        encoded = bytes.hexString
    }

    public init(parsing string: String) throws {
        guard let colon = string.firstIndex(of: ":") else { throw OCIError.invalidDigest(string) }
        let algorithm = String(string[..<colon])
        let encoded = String(string[string.index(after: colon)...])
        let expectedLength: Int
        switch algorithm {
        case "sha256": expectedLength = 64
        case "sha512": expectedLength = 128
        default: throw OCIError.invalidDigest(string)
        }
        // The spec requires lower-case hex for these registered algorithms.
        guard encoded.utf8.count == expectedLength,
            encoded.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) })
        else { throw OCIError.invalidDigest(string) }
        self.algorithm = algorithm
        self.encoded = encoded
    }

    public var description: String { "\(algorithm):\(encoded)" }

    /// Path of the blob inside an OCI layout, relative to its root.
    public var layoutPath: String { "blobs/\(algorithm)/\(encoded)" }

    public static func < (a: Digest, b: Digest) -> Bool { a.description < b.description }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        try self.init(parsing: s)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public static func of<Bytes: ContiguousBytes>(_ bytes: Bytes) -> Digest {
        Digest(sha256: SHA256.hash(bytes))
    }
}

import Foundation
import Hashing
