import Foundation

/// The NVIDIA driver's API (`libcuda.so.1`), opened with dlopen: present wherever a GPU is (Cloud
/// Run mounts it into GPU containers), absent elsewhere, which is a clear error and not a crash.
///
/// dlsym needs the real exported names: for the calls `cuda.h` renames, the `_v2` ones (the plain
/// names are the old 32-bit versions and would misbehave silently).
public final class CUDADriver: @unchecked Sendable {
    // @unchecked: immutable after init; the driver API is thread-safe.
    public struct Device: Sendable {
        public var ordinal: Int
        public var name: String
        public var computeCapability: (major: Int, minor: Int)
        public var totalMemory: Int
        public var multiprocessors: Int
        public var memoryClockKHz: Int
        public var memoryBusWidthBits: Int
        /// Bytes of L2 cache (0 where the driver does not say).
        public var l2CacheBytes: Int = 0

        /// The SM number NVRTC compiles for: 89 for an L4, 90 for an H100.
        public var architecture: Int { computeCapability.major * 10 + computeCapability.minor }
        /// Peak memory bandwidth from the clock and bus width (double data rate), in bytes per second.
        public var peakBandwidth: Double { 2 * Double(memoryClockKHz) * 1000 * Double(memoryBusWidthBits) / 8 }
    }

    public let path: String
    /// CUDA version the driver supports, e.g. 12020 for 12.2 (Cloud Run's 535 driver).
    public let version: Int
    public let devices: [Device]
    let library: DynamicLibrary

    /// Whether the driver has the CUDA graph calls the backend replays steps with (CUDA 11.4 and later).
    public var supportsGraphs: Bool {
        ["cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuGraphInstantiateWithFlags", "cuGraphLaunch"].allSatisfy {
            (try? library.symbol($0)) != nil
        }
    }
    /// Whether the driver has what pipelined decode steps need: copies to the host waited for later
    /// (cuMemcpyDtoHAsync and events).
    public var supportsReadbacks: Bool {
        ["cuMemcpyDtoHAsync_v2", "cuEventCreate", "cuEventRecord", "cuEventSynchronize"].allSatisfy {
            (try? library.symbol($0)) != nil
        }
    }
    /// Whether the driver has programmatic dependent launch, captured into graphs (cuLaunchKernelEx,
    /// CUDA 12.3 and later); the GPU must be sm_90 or later too.
    public var supportsDependentLaunch: Bool { version >= 12030 && (try? library.symbol("cuLaunchKernelEx")) != nil }
    private let getErrorName: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32
    private let getErrorString: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32

    public static func candidates(environment env: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        var list: [String] = []
        if let given = env["INFERENCE_LIBCUDA"], !given.isEmpty { list.append(given) }
        // Never the toolkit's stubs/libcuda.so: it loads and then fails every call with error 34.
        list += ["libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1"]
        return list
    }

    public init(environment env: [String: String] = ProcessInfo.processInfo.environment) throws {
        library = try DynamicLibrary.open(
            Self.candidates(environment: env), what: "the NVIDIA driver (libcuda.so.1)",
            hint: "This machine has no NVIDIA driver, so the engine runs on the CPU (--device auto or cpu). On a GPU machine, check that the driver is installed and its folder (Cloud Run: /usr/local/nvidia/lib64) is on LD_LIBRARY_PATH, or set INFERENCE_LIBCUDA")
        path = library.location(of: "cuInit")
        let errorName = try library.function("cuGetErrorName", as: type(of: getErrorName))
        let errorString = try library.function("cuGetErrorString", as: type(of: getErrorString))
        getErrorName = errorName
        getErrorString = errorString
        func check(_ call: String, _ code: Int32) throws { try Self.check(call, code, errorName, errorString) }
        let cuInit = try library.function("cuInit", as: (@convention(c) (UInt32) -> Int32).self)
        let driverVersion = try library.function("cuDriverGetVersion", as: (@convention(c) (UnsafeMutablePointer<Int32>) -> Int32).self)
        let deviceCount = try library.function("cuDeviceGetCount", as: (@convention(c) (UnsafeMutablePointer<Int32>) -> Int32).self)
        let deviceGet = try library.function("cuDeviceGet", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
        let deviceName = try library.function("cuDeviceGetName", as: (@convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Int32).self)
        let totalMemory = try library.function("cuDeviceTotalMem_v2", as: (@convention(c) (UnsafeMutablePointer<Int>, Int32) -> Int32).self)
        let attribute = try library.function("cuDeviceGetAttribute", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Int32).self)

        var v: Int32 = 0
        _ = driverVersion(&v)
        version = Int(v)
        try check("cuInit", cuInit(0))
        var count: Int32 = 0
        try check("cuDeviceGetCount", deviceCount(&count))
        guard count > 0 else { throw CUDAError.noDevice }
        var found: [Device] = []
        for ordinal in 0..<count {
            var device: Int32 = 0
            try check("cuDeviceGet", deviceGet(&device, ordinal))
            var name = [CChar](repeating: 0, count: 256)
            try check("cuDeviceGetName", deviceName(&name, 256, device))
            var memory = 0
            try check("cuDeviceTotalMem", totalMemory(&memory, device))
            // CU_DEVICE_ATTRIBUTE_*: 75/76 compute capability, 16 SMs, 36 memory clock (kHz), 37 bus width,
            // 38 L2 cache bytes.
            func value(_ id: Int32) throws -> Int {
                var out: Int32 = 0
                try check("cuDeviceGetAttribute(\(id))", attribute(&out, id, device))
                return Int(out)
            }
            found.append(Device(
                ordinal: Int(ordinal), name: String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                computeCapability: (try value(75), try value(76)), totalMemory: memory, multiprocessors: try value(16),
                memoryClockKHz: try value(36), memoryBusWidthBits: try value(37), l2CacheBytes: try value(38)))
        }
        devices = found
    }

    public var versionString: String { "\(version / 1000).\(version % 1000 / 10)" }

    /// Free and total device memory, through the device's primary context.
    public func memoryInfo(ordinal: Int = 0) throws -> (free: Int, total: Int) {
        try withPrimaryContext(ordinal) {
            let info = try library.function("cuMemGetInfo_v2", as: (@convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32).self)
            var free = 0, total = 0
            try check("cuMemGetInfo", info(&free, &total))
            return (free, total)
        }
    }

    /// Loads a CUBIN and looks up each kernel: what `doctor` checks on a GPU before serving.
    public func loadModule(_ cubin: [UInt8], kernels: [String], ordinal: Int = 0) throws {
        try withPrimaryContext(ordinal) {
            let load = try library.function("cuModuleLoadData", as: (@convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer) -> Int32).self)
            let function = try library.function("cuModuleGetFunction", as: (@convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UnsafePointer<CChar>) -> Int32).self)
            let unload = try library.function("cuModuleUnload", as: (@convention(c) (OpaquePointer?) -> Int32).self)
            var module: OpaquePointer? = nil
            try cubin.withUnsafeBytes { try check("cuModuleLoadData", load(&module, $0.baseAddress!)) }
            defer { _ = unload(module) }
            for name in kernels {
                var kernel: OpaquePointer? = nil
                try check("cuModuleGetFunction(\(name))", function(&kernel, module, name))
            }
        }
    }

    private func withPrimaryContext<R>(_ ordinal: Int, _ body: () throws -> R) throws -> R {
        let deviceGet = try library.function("cuDeviceGet", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
        let retain = try library.function("cuDevicePrimaryCtxRetain", as: (@convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> Int32).self)
        let release = try library.function("cuDevicePrimaryCtxRelease_v2", as: (@convention(c) (Int32) -> Int32).self)
        let setCurrent = try library.function("cuCtxSetCurrent", as: (@convention(c) (OpaquePointer?) -> Int32).self)
        var device: Int32 = 0
        try check("cuDeviceGet", deviceGet(&device, Int32(ordinal)))
        var context: OpaquePointer? = nil
        try check("cuDevicePrimaryCtxRetain", retain(&context, device))
        defer { _ = release(device) }
        try check("cuCtxSetCurrent", setCurrent(context))
        return try body()
    }

    private func check(_ call: String, _ code: Int32) throws { try Self.check(call, code, getErrorName, getErrorString) }

    static func check(
        _ call: String, _ code: Int32, _ getErrorName: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32,
        _ getErrorString: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32
    ) throws {
        guard code != 0 else { return }
        var name: UnsafePointer<CChar>? = nil
        var message: UnsafePointer<CChar>? = nil
        _ = getErrorName(code, &name)
        _ = getErrorString(code, &message)
        throw CUDAError.driver(
            call: call, code: code, name: name.map { String(cString: $0) } ?? "CUDA_ERROR_\(code)",
            message: message.map { String(cString: $0) } ?? "unknown error")
    }
}
