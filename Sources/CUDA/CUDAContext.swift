import Foundation

/// One GPU's primary context and the driver calls the backend makes on it: device memory, copies,
/// modules and kernel launches. Everything runs on the legacy default stream, so the work of one
/// thread is ordered without events: a launch, a copy between buffers and a copy to the host all
/// queue behind what came before, and a copy to the host waits for it.
///
/// A failing call in the middle of a forward pass cannot be undone, so the non-throwing entry points
/// (`launch`, `copy`, `read`) stop the process with the driver's message rather than return garbage;
/// allocation and module loading throw, because they happen at start where a clear error is wanted.
public final class CUDAContext: @unchecked Sendable {
    // @unchecked: immutable after init; the driver API is thread-safe and each call first makes the
    // context current on the calling thread.
    public typealias DevicePointer = UInt64

    public let driver: CUDADriver
    public let device: CUDADriver.Device
    private let context: OpaquePointer?

    private let setCurrent: @convention(c) (OpaquePointer?) -> Int32
    private let memAlloc: @convention(c) (UnsafeMutablePointer<UInt64>, Int) -> Int32
    private let memFree: @convention(c) (UInt64) -> Int32
    private let memsetD32: @convention(c) (UInt64, UInt32, Int) -> Int32
    private let copyHtoD: @convention(c) (UInt64, UnsafeRawPointer, Int) -> Int32
    private let copyDtoH: @convention(c) (UnsafeMutableRawPointer, UInt64, Int) -> Int32
    private let copyDtoD: @convention(c) (UInt64, UInt64, Int, OpaquePointer?) -> Int32
    private let copyHtoDAsync: @convention(c) (UInt64, UnsafeRawPointer, Int, OpaquePointer?) -> Int32
    private let memAllocHost: @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int) -> Int32
    private let memGetInfo: @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32
    private let synchronizeCall: @convention(c) () -> Int32
    private let moduleLoad: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer) -> Int32
    private let moduleFunction: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UnsafePointer<CChar>) -> Int32
    private let launchCall:
        @convention(c) (
            OpaquePointer?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, OpaquePointer?,
            UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?
        ) -> Int32
    private let errorName: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32
    private let errorString: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32

    public init(driver: CUDADriver, ordinal: Int = 0) throws {
        guard let device = driver.devices.first(where: { $0.ordinal == ordinal }) else { throw CUDAError.noDevice }
        self.driver = driver
        self.device = device
        let lib = driver.library
        setCurrent = try lib.function("cuCtxSetCurrent", as: type(of: setCurrent))
        memAlloc = try lib.function("cuMemAlloc_v2", as: type(of: memAlloc))
        memFree = try lib.function("cuMemFree_v2", as: type(of: memFree))
        memsetD32 = try lib.function("cuMemsetD32_v2", as: type(of: memsetD32))
        copyHtoD = try lib.function("cuMemcpyHtoD_v2", as: type(of: copyHtoD))
        copyDtoH = try lib.function("cuMemcpyDtoH_v2", as: type(of: copyDtoH))
        copyDtoD = try lib.function("cuMemcpyDtoDAsync_v2", as: type(of: copyDtoD))
        copyHtoDAsync = try lib.function("cuMemcpyHtoDAsync_v2", as: type(of: copyHtoDAsync))
        memAllocHost = try lib.function("cuMemAllocHost_v2", as: type(of: memAllocHost))
        memGetInfo = try lib.function("cuMemGetInfo_v2", as: type(of: memGetInfo))
        synchronizeCall = try lib.function("cuCtxSynchronize", as: type(of: synchronizeCall))
        moduleLoad = try lib.function("cuModuleLoadData", as: type(of: moduleLoad))
        moduleFunction = try lib.function("cuModuleGetFunction", as: type(of: moduleFunction))
        launchCall = try lib.function("cuLaunchKernel", as: type(of: launchCall))
        errorName = try lib.function("cuGetErrorName", as: type(of: errorName))
        errorString = try lib.function("cuGetErrorString", as: type(of: errorString))
        let deviceGet = try lib.function("cuDeviceGet", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32).self)
        let retain = try lib.function("cuDevicePrimaryCtxRetain", as: (@convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> Int32).self)
        var handle: Int32 = 0
        var primary: OpaquePointer? = nil
        try CUDADriver.check("cuDeviceGet", deviceGet(&handle, Int32(ordinal)), errorName, errorString)
        // Retained for the life of the process: the primary context is what cuBLAS and any other
        // library in the process share.
        try CUDADriver.check("cuDevicePrimaryCtxRetain", retain(&primary, handle), errorName, errorString)
        context = primary
        try CUDADriver.check("cuCtxSetCurrent", setCurrent(primary), errorName, errorString)
    }

    /// Makes the context current on the calling thread (the server's engine runs on its own thread).
    @inline(__always) public func makeCurrent() {
        let status = setCurrent(context)
        if status != 0 { fail("cuCtxSetCurrent", status) }
    }

    // MARK: memory

    /// `bytes` of device memory, zero-filled. Throws a readable out-of-memory error.
    public func allocate(bytes: Int) throws -> DevicePointer {
        makeCurrent()
        var address: UInt64 = 0
        let size = max(4, (bytes + 3) / 4 * 4)
        let status = memAlloc(&address, size)
        if status == 2 {  // CUDA_ERROR_OUT_OF_MEMORY
            let free = (try? memoryInfo().free) ?? 0
            throw CUDAError.outOfMemory(requested: size, free: free)
        }
        try check("cuMemAlloc", status)
        try check("cuMemsetD32", memsetD32(address, 0, size / 4))
        return address
    }

    public func free(_ address: DevicePointer) {
        makeCurrent()
        _ = memFree(address)
    }

    public func memoryInfo() throws -> (free: Int, total: Int) {
        makeCurrent()
        var free = 0, total = 0
        try check("cuMemGetInfo", memGetInfo(&free, &total))
        return (free, total)
    }

    /// Host bytes to the device (queued behind earlier work; the host bytes may be reused on return).
    public func upload(_ source: UnsafeRawPointer, bytes: Int, to address: DevicePointer) {
        guard bytes > 0 else { return }
        makeCurrent()
        let status = copyHtoD(address, source, bytes)
        if status != 0 { fail("cuMemcpyHtoD", status) }
    }

    /// Device bytes to the host, once everything queued before has run.
    public func download(_ address: DevicePointer, bytes: Int, into destination: UnsafeMutableRawPointer) {
        guard bytes > 0 else { return }
        makeCurrent()
        let status = copyDtoH(destination, address, bytes)
        if status != 0 { fail("cuMemcpyDtoH", status) }
        // Everything queued before has run: the staging area is free again.
        stagingLock.lock()
        stagingOffset = 0
        stagingLock.unlock()
    }

    // MARK: staging (small per-step inputs)

    private let stagingLock = NSLock()
    private var stagingHost: UnsafeMutableRawPointer?
    private var stagingDevice: DevicePointer = 0
    private var stagingOffset = 0
    private let stagingCapacity = 8 << 20

    /// Copies `bytes` (token ids, RoPE tables, per-row tables: small inputs of every step) to the
    /// device without waiting: they go through pinned memory with an asynchronous copy ordered on
    /// the stream, so the host keeps queueing kernels. A copy from ordinary memory would first wait
    /// for the GPU to drain, once per layer. Returns where the bytes will be; valid for kernels
    /// queued before the next download or synchronize, after which the area is reused.
    public func stage(_ bytes: UnsafeRawBufferPointer) -> DevicePointer {
        makeCurrent()
        stagingLock.lock()
        defer { stagingLock.unlock() }
        let size = (bytes.count + 255) / 256 * 256
        precondition(size <= stagingCapacity, "a staged upload larger than the staging area")
        if stagingHost == nil {
            var host: UnsafeMutableRawPointer? = nil
            var status = memAllocHost(&host, stagingCapacity)
            if status != 0 { fail("cuMemAllocHost", status) }
            stagingHost = host
            var device: UInt64 = 0
            status = memAlloc(&device, stagingCapacity)
            if status != 0 { fail("cuMemAlloc", status) }
            stagingDevice = device
        }
        if stagingOffset + size > stagingCapacity {
            // Full before any download: wait for the queued work that reads it, then start over.
            let status = synchronizeCall()
            if status != 0 { fail("cuCtxSynchronize", status) }
            stagingOffset = 0
        }
        let offset = stagingOffset
        stagingOffset += size
        if bytes.count > 0 {
            // The pinned area is only rewritten after the GPU has passed this copy (see above).
            (stagingHost! + offset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            let status = copyHtoDAsync(stagingDevice + UInt64(offset), stagingHost! + offset, bytes.count, nil)
            if status != 0 { fail("cuMemcpyHtoDAsync", status) }
        }
        return stagingDevice + UInt64(offset)
    }

    /// Device to device, queued.
    public func copy(_ source: DevicePointer, to destination: DevicePointer, bytes: Int) {
        guard bytes > 0 else { return }
        makeCurrent()
        let status = copyDtoD(destination, source, bytes, nil)
        if status != 0 { fail("cuMemcpyDtoDAsync", status) }
    }

    /// Waits for everything queued; a kernel fault surfaces here.
    public func synchronize() throws {
        makeCurrent()
        try check("cuCtxSynchronize", synchronizeCall())
        stagingLock.lock()
        stagingOffset = 0
        stagingLock.unlock()
    }

    // MARK: kernels

    /// Loads a CUBIN and resolves each named kernel.
    public func loadKernels(_ cubin: [UInt8], names: [String]) throws -> [String: OpaquePointer] {
        makeCurrent()
        var module: OpaquePointer? = nil
        try cubin.withUnsafeBytes { try check("cuModuleLoadData", moduleLoad(&module, $0.baseAddress!)) }
        var functions: [String: OpaquePointer] = [:]
        for name in names {
            var function: OpaquePointer? = nil
            try check("cuModuleGetFunction(\(name))", moduleFunction(&function, module, name))
            functions[name] = function
        }
        return functions
    }

    /// One kernel argument as the kernel declares it.
    public enum Argument {
        case pointer(DevicePointer)
        case int(Int)
        case float(Float)
    }

    /// Queues `kernel` on the default stream. The driver copies the arguments before returning.
    public func launch(
        _ kernel: OpaquePointer, grid: (Int, Int, Int), block: Int, sharedBytes: Int = 0, _ arguments: [Argument]
    ) {
        makeCurrent()
        // Arguments and their pointers on the stack: a decode step makes hundreds of launches.
        let status = withUnsafeTemporaryAllocation(byteCount: max(1, arguments.count) * 8, alignment: 8) { storage in
            withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: max(1, arguments.count)) { pointers in
                for (i, argument) in arguments.enumerated() {
                    let slot = storage.baseAddress! + 8 * i
                    switch argument {
                    case .pointer(let address): slot.storeBytes(of: address, as: UInt64.self)
                    case .int(let value): slot.storeBytes(of: Int32(truncatingIfNeeded: value), as: Int32.self)
                    case .float(let value): slot.storeBytes(of: value, as: Float.self)
                    }
                    pointers[i] = slot
                }
                return launchCall(
                    kernel, UInt32(grid.0), UInt32(grid.1), UInt32(grid.2), UInt32(block), 1, 1, UInt32(sharedBytes), nil,
                    pointers.baseAddress, nil)
            }
        }
        if status != 0 { fail("cuLaunchKernel", status) }
    }

    // MARK: errors

    func check(_ call: String, _ status: Int32) throws { try CUDADriver.check(call, status, errorName, errorString) }

    func fail(_ call: String, _ status: Int32) -> Never {
        do { try check(call, status) } catch { fatalError("CUDA: \(error)") }
        fatalError("CUDA: \(call) failed with \(status)")
    }
}
