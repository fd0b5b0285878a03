import Foundation
import Hashing

/// CUBINs on disk (or PTX, for a GPU the compiler does not know: see `cubin`), keyed by a hash of the
/// source, the compiler's version and options, and the architecture: a restart (or the next Cloud
/// Run instance sharing the volume) loads the kernels in milliseconds instead of compiling them for
/// about a second. A damaged or foreign file is never trusted: the key covers what produced it, the
/// file is written whole then renamed into place, and one that is not a whole ELF CUBIN (or PTX
/// text) is compiled again.
public struct KernelCache: Sendable {
    public let directory: String
    /// A read-only folder of CUBINs made ahead under the same names (`INFERENCE_PREBUILT_KERNELS`:
    /// `builder build --gpu` puts the L4's there), looked in before `directory`, never written.
    public let prebuilt: String?

    /// `INFERENCE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/inference-server/kernels`, else
    /// `~/.cache/inference-server/kernels`, else (no home, as in a `scratch` image) the temp folder.
    public init(environment env: [String: String] = ProcessInfo.processInfo.environment) {
        prebuilt = env["INFERENCE_PREBUILT_KERNELS"].flatMap { $0.isEmpty ? nil : $0 }
        if let given = env["INFERENCE_KERNEL_CACHE"], !given.isEmpty {
            directory = given
        } else if let xdg = env["XDG_CACHE_HOME"], !xdg.isEmpty {
            directory = xdg + "/inference-server/kernels"
        } else if let home = env["HOME"], !home.isEmpty, home != "/" {
            directory = home + "/.cache/inference-server/kernels"
        } else {
            directory = NSTemporaryDirectory() + "inference-server-kernels"
        }
    }

    public init(directory: String, prebuilt: String? = nil) {
        self.directory = directory
        self.prebuilt = prebuilt
    }

    public struct Entry: Sendable {
        /// What `cuModuleLoadData` takes: a CUBIN, or NUL-terminated PTX (see `ptxArchitecture`).
        public var cubin: [UInt8]
        public var path: String
        public var fromCache: Bool
        /// For a GPU the compiler does not know: the `compute_` architecture of the PTX `cubin`
        /// holds, which the driver compiles for the GPU when it loads it; nil for a CUBIN.
        public var ptxArchitecture: Int? = nil
    }

    public func path(source: String, architecture: Int, options: [String], compilerVersion: String) -> String {
        let key = ([compilerVersion] + options + [source]).joined(separator: "\u{0}")
        let hex = SHA256.hash(Array(key.utf8)).prefix(16).map { String(format: "%02x", $0) }.joined()
        return directory + "/\(hex)-sm_\(architecture).cubin"
    }

    /// The cached CUBIN, or a fresh compile that is then stored (a read-only cache folder only costs
    /// the compile). For an architecture the compiler does not know (an image's NVRTC 12.2 on a
    /// Blackwell, sm_100/sm_120; NVRTC 12.8 on sm_103), PTX for the newest one it knows below it,
    /// cached the same way: the GPU's driver compiles that at load, since PTX carries forward to
    /// later GPUs. Not below sm_80 (mma.sync), nor below sm_90 for a GPU of sm_90 or later, whose
    /// kernels are launched as dependent launches and must hold griddepcontrol.
    public func cubin(source: String, architecture: Int, options: [String], compiler: NVRTC) throws -> Entry {
        let known = compiler.supportedArchitectures
        var virtual: Int? = nil
        if !known.isEmpty && !known.contains(architecture), let below = known.filter({ $0 < architecture }).max(),
            below >= (architecture >= 90 ? 90 : Self.lowestPTXArchitecture)
        {
            virtual = below
        }
        var file = path(source: source, architecture: architecture, options: options, compilerVersion: compiler.versionString)
        if let virtual { file = (file as NSString).deletingPathExtension + "-compute_\(virtual).ptx" }
        var candidates = [file]
        if let prebuilt { candidates.insert(prebuilt + "/" + (file as NSString).lastPathComponent, at: 0) }
        for candidate in candidates {
            if let data = FileManager.default.contents(atPath: candidate),
                virtual == nil ? Self.isCUBIN(Array(data)) : Self.isPTX(Array(data))
            {
                return Entry(cubin: Array(data), path: candidate, fromCache: true, ptxArchitecture: virtual)
            }
        }
        let cubin = try virtual.map { try compiler.compilePTX(source, architecture: $0, options: options) }
            ?? compiler.compile(source, architecture: architecture, options: options)
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let partial = file + ".\(ProcessInfo.processInfo.processIdentifier).partial"
        if FileManager.default.createFile(atPath: partial, contents: Data(cubin)) {
            if rename(partial, file) != 0 { try? FileManager.default.removeItem(atPath: partial) }
        }
        return Entry(cubin: cubin, path: file, fromCache: false, ptxArchitecture: virtual)
    }

    /// The oldest architecture whose PTX the kernels are written for (mma.sync needs sm_80).
    static let lowestPTXArchitecture = 80

    /// NUL-terminated PTX text (NVRTC's output): what a module of PTX must be for the driver.
    public static func isPTX(_ bytes: [UInt8]) -> Bool {
        guard bytes.count > 16, bytes.last == 0 else { return false }
        let head = String(decoding: bytes.prefix(4096), as: UTF8.self)
        return head.contains(".version") && head.contains(".target")
    }

    /// Whether a module image (a CUBIN, or PTX) defines the kernel `name`.
    public static func module(_ bytes: [UInt8], defines name: String) -> Bool {
        guard isPTX(bytes) else { return cubin(bytes, defines: name) }
        let text = String(decoding: bytes, as: UTF8.self)
        return text.contains(".entry \(name)(")
    }

    /// A whole ELF64 file for CUDA (OS/ABI 0x33, machine EM_CUDA = 190) whose section headers, which
    /// ELF writers put last, lie inside it: a truncated file fails.
    public static func isCUBIN(_ bytes: [UInt8]) -> Bool {
        guard bytes.count > 64, bytes[0..<4] == [0x7F, 0x45, 0x4C, 0x46], bytes[4] == 2, bytes[7] == 0x33,
            UInt16(bytes[18]) | UInt16(bytes[19]) << 8 == 190
        else { return false }
        func little(_ at: Int, _ width: Int) -> Int { (0..<width).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) } }
        let sectionHeaders = little(40, 8), entrySize = little(58, 2), entries = little(60, 2)
        return entries > 0 && sectionHeaders > 0 && sectionHeaders + entrySize * entries <= bytes.count
    }

    /// The SM number an ELF CUBIN was built for (the low byte of e_flags: 0x59 = 89 for sm_89).
    public static func architecture(ofCUBIN bytes: [UInt8]) -> Int? {
        guard isCUBIN(bytes) else { return nil }
        let flags = UInt32(bytes[48]) | UInt32(bytes[49]) << 8 | UInt32(bytes[50]) << 16 | UInt32(bytes[51]) << 24
        return Int(flags & 0xFF)
    }

    /// Whether a CUBIN holds `symbol` as a NUL-terminated name (its string table): a kernel check
    /// that needs no driver.
    public static func cubin(_ bytes: [UInt8], defines symbol: String) -> Bool {
        let needle = Array(symbol.utf8) + [0]
        guard needle.count < bytes.count else { return false }
        var i = 1
        while i + needle.count <= bytes.count {
            if bytes[i] == needle[0], bytes[i - 1] == 0, bytes[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }
}
