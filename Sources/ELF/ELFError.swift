/// Why an executable or one of its libraries could not be read or resolved.
public enum ELFError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, errno: Int32)
    case notELF(path: String)
    case unsupported(path: String, reason: String)
    case malformed(path: String, reason: String)
    case libraryNotFound(name: String, neededBy: String, searched: [String])

    public var description: String {
        switch self {
        case .unreadable(let path, let errno):
            return "cannot read \(path): \(String(cString: strerror(errno)))"
        case .notELF(let path):
            return "\(path) is not an ELF executable (a script or a file for another OS?); give the server binary itself, e.g. .build/release/inference-server"
        case .unsupported(let path, let reason):
            return "\(path) is an ELF file this tool does not handle: \(reason)"
        case .malformed(let path, let reason):
            return "\(path) is a damaged ELF file: \(reason)"
        case .libraryNotFound(let name, let neededBy, let searched):
            return "\(neededBy) needs \(name), which was not found in \(searched.joined(separator: ":")); install the package that provides it, or link the server statically"
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
