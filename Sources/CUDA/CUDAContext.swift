import Foundation

/// One GPU's primary context and the driver calls the backend makes on it: device memory, copies,
/// modules and kernel launches. Work is ordered without events: the legacy default stream and the
/// context's own (blocking) stream wait for each other, so a launch, a copy between buffers and a
/// copy to the host all queue behind what came before, and a copy to the host waits for it.
///
/// **Step graphs.** With graphs on, launches, staged uploads and device copies are recorded rather
/// than issued, up to the next call that needs the GPU's results or the host's order (a copy to
/// the host, a synchronize, an allocation, cuBLAS: `flush`). Recorded work the same as work seen
/// before (the same kernels, launch shapes, arguments and staging offsets, word for word) is
/// captured as a CUDA graph on its second sighting and from then on replayed with one
/// `cuGraphLaunch`: a decode step of a fixed batch is some 240 launches (for Gemma 3 1B), which the
/// host would otherwise issue one by one; the model hands them over every few layers (`flush`), each
/// piece its own graph. Runs of fewer than 16 launches (the pieces cuBLAS splits a prefill
/// into) are always issued directly, so they never crowd the graph cache. Step inputs that change
/// (token ids, positions, row tables) go through the staging area, whose pinned bytes a replayed
/// copy reads when it runs, so they are not part of what must match. A driver without the graph
/// calls, a failed capture, or `graphs: false` falls back to issuing the work as it comes.
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
    /// cuLaunchKernelEx (CUDA 12.0 and later): a launch with attributes, here programmatic
    /// dependent launch (see `dependentLaunch`).
    private typealias LaunchEx = @convention(c) (
        UnsafeRawPointer, OpaquePointer?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
        UnsafeMutablePointer<UnsafeMutableRawPointer?>?
    ) -> Int32
    private let launchExCall: LaunchEx?
    /// cuOccupancyMaxActiveBlocksPerMultiprocessor: how many blocks of a kernel an SM holds at once.
    private let occupancyCall: (@convention(c) (UnsafeMutablePointer<Int32>, OpaquePointer?, Int32, Int) -> Int32)?
    private let errorName: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32
    private let errorString: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32

    /// The driver's graph calls (CUDA 11.4 and later; Cloud Run's 535 driver is 12.2).
    private struct GraphCalls {
        let createStream: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Int32
        let beginCapture: @convention(c) (OpaquePointer?, Int32) -> Int32
        let endCapture: @convention(c) (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>) -> Int32
        let instantiate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UInt64) -> Int32
        let launch: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32
        let destroyGraph: @convention(c) (OpaquePointer?) -> Int32
        let destroyExec: @convention(c) (OpaquePointer?) -> Int32

        init(_ lib: DynamicLibrary) throws {
            createStream = try lib.function("cuStreamCreate", as: type(of: createStream))
            beginCapture = try lib.function("cuStreamBeginCapture_v2", as: type(of: beginCapture))
            endCapture = try lib.function("cuStreamEndCapture", as: type(of: endCapture))
            instantiate = try lib.function("cuGraphInstantiateWithFlags", as: type(of: instantiate))
            launch = try lib.function("cuGraphLaunch", as: type(of: launch))
            destroyGraph = try lib.function("cuGraphDestroy", as: type(of: destroyGraph))
            destroyExec = try lib.function("cuGraphExecDestroy", as: type(of: destroyExec))
        }
    }

    /// How recorded work went to the GPU (for `doctor`, the benchmarks and the tests).
    public struct GraphStatistics: Sendable, Equatable {
        /// Runs of recorded work issued launch by launch (first sightings, graphs off).
        public var direct = 0
        /// Graphs captured (second sightings).
        public var captured = 0
        /// Replays of a captured graph.
        public var replayed = 0
        /// Why graphs were turned off, if they were.
        public var disabled: String?
    }

    public init(driver: CUDADriver, ordinal: Int = 0, graphs: Bool = true) throws {
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
        // Programmatic dependent launch needs sm_90, and a driver that captures it into graphs
        // (CUDA 12.3); Cloud Run's L4 (sm_89, 12.2) launches as before.
        launchExCall =
            device.architecture >= 90 && driver.supportsDependentLaunch
            ? try? lib.function("cuLaunchKernelEx", as: LaunchEx.self) : nil
        occupancyCall = try? lib.function(
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            as: (@convention(c) (UnsafeMutablePointer<Int32>, OpaquePointer?, Int32, Int) -> Int32).self)
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
        readbackCalls = try? ReadbackCalls(lib)
        if graphs {
            do {
                let calls = try GraphCalls(lib)
                var created: OpaquePointer? = nil
                try check("cuStreamCreate", calls.createStream(&created, 0))  // blocking: ordered with the legacy stream
                graphCalls = calls
                stream = created
                recording = true
            } catch {
                statistics.disabled = "\(error)"
            }
        } else {
            statistics.disabled = "turned off"
        }
    }

    /// How many blocks of `block` threads of `kernel` (no dynamic shared memory) one multiprocessor
    /// holds at once, as the driver reckons from the kernel's registers and shared memory; nil where
    /// the driver cannot say.
    public func residentBlocks(of kernel: OpaquePointer, block: Int) -> Int? {
        guard let occupancyCall else { return nil }
        makeCurrent()
        var count: Int32 = 0
        guard occupancyCall(&count, kernel, Int32(block), 0) == 0 else { return nil }
        return Int(count)
    }

    /// Makes the context current on the calling thread (the server's engine runs on its own thread).
    @inline(__always) public func makeCurrent() {
        let status = setCurrent(context)
        if status != 0 { fail("cuCtxSetCurrent", status) }
    }

    // MARK: memory

    /// `bytes` of device memory, zero-filled. Throws a readable out-of-memory error.
    public func allocate(bytes: Int) throws -> DevicePointer {
        flush()
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
        flush()  // recorded work may still use it
        makeCurrent()
        // Queued work (a KV cache's copy into its larger buffer) may still read it: drivers wait in
        // cuMemFree, but its reference does not promise it, so wait here (frees are rare).
        _ = synchronizeCall()
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
        flush()
        makeCurrent()
        let status = copyHtoD(address, source, bytes)
        if status != 0 { fail("cuMemcpyHtoD", status) }
    }

    /// Device bytes to the host, once everything queued before has run.
    public func download(_ address: DevicePointer, bytes: Int, into destination: UnsafeMutableRawPointer) {
        guard bytes > 0 else { return }
        flush()
        makeCurrent()
        let status = copyDtoH(destination, address, bytes)
        if status != 0 { fail("cuMemcpyDtoH", status) }
        // Everything queued before has run: the staging area is free again.
        stagingIsFree()
    }

    // MARK: staging (small per-step inputs)

    private let stagingLock = NSLock()
    private var stagingHost: UnsafeMutableRawPointer?
    private var stagingDevice: DevicePointer = 0
    private var stagingOffset = 0
    /// The part of the staging area in use: the whole area, or one region (`stageInRegion`).
    private var stagingStart = 0
    private var stagingLimit = 8 << 20
    private let stagingCapacity = 8 << 20

    /// Stages what comes next from the start of region `region` of `regions` equal parts of the
    /// staging area, for pipelined steps (several queued at once, none waited for by a download): the
    /// caller must know that every step that staged in this region before has run (it waited for a
    /// later step's readback). Until the next call, whatever frees the area (a download, a
    /// synchronize) starts the region over, and nothing is staged outside it. nil: the whole area again.
    public func stageInRegion(_ region: Int?, of regions: Int) {
        stagingLock.lock()
        defer { stagingLock.unlock() }
        // Still in use by a step whose readback has not been waited for (another runner's, or one
        // dropped unread): wait for the GPU rather than overwrite inputs it has yet to copy.
        let busy = region.map { (regionReadback[$0] ?? 0) > readbacksDone } ?? regionReadback.values.contains { $0 > readbacksDone }
        if busy {
            flush()
            let status = synchronizeCall()
            if status != 0 { fail("cuCtxSynchronize", status) }
            readbacksDone = readbacksQueued
            stagingWaits += 1
        }
        currentRegion = region
        if let region {
            precondition(regions > 0 && (0..<regions).contains(region))
            let size = stagingCapacity / regions / 256 * 256
            stagingStart = region * size
            stagingLimit = stagingStart + size
        } else {
            stagingStart = 0
            stagingLimit = stagingCapacity
        }
        stagingOffset = stagingStart
    }

    /// Everything queued has run: staging starts over (in the region, if one is in use).
    private func stagingIsFree() {
        stagingLock.lock()
        stagingOffset = stagingStart
        readbacksDone = readbacksQueued
        stagingLock.unlock()
    }

    // Which staging regions queued steps still read: readbacks are numbered as queued; each region
    // (-1: the whole area) keeps the number of the last one queued while it was in use, and every
    // readback up to `readbacksDone` has been waited for (so has all work queued before it).
    private var currentRegion: Int?
    private var readbacksQueued = 0
    private var readbacksDone = 0
    private var regionReadback: [Int: Int] = [:]
    private var placeReadback: [Int: Int] = [:]
    /// How often `stageInRegion` had to wait for the GPU (a region still in use): none in a steady
    /// pipeline of one runner.
    public private(set) var stagingWaits = 0

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
        precondition(size <= stagingLimit - stagingStart, "a staged upload larger than the staging area")
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
        if stagingOffset + size > stagingLimit {
            // Full before any download: wait for the queued work that reads it, then start over.
            flush()
            let status = synchronizeCall()
            if status != 0 { fail("cuCtxSynchronize", status) }
            stagingOffset = stagingStart
        }
        let offset = stagingOffset
        stagingOffset += size
        if bytes.count > 0 {
            // The pinned area is only rewritten after the GPU has passed this copy (see above).
            (stagingHost! + offset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            let to = stagingDevice + UInt64(offset)
            let from = UInt64(UInt(bitPattern: stagingHost! + offset))
            if !record([Operation.upload, to, from, UInt64(bytes.count)]) {
                let status = copyHtoDAsync(to, stagingHost! + offset, bytes.count, nil)
                if status != 0 { fail("cuMemcpyHtoDAsync", status) }
            }
        }
        return stagingDevice + UInt64(offset)
    }

    // MARK: readbacks (results the host waits for later)

    /// The driver calls for copies to the host that are waited for later (in every CUDA 12 driver).
    private struct ReadbackCalls {
        let copyDtoHAsync: @convention(c) (UnsafeMutableRawPointer, UInt64, Int, OpaquePointer?) -> Int32
        let eventCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Int32
        let eventRecord: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32
        let eventSynchronize: @convention(c) (OpaquePointer?) -> Int32

        init(_ lib: DynamicLibrary) throws {
            copyDtoHAsync = try lib.function("cuMemcpyDtoHAsync_v2", as: type(of: copyDtoHAsync))
            eventCreate = try lib.function("cuEventCreate", as: type(of: eventCreate))
            eventRecord = try lib.function("cuEventRecord", as: type(of: eventRecord))
            eventSynchronize = try lib.function("cuEventSynchronize", as: type(of: eventSynchronize))
        }
    }
    private let readbackCalls: ReadbackCalls?
    /// Per readback place: pinned host memory and the event recorded after its copy.
    private var readbackPlaces: [Int: (host: UnsafeMutableRawPointer, event: OpaquePointer?)] = [:]
    private let readbackLock = NSLock()
    /// Most bytes a readback place holds (a step's ids, and the logprobs of up to 256 rows).
    public static let readbackCapacity = 64 << 10

    /// Whether `queueReadback` works here (the driver has asynchronous copies and events).
    public var readbacksAvailable: Bool { readbackCalls != nil }

    /// Queues a copy of `bytes` at `address` to the host into readback place `place`, behind the work
    /// queued so far, and returns at once: `finishReadback(place:...)` waits for that copy only, not
    /// for work queued after it (a pipelined step's next step). A place is reused by the next queue to it
    /// after its last finish; `offset`: where in the place the bytes go (a second copy to the same
    /// place beside its first, before it is finished: its finish then waits for both).
    public func queueReadback(_ address: DevicePointer, bytes: Int, place: Int, offset: Int = 0) {
        guard let calls = readbackCalls else { preconditionFailure("readbacks need cuEventRecord and cuMemcpyDtoHAsync") }
        precondition(offset >= 0 && offset + bytes <= Self.readbackCapacity)
        flush()
        makeCurrent()
        readbackLock.lock()
        defer { readbackLock.unlock() }
        if readbackPlaces[place] == nil {
            var host: UnsafeMutableRawPointer? = nil
            var status = memAllocHost(&host, Self.readbackCapacity)
            if status != 0 { fail("cuMemAllocHost", status) }
            var event: OpaquePointer? = nil
            status = calls.eventCreate(&event, 2)  // CU_EVENT_DISABLE_TIMING
            if status != 0 { fail("cuEventCreate", status) }
            readbackPlaces[place] = (host!, event)
        }
        let target = readbackPlaces[place]!
        var status = calls.copyDtoHAsync(target.host + offset, address, bytes, stream)
        if status != 0 { fail("cuMemcpyDtoHAsync", status) }
        status = calls.eventRecord(target.event, stream)
        if status != 0 { fail("cuEventRecord", status) }
        stagingLock.lock()
        readbacksQueued += 1
        placeReadback[place] = readbacksQueued
        regionReadback[currentRegion ?? -1] = readbacksQueued
        stagingLock.unlock()
    }

    /// Waits for place `place`'s queued copies and copies `bytes` from `offset` into `destination`.
    public func finishReadback(place: Int, bytes: Int, offset: Int = 0, into destination: UnsafeMutableRawPointer) {
        guard let calls = readbackCalls else { preconditionFailure("readbacks need cuEventRecord and cuMemcpyDtoHAsync") }
        makeCurrent()
        readbackLock.lock()
        let target = readbackPlaces[place]
        readbackLock.unlock()
        guard let target else { preconditionFailure("no readback was queued to place \(place)") }
        let status = calls.eventSynchronize(target.event)
        if status != 0 { fail("cuEventSynchronize", status) }
        destination.copyMemory(from: target.host + offset, byteCount: bytes)
        stagingLock.lock()
        readbacksDone = max(readbacksDone, placeReadback[place] ?? 0)
        stagingLock.unlock()
    }

    /// Device to device, queued.
    public func copy(_ source: DevicePointer, to destination: DevicePointer, bytes: Int) {
        guard bytes > 0 else { return }
        if record([Operation.copy, destination, source, UInt64(bytes)]) { return }
        makeCurrent()
        let status = copyDtoD(destination, source, bytes, nil)
        if status != 0 { fail("cuMemcpyDtoDAsync", status) }
    }

    /// Waits for everything queued; a kernel fault surfaces here.
    public func synchronize() throws {
        flush()
        makeCurrent()
        try check("cuCtxSynchronize", synchronizeCall())
        stagingIsFree()
    }

    // MARK: kernels

    /// Loads a CUBIN and resolves each named kernel.
    public func loadKernels(_ cubin: [UInt8], names: [String]) throws -> [String: OpaquePointer] {
        flush()
        makeCurrent()
        var module: OpaquePointer? = nil
        try cubin.withUnsafeBytes { try check("cuModuleLoadData", moduleLoad(&module, $0.baseAddress!)) }
        var functions: [String: OpaquePointer] = [:]
        for name in names {
            var function: OpaquePointer? = nil
            try check("cuModuleGetFunction(\(name))", moduleFunction(&function, module, name))
            functions[name] = function
            kernelNames[UInt64(UInt(bitPattern: function))] = name
        }
        return functions
    }

    /// One kernel argument as the kernel declares it.
    public enum Argument {
        case pointer(DevicePointer)
        case int(Int)
        case float(Float)
        /// A kernel's u64 (a byte count).
        case u64(UInt64)
    }

    /// Queues `kernel` (or records it, see Step graphs). The driver copies the arguments before returning.
    public func launch(
        _ kernel: OpaquePointer, grid: (Int, Int, Int), block: Int, sharedBytes: Int = 0, _ arguments: [Argument]
    ) {
        if !skippedKernels.isEmpty, let name = kernelNames[UInt64(UInt(bitPattern: kernel))],
            skippedKernels.contains(name) || skippedKernels.contains("\(name)@\(grid.0)")
        {
            tapeLock.lock()
            skippedLaunchCount += 1
            tapeLock.unlock()
            return
        }
        if recording {
            // Straight onto the tape: a decode step records some 240 launches.
            tapeLock.lock()
            if recording {
                tape.append(contentsOf: [
                    Operation.launch, UInt64(UInt(bitPattern: kernel)), UInt64(grid.0), UInt64(grid.1), UInt64(grid.2),
                    UInt64(block), UInt64(sharedBytes), UInt64(arguments.count),
                ])
                for argument in arguments {
                    switch argument {
                    case .pointer(let address), .u64(let address): tape.append(address)
                    case .int(let value): tape.append(UInt64(UInt32(bitPattern: Int32(truncatingIfNeeded: value))))
                    case .float(let value): tape.append(UInt64(value.bitPattern))
                    }
                }
                tapeLaunches += 1
                tapeLock.unlock()
                return
            }
            tapeLock.unlock()
        }
        makeCurrent()
        // Arguments and their pointers on the stack: a decode step makes hundreds of launches.
        let status = withUnsafeTemporaryAllocation(byteCount: max(1, arguments.count) * 8, alignment: 8) { storage in
            withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: max(1, arguments.count)) { pointers in
                for (i, argument) in arguments.enumerated() {
                    let slot = storage.baseAddress! + 8 * i
                    switch argument {
                    case .pointer(let address), .u64(let address): slot.storeBytes(of: address, as: UInt64.self)
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

    // MARK: step graphs

    private enum Operation {
        static let launch: UInt64 = 1  // kernel, grid x y z, block, shared bytes, n, n argument words
        static let upload: UInt64 = 2  // device address, pinned host address, bytes
        static let copy: UInt64 = 3  // device destination, device source, bytes
    }

    private var graphCalls: GraphCalls?
    private var stream: OpaquePointer?
    /// Whether work is being recorded (graphs on and working).
    private var recording = false
    private let tapeLock = NSLock()
    /// The work recorded since the last flush, in `Operation` words.
    private var tape: [UInt64] = []
    /// Launches on the tape: runs too short to gain from a graph (fewer than `captureMinimum`, such
    /// as the pieces of a step that cuBLAS splits) are issued directly and never captured.
    private var tapeLaunches = 0
    /// Captured graphs by the hash of their tape (the tape itself is compared before a replay), with
    /// when each was last used, for dropping the least recently used one.
    private var graphs: [Int: [(tape: [UInt64], exec: OpaquePointer, used: Int)]] = [:]
    private var graphCount = 0
    private var clock = 0
    /// Fewer launches than this are issued directly. A decode step's first piece (two layers, see
    /// `Gemma3Model.layersInFirstSubmission`) is 14 launches with the one-token fusions, and must
    /// still be replayed.
    private static let captureMinimum = 8
    /// How often each tape (by hash) was issued directly: the second sighting is captured.
    private var sightings: [Int: Int] = [:]
    private var statistics = GraphStatistics()
    /// Graphs kept; more (shapes the server has moved past) are dropped.
    private static let graphLimit = 64

    /// Kernels that may be launched to overlap the kernel before them (programmatic dependent
    /// launch): each must wait (griddepcontrol.wait) before it writes anything or reads anything a
    /// kernel of the step writes (what a copy wrote before the step's kernels, or an earlier step,
    /// it may read: see attention_rows), in every thread before it can return. The launches of a recorded step whose kernel
    /// is here and whose predecessor on the tape is a launch get the attribute, so the next
    /// kernel's blocks start (and ask L2 for their weights) while the one before still runs,
    /// instead of after it has drained: a decode step is some 240 short launches.
    private var dependentKernels: Set<UInt64> = []
    /// Whether dependent launches are on now; see `dependentLaunchEnabled`.
    private var dependentLaunch = false
    /// Why dependent launches are off, where they are.
    public private(set) var dependentLaunchProblem: String?
    /// Turned off after a driver error: for good, whatever `dependentLaunchEnabled` is set to.
    private var dependentLaunchBroken = false

    /// Marks `kernels` as safe to launch dependently (see `dependentKernels`) and turns dependent
    /// launches on where the device and driver have them and `enabled`.
    public func allowDependentLaunch(of kernels: [OpaquePointer], enabled: Bool = true) {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        dependentKernels.formUnion(kernels.map { UInt64(UInt(bitPattern: $0)) })
        if launchExCall == nil {
            dependentLaunchProblem =
                device.architecture < 90
                ? "needs sm_90 or later (this GPU is sm_\(device.architecture))"
                : "needs a CUDA 12.3 driver or later (cuLaunchKernelEx, captured into graphs)"
        } else if !enabled {
            dependentLaunchProblem = "turned off"
        } else {
            dependentLaunchProblem = nil
        }
        dependentLaunch = launchExCall != nil && enabled
    }

    /// Whether recorded steps use dependent launches now (the benchmarks time steps both ways).
    /// Changing it drops the captured graphs, whose edges were made the other way.
    public var dependentLaunchEnabled: Bool {
        get {
            tapeLock.lock()
            defer { tapeLock.unlock() }
            return dependentLaunch
        }
        set {
            tapeLock.lock()
            defer { tapeLock.unlock() }
            flushLocked()
            guard launchExCall != nil, !dependentKernels.isEmpty, !dependentLaunchBroken else { return }
            guard newValue != dependentLaunch else { return }
            dropGraphsLocked()
            dependentLaunch = newValue
            dependentLaunchProblem = newValue ? nil : "turned off"
        }
    }

    /// Starts a digest of the work recorded from now on (`endWorkDigest`).
    public func beginWorkDigest() {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        flushLocked()
        digesting = true
        digest = nil
    }

    /// A digest of the work recorded since `beginWorkDigest`: two runs with the same digest recorded
    /// the same tapes (launches, arguments and staged copies, word for word, in the same pieces)
    /// and issued them with dependent launches on or off alike (the start-up tuning times such
    /// settings once). Not in it: synchronous uploads and downloads, and what an upload carries.
    /// Nil where nothing was recorded (graphs off).
    public func endWorkDigest() -> UInt64? {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        flushLocked()
        digesting = false
        return digest
    }
    private var digesting = false
    private var digest: UInt64?

    /// Destroys every captured graph (after the GPU has finished with them) and forgets sightings:
    /// for work that will not come again (the start-up tuning's runner), whose graphs would
    /// otherwise fill the cache, each later capture then waiting for the GPU to evict one.
    public func dropGraphs() {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        flushLocked()
        dropGraphsLocked()
    }

    /// Destroys every captured graph (after the GPU has finished with them) and forgets sightings.
    private func dropGraphsLocked() {
        guard let calls = graphCalls else { return }
        _ = synchronizeCall()
        for entries in graphs.values { for entry in entries { _ = calls.destroyExec(entry.exec) } }
        graphs.removeAll()
        graphCount = 0
        sightings.removeAll()
    }

    /// Whether work is recorded for graphs now (the benchmarks time steps both ways). Turning it on
    /// does nothing where graphs are unavailable or were turned off by an error.
    public var graphsEnabled: Bool {
        get {
            tapeLock.lock()
            defer { tapeLock.unlock() }
            return recording
        }
        set {
            tapeLock.lock()
            defer { tapeLock.unlock() }
            flushLocked()
            recording = newValue && graphCalls != nil && (statistics.disabled == nil || statistics.disabled == "turned off")
        }
    }

    public var graphStatistics: GraphStatistics {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        return statistics
    }

    /// Appends to the tape when recording; false when the caller should issue the work itself.
    private func record(_ words: [UInt64]) -> Bool {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        guard recording else { return false }
        tape += words
        if words.first == Operation.launch { tapeLaunches += 1 }
        return true
    }

    /// Issues the recorded work: a replay when the same work was captured before, a capture on its
    /// second sighting, else launch by launch. Called before anything that must see its effects.
    public func flush() {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        flushLocked()
    }

    private func flushLocked() {
        guard !tape.isEmpty else { return }
        let work = tape
        let launches = tapeLaunches
        tape.removeAll(keepingCapacity: true)
        tapeLaunches = 0
        makeCurrent()
        // FNV-1a over the words: cheaper than the standard hasher for a tape of some 4000 words, and
        // a collision only costs a comparison (tapes are compared in full before a replay).
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for word in work { hash = (hash ^ word) &* 0x100_0000_01b3 }
        let key = Int(truncatingIfNeeded: hash)
        if digesting {
            digest = ((digest ?? 0xcbf2_9ce4_8422_2325) ^ hash) &* 0x100_0000_01b3
            digest = (digest! ^ (dependentLaunch ? 1 : 2)) &* 0x100_0000_01b3
        }
        if keepingStep {
            // A step may go to the GPU in several pieces (the model submits every few layers).
            if kept == nil {
                kept = (work, Double(DispatchTime.now().uptimeNanoseconds - keepingSince) * 1e-9)
            } else {
                kept!.tape += work
            }
        }
        if let calls = graphCalls, recording, launches >= Self.captureMinimum {
            clock += 1
            if let index = graphs[key]?.firstIndex(where: { $0.tape == work }) {
                graphs[key]![index].used = clock
                let status = calls.launch(graphs[key]![index].exec, stream)
                if status == 0 {
                    statistics.replayed += 1
                    return
                }
                disableGraphs("cuGraphLaunch", status)
            } else if sightings[key, default: 0] > 0, capture(work, key: key, calls) {
                return
            }
        }
        if sightings.count > 4096 { sightings.removeAll() }
        sightings[key, default: 0] += 1
        statistics.direct += 1
        let status = issue(work)
        if status.code != 0 { fail(status.call, status.code) }
    }

    /// Captures `work` into a graph on the context's stream, keeps it and launches it. False (and
    /// graphs off) when the driver refuses; the work has not run then.
    private func capture(_ work: [UInt64], key: Int, _ calls: GraphCalls) -> Bool {
        var made = instantiate(work, calls)
        if made.exec == nil && dependentLaunch {
            // Perhaps a driver that will not capture dependent launches: graphs matter more. Off only
            // if the capture then works (else the failure was not theirs).
            let failed = made
            dependentLaunch = false
            made = instantiate(work, calls)
            if made.exec != nil {
                turnOffDependentLaunch(failed.call, failed.code)
            } else {
                dependentLaunch = true
            }
        }
        guard let exec = made.exec else {
            disableGraphs(made.call, made.code)
            return false
        }
        let status = calls.launch(exec, stream)
        guard status == 0 else {
            _ = calls.destroyExec(exec)
            disableGraphs("cuGraphLaunch", status)
            return false
        }
        if graphCount >= Self.graphLimit,
            let oldest = graphs.flatMap({ key, entries in entries.map { (key, $0.exec, $0.used) } }).min(by: { $0.2 < $1.2 })
        {
            // The least recently used graph goes; wait for the GPU first, it may still be running.
            _ = synchronizeCall()
            _ = calls.destroyExec(oldest.1)
            graphs[oldest.0]!.removeAll { $0.exec == oldest.1 }
            if graphs[oldest.0]!.isEmpty { graphs[oldest.0] = nil }
            graphCount -= 1
        }
        graphs[key, default: []].append((work, exec, clock))
        graphCount += 1
        statistics.captured += 1
        return true
    }

    /// `work` captured on the context's stream and instantiated, without running it; else the
    /// failing call and its status.
    private func instantiate(_ work: [UInt64], _ calls: GraphCalls) -> (exec: OpaquePointer?, call: String, code: Int32) {
        var status = calls.beginCapture(stream, 2)  // CU_STREAM_CAPTURE_MODE_RELAXED
        guard status == 0 else { return (nil, "cuStreamBeginCapture", status) }
        let issued = issue(work, capturing: true)
        var graph: OpaquePointer? = nil
        status = calls.endCapture(stream, &graph)
        guard issued.code == 0, status == 0, let graph else {
            if let graph { _ = calls.destroyGraph(graph) }
            return issued.code != 0 ? (nil, issued.call, issued.code) : (nil, "cuStreamEndCapture", status)
        }
        var exec: OpaquePointer? = nil
        status = calls.instantiate(&exec, graph, 0)
        _ = calls.destroyGraph(graph)
        guard status == 0, let exec else { return (nil, "cuGraphInstantiateWithFlags", status) }
        return (exec, "", 0)
    }

    /// Turns graphs off for good after a driver error, saying why once; work is issued directly from then on.
    private func disableGraphs(_ call: String, _ status: Int32) {
        recording = false
        var reason = "\(call) failed"
        do { try check(call, status) } catch { reason = "\(error)" }
        statistics.disabled = reason
        FileHandle.standardError.write(Data("CUDA graphs are off (launching kernels one by one): \(reason)\n".utf8))
    }

    /// The span that covers every upload of a tape, when there are two or more, in increasing order,
    /// each keeping the same distance between its host and device addresses (all from the staging
    /// area); else nil.
    static func uploadSpan(_ words: UnsafeBufferPointer<UInt64>) -> (to: UInt64, from: UInt64, bytes: Int)? {
        var i = 0, count = 0
        var low = UInt64.max, high: UInt64 = 0, offset: UInt64? = nil
        while i < words.count {
            if words[i] == Operation.launch {
                i += 8 + Int(words[i + 7])
                continue
            }
            if words[i] == Operation.upload {
                let to = words[i + 1], from = words[i + 2], bytes = words[i + 3]
                if offset == nil { offset = from &- to }
                // In the order staged, none overlapping (a staging area that wrapped around is not).
                guard from &- to == offset, to >= high else { return nil }
                low = min(low, to)
                high = to + bytes
                count += 1
            }
            i += 4
        }
        guard count > 1, let offset else { return nil }
        return (low, low &+ offset, Int(high - low))
    }

    /// Turns dependent launches off for good after a driver error, saying why once.
    private func turnOffDependentLaunch(_ call: String, _ status: Int32) {
        dependentLaunch = false
        dependentLaunchBroken = true
        var reason = "\(call) failed"
        do { try check(call, status) } catch { reason = "\(error)" }
        dependentLaunchProblem = reason
        FileHandle.standardError.write(Data("CUDA dependent launches are off: \(reason)\n".utf8))
    }

    /// Issues tape words on the context's stream; the first failing call and its status, or code 0.
    private func issue(_ work: [UInt64], capturing: Bool = false) -> (call: String, code: Int32) {
        var i = 0
        var afterLaunch = false
        return work.withUnsafeBufferPointer { words in
            // The tape's uploads as one copy ahead of its first launch: each went to a fresh part of the
            // staging area (nothing reuses one before a download or synchronize, see `stage`) that no
            // kernel writes, so copying them all first changes nothing a kernel reads, and a decode
            // step's graph has one copy node a piece instead of one a layer (29 cost 0.07 ms of 1.54).
            let hoisted = Self.uploadSpan(words)
            if let hoisted {
                let status = copyHtoDAsync(hoisted.to, UnsafeRawPointer(bitPattern: UInt(hoisted.from))!, hoisted.bytes, stream)
                if status != 0 { return ("cuMemcpyHtoDAsync", status) }
            }
            while i < words.count {
                switch words[i] {
                case Operation.launch:
                    let count = Int(words[i + 7])
                    let dependent = afterLaunch && dependentLaunch && dependentKernels.contains(words[i + 1])
                    let status = withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: max(1, count)) {
                        pointers in
                        // The argument words stay where they are; the driver reads the size it needs.
                        for a in 0..<count { pointers[a] = UnsafeMutableRawPointer(mutating: words.baseAddress! + i + 8 + a) }
                        if dependent, let launchEx = launchExCall {
                            let status = Self.withDependentLaunchConfig(words, launchAt: i, stream) { config in
                                launchEx(config, OpaquePointer(bitPattern: UInt(words[i + 1])), pointers.baseAddress, nil)
                            }
                            // In a capture the failed call has spoilt it: `capture` retries without.
                            if status == 0 || capturing { return status }
                            turnOffDependentLaunch("cuLaunchKernelEx", status)
                        }
                        return launchCall(
                            OpaquePointer(bitPattern: UInt(words[i + 1])), UInt32(words[i + 2]), UInt32(words[i + 3]),
                            UInt32(words[i + 4]), UInt32(words[i + 5]), 1, 1, UInt32(words[i + 6]), stream,
                            pointers.baseAddress, nil)
                    }
                    if status != 0 { return (dependent && capturing ? "cuLaunchKernelEx" : "cuLaunchKernel", status) }
                    i += 8 + count
                    afterLaunch = true
                case Operation.upload where hoisted != nil:
                    i += 4
                case Operation.upload:
                    let host = UnsafeRawPointer(bitPattern: UInt(words[i + 2]))!
                    let status = copyHtoDAsync(words[i + 1], host, Int(words[i + 3]), stream)
                    if status != 0 { return ("cuMemcpyHtoDAsync", status) }
                    i += 4
                    afterLaunch = false
                default:
                    let status = copyDtoD(words[i + 1], words[i + 2], Int(words[i + 3]), stream)
                    if status != 0 { return ("cuMemcpyDtoDAsync", status) }
                    i += 4
                    afterLaunch = false
                }
            }
            return ("", 0)
        }
    }

    /// A CUlaunchConfig (cuda.h, CUDA 12) for the launch at `launchAt` in tape `words` (its grid x y z,
    /// block x and shared bytes) on `stream`, with one attribute:
    /// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (6), on.
    /// Layouts: the config is 7 unsigned ints, the stream at 32, the attribute array at 40 and
    /// their count at 48 (56 bytes); an attribute is its id, padded to 8, then a 64-byte value
    /// union whose first int is programmaticStreamSerializationAllowed (72 bytes).
    static func withDependentLaunchConfig<R>(
        _ words: UnsafeBufferPointer<UInt64>, launchAt i: Int, _ stream: OpaquePointer?, _ body: (UnsafeRawPointer) -> R
    ) -> R {
        withUnsafeTemporaryAllocation(byteCount: 56 + 72, alignment: 8) { bytes in
            let base = bytes.baseAddress!
            base.initializeMemory(as: UInt8.self, repeating: 0, count: 56 + 72)
            // gridDimX, Y, Z, blockDimX from the tape; blockDimY and Z stay 1; sharedMemBytes.
            for n in 0..<4 { base.storeBytes(of: UInt32(truncatingIfNeeded: words[i + 2 + n]), toByteOffset: 4 * n, as: UInt32.self) }
            base.storeBytes(of: UInt32(1), toByteOffset: 16, as: UInt32.self)
            base.storeBytes(of: UInt32(1), toByteOffset: 20, as: UInt32.self)
            base.storeBytes(of: UInt32(truncatingIfNeeded: words[i + 6]), toByteOffset: 24, as: UInt32.self)
            base.storeBytes(of: UInt(bitPattern: stream), toByteOffset: 32, as: UInt.self)
            let attribute = base + 56
            base.storeBytes(of: UInt(bitPattern: attribute), toByteOffset: 40, as: UInt.self)
            base.storeBytes(of: UInt32(1), toByteOffset: 48, as: UInt32.self)
            attribute.storeBytes(of: UInt32(6), as: UInt32.self)
            attribute.storeBytes(of: Int32(1), toByteOffset: 8, as: Int32.self)
            return body(UnsafeRawPointer(base))
        }
    }

    // MARK: profiling (gpu-check --bench)

    /// Kernel names by function, for profiles.
    private var kernelNames: [UInt64: String] = [:]
    /// Kernels whose launches are dropped, by name or as name@grid-x (one launch shape of it): what a
    /// kernel costs inside a step is the step's time without it (gpu-check --decode-sweep). The
    /// results are then wrong; nothing else sets it. Set between steps only.
    public var skippedKernels: Set<String> = []
    /// Launches dropped so far for `skippedKernels` (so a sweep can say that its rows dropped what they say).
    public var skippedLaunches: Int {
        tapeLock.lock()
        defer { tapeLock.unlock() }
        return skippedLaunchCount
    }
    private var skippedLaunchCount = 0
    /// While `profileStep` runs: the tapes it issues, one after the other, and how long the host took
    /// to record the first (until the GPU had work).
    private var keepingStep = false
    private var keepingSince: UInt64 = 0
    private var kept: (tape: [UInt64], seconds: Double)?

    /// Where one step's time goes: the host recording it, its graph on the GPU, and each operation.
    public struct StepProfile: Sendable {
        public struct Operation: Sendable {
            /// The kernel's name, or "copy".
            public var name: String
            /// Grid and block, e.g. "144x1x1 / 256"; the size for a copy.
            public var shape: String
            /// How many times the step runs it with this shape.
            public var count: Int
            /// GPU time of all of them, each timed alone (replayed back to back in a graph).
            public var seconds: Double
        }
        /// Host time from the step's start until its first work went to the GPU.
        public var recordSeconds: Double
        /// The step's graph alone on the GPU (replays queued back to back).
        public var graphSeconds: Double
        /// Copies of the step's inputs from pinned memory in it, and the graph without them.
        public var uploads: Int
        public var graphWithoutUploadsSeconds: Double
        /// Operations by shape, the most costly first.
        public var operations: [Operation]
    }

    /// Runs `step` (such as a decode step) and measures it: the host's time until the GPU had work,
    /// the step's work (every tape it issued) replayed alone as one graph, and each launch and copy
    /// of it replayed alone 20 times in a graph. Nil where graphs are off. The replays rerun the
    /// step's kernels on its buffers; the whole step, replayed last, leaves them as the step did.
    public func profileStep(_ step: () throws -> Void) rethrows -> StepProfile? {
        tapeLock.lock()
        flushLocked()
        kept = nil
        keepingStep = true
        keepingSince = DispatchTime.now().uptimeNanoseconds
        tapeLock.unlock()
        defer {
            tapeLock.lock()
            keepingStep = false
            kept = nil
            tapeLock.unlock()
        }
        try step()
        tapeLock.lock()
        defer { tapeLock.unlock() }
        guard let (work, recordSeconds) = kept, let calls = graphCalls, recording, work.contains(Operation.launch)
        else { return nil }
        makeCurrent()
        func timed(_ operations: [UInt64], repeats: Int) -> Double? {
            guard let exec = instantiate(operations, calls).exec else { return nil }
            defer { _ = calls.destroyExec(exec) }
            _ = calls.launch(exec, stream)
            guard synchronizeCall() == 0 else { return nil }
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<repeats { _ = calls.launch(exec, stream) }
            guard synchronizeCall() == 0 else { return nil }
            return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 / Double(repeats)
        }
        var byShape: [String: StepProfile.Operation] = [:]
        var order: [String] = []
        // The step without its uploads (its small inputs, already on the device), timed below: what
        // the copies from pinned memory cost inside the graph.
        var launchesAndCopies: [UInt64] = []
        var uploads = 0
        var i = 0
        while i < work.count {
            let length = work[i] == Operation.launch ? 8 + Int(work[i + 7]) : 4
            let words = Array(work[i..<i + length])
            defer { i += length }
            if words[0] == Operation.upload { uploads += 1 } else { launchesAndCopies += words }
            let name: String, shape: String
            switch words[0] {
            case Operation.launch:
                name = kernelNames[words[1]] ?? "kernel"
                shape = "\(words[2])x\(words[3])x\(words[4]) / \(words[5])"
            case Operation.copy:
                name = "copy"
                shape = "\(words[3]) bytes"
            default:
                continue  // uploads read pinned memory the step has already copied
            }
            let together = 20
            guard let seconds = timed(Array([[UInt64]](repeating: words, count: together).joined()), repeats: 3) else {
                return nil
            }
            let key = name + " " + shape
            if byShape[key] == nil {
                byShape[key] = StepProfile.Operation(name: name, shape: shape, count: 0, seconds: 0)
                order.append(key)
            }
            byShape[key]!.count += 1
            byShape[key]!.seconds += seconds / Double(together)
        }
        // The whole step last: each operation replayed alone left in-place ones (norms added into the
        // residual, RoPE on the keys) and the KV rows they stored wrong; the step replayed whole
        // recomputes every one of them from its inputs, so the sequences are as the step left them.
        guard let graphSeconds = timed(work, repeats: 10) else { return nil }
        guard let withoutUploads = timed(launchesAndCopies, repeats: 10) else { return nil }
        let operations = order.map { byShape[$0]! }.sorted { $0.seconds > $1.seconds }
        return StepProfile(
            recordSeconds: recordSeconds, graphSeconds: graphSeconds, uploads: uploads,
            graphWithoutUploadsSeconds: withoutUploads, operations: operations)
    }

    // MARK: errors

    func check(_ call: String, _ status: Int32) throws { try CUDADriver.check(call, status, errorName, errorString) }

    func fail(_ call: String, _ status: Int32) -> Never {
        do { try check(call, status) } catch { fatalError("CUDA: \(error)") }
        fatalError("CUDA: \(call) failed with \(status)")
    }
}
