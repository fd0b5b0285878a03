import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A shared library opened at run time with `dlopen`, so the binary needs no CUDA toolkit to build
/// and runs without one. Symbols are typed by the caller (`function(_:as:)`).
final class DynamicLibrary: @unchecked Sendable {
    // @unchecked: the handle is only read after init, and dlsym is thread-safe.
    let path: String
    private let handle: UnsafeMutableRawPointer

    private init(path: String, handle: UnsafeMutableRawPointer) {
        self.path = path
        self.handle = handle
    }

    /// The first candidate that opens (a bare soname goes through the loader's search path); the
    /// error lists every candidate and why it failed, which is what a user needs to fix a path.
    static func open(_ candidates: [String], what: String, hint: String) throws -> DynamicLibrary {
        var failures: [String] = []
        for candidate in candidates {
            if candidate.contains("/") && !FileManager.default.fileExists(atPath: candidate) { continue }
            if let handle = dlopen(candidate, RTLD_NOW | RTLD_LOCAL) {
                return DynamicLibrary(path: candidate, handle: handle)
            }
            failures.append("\(candidate): \(String(cString: dlerror()))")
        }
        throw CUDAError.libraryNotFound(what: what, tried: failures.isEmpty ? candidates : failures, hint: hint)
    }

    /// Opens a library with its symbols visible to libraries opened after it (NVRTC's builtins).
    static func preload(_ path: String) {
        _ = dlopen(path, RTLD_NOW | RTLD_GLOBAL)
    }

    func symbol(_ name: String) throws -> UnsafeMutableRawPointer {
        guard let pointer = dlsym(handle, name) else {
            throw CUDAError.missingSymbol(library: path, symbol: name)
        }
        return pointer
    }

    /// A C function of type `T` (a `@convention(c)` function type).
    func function<T>(_ name: String, as type: T.Type) throws -> T {
        unsafeBitCast(try symbol(name), to: type)
    }

    /// The file the loader took the library from (a bare soname resolves somewhere on the search
    /// path), found through one of its symbols, for `doctor`.
    func location(of symbol: String) -> String {
        // dladdr is not in Swift's Glibc module; the process's own map says which file holds the address.
        guard let pointer = dlsym(handle, symbol),
            let maps = try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)
        else { return path }
        let address = UInt(bitPattern: pointer)
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6, let dash = fields[0].firstIndex(of: "-"),
                let start = UInt(fields[0][..<dash], radix: 16), let end = UInt(fields[0][fields[0].index(after: dash)...], radix: 16),
                start <= address, address < end
            else { continue }
            return fields[5...].joined(separator: " ")
        }
        return path
    }
}
