/// Everything that can go wrong while reading or writing OCI images, with messages a user can act on.
public enum OCIError: Error, CustomStringConvertible, Equatable {
    case invalidDigest(String)
    case digestMismatch(path: String, expected: String, actual: String)
    case io(operation: String, path: String, errno: Int32)
    case archive(operation: String, path: String, message: String)
    case compression(String)
    case notALayout(path: String, reason: String)
    case invalidJSON(path: String, reason: String)
    case noMatchingPlatform(path: String, wanted: String, available: [String])
    case unsupportedMediaType(String)

    public var description: String {
        switch self {
        case .invalidDigest(let s):
            return "'\(s)' is not a valid digest: expected sha256: followed by 64 lower-case hex digits"
        case .digestMismatch(let path, let expected, let actual):
            return "\(path) has digest \(actual) but \(expected) was expected: the blob is corrupt; delete it and fetch it again"
        case .io(let operation, let path, let errno):
            return "could not \(operation) \(path): \(String(cString: strerror(errno)))"
        case .archive(let operation, let path, let message):
            return "libarchive could not \(operation) \(path): \(message)"
        case .compression(let message):
            return "compression failed: \(message)"
        case .notALayout(let path, let reason):
            return "\(path) is not an OCI image layout (\(reason)); give a folder written by `builder build --output oci:DIR`, `skopeo copy ... oci:DIR` or `umoci`"
        case .invalidJSON(let path, let reason):
            return "\(path) is not valid OCI JSON: \(reason)"
        case .noMatchingPlatform(let path, let wanted, let available):
            return "\(path) has no image for \(wanted); it has: \(available.isEmpty ? "none" : available.joined(separator: ", "))"
        case .unsupportedMediaType(let type):
            return "media type \(type) is not supported here"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
