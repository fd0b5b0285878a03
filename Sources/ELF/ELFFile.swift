#if canImport(Glibc)
import Glibc
#endif

/// What the dynamic loader needs to know about one ELF object, read from its headers only
/// (the file is never loaded whole). Reference: the System V gABI, "Program Header" and
/// "Dynamic Section"; only 64-bit little-endian objects are handled, which covers x86-64 and arm64 Linux.
public struct ELFFile: Sendable, Equatable {
    public enum Machine: UInt16, Sendable {
        case x86_64 = 62
        case aarch64 = 183

        /// The OCI `architecture` (Go's GOARCH names, as image-spec config.md asks).
        public var ociArchitecture: String { self == .x86_64 ? "amd64" : "arm64" }
        /// Debian's multiarch triple, used in the default library directories.
        public var multiarchTriple: String { self == .x86_64 ? "x86_64-linux-gnu" : "aarch64-linux-gnu" }
    }

    public let path: String
    public let machine: Machine
    /// PT_INTERP: the program interpreter (the dynamic loader) of an executable, absent for static ones.
    public let interpreter: String?
    /// DT_NEEDED, in order.
    public let needed: [String]
    public let soname: String?
    public let runpath: [String]
    public let rpath: [String]

    public init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ELFError.unreadable(path: path, errno: errno) }
        defer { close(fd) }
        let reader = Reader(fd: fd, path: path)

        let ident = try reader.bytes(at: 0, count: 64, what: "the ELF header")
        guard ident.count >= 20, ident[0] == 0x7f, ident[1] == 0x45, ident[2] == 0x4c, ident[3] == 0x46 else {
            throw ELFError.notELF(path: path)
        }
        guard ident[4] == 2 else { throw ELFError.unsupported(path: path, reason: "32-bit objects are not supported") }
        guard ident[5] == 1 else { throw ELFError.unsupported(path: path, reason: "big-endian objects are not supported") }
        guard ident.count == 64 else { throw ELFError.malformed(path: path, reason: "truncated ELF header") }
        let type = ident.u16(16)
        guard type == 2 || type == 3 else {
            throw ELFError.unsupported(path: path, reason: "not an executable or shared object (e_type \(type))")
        }
        guard let machine = Machine(rawValue: ident.u16(18)) else {
            throw ELFError.unsupported(path: path, reason: "machine \(ident.u16(18)) is neither x86-64 nor arm64")
        }
        let phoff = ident.u64(32)
        let phentsize = Int(ident.u16(54))
        let phnum = Int(ident.u16(56))
        guard phentsize >= 56, phnum < 4096 else {
            throw ELFError.malformed(path: path, reason: "program header table entries of \(phentsize) bytes")
        }
        let table = try reader.bytes(at: phoff, count: phentsize * phnum, what: "the program headers")

        struct Segment { var type: UInt32; var offset: UInt64; var vaddr: UInt64; var filesz: UInt64 }
        let segments = (0..<phnum).map { i -> Segment in
            let b = i * phentsize
            return Segment(
                type: table.u32(b), offset: table.u64(b + 8), vaddr: table.u64(b + 16), filesz: table.u64(b + 32))
        }

        var interpreter: String?
        if let interp = segments.first(where: { $0.type == 3 }) {
            let raw = try reader.bytes(at: interp.offset, count: Int(min(interp.filesz, 4096)), what: "PT_INTERP")
            interpreter = String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }

        var needed: [String] = []
        var soname: String?
        var runpath: [String] = []
        var rpath: [String] = []
        if let dynamic = segments.first(where: { $0.type == 2 }) {
            guard dynamic.filesz < 1 << 20 else { throw ELFError.malformed(path: path, reason: "oversized dynamic section") }
            let raw = try reader.bytes(at: dynamic.offset, count: Int(dynamic.filesz), what: "the dynamic section")
            var entries: [(tag: Int64, value: UInt64)] = []
            var at = 0
            while at + 16 <= raw.count {
                let tag = Int64(bitPattern: raw.u64(at))
                if tag == 0 { break }  // DT_NULL
                entries.append((tag, raw.u64(at + 8)))
                at += 16
            }
            // DT_STRTAB holds a virtual address; the PT_LOAD segment that maps it gives the file offset.
            if let strtabAddress = entries.first(where: { $0.tag == 5 })?.value {
                guard
                    let load = segments.first(where: {
                        $0.type == 1 && $0.vaddr <= strtabAddress && strtabAddress < $0.vaddr + $0.filesz
                    })
                else { throw ELFError.malformed(path: path, reason: "DT_STRTAB is outside every loaded segment") }
                let strsz = entries.first(where: { $0.tag == 10 })?.value ?? 0
                guard strsz > 0, strsz < 64 << 20 else {
                    throw ELFError.malformed(path: path, reason: "DT_STRSZ of \(strsz) bytes")
                }
                let strtab = try reader.bytes(
                    at: strtabAddress - load.vaddr + load.offset, count: Int(strsz), what: "the dynamic string table")
                func string(_ offset: UInt64) throws -> String {
                    guard offset < UInt64(strtab.count) else {
                        throw ELFError.malformed(path: path, reason: "a dynamic string offset points past DT_STRSZ")
                    }
                    return String(decoding: strtab[Int(offset)...].prefix { $0 != 0 }, as: UTF8.self)
                }
                for entry in entries {
                    switch entry.tag {
                    case 1: needed.append(try string(entry.value))  // DT_NEEDED
                    case 14: soname = try string(entry.value)  // DT_SONAME
                    case 15: rpath += try string(entry.value).split(separator: ":").map(String.init)  // DT_RPATH
                    case 29: runpath += try string(entry.value).split(separator: ":").map(String.init)  // DT_RUNPATH
                    default: break
                    }
                }
            }
        }
        self.path = path
        self.machine = machine
        self.interpreter = interpreter
        self.needed = needed
        self.soname = soname
        self.runpath = runpath
        self.rpath = rpath
    }
}

private struct Reader {
    let fd: Int32
    let path: String

    func bytes(at offset: UInt64, count: Int, what: String) throws -> [UInt8] {
        guard offset < UInt64(Int64.max) else { throw ELFError.malformed(path: path, reason: "\(what) lies past the end of the file") }
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, count - got, off_t(offset) + off_t(got)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ELFError.unreadable(path: path, errno: errno)
            }
            if n == 0 { break }
            got += n
        }
        if got < count {
            // A short ELF header means a tiny non-ELF file; anything else is a truncated object.
            if offset == 0 { return Array(out.prefix(got)) }
            throw ELFError.malformed(path: path, reason: "\(what) lies past the end of the file")
        }
        return out
    }
}

extension Array where Element == UInt8 {
    fileprivate func u16(_ i: Int) -> UInt16 { UInt16(self[i]) | UInt16(self[i + 1]) << 8 }
    fileprivate func u32(_ i: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(self[i + $1]) << (8 * $1) } }
    fileprivate func u64(_ i: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(self[i + $1]) << (8 * $1) } }
}
