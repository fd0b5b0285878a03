#if canImport(Glibc)
import Glibc
#endif

/// A file being written in one pass: bytes go straight to disk with write(2) in a loop, so a
/// short write or a full disk becomes an error naming the path rather than a silent truncation.
public final class BlobFile {
    public let path: String
    private var fd: Int32
    public private(set) var bytesWritten: Int64 = 0

    public init(creating path: String) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw OCIError.io(operation: "create", path: path, errno: errno) }
        self.path = path
    }

    public func write(_ buffer: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < buffer.count {
            let n = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw OCIError.io(operation: "write", path: path, errno: errno)
            }
            offset += n
        }
        bytesWritten += Int64(buffer.count)
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    public func close() throws {
        guard fd >= 0 else { return }
        let result = Glibc.close(fd)
        fd = -1
        if result != 0 { throw OCIError.io(operation: "close", path: path, errno: errno) }
    }

    deinit { if fd >= 0 { _ = Glibc.close(fd) } }
}

/// Reads a file in large blocks, checking that it holds exactly the bytes it was stat'ed with.
struct SourceFile {
    let path: String
    let fd: Int32
    let size: Int64

    init(path: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw OCIError.io(operation: "open", path: path, errno: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw OCIError.io(operation: "stat", path: path, errno: e)
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            Glibc.close(fd)
            throw OCIError.io(operation: "read (not a regular file)", path: path, errno: EINVAL)
        }
        // Tell the kernel to read ahead aggressively: weight files are read once, front to back.
        _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        self.path = path
        self.size = Int64(st.st_size)
    }

    /// Calls `body` with each block until the end; fails if the size changed under us.
    func forEachBlock(buffer: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        var total: Int64 = 0
        while true {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw OCIError.io(operation: "read", path: path, errno: errno)
            }
            if n == 0 { break }
            total += Int64(n)
            guard total <= size else { break }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        guard total == size else {
            throw OCIError.io(operation: "read (the file changed size while it was being archived)", path: path, errno: EIO)
        }
    }

    func close() { Glibc.close(fd) }
}
