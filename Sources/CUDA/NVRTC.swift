import Foundation

/// NVRTC, CUDA's run-time compiler, opened with dlopen: CUDA C source in, a CUBIN (machine code for
/// one GPU architecture) out. CUBIN rather than PTX: a driver cannot load PTX from a newer toolchain,
/// and Cloud Run's driver (535) stops at CUDA 12.2. Only for a GPU newer than this NVRTC knows,
/// PTX for the newest architecture it does know (`compilePTX`): that GPU's driver is newer still,
/// and compiles it at load.
///
/// Where it is looked for: `INFERENCE_NVRTC` (the library or its folder); beside the executable
/// (how `builder build --gpu` would ship it); the loader's path (CUDA runtime images register
/// /usr/local/cuda); the toolkit folders; Python's `nvidia-cuda-nvrtc-cu12` wheel.
public final class NVRTC: @unchecked Sendable {
    // @unchecked: immutable after init; NVRTC programs are independent objects.
    public let path: String
    public let version: (major: Int, minor: Int)
    /// SM numbers it can produce code for (e.g. 89 for the L4, 90 for the H100).
    public let supportedArchitectures: [Int]

    private typealias Program = OpaquePointer?
    private let createProgram:
        @convention(c) (
            UnsafeMutablePointer<Program>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
            UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?
        ) -> Int32
    private let compileProgram: @convention(c) (Program, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    private let getLogSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    private let getLog: @convention(c) (Program, UnsafeMutablePointer<CChar>) -> Int32
    private let getCUBINSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    private let getCUBIN: @convention(c) (Program, UnsafeMutableRawPointer) -> Int32
    private let getPTXSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    private let getPTX: @convention(c) (Program, UnsafeMutableRawPointer) -> Int32
    private let destroyProgram: @convention(c) (UnsafeMutablePointer<Program>) -> Int32
    private let errorString: @convention(c) (Int32) -> UnsafePointer<CChar>?
    private let library: DynamicLibrary

    /// `driverMajor`: the CUDA major version the driver supports; NVRTC of a later major is not
    /// looked for, because its CUBINs need a driver of that major (a 535 driver takes CUDA 12 only).
    public static func candidates(
        environment env: [String: String] = ProcessInfo.processInfo.environment, driverMajor: Int? = nil
    ) -> [String] {
        let names = ["libnvrtc.so.12", "libnvrtc.so.13"].filter { name in
            guard let driverMajor, let major = Int(name.split(separator: ".").last ?? "") else { return true }
            return major <= driverMajor
        }
        var list: [String] = []
        if let given = env["INFERENCE_NVRTC"], !given.isEmpty {
            list += given.hasSuffix(".so") || given.contains(".so.") ? [given] : names.map { given + "/" + $0 }
        }
        list += libraryCandidates(names, wheelFolders: ["nvidia/cuda_nvrtc/lib", "nvidia/cu13/lib"], environment: env)
        list.append("libnvrtc.so")
        return list
    }

    /// Where a CUDA library named one of `names` may be, in order: beside the executable (and its
    /// ../lib), the loader's search path, the toolkit folders, then the pip wheels' folders in every
    /// site-packages found.
    static func libraryCandidates(_ names: [String], wheelFolders: [String], environment env: [String: String]) -> [String] {
        let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath().deletingLastPathComponent().path
        var folders = [executable, executable + "/../lib"]
        var list: [String] = []
        for name in names { list += folders.map { $0 + "/" + name } + [name] }
        folders = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/local")) ?? []).filter { $0.hasPrefix("cuda-") }.sorted()
        folders += versions.map { "/usr/local/\($0)/targets/x86_64-linux/lib" }
        for site in pythonPackageFolders(environment: env) { folders += wheelFolders.map { site + "/" + $0 } }
        for folder in folders { list += names.map { folder + "/" + $0 } }
        return list
    }

    /// site-packages / dist-packages folders that hold NVIDIA's pip wheels (an `nvidia` folder).
    static func pythonPackageFolders(environment env: [String: String]) -> [String] {
        var roots: [String] = []
        if let venv = env["VIRTUAL_ENV"] { roots.append(venv + "/lib") }
        if let home = env["HOME"] {
            roots.append(home + "/.local/lib")
            // pyenv's interpreters, each with its own site-packages.
            let pyenv = (env["PYENV_ROOT"] ?? home + "/.pyenv") + "/versions"
            roots += ((try? FileManager.default.contentsOfDirectory(atPath: pyenv)) ?? []).sorted().map { pyenv + "/" + $0 + "/lib" }
        }
        roots += ["/usr/local/lib", "/usr/lib", "/usr/lib64", "/opt/conda/lib"]
        var folders: [String] = []
        let fm = FileManager.default
        for root in roots {
            for python in ((try? fm.contentsOfDirectory(atPath: root)) ?? []).filter({ $0.hasPrefix("python3") }).sorted() {
                for kind in ["site-packages", "dist-packages"] {
                    let folder = root + "/" + python + "/" + kind
                    if fm.fileExists(atPath: folder + "/nvidia") { folders.append(folder) }
                }
            }
        }
        return folders
    }

    /// `driverMajor` (the driver's CUDA major version), when given, keeps out an NVRTC whose
    /// CUBINs that driver could not load, with an error that says what to install.
    public convenience init(environment env: [String: String] = ProcessInfo.processInfo.environment, driverMajor: Int? = nil) throws {
        try self.init(
            candidates: Self.candidates(environment: env, driverMajor: driverMajor),
            hint: "Install it with `pip install nvidia-cuda-nvrtc-cu12==12.2.140`, use an nvidia/cuda:12.2 runtime base image, or set INFERENCE_NVRTC to the library",
            driverMajor: driverMajor)
    }

    /// The NVRTC at exactly `path` (`builder build --gpu` compiles with the library it packages).
    public convenience init(path: String) throws {
        try self.init(candidates: [path], hint: "Pass --nvrtc the path of libnvrtc.so.12", driverMajor: nil)
    }

    private init(candidates: [String], hint: String, driverMajor: Int?) throws {
        library = try DynamicLibrary.open(candidates, what: "NVRTC (libnvrtc.so.12)", hint: hint)
        path = library.location(of: "nvrtcVersion")
        createProgram = try library.function("nvrtcCreateProgram", as: type(of: createProgram))
        compileProgram = try library.function("nvrtcCompileProgram", as: type(of: compileProgram))
        getLogSize = try library.function("nvrtcGetProgramLogSize", as: type(of: getLogSize))
        getLog = try library.function("nvrtcGetProgramLog", as: type(of: getLog))
        getCUBINSize = try library.function("nvrtcGetCUBINSize", as: type(of: getCUBINSize))
        getCUBIN = try library.function("nvrtcGetCUBIN", as: type(of: getCUBIN))
        getPTXSize = try library.function("nvrtcGetPTXSize", as: type(of: getPTXSize))
        getPTX = try library.function("nvrtcGetPTX", as: type(of: getPTX))
        destroyProgram = try library.function("nvrtcDestroyProgram", as: type(of: destroyProgram))
        errorString = try library.function("nvrtcGetErrorString", as: type(of: errorString))
        let versionCall = try library.function("nvrtcVersion", as: (@convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32).self)
        var major: Int32 = 0, minor: Int32 = 0
        _ = versionCall(&major, &minor)
        version = (Int(major), Int(minor))
        if let driverMajor, Int(major) > driverMajor {
            throw CUDAError.invalidSetting(
                "NVRTC \(major).\(minor) at \(path) makes code for CUDA \(major), but the driver supports CUDA \(driverMajor) at most: "
                    + "install NVRTC 12 (`pip install nvidia-cuda-nvrtc-cu12==12.2.140`) or point INFERENCE_NVRTC at it")
        }
        let count = try library.function("nvrtcGetNumSupportedArchs", as: (@convention(c) (UnsafeMutablePointer<Int32>) -> Int32).self)
        let list = try library.function("nvrtcGetSupportedArchs", as: (@convention(c) (UnsafeMutablePointer<Int32>) -> Int32).self)
        var n: Int32 = 0
        _ = count(&n)
        var archs = [Int32](repeating: 0, count: Int(max(n, 0)))
        if n > 0 { _ = archs.withUnsafeMutableBufferPointer { list($0.baseAddress!) } }
        supportedArchitectures = archs.map(Int.init)
    }

    public var versionString: String { "\(version.major).\(version.minor)" }

    /// Compiles `source` to a CUBIN for `sm_<architecture>`. A compile error throws with NVRTC's log.
    public func compile(_ source: String, name: String = "kernels.cu", architecture: Int, options: [String] = []) throws -> [UInt8] {
        guard supportedArchitectures.isEmpty || supportedArchitectures.contains(architecture) else {
            throw CUDAError.unsupportedArchitecture("sm_\(architecture)", supported: supportedArchitectures.map { "sm_\($0)" })
        }
        return try build(source, name: name, target: "sm_\(architecture)", options: options, ptx: false)
    }

    /// Compiles `source` to PTX for the virtual architecture `compute_<architecture>`, NUL-terminated
    /// as `cuModuleLoadData` takes it: for a GPU newer than this NVRTC knows, whose driver compiles
    /// the PTX for it when it loads the module (a driver loads PTX of any earlier ISA version).
    public func compilePTX(_ source: String, name: String = "kernels.cu", architecture: Int, options: [String] = []) throws -> [UInt8] {
        guard supportedArchitectures.isEmpty || supportedArchitectures.contains(architecture) else {
            throw CUDAError.unsupportedArchitecture("compute_\(architecture)", supported: supportedArchitectures.map { "sm_\($0)" })
        }
        return try build(source, name: name, target: "compute_\(architecture)", options: options, ptx: true)
    }

    private func build(_ source: String, name: String, target: String, options: [String], ptx: Bool) throws -> [UInt8] {
        var program: Program = nil
        try check("nvrtcCreateProgram", createProgram(&program, source, name, 0, nil, nil))
        defer { _ = destroyProgram(&program) }
        let arguments = ["--gpu-architecture=\(target)"] + options
        let status = withCStrings(arguments) { compileProgram(program, Int32(arguments.count), $0) }
        guard status == 0 else {
            var size = 0
            _ = getLogSize(program, &size)
            var log = [CChar](repeating: 0, count: max(size, 1))
            _ = getLog(program, &log)
            let text = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw CUDAError.compilation(arch: target, log: text.isEmpty ? message(status) : text)
        }
        let (sizeCall, call) = ptx ? ("nvrtcGetPTXSize", "nvrtcGetPTX") : ("nvrtcGetCUBINSize", "nvrtcGetCUBIN")
        var size = 0
        try check(sizeCall, ptx ? getPTXSize(program, &size) : getCUBINSize(program, &size))
        guard size > 0 else {
            throw CUDAError.nvrtc(call: call, code: 0, message: "nothing was produced for \(target)")
        }
        var output = [UInt8](repeating: 0, count: size)
        try output.withUnsafeMutableBytes { try check(call, ptx ? getPTX(program, $0.baseAddress!) : getCUBIN(program, $0.baseAddress!)) }
        return output
    }

    private func message(_ code: Int32) -> String {
        errorString(code).map { String(cString: $0) } ?? "error \(code)"
    }

    private func check(_ call: String, _ code: Int32) throws {
        guard code == 0 else { throw CUDAError.nvrtc(call: call, code: code, message: message(code)) }
    }
}

/// Calls `body` with a C array of the strings (NUL-terminated copies, freed afterwards).
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) throws -> R) rethrows -> R {
    let copies = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    let pointers = copies.map { UnsafePointer($0) }
    return try pointers.withUnsafeBufferPointer { try body($0.baseAddress!) }
}
