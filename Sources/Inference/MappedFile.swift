import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A whole file mapped read-only into memory. Weights are read straight from the page cache: nothing
/// is copied, so resident memory stays near the file size and loading costs no time up front.
///
/// `@unchecked Sendable`: the mapping is `PROT_READ` and never changes after `init`, and `deinit`
/// unmaps it only when no tensor view (which holds a reference to this object) remains.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    /// The first byte of the mapping.
    public let base: UnsafeRawPointer
    /// The file size in bytes (at least 1: empty files are rejected).
    public let size: Int
    /// A mapping of the file itself, not a copy of bytes.
    private let fileBacked: Bool

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw InferenceError.unreadableFile(path: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw InferenceError.unreadableFile(path: path, reason: String(cString: strerror(errno)))
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw InferenceError.unreadableFile(path: path, reason: "not a regular file")
        }
        guard info.st_size > 0 else { throw InferenceError.unreadableFile(path: path, reason: "the file is empty") }
        let size = Int(info.st_size)
        let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        // MAP_FAILED is the C macro ((void *) -1), which Swift does not import.
        guard let mapped, mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw InferenceError.unreadableFile(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        self.base = UnsafeRawPointer(mapped)
        self.size = size
        fileBacked = true
    }

    /// An anonymous read-only mapping holding a copy of `bytes`, named `path` in messages: lets tests
    /// feed thousands of damaged headers to the parsers without touching the disk.
    init(copying bytes: [UInt8], path: String) throws {
        guard !bytes.isEmpty else { throw InferenceError.unreadableFile(path: path, reason: "the file is empty") }
        let mapped = mmap(nil, bytes.count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapped, mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw InferenceError.unreadableFile(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        bytes.withUnsafeBytes { mapped.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        mprotect(mapped, bytes.count, PROT_READ)
        self.path = path
        self.base = UnsafeRawPointer(mapped)
        self.size = bytes.count
        fileBacked = false
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }

    /// Drops the whole pages inside [start, start + count) from this process's resident memory. The
    /// mapping stays valid: a page touched again is read back from the page cache or the file. For a
    /// copy (`init(copying:)`, anonymous memory) it does nothing, since dropping would zero the bytes.
    func dropPages(_ start: UnsafeRawPointer, count: Int) {
        guard fileBacked else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let first = (Int(bitPattern: start) + page - 1) / page * page
        let end = (Int(bitPattern: start) + count) / page * page
        guard end > first, start >= base, start + count <= base + size else { return }
        madvise(UnsafeMutableRawPointer(bitPattern: first), end - first, Int32(MADV_DONTNEED))
    }

    /// The bytes `range` of the file; the caller has checked that the range lies inside it.
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= size, "range outside the mapped file")
        return UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }
}
