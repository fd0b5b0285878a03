import CUDA
import Foundation
import Inference

/// Activation storage in device memory: `count` f32 values (or, for a bf16 KV cache, `count` bf16
/// values: `elementBytes` 2), freed with the last reference.
public final class CUDABuffer {
    public let address: CUDAContext.DevicePointer
    public let count: Int
    /// 4 (f32) or 2 (bf16, KV caches only).
    public let elementBytes: Int
    let context: CUDAContext

    init(context: CUDAContext, count: Int, elementBytes: Int = 4) throws {
        self.context = context
        self.count = count
        self.elementBytes = elementBytes
        address = try context.allocate(bytes: max(1, count) * elementBytes)
    }

    /// Room for `bytes` of any element type (a bf16 weight matrix), in whole f32 slots.
    convenience init(context: CUDAContext, bytes: Int) throws {
        try self.init(context: context, count: (bytes + 3) / 4)
    }

    /// The device address of element `offset`.
    @inline(__always) func at(_ offset: Int) -> CUDAContext.DevicePointer { address + UInt64(offset * elementBytes) }

    deinit { context.free(address) }
}

/// What the KV cache holds on the GPU (vLLM's --kv-cache-dtype; `auto` is the model's bf16).
/// bf16 halves the cache, so twice the sequences or context fit, and halves the bytes attention
/// reads; f32 keeps the CPU's numbers (for comparisons).
public enum KVCacheType: String, Sendable, CaseIterable {
    case bfloat16, float32

    /// `auto`, `bfloat16`/`bf16` or `float32`/`f32`; nil for anything else.
    public init?(name: String) {
        switch name.lowercased() {
        case "auto", "bfloat16", "bf16": self = .bfloat16
        case "float32", "f32", "float": self = .float32
        default: return nil
        }
    }
}

/// A weight in device memory: matrices as bf16 (out, in) rows, norm vectors as f32.
public struct CUDAMatrix: @unchecked Sendable {
    // @unchecked: the device memory is written once at load and only read afterwards.
    public enum Storage: Sendable { case bf16, f32 }
    public let storage: Storage
    public let rows: Int
    public let columns: Int
    let memory: CUDABuffer
    public var address: CUDAContext.DevicePointer { memory.address }
    public var bytes: Int { rows * columns * (storage == .bf16 ? 2 : 4) }
}

/// The CUDA implementation of `ComputeBackend`: the same forward pass as `CPUBackend`, each op a
/// kernel launch queued on the GPU (gemma3-and-serving.md, CUDA sections).
///
/// - Weights: matrices are converted once at load to bf16 on the device (a bf16 checkpoint is copied
///   as is; f16, f32 and GGUF quantized tensors are widened on the host a slice at a time, then
///   rounded to bf16); norm weights stay f32. The model's bytes then live on the GPU, read at HBM speed.
/// - Activations and the KV cache are f32, as on the CPU, so the two backends agree closely and the
///   golden references' f32 bar applies to everything but the weights' rounding.
/// - Products of up to 16 rows (decode) run in `gemv_bf16` (one row) or `gemv_pairs_bf16`, which read
///   each weight row once for every row of the step with f32 activations (q, k and v in one launch;
///   the MLP's gate, up and GELU in `gemv_gelu_bf16`). Larger products (prefill) go to cuBLAS with
///   bf16 activations and f32 accumulation, or, without cuBLAS, to the tensor cores (`gemm_mma_bf16`,
///   sm_80 and later, once it has passed its self-check) or the tiled `gemm_bf16`.
/// - Only reading results back (`read`, `argmax`) waits for the GPU: everything else is queued on the
///   default stream and returns, small per-step inputs included (`CUDAContext.stage`).
public final class CUDABackend: ComputeBackend, @unchecked Sendable {
    // @unchecked: the scratch buffers are guarded by `lock`; everything else is immutable after init.
    public typealias Buffer = CUDABuffer
    public typealias Matrix = CUDAMatrix

    public let context: CUDAContext
    /// Where the CUBIN came from (the kernel cache, or compiled now).
    public let kernels: KernelCache.Entry
    /// nil when cuBLAS was not found or not wanted; `cublasProblem` then says why.
    public let cublas: CUBLAS?
    public let cublasProblem: String?
    /// Products of more than 16 rows go to cuBLAS when it is loaded; false uses the tiled kernel
    /// (the benchmarks time both: Cloud Run images have no cuBLAS).
    public var prefillWithCUBLAS: Bool {
        get { lock.lock(); defer { lock.unlock() }; return cublasEnabled }
        set { lock.lock(); cublasEnabled = newValue; lock.unlock() }
    }
    private var cublasEnabled = true
    /// Why products of more than 16 rows without cuBLAS do not run on the tensor cores (nil: they do):
    /// a GPU before sm_80, `INFERENCE_TENSOR_CORES=off`, or a failed self-check at start.
    public private(set) var tensorCoreProblem: String?
    /// Products of more than 16 rows that cuBLAS does not take go to `gemm_mma_bf16` (when
    /// `tensorCoreProblem` is nil) or to the tiled `gemm_bf16` (false; the benchmarks time both).
    public var prefillWithTensorCores: Bool {
        get { lock.lock(); defer { lock.unlock() }; return tensorCoresEnabled }
        set { lock.lock(); tensorCoresEnabled = newValue && tensorCoreProblem == nil; lock.unlock() }
    }
    private var tensorCoresEnabled = false
    public let nvrtcPath: String
    /// What the KV cache holds: bf16 unless `INFERENCE_KV_CACHE_DTYPE` (or the init) says float32.
    public let kvCache: KVCacheType

    private let functions: [String: OpaquePointer]
    private let lock = NSLock()
    private var argmaxOut: CUDABuffer?  // the chosen ids, read back at once
    private var argmaxParts: CUDABuffer?  // each slice's largest logit and its index, for argmax_finish
    private var candidateValues: CUDABuffer?  // sample_candidates' places: each slice's top-k, capped
    private var candidateMaxima: CUDABuffer?  // sample_maxima's: each slice's largest value
    private var candidateMasses: CUDABuffer?  // sample_candidates': each slice's mass (u64), for top-p
    private var candidateIds: CUDABuffer?  // their token ids (as Int32 bits)
    private var candidateCounts: CUDABuffer?  // how many per (row, slice); -1: draw from the whole row
    private var penaltyScratch: CUDABuffer?  // penalty entries too many for the staging area
    private var logprobCopies: CUDABuffer?  // penalized rows wanting logprobs, copied before the penalties
    private var logprobOut: CUDABuffer?  // logprob_merge's numbers, read back with the ids
    private var logprobParts: CUDABuffer?  // logprob_slices': each slice's maximum, sum, count and top
    /// Per readback place, the logprobs its queued draws asked for (and the row's width), whose numbers follow the ids there.
    private var queuedLogprobs: [Int: (logprobs: [Int?], columns: Int)] = [:]
    /// Most bytes of penalty entries staged per step; the staging area (8 MiB, or a third of it for a
    /// pipelined step) must also hold the step's other inputs, and must not wrap within a step.
    static let stagedPenaltyBytes = 1 << 20
    /// A one-token decode step's residual norms (of up to `GemmaKernels.fusedNormMaximum` columns) go
    /// inside the product after them (`gemv_norm_bf16`, `gemv_gelu_norm_bf16`: a launch fewer each)
    /// unless this is false (gpu-check times both); never where `fusedNormProblem` says why not.
    public var fusedNorms: Bool {
        get { lock.lock(); defer { lock.unlock() }; return fusedNormsEnabled }
        set { lock.lock(); fusedNormsEnabled = newValue && fusedNormProblem == nil; lock.unlock() }
    }
    private var fusedNormsEnabled = false
    /// Why one-sequence steps cannot fuse their residual norms (nil: they may):
    /// `INFERENCE_FUSED_NORMS=off`, or a self-check at start that did not give the norm's own bits.
    public private(set) var fusedNormProblem: String?
    /// Bytes of the next products' weights that a one-sequence decode step's attention asks L2 for
    /// (`prefetch_ahead`): its loads leave memory idle for some microseconds, in which the output
    /// projection's and the MLP's weights could be on their way. None by default: in each of four
    /// gpu-check runs on an H100 (1B shape, batch 1) a step was fastest without (the last: 1.445 ms,
    /// against 1.485 to 1.537 ms with 8 to 40 MiB; the prefetches' reads delay the attention's own),
    /// and asked in bulk (`prefetchAheadKind`) it was no better: +0.013 to +0.133 ms a step from 16 to
    /// 64 MiB in two sweeps.
    /// `INFERENCE_PREFETCH_AHEAD` gives MiB (0 or off: none); gpu-check times several, and `serve`
    /// times none against 16 MiB at start unless it is set (`DecodeTuning`). Each step also
    /// cuts it to what its attention's blocks ask for at most (`prefetchBudget`).
    public var prefetchAheadBytes: Int {
        get { lock.lock(); defer { lock.unlock() }; return prefetchAhead }
        set { lock.lock(); prefetchAhead = min(max(0, newValue), Self.mostPrefetchAhead); lock.unlock() }
    }
    private var prefetchAhead = 0
    static let mostPrefetchAhead = 4096 << 20
    /// How attention's blocks ask L2 for those weights (`prefetch_ahead`).
    public enum PrefetchKind: String, CaseIterable, Sendable {
        /// A prefetch instruction a 128-byte line, from every thread (as in the four runs above).
        case lines
        /// The copy engine's bulk prefetch (sm_90; lines elsewhere): an instruction every 16 KiB,
        /// so the blocks' own loads do not queue behind thousands of prefetches.
        case bulk
        /// Bulk, the lines marked evict-last in L2.
        case evictLast = "evict-last"

        var kernelValue: Int { self == .lines ? 0 : self == .bulk ? 1 : 2 }
    }
    /// `INFERENCE_PREFETCH_KIND`: lines, bulk or evict-last (gpu-check's sweep times each).
    public var prefetchAheadKind: PrefetchKind {
        get { lock.lock(); defer { lock.unlock() }; return prefetchKind }
        set { lock.lock(); prefetchKind = newValue; lock.unlock() }
    }
    private var prefetchKind = PrefetchKind.bulk
    /// The kind attention_rows asks in: bulk prefetches need sm_90 (elsewhere the kernel asks a line
    /// at a time, within that kind's budget).
    private var prefetchKindInKernel: PrefetchKind { context.device.architecture >= 90 ? prefetchAheadKind : .lines }
    /// A decode step's q/k norms and RoPE go inside its attention (`attention_rows`: norm_rope's
    /// launch fewer) unless this is false (gpu-check times both) or `INFERENCE_FUSED_NORMS=off`.
    public var fusedHeadNorms: Bool {
        get { lock.lock(); defer { lock.unlock() }; return headNormsFused }
        set { lock.lock(); headNormsFused = newValue; lock.unlock() }
    }
    private var headNormsFused = true
    /// Whether a decode step's attention (`attention_rows`) keeps work off its busy blocks: the step's
    /// key and value stored by a row's last share's block (empty until the row's keys fill the
    /// others) rather than its first's, the new key loaded and normed only by the share that holds
    /// it, and shares past a row's keys left at once. The same bits either way; gpu-check's sweep
    /// times both (within its noise on an H100). No environment switch: nothing to turn off for.
    public var attentionTrims: Bool {
        get { lock.lock(); defer { lock.unlock() }; return trimsAttention }
        set { lock.lock(); trimsAttention = newValue; lock.unlock() }
    }
    private var trimsAttention = true
    /// Whether a decode step's attention (`attention_rows` storing the step's keys) loads what no
    /// kernel of the step writes (the rows table, each warp's first keys and values, the head norms'
    /// weights and angles) before it waits for the qkv product, rather than after; the same bits
    /// either way. On an H100 (1B, gpu-check's sweep, alternated) a step took 1.269 against 1.361 ms
    /// from a 64-token prompt and 1.382 against 1.479 ms from 1024. On unless
    /// `INFERENCE_ATTENTION_EARLY_LOADS=off`.
    public var attentionEarlyLoads: Bool {
        get { lock.lock(); defer { lock.unlock() }; return earlyLoads }
        set { lock.lock(); earlyLoads = newValue; lock.unlock() }
    }
    private var earlyLoads = true
    /// Whether a one-token step's MLP after its fused norm runs as one launch (`mlp_fused_bf16`: gate,
    /// up, GELU and down, down's weights read beside gate's and up's, its sums over slices of 256
    /// intermediate rows added by the last block of each output chunk) instead of two. Off by default:
    /// slower on an H100 (1B step +0.09 ms from 64 tokens, +0.11 from 1024; `INFERENCE_FUSED_MLP=on`). Its sums
    /// run in another order than the down product's, so its logits are not that path's bits (within
    /// float rounding). Only where the whole grid fits on the GPU at once, hidden size up to 1152 and
    /// the norm fused (`mlp` returns false otherwise; `fusedMLPLaunches` counts the launches).
    public var fusedMLP: Bool {
        get { lock.lock(); defer { lock.unlock() }; return mlpFused }
        set { lock.lock(); mlpFused = newValue; lock.unlock() }
    }
    private var mlpFused = false
    /// Whether a one-token step of one sequence whose attention takes shares merges them and
    /// multiplies them by the output projection in one launch (`attention_output_bf16`: blocks of
    /// 32 rows and one head, each merging its head's shares, the heads' sums added by the last block
    /// of each row group in head order) instead of attention_combine and the product: one seam a
    /// layer fewer. Its sums run in another order than the product's, so its logits are not that
    /// path's bits (within float rounding). `INFERENCE_FUSED_OUTPUT=on|off`; off by default: not yet
    /// timed on a GPU (`gpu-check --decode-sweep` times it). `fusedOutputLaunches` counts its launches.
    public var fusedOutput: Bool {
        get { lock.lock(); defer { lock.unlock() }; return outputFusion }
        set { lock.lock(); outputFusion = newValue; lock.unlock() }
    }
    private var outputFusion = false
    public var fusedOutputLaunches: Int {
        lock.lock()
        defer { lock.unlock() }
        return outputLaunches
    }
    private var outputLaunches = 0
    private var outputParts: CUDABuffer?  // each head's sums of attention_output_bf16
    private var outputTickets: CUDABuffer?  // its row groups' counts of blocks done
    /// Which one-token products stage their weights in shared memory (`gemv_staged_bf16`,
    /// `gemv_norm_staged_bf16`, `gemv_gelu_norm_staged_bf16`): each thread copies the chunks of its
    /// weight row it will take with cp.async before the kernel waits for the one before it, instead
    /// of only asking L2 for their lines, so that once its input is there the product reads shared
    /// memory rather than L2 in several round trips. The same sums in the same order: the same bits.
    /// Only where the launch's whole grid fits on the GPU at once and each thread's chunks fit the
    /// stage (the LM head, for one, is never staged). `INFERENCE_STAGED_WEIGHTS=off|products|gate-up|on`;
    /// products by default where dependent launches are on (sm_90 and later; off elsewhere, where the
    /// copies could not overlap the kernel before and it was not timed): on H100s a 1B step took 0.043-0.049 ms less from a 64-token prompt and
    /// 0.025-0.028 from 512-1024 tokens. Gate/up's kernel streams every chunk of its rows through a
    /// ring of 8 slots a thread (8 copies in flight from before the wait to its end); its earlier
    /// form, the first group's chunks staged and the rest read as unstaged, was 0.016-0.023 ms slower
    /// (`on` against `products`) from 64 tokens and 0.008 faster from 512-1024 (README); the ring is
    /// not timed yet, so `products` stays the default. `serve` times every value on its card at
    /// start unless the variable is set (`DecodeTuning`).
    public enum StagedWeights: String, CaseIterable, Sendable {
        /// Not staged: L2 is asked for the lines.
        case off
        /// q/k/v, the output projection and down (gemv_bf16 and gemv_norm_bf16's launches).
        case products
        /// Gate and up (gemv_gelu_norm_bf16's), streamed through a ring.
        case gateUp = "gate-up"
        /// Both.
        case on
        var products: Bool { self == .products || self == .on }
        var gateUp: Bool { self == .gateUp || self == .on }
    }
    public var stagedWeights: StagedWeights {
        get { lock.lock(); defer { lock.unlock() }; return staging }
        set { lock.lock(); staging = newValue; lock.unlock() }
    }
    private var staging = StagedWeights.products
    /// Launches with staged weights so far (for checks that they ran).
    public var stagedLaunches: Int {
        lock.lock()
        defer { lock.unlock() }
        return stagedLaunchCount
    }
    private var stagedLaunchCount = 0
    /// Blocks of each staged kernel the GPU holds at once (a kernel missing: never staged).
    private var stagedResident: [String: Int] = [:]
    /// Launches of `mlp_fused_bf16` so far (for checks that the fused MLP ran).
    public var fusedMLPLaunches: Int {
        lock.lock()
        defer { lock.unlock() }
        return mlpLaunches
    }
    private var mlpLaunches = 0
    /// Blocks of `mlp_fused_bf16` the GPU holds at once (0: unknown, and the MLP is never fused).
    private var mlpFusedResident = 0
    /// The fused MLP's partial sums and its slice barriers and tickets (`mlp_fused_bf16`).
    private var mlpPartials: CUDABuffer?
    private var mlpBarriers: CUDABuffer?
    /// How many shares a decode step's attention cuts each row's keys into while they fit that many
    /// of 32 keys (16: up to 512 keys; 2 to 32: gpu-check's sweep times others).
    public var decodeShares: Int {
        get { lock.lock(); defer { lock.unlock() }; return attentionShares }
        set { lock.lock(); attentionShares = min(32, max(2, newValue)); lock.unlock() }
    }
    private var attentionShares = 16
    /// How many shares once the keys no longer fit `decodeShares` of 32 (at least as many; up to 32,
    /// what attention_combine merges). On an H100 (1B, gpu-check's sweep) 32 shares past 512 keys
    /// took 0.05-0.19 ms off a step against 16 (from prompts of 512, 1024, 2048 and 3952 tokens,
    /// two cards), where from 64 tokens 32 shares throughout were even or 0.016 ms slower.
    public var longDecodeShares: Int {
        get { lock.lock(); defer { lock.unlock() }; return longShares }
        set { lock.lock(); longShares = min(32, max(2, newValue)); lock.unlock() }
    }
    private var longShares = 32
    /// Whether a one-sequence decode step runs each layer (`whole`: `decode_layer`) or its first half
    /// through the output projection (`attention`: `decode_attention`) as one launch of a persistent
    /// grid (its phases behind grid barriers: the same bits as the launches it replaces), each half
    /// as one (`halves`: decode_attention, then `decode_mlp`, whose registers let twice the blocks
    /// an SM), or not (`off`).
    /// Off by default: slower in every mode on an H100 (1B, at c2fc4e1, before the early attention
    /// loads: 1.44 ms a step launch by launch, 1.84 to 2.04 ms so; each grid barrier cost as much as
    /// a seam between launches). gpu-check's bench and sweep time every mode;
    /// `INFERENCE_PERSISTENT_LAYERS`. Never where `persistentProblem` says why not.
    public var persistentLayers: PersistentLayers {
        get { lock.lock(); defer { lock.unlock() }; return persistentMode }
        set { lock.lock(); persistentMode = persistentProblem == nil ? newValue : .off; lock.unlock() }
    }
    public enum PersistentLayers: String, CaseIterable, Sendable { case off, attention, halves, whole }
    private var persistentMode = PersistentLayers.off
    /// Why `decode_layer`, `decode_attention` and `decode_mlp` cannot run (nil: they can): the driver
    /// cannot say how many of their blocks an SM holds, or none fit.
    public private(set) var persistentProblem: String?
    /// Blocks of `decode_layer` and `decode_attention` per multiprocessor (2; at most as many as one
    /// holds, which the driver says at start; gpu-check's sweep times others).
    public var persistentBlocksPerMultiprocessor: Int {
        get { lock.lock(); defer { lock.unlock() }; return persistentPerSM }
        set { lock.lock(); persistentPerSM = min(max(1, newValue), persistentResident); lock.unlock() }
    }
    private var persistentPerSM = 2
    /// How many blocks of `decode_layer` (and `decode_attention`) one multiprocessor holds at once, as
    /// the driver says (0: unknown).
    public var persistentResidentBlocks: Int { persistentResident }
    private var persistentResident = 0
    /// Blocks of `decode_mlp` per multiprocessor (as many as one holds, at most 4; gpu-check's sweep
    /// times fewer).
    public var persistentMLPBlocksPerMultiprocessor: Int {
        get { lock.lock(); defer { lock.unlock() }; return mlpPerSM }
        set { lock.lock(); mlpPerSM = min(max(1, newValue), mlpResident); lock.unlock() }
    }
    private var mlpPerSM = 0
    private var mlpResident = 0
    /// How many persistent launches (`decode_layer`, `decode_attention`, `decode_mlp`) ran (for checks
    /// that the persistent path ran).
    public var persistentLaunches: Int {
        lock.lock()
        defer { lock.unlock() }
        return persistentLayerLaunches
    }
    private var persistentLayerLaunches = 0
    /// Where the persistent launches stamp their phases' times, between `beginPersistentStamps` and
    /// `endPersistentStamps` (gpu-check); each launch takes a region of `stampBlocks` blocks × 16.
    private var stampBuffer: CUDABuffer?
    private var stampGrids: [Int] = []
    private var stampCapacity = 0
    static let stampBlocks = 1024
    /// The persistent kernels' grid barrier: its count of blocks arrived and its generation (zero between barriers).
    private let gridBarrier: CUDABuffer
    /// Whether decode steps may be pipelined (`pipelinesSteps`); `INFERENCE_PIPELINE=off`.
    private var pipelineAllowed = true
    /// How many attention launches applied the q/k norms and RoPE themselves (for checks that the fused path ran).
    public var fusedHeadNormLaunches: Int {
        lock.lock()
        defer { lock.unlock() }
        return headNormsInside
    }
    private var headNormsInside = 0
    /// How many launches took a residual norm inside their product (for checks that the fused path ran).
    public var fusedNormLaunches: Int {
        lock.lock()
        defer { lock.unlock() }
        return fusedLaunches
    }
    private var fusedLaunches = 0
    /// The fused norm's count of blocks that have read their row (one word, zero between launches;
    /// one for the backend, since its launches run one after another on one stream).
    private let normTicket: CUDABuffer
    private var partialScratch: CUDABuffer?  // attention shares, merged by attention_combine
    private var halfScratch: CUDABuffer?  // bf16 activations for cuBLAS (two per f32 slot)

    public var name: String {
        let products = cublas != nil ? ", cuBLAS" : tensorCoreProblem == nil ? ", tensor cores" : ""
        return "cuda (\(context.device.name), sm_\(context.device.architecture)\(products))"
    }

    /// Opens the driver, the GPU `ordinal`, NVRTC (compiling the kernels, or taking them from the
    /// cache) and, unless `useCUBLAS` is false or `INFERENCE_CUBLAS=off`, cuBLAS.
    public init(
        ordinal: Int = 0, useCUBLAS: Bool = true, cache: KernelCache = KernelCache(), kvCache: KVCacheType? = nil,
        environment env: [String: String] = ProcessInfo.processInfo.environment
    ) throws {
        if let kvCache {
            self.kvCache = kvCache
        } else if let name = env["INFERENCE_KV_CACHE_DTYPE"] {
            guard let type = KVCacheType(name: name) else {
                throw CUDAError.invalidSetting("INFERENCE_KV_CACHE_DTYPE is \(name); use auto, bfloat16 or float32")
            }
            self.kvCache = type
        } else {
            self.kvCache = .bfloat16
        }
        let driver = try CUDADriver(environment: env)
        context = try CUDAContext(driver: driver, ordinal: ordinal, graphs: env["INFERENCE_CUDA_GRAPHS"] != "off")
        let nvrtc = try NVRTC(environment: env, driverMajor: driver.version / 1000)
        nvrtcPath = nvrtc.path
        kernels = try cache.cubin(
            source: GemmaKernels.source, architecture: context.device.architecture, options: GemmaKernels.options,
            compiler: nvrtc)
        functions = try context.loadKernels(kernels.cubin, names: GemmaKernels.names)
        normTicket = try CUDABuffer(context: context, count: 1)
        gridBarrier = try CUDABuffer(context: context, count: 2)
        // Every kernel of the module waits for the one before it (grid_wait) before touching a step's data.
        context.allowDependentLaunch(of: Array(functions.values), enabled: env["INFERENCE_DEPENDENT_LAUNCH"] != "off")
        if !useCUBLAS || env["INFERENCE_CUBLAS"] == "off" {
            cublas = nil
            cublasProblem = "turned off"
        } else {
            do {
                cublas = try CUBLAS(context: context, environment: env)
                cublasProblem = nil
            } catch {
                cublas = nil
                cublasProblem = "\(error)"
            }
        }
        if context.device.architecture < 80 {
            tensorCoreProblem = "needs sm_80 or later (this GPU is sm_\(context.device.architecture))"
        } else if env["INFERENCE_TENSOR_CORES"] == "off" {
            tensorCoreProblem = "turned off (INFERENCE_TENSOR_CORES=off)"
        } else {
            tensorCoreProblem = try tensorCoreSelfCheck()
        }
        tensorCoresEnabled = tensorCoreProblem == nil
        // Staged products where the kernel before can still be running as they copy (dependent
        // launches, sm_90 and later: timed there only); chosen before the fused norms' self-check,
        // which then runs the staged kernel with its norm too.
        staging = context.dependentLaunchProblem == nil ? .products : .off
        for name in ["gemv_staged_bf16", "gemv_norm_staged_bf16", "gemv_gelu_norm_staged_bf16"] {
            stagedResident[name] =
                (functions[name].flatMap { context.residentBlocks(of: $0, block: 256) } ?? 0) * context.device.multiprocessors
        }
        if let setting = env["INFERENCE_STAGED_WEIGHTS"] {
            guard let mode = StagedWeights(rawValue: setting) else {
                throw CUDAError.invalidSetting("INFERENCE_STAGED_WEIGHTS is \(setting); use off, products, gate-up or on")
            }
            staging = mode
        }
        // Turned off, the fused kernels do not run at all, not even in the self-check: the way out
        // should they fault on some GPU.
        fusedNormProblem = env["INFERENCE_FUSED_NORMS"] == "off" ? "turned off (INFERENCE_FUSED_NORMS=off)" : try fusedNormSelfCheck()
        fusedNormsEnabled = fusedNormProblem == nil
        headNormsFused = env["INFERENCE_FUSED_NORMS"] != "off"
        pipelineAllowed = env["INFERENCE_PIPELINE"] != "off"
        if let setting = env["INFERENCE_FUSED_OUTPUT"] {
            guard setting == "on" || setting == "off" else {
                throw CUDAError.invalidSetting("INFERENCE_FUSED_OUTPUT is \(setting); use on or off")
            }
            outputFusion = setting == "on"
        }
        earlyLoads = env["INFERENCE_ATTENTION_EARLY_LOADS"] != "off"
        let resident = ["decode_layer", "decode_attention", "decode_mlp"].map {
            functions[$0].flatMap { context.residentBlocks(of: $0, block: 256) } ?? 0
        }
        if resident.allSatisfy({ $0 > 0 }) {
            persistentResident = min(resident[0], resident[1])
            persistentPerSM = min(persistentPerSM, persistentResident)
            mlpResident = resident[2]
            mlpPerSM = min(4, resident[2])
        } else {
            persistentProblem = "the driver does not say how many blocks of decode_layer, decode_attention and decode_mlp a multiprocessor holds"
        }
        mlpFusedResident =
            (functions["mlp_fused_bf16"].flatMap { context.residentBlocks(of: $0, block: 256) } ?? 0) * context.device.multiprocessors
        if let setting = env["INFERENCE_FUSED_MLP"] {
            guard setting == "on" || setting == "off" else {
                throw CUDAError.invalidSetting("INFERENCE_FUSED_MLP is \(setting); use on or off")
            }
            mlpFused = setting == "on"
        }
        if let setting = env["INFERENCE_PERSISTENT_LAYERS"] {
            guard let mode = PersistentLayers(rawValue: setting) else {
                throw CUDAError.invalidSetting("INFERENCE_PERSISTENT_LAYERS is \(setting); use off, attention, halves or whole")
            }
            persistentMode = persistentProblem == nil ? mode : .off
        }
        if let setting = env["INFERENCE_PREFETCH_AHEAD"] {
            guard setting == "off" || Int(setting).map({ (0...(Self.mostPrefetchAhead >> 20)).contains($0) }) == true else {
                throw CUDAError.invalidSetting(
                    "INFERENCE_PREFETCH_AHEAD is \(setting); use a number of MiB up to \(Self.mostPrefetchAhead >> 20), or off")
            }
            prefetchAhead = (Int(setting) ?? 0) << 20
        }
        if let setting = env["INFERENCE_PREFETCH_KIND"] {
            guard let kind = PrefetchKind(rawValue: setting) else {
                throw CUDAError.invalidSetting("INFERENCE_PREFETCH_KIND is \(setting); use lines, bulk or evict-last")
            }
            prefetchKind = kind
        }
    }

    /// `gemm_mma_bf16` on a small product whose tiles are partial both ways, against the host in f64:
    /// nil when it agrees, else what went wrong. The tensor-core kernel has only been checked on an
    /// emulator that follows the PTX ISA's fragment layout; if a card (or driver) computes otherwise,
    /// prefill falls back to the tiled kernel's speed instead of giving wrong answers. A fault while
    /// it runs throws: it leaves the context unusable, so the backend cannot start at all.
    func tensorCoreSelfCheck() throws -> String? {
        let m = 80, k = 96, rows = 70
        var random = Xoshiro256StarStar(seed: 0x7E45_0C0E)
        let weights = (0..<m * k).map { _ in Self.bfloat16Bits(random.unit() * 2 - 1) }
        let x = (0..<rows * k).map { _ in random.unit() * 2 - 1 }
        let memory: CUDABuffer, input: CUDABuffer, output: CUDABuffer
        do {
            memory = try CUDABuffer(context: context, bytes: m * k * 2)
            input = try tryMakeBuffer(count: rows * k)
            output = try tryMakeBuffer(count: rows * m)
        } catch {
            return "its self-check could not run (\(error))"
        }
        weights.withUnsafeBytes { context.upload($0.baseAddress!, bytes: $0.count, to: memory.address) }
        write(x, to: input, offset: 0)
        write([Float](repeating: .nan, count: rows * m), to: output, offset: 0)  // an element left unwritten fails
        matmulBuiltIn(
            input, rows: rows, weight: CUDAMatrix(storage: .bf16, rows: m, columns: k, memory: memory), into: output, tensorCores: true)
        try context.synchronize()
        let got = read(output, offset: 0, count: rows * m)
        // Each activation keeps about 16 bits (split into two bf16), so an element is within a few
        // 1e-5 of the largest; a wrong layout is off by the size of the elements themselves.
        var worst = 0.0, largest = 0.0
        for t in 0..<rows {
            for r in 0..<m {
                var sum = 0.0
                for j in 0..<k { sum += Double(Float(bitPattern: UInt32(weights[r * k + j]) << 16)) * Double(x[t * k + j]) }
                worst = max(worst, got[t * m + r].isFinite ? abs(Double(got[t * m + r]) - sum) : .infinity)
                largest = max(largest, abs(sum))
            }
        }
        guard worst <= 1e-4 * largest else {
            return String(format: "its self-check was off by %.3g (elements up to %.3g): the tiled kernel takes its place", worst, largest)
        }
        return nil
    }

    /// The fused residual norm (`gemv_norm_bf16`, `gemv_gelu_norm_bf16`) against the norm's own launch
    /// and the plain products, on one row of 1152 columns: nil when every output, the residual and the
    /// normed row are the same bits, else what differed. Like the tensor-core kernel, the fused
    /// kernels have been checked on the emulator only (it runs blocks one after another, so it cannot
    /// show a race between them); a GPU that computes otherwise runs one launch a norm instead of
    /// giving other numbers than a batch of several sequences would.
    func fusedNormSelfCheck() throws -> String? {
        // Shapes of the 1B's order (grids of some 200 blocks, so that their blocks overlap as a
        // model's do), run fused three times.
        let k = 1152, widths = [512, 128, 128, 1024, 1024]  // q, k, v; gate, up
        var random = Xoshiro256StarStar(seed: 0xF05E_D0A1)
        func values(_ count: Int) -> [Float] { (0..<count).map { _ in random.unit() * 2 - 1 } }
        var matrices: [CUDAMatrix] = []
        var norms: [CUDAMatrix] = []
        let x = values(k), residual = values(k)
        var runs: [[Float]] = []
        var fusedLaunchesSeen = 0
        defer {
            lock.lock()
            fusedLaunches = 0
            lock.unlock()
        }
        do {
            for m in widths {
                let bits = values(m * k).map(Self.bfloat16Bits)
                let memory = try CUDABuffer(context: context, bytes: m * k * 2)
                bits.withUnsafeBytes { context.upload($0.baseAddress!, bytes: $0.count, to: memory.address) }
                matrices.append(CUDAMatrix(storage: .bf16, rows: m, columns: k, memory: memory))
            }
            for _ in 0..<2 {
                let memory = try tryMakeBuffer(count: k)
                write(values(k).map { 1 + $0 }, to: memory, offset: 0)
                norms.append(CUDAMatrix(storage: .f32, rows: 1, columns: k, memory: memory))
            }
            // Each run: q, k, v, the residual and the normed row after one norm; gate/up after another.
            // The last fused run as the model's: the residual from one buffer into another and back,
            // the normed rows apart from x (uncounted, block 0 writing at once), the same numbers.
            for (fused, apart) in [(false, false), (true, false), (true, false), (true, true)] {
                lock.lock()
                fusedNormsEnabled = fused
                let launches = fusedLaunches
                lock.unlock()
                let input = try tryMakeBuffer(count: k), accumulator = try tryMakeBuffer(count: k)
                let (between, normed1, normed2) = (try tryMakeBuffer(count: k), try tryMakeBuffer(count: k), try tryMakeBuffer(count: k))
                let outs = try widths.map { try tryMakeBuffer(count: $0) }
                write(x, to: input, offset: 0)
                write(residual, to: accumulator, offset: 0)
                for out in outs { write([Float](repeating: .nan, count: out.count), to: out, offset: 0) }
                let first = ResidualNorm(
                    input, rows: 1, dimension: k, weight: norms[0], next: norms[1], epsilon: 1e-6,
                    from: apart ? accumulator : nil, into: apart ? between : accumulator, normed: apart ? normed1 : input)
                let second = ResidualNorm(
                    apart ? normed1 : input, rows: 1, dimension: k, weight: norms[0], next: norms[1], epsilon: 1e-6,
                    from: apart ? between : nil, into: accumulator, normed: apart ? normed2 : input)
                matmul(after: first, weights: Array(matrices[0..<3]), into: Array(outs[0..<3]))
                gatedMatmul(after: second, gate: matrices[3], up: matrices[4], width: widths[3], into: outs[3], scratch: outs[4])
                try context.synchronize()
                runs.append(
                    outs[0..<4].flatMap { read($0, offset: 0, count: $0.count) } + read(accumulator, offset: 0, count: k)
                        + read(apart ? normed2 : input, offset: 0, count: k))
                lock.lock()
                if fused { fusedLaunchesSeen += fusedLaunches - launches }
                lock.unlock()
            }
        } catch let error as CUDAError {
            if case .outOfMemory = error { return "its self-check could not run (\(error))" }
            throw error
        }
        guard fusedLaunchesSeen == 6 else {
            return "its self-check could not run (the fused kernels were not taken: \(fusedLaunchesSeen) of 6 launches)"
        }
        for run in runs.dropFirst() {
            let differing = zip(runs[0], run).filter { $0.bitPattern != $1.bitPattern }.count
            guard differing == 0 else {
                return "its self-check gave \(differing) of \(run.count) numbers other than the norm's own launch: each norm takes a launch of its own"
            }
        }
        return nil
    }

    private func kernel(_ name: String) -> OpaquePointer {
        guard let function = functions[name] else { fatalError("CUDA: kernel \(name) is missing from the module") }
        return function
    }

    private func blocks(_ count: Int, _ size: Int) -> Int { max(1, (count + size - 1) / size) }

    /// Threads for a block whose threads take `work` items each once: whole warps, 32 to 1024.
    private func warpsFor(_ work: Int) -> Int { min(1024, max(32, (work + 31) / 32 * 32)) }

    // MARK: memory

    public func makeCacheBuffer(count: Int) -> CUDABuffer {
        do {
            return try CUDABuffer(context: context, count: count, elementBytes: cacheElementBytes)
        } catch { fatalError("CUDA: \(error)") }
    }

    public var cacheElementBytes: Int { kvCache == .bfloat16 ? 2 : 4 }

    public func makeBuffer(count: Int) -> CUDABuffer {
        do { return try CUDABuffer(context: context, count: count) } catch { fatalError("CUDA: \(error)") }
    }

    /// A device buffer, with the out-of-memory error thrown rather than fatal (for sizing at start).
    public func tryMakeBuffer(count: Int) throws -> CUDABuffer { try CUDABuffer(context: context, count: count) }

    public func read(_ buffer: CUDABuffer, offset: Int, count: Int) -> [Float] {
        precondition(offset >= 0 && offset + count <= buffer.count && buffer.elementBytes == 4)
        return [Float](unsafeUninitializedCapacity: count) { storage, initialized in
            context.download(buffer.at(offset), bytes: count * 4, into: storage.baseAddress!)
            initialized = count
        }
    }

    public func write(_ values: [Float], to buffer: CUDABuffer, offset: Int) {
        precondition(offset >= 0 && offset + values.count <= buffer.count && buffer.elementBytes == 4)
        values.withUnsafeBytes { context.upload($0.baseAddress!, bytes: $0.count, to: buffer.at(offset)) }
    }

    public func copy(
        _ source: CUDABuffer, offset sourceOffset: Int, to destination: CUDABuffer, offset destinationOffset: Int,
        count: Int
    ) {
        precondition(sourceOffset + count <= source.count && destinationOffset + count <= destination.count)
        precondition(source.elementBytes == destination.elementBytes, "a copy between f32 and bf16 buffers")
        context.copy(source.at(sourceOffset), to: destination.at(destinationOffset), bytes: count * source.elementBytes)
    }

    /// Waits for every queued kernel (timing; a fault shows here).
    public func synchronize() throws { try context.synchronize() }

    public func matrix(_ tensor: WeightTensor) throws -> CUDAMatrix {
        if tensor.format == .f32 && tensor.shape.count == 1 {
            let memory = try CUDABuffer(context: context, bytes: tensor.byteCount)
            context.upload(tensor.data, bytes: tensor.byteCount, to: memory.address)
            return CUDAMatrix(storage: .f32, rows: 1, columns: tensor.columns, memory: memory)
        }
        guard tensor.columns % 8 == 0 else {
            throw InferenceError.invalidTensor(
                name: tensor.name, reason: "the CUDA backend needs rows of a multiple of 8 elements, not \(tensor.columns)")
        }
        let memory = try CUDABuffer(context: context, bytes: tensor.rows * tensor.columns * 2)
        if tensor.format == .bf16 {
            context.upload(tensor.data, bytes: tensor.byteCount, to: memory.address)
        } else {
            // A slice of rows at a time (about 16 MB of f32), rounded to bf16 as torch's cast does.
            let sliceRows = max(1, (1 << 22) / tensor.columns)
            let wide = UnsafeMutablePointer<Float>.allocate(capacity: sliceRows * tensor.columns)
            let narrow = UnsafeMutablePointer<UInt16>.allocate(capacity: sliceRows * tensor.columns)
            defer {
                wide.deallocate()
                narrow.deallocate()
            }
            var row = 0
            while row < tensor.rows {
                let rows = row..<min(tensor.rows, row + sliceRows)
                let count = rows.count * tensor.columns
                tensor.widenRows(rows, into: wide)
                for i in 0..<count { narrow[i] = Self.bfloat16Bits(wide[i]) }
                context.upload(narrow, bytes: count * 2, to: memory.address + UInt64(row * tensor.columns * 2))
                row = rows.upperBound
            }
        }
        return CUDAMatrix(storage: .bf16, rows: tensor.rows, columns: tensor.columns, memory: memory)
    }

    /// f32 → bf16 bits, round to nearest even, NaN kept (as the kernels' f32_to_bf16).
    @inline(__always) static func bfloat16Bits(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if bits & 0x7FFF_FFFF > 0x7F80_0000 { return 0x7FC0 }
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    // MARK: the operations

    public func embed(_ tokens: [Int], table: CUDAMatrix, scale: Float, into out: CUDABuffer) {
        precondition(tokens.count * table.columns <= out.count && table.storage == .bf16)
        precondition(tokens.allSatisfy { $0 >= 0 && $0 < table.rows }, "token id out of range")
        let ids = tokens.map { Int32(truncatingIfNeeded: $0) }.withUnsafeBytes { context.stage($0) }
        context.launch(
            kernel("embed_rows"), grid: (tokens.count, 1, 1), block: 256,
            [.pointer(table.address), .pointer(ids), .pointer(out.address), .int(table.columns), .float(scale)])
    }

    public func matmul(_ x: CUDABuffer, rows: Int, weight: CUDAMatrix, into out: CUDABuffer) {
        let m = weight.rows, k = weight.columns
        precondition(weight.storage == .bf16 && rows * k <= x.count && rows * m <= out.count)
        let group = GemmaKernels.gemvMaximumTokens
        if rows > group, prefillWithCUBLAS, let cublas {
            lock.lock()
            defer { lock.unlock() }
            if halfScratch == nil || halfScratch!.count * 2 < rows * k {
                halfScratch = makeBuffer(count: (rows * k + 1) / 2)
            }
            let half = halfScratch!
            context.launch(
                kernel("to_bf16"), grid: (blocks(rows * k, 256), 1, 1), block: 256,
                [.pointer(x.address), .pointer(half.address), .int(rows * k)])
            context.flush()  // cuBLAS queues on the legacy stream: the recorded work goes first
            do {
                try cublas.matmulBF16(weight: weight.address, m: m, k: k, x: half.address, rows: rows, out: out.address)
            } catch { fatalError("CUDA: \(error)") }
            return
        }
        if rows > group && k % 32 == 0 {
            matmulBuiltIn(x, rows: rows, weight: weight, into: out, tensorCores: prefillWithTensorCores)
            return
        }
        gemv(x, rows: rows, weights: [weight], into: [out])
    }

    /// `gemv_bf16` over up to three matrices of the same k, 16 rows of x at a time.
    /// With `norm` (the arguments of a residual norm, `fusedArguments`; one row), `gemv_norm_bf16`.
    private func gemv(
        _ x: CUDABuffer, rows: Int, weights: [CUDAMatrix], into outs: [CUDABuffer], norm: [CUDAContext.Argument]? = nil
    ) {
        let k = weights[0].columns
        precondition((1...3).contains(weights.count) && weights.count == outs.count && k % 8 == 0)
        precondition(weights.allSatisfy { $0.storage == .bf16 && $0.columns == k } && rows * k <= x.count)
        precondition(zip(weights, outs).allSatisfy { rows * $0.rows <= $1.count })
        let total = weights.reduce(0) { $0 + $1.rows }
        let splits = GemmaKernels.gemvSplits(rows: total, columns: k)
        let group = GemmaKernels.gemvMaximumTokens
        // The 16-byte chunks of its row each thread takes (what a staged launch copies).
        let chunks = (k / 8 + 32 * splits - 1) / (32 * splits)
        var first = 0
        while first < rows {
            let tokens = min(group, rows - first)
            var arguments: [CUDAContext.Argument] = []
            for i in 0..<3 { arguments.append(.pointer(i < weights.count ? weights[i].address : 0)) }
            for i in 0..<3 { arguments.append(.pointer(i < outs.count ? outs[i].at(first * weights[i].rows) : 0)) }
            for i in 0..<3 { arguments.append(.int(i < weights.count ? weights[i].rows : 0)) }
            arguments += [.pointer(x.at(first * k)), .int(k), .int(tokens), .int(splits)]
            // One token: a row per warp part; more: two rows (gemv_pairs_bf16, a kernel of its own so
            // that its registers do not lower the one-token kernel's occupancy).
            if let norm {
                precondition(rows == 1, "a residual norm goes inside the product of one row only")
                let name = staged("gemv_norm_bf16", grid: blocks(total * splits, 8), chunks: chunks, most: GemmaKernels.stageChunks)
                context.launch(kernel(name), grid: (blocks(total * splits, 8), 1, 1), block: 256, arguments + norm)
                countFusedLaunch()
            } else if tokens == 1 {
                let name = staged("gemv_bf16", grid: blocks(total * splits, 8), chunks: chunks, most: GemmaKernels.stageChunks)
                context.launch(kernel(name), grid: (blocks(total * splits, 8), 1, 1), block: 256, arguments)
            } else {
                context.launch(kernel("gemv_pairs_bf16"), grid: (blocks(total * splits, 16), 1, 1), block: 256, arguments)
            }
            first += tokens
        }
    }

    /// A decode step's q, k and v in one launch; more rows (prefill) go one matrix at a time.
    public func matmul(_ x: CUDABuffer, rows: Int, weights: [CUDAMatrix], into outs: [CUDABuffer]) {
        let k = weights.first?.columns ?? 0
        if rows <= GemmaKernels.gemvMaximumTokens, (1...3).contains(weights.count), k % 8 == 0,
            weights.allSatisfy({ $0.storage == .bf16 && $0.columns == k })
        {
            gemv(x, rows: rows, weights: weights, into: outs)
        } else {
            matmulEach(x, rows: rows, weights: weights, into: outs)
        }
    }

    /// A decode step's gate, up and GELU in one launch (`gemv_gelu_bf16`); prefill as three steps.
    public func gatedMatmul(
        _ x: CUDABuffer, rows: Int, gate: CUDAMatrix, up: CUDAMatrix, width: Int, into out: CUDABuffer, scratch: CUDABuffer
    ) {
        let m = gate.rows, k = gate.columns
        guard rows <= GemmaKernels.gemvMaximumTokens, up.rows == m, up.columns == k, m == width, k % 8 == 0,
            gate.storage == .bf16, up.storage == .bf16
        else {
            gatedMatmulInSteps(x, rows: rows, gate: gate, up: up, width: width, into: out, scratch: scratch)
            return
        }
        precondition(rows * k <= x.count && rows * m <= out.count)
        let splits = GemmaKernels.gemvSplits(rows: m, columns: k)
        context.launch(
            kernel("gemv_gelu_bf16"), grid: (blocks(m * splits, 8), 1, 1), block: 256,
            [
                .pointer(gate.address), .pointer(up.address), .pointer(x.address), .pointer(out.address), .int(m), .int(k),
                .int(rows), .int(splits),
            ])
    }

    /// The arguments of `norm` for a fused launch, when it can go inside the one-token product after
    /// it: one row of at most `GemmaKernels.fusedNormMaximum` columns, f32 weights.
    private func fusedArguments(_ norm: ResidualNorm<CUDABuffer, CUDAMatrix>) -> [CUDAContext.Argument]? {
        let k = norm.dimension
        let source = norm.source ?? norm.accumulator
        guard fusedNorms, norm.rows == 1, k <= GemmaKernels.fusedNormMaximum,
            norm.weight.storage == .f32, norm.weight.columns == k, norm.next.storage == .f32, norm.next.columns == k,
            k <= min(norm.x.count, source.count, norm.accumulator.count, norm.normed.count)
        else { return nil }
        // Counted where a block could write what another reads: the new residual or the normed row
        // over x or the residual before the add, or over each other (see fused_residual_norm);
        // elsewhere only for the sweep.
        let written = [norm.accumulator, norm.normed], read = [norm.x, source]
        let counted =
            countsNorms || norm.accumulator === norm.normed || written.contains { w in read.contains { $0 === w } }
        return [
            .pointer(norm.weight.address), .pointer(norm.next.address), .pointer(source.address),
            .pointer(norm.accumulator.address), .pointer(norm.normed.address), .float(norm.epsilon),
            .pointer(counted ? normTicket.address : 0),
        ]
    }

    /// Whether every fused norm counts its blocks (`ticket`) so that only the last to have read
    /// writes the residual and normed row, as one adding the residual in place (or writing the
    /// normed row over its x) must. Off: the model's norms, which take the residual from one buffer
    /// into another, write at once from block 0, none waiting on the count; on (gpu-check's sweep,
    /// the same results) times what the count costs.
    public var fusedNormsAlwaysCount: Bool {
        get { lock.lock(); defer { lock.unlock() }; return countsNorms }
        set { lock.lock(); countsNorms = newValue; lock.unlock() }
    }
    private var countsNorms = false

    /// A one-token step's residual norm and q, k, v in one launch (`gemv_norm_bf16`); otherwise the
    /// norm's own launch, then `matmul`.
    public func matmul(after norm: ResidualNorm<CUDABuffer, CUDAMatrix>, weights: [CUDAMatrix], into outs: [CUDABuffer]) {
        let k = norm.dimension
        guard (1...3).contains(weights.count), weights.count == outs.count, k % 8 == 0,
            weights.allSatisfy({ $0.storage == .bf16 && $0.columns == k }),
            zip(weights, outs).allSatisfy({ $0.rows <= $1.count }),
            let fused = fusedArguments(norm)
        else {
            rmsNormAddNorm(norm)
            matmul(norm.normed, rows: norm.rows, weights: weights, into: outs)
            return
        }
        gemv(norm.x, rows: 1, weights: weights, into: outs, norm: fused)
    }

    /// A one-token step's residual norm, gate, up and GELU in one launch (`gemv_gelu_norm_bf16`);
    /// otherwise the norm's own launch, then `gatedMatmul`.
    public func gatedMatmul(
        after norm: ResidualNorm<CUDABuffer, CUDAMatrix>, gate: CUDAMatrix, up: CUDAMatrix, width: Int, into out: CUDABuffer,
        scratch: CUDABuffer
    ) {
        let m = gate.rows, k = norm.dimension
        guard gate.columns == k, up.rows == m, up.columns == k, m == width, k % 8 == 0, gate.storage == .bf16,
            up.storage == .bf16, m <= out.count, let fused = fusedArguments(norm)
        else {
            rmsNormAddNorm(norm)
            gatedMatmul(norm.normed, rows: norm.rows, gate: gate, up: up, width: width, into: out, scratch: scratch)
            return
        }
        let splits = GemmaKernels.gemvSplits(rows: m, columns: k)
        let grid = blocks(m * splits, 8 * GemmaKernels.geluNormGroups)
        // Gate's and up's chunks streamed through a ring in shared memory, its first fill before the wait.
        let name = staged("gemv_gelu_norm_bf16", grid: grid, chunks: 0, most: 0)
        context.launch(
            kernel(name), grid: (grid, 1, 1), block: 256,
            [
                .pointer(gate.address), .pointer(up.address), .pointer(norm.x.address), .pointer(out.address), .int(m),
                .int(k), .int(splits),
            ] + fused)
        countFusedLaunch()
    }

    public func mlp(
        after norm: ResidualNorm<CUDABuffer, CUDAMatrix>, gate: CUDAMatrix, up: CUDAMatrix, down: CUDAMatrix,
        gated: CUDABuffer, into out: CUDABuffer
    ) -> Bool {
        let m = gate.rows, k = norm.dimension
        let slice = GemmaKernels.fusedMLPSlice, blocksPerSlice = GemmaKernels.fusedMLPSliceBlocks
        guard fusedMLP, m % slice == 0, k % blocksPerSlice == 0, k <= GemmaKernels.fusedMLPMaximumHidden,
            GemmaKernels.gemvSplits(rows: m, columns: k) == 1, m / slice * blocksPerSlice <= mlpFusedResident,
            gate.columns == k, up.rows == m, up.columns == k, down.rows == k, down.columns == m,
            [gate, up, down].allSatisfy({ $0.storage == .bf16 }), m <= gated.count, k <= out.count,
            let fused = fusedArguments(norm)
        else { return false }
        let slices = m / slice
        lock.lock()
        if mlpPartials == nil || mlpPartials!.count < slices * k { mlpPartials = makeBuffer(count: slices * k) }
        // Zeroed by the allocation; each launch leaves its counts at zero.
        if mlpBarriers == nil || mlpBarriers!.count < blocksPerSlice + 2 * slices {
            mlpBarriers = makeBuffer(count: blocksPerSlice + 2 * slices)
        }
        let (partials, barriers) = (mlpPartials!, mlpBarriers!)
        mlpLaunches += 1
        lock.unlock()
        // w, next, residual, normed, epsilon and ticket, as gemv_gelu_norm_bf16 takes them.
        context.launch(
            kernel("mlp_fused_bf16"), grid: (slices * blocksPerSlice, 1, 1), block: 256,
            [
                .pointer(gate.address), .pointer(up.address), .pointer(down.address), .pointer(norm.x.address),
                .pointer(gated.address), .pointer(out.address), .int(m), .int(k), .pointer(partials.address),
                .pointer(barriers.address),
            ] + fused)
        countFusedLaunch()
        return true
    }

    /// The staged kernel for a launch of `name` (its `_staged` twin), where `stagedWeights` asks for
    /// it, the whole grid fits on the GPU at once and each thread's `chunks` fit the `most` it stages
    /// (gate/up passes 0 and 0: its kernel streams any number through its ring); otherwise `name`.
    private func staged(_ name: String, grid: Int, chunks: Int, most: Int) -> String {
        let twin = name.replacingOccurrences(of: "_bf16", with: "_staged_bf16")
        lock.lock()
        defer { lock.unlock() }
        let wanted = name == "gemv_gelu_norm_bf16" ? staging.gateUp : staging.products
        guard wanted, chunks <= most, grid <= stagedResident[twin] ?? 0 else { return name }
        stagedLaunchCount += 1
        return twin
    }

    private func countFusedLaunch() {
        lock.lock()
        fusedLaunches += 1
        lock.unlock()
    }

    /// Many rows without cuBLAS (Cloud Run images), 64 rows × 64 tokens per block, so each weight is
    /// read once per 64 tokens: on the tensor cores (`gemm_mma_bf16`, sm_80 and later, the activations
    /// in two bf16 parts), or else in f32 (`gemm_bf16`: a GPU before sm_80,
    /// `INFERENCE_TENSOR_CORES=off`, a failed self-check). k must be a multiple of 32.
    func matmulBuiltIn(_ x: CUDABuffer, rows: Int, weight: CUDAMatrix, into out: CUDABuffer, tensorCores: Bool) {
        let m = weight.rows, k = weight.columns
        precondition(weight.storage == .bf16 && k % 32 == 0 && rows * k <= x.count && rows * m <= out.count)
        context.launch(
            kernel(tensorCores ? "gemm_mma_bf16" : "gemm_bf16"), grid: (blocks(m, 64), blocks(rows, 64), 1),
            block: tensorCores ? 128 : 256,
            [.pointer(weight.address), .pointer(x.address), .pointer(out.address), .int(m), .int(k), .int(rows)])
    }

    public func rmsNorm(
        _ x: CUDABuffer, rows: Int, dimension: Int, weight: CUDAMatrix, epsilon: Float, into out: CUDABuffer
    ) {
        precondition(weight.storage == .f32 && weight.columns == dimension && rows * dimension <= min(x.count, out.count))
        let threads = warpsFor((dimension + 1) / 2)
        context.launch(
            kernel("rms_norm"), grid: (rows, 1, 1), block: threads,
            [.pointer(x.address), .pointer(weight.address), .pointer(out.address), .int(dimension), .float(epsilon)])
    }

    public func rmsNormAddNorm(
        _ x: CUDABuffer, rows: Int, dimension: Int, weight: CUDAMatrix, next: CUDAMatrix, epsilon: Float,
        into accumulator: CUDABuffer, normed out: CUDABuffer
    ) {
        precondition(weight.storage == .f32 && weight.columns == dimension && next.storage == .f32 && next.columns == dimension)
        rmsNormAddNorm(
            x, rows: rows, dimension: dimension, weight: weight, next: next, epsilon: epsilon, from: accumulator,
            into: accumulator, normed: out)
    }

    /// `rmsNormAddNorm` of what `norm` holds, its residual read from `norm.source` in the same launch.
    public func rmsNormAddNorm(_ norm: ResidualNorm<CUDABuffer, CUDAMatrix>) {
        rmsNormAddNorm(
            norm.x, rows: norm.rows, dimension: norm.dimension, weight: norm.weight, next: norm.next, epsilon: norm.epsilon,
            from: norm.source ?? norm.accumulator, into: norm.accumulator, normed: norm.normed)
    }

    private func rmsNormAddNorm(
        _ x: CUDABuffer, rows: Int, dimension: Int, weight: CUDAMatrix, next: CUDAMatrix, epsilon: Float,
        from source: CUDABuffer, into accumulator: CUDABuffer, normed out: CUDABuffer
    ) {
        precondition(weight.storage == .f32 && weight.columns == dimension && next.storage == .f32 && next.columns == dimension)
        precondition(rows * dimension <= min(x.count, source.count, accumulator.count, out.count))
        precondition(dimension <= 8 * 1024, "rms_norm_add_norm keeps at most 8 columns a thread")
        // The fused gemv kernels' 256 threads where they take the norm: the same sums, so a token's
        // normed row is the same bits in a step of one sequence (fused) as among several.
        let threads = dimension <= GemmaKernels.fusedNormMaximum ? 256 : warpsFor((dimension + 1) / 2)
        context.launch(
            kernel("rms_norm_add_norm"), grid: (rows, 1, 1), block: threads,
            [
                .pointer(x.address), .pointer(weight.address), .pointer(source.address), .pointer(accumulator.address),
                .pointer(next.address), .pointer(out.address), .int(dimension), .float(epsilon),
            ])
    }

    public func rmsNormAdd(
        _ x: CUDABuffer, rows: Int, dimension: Int, weight: CUDAMatrix, epsilon: Float, into accumulator: CUDABuffer
    ) {
        rmsNormAdd(x, rows: rows, dimension: dimension, weight: weight, epsilon: epsilon, from: accumulator, into: accumulator)
    }

    public func rmsNormAdd(
        _ x: CUDABuffer, rows: Int, dimension: Int, weight: CUDAMatrix, epsilon: Float, from source: CUDABuffer,
        into accumulator: CUDABuffer
    ) {
        precondition(
            weight.storage == .f32 && weight.columns == dimension
                && rows * dimension <= min(x.count, source.count, accumulator.count))
        let threads = warpsFor((dimension + 1) / 2)
        context.launch(
            kernel("rms_norm_add"), grid: (rows, 1, 1), block: threads,
            [
                .pointer(x.address), .pointer(weight.address), .pointer(source.address), .pointer(accumulator.address),
                .int(dimension), .float(epsilon),
            ])
    }

    public func normRope(
        queries: CUDABuffer, keys: CUDABuffer, rows: Int, heads: Int, kvHeads: Int, headDimension: Int,
        queryNorm: CUDAMatrix, keyNorm: CUDAMatrix, epsilon: Float, table: CUDABuffer
    ) {
        precondition(rows * heads * headDimension <= queries.count && rows * kvHeads * headDimension <= keys.count)
        Self.checkHeadNorms(queryNorm, keyNorm, table, rows: rows, headDimension: headDimension)
        context.launch(
            kernel("norm_rope"), grid: (rows, heads + kvHeads, 1), block: 32,
            [
                .pointer(queries.address), .pointer(keys.address), .pointer(queryNorm.address), .pointer(keyNorm.address),
                .pointer(table.address), .int(heads), .int(kvHeads), .int(headDimension), .float(epsilon),
            ])
    }

    /// What head_norm_rope needs: one warp holds a head, 8 dimensions a lane.
    private static func checkHeadNorms(_ queryNorm: CUDAMatrix, _ keyNorm: CUDAMatrix, _ table: CUDABuffer, rows: Int, headDimension: Int) {
        precondition(queryNorm.columns == headDimension && keyNorm.columns == headDimension && rows * headDimension <= table.count)
        precondition(
            headDimension % 16 == 0 && headDimension <= 256, "the CUDA q/k norm takes head dimensions that are multiples of 16 up to 256")
    }

    public func ropeTable(positions: [Int], inverseFrequencies: [Float], into table: CUDABuffer) {
        let count = positions.count * 2 * inverseFrequencies.count
        precondition(count <= table.count)
        var host = [Float](repeating: 0, count: count)
        host.withUnsafeMutableBufferPointer {
            CPUBackend.fillRopeTable(positions: positions, inverseFrequencies: inverseFrequencies, into: $0.baseAddress!)
        }
        let staged = host.withUnsafeBytes { context.stage($0) }
        context.copy(staged, to: table.address, bytes: count * 4)
    }

    public func rope(_ x: CUDABuffer, rows: Int, heads: Int, headDimension: Int, table: CUDABuffer) {
        precondition(rows * heads * headDimension <= x.count && rows * headDimension <= table.count)
        context.launch(
            kernel("rope"), grid: (rows, heads, 1), block: warpsFor(headDimension / 2),
            [.pointer(x.address), .pointer(table.address), .int(heads), .int(headDimension)])
    }

    public func attention(
        queries: CUDABuffer, keys: CUDABuffer, values: CUDABuffer, rows: Int, firstPosition: Int, heads: Int,
        kvHeads: Int, headDimension: Int, capacity: Int, window: Int?, scale: Float, into out: CUDABuffer
    ) {
        precondition(keys.elementBytes == 4 && values.elementBytes == 4, "attention reads f32 caches; bf16 caches go through attentionBatch")
        precondition(heads % kvHeads == 0 && rows * heads * headDimension <= min(queries.count, out.count))
        precondition(capacity * kvHeads * headDimension <= min(keys.count, values.count))
        precondition(
            headDimension % 32 == 0 && headDimension <= GemmaKernels.attentionMaximumDimension,
            "the CUDA attention kernel takes head dimensions that are multiples of 32 up to 256")
        let oldestNeeded = window.map { max(0, firstPosition - $0 + 1) } ?? 0
        precondition(firstPosition + rows - 1 - oldestNeeded < capacity, "the KV cache is too small for this batch")
        context.launch(
            kernel("attention"), grid: (rows, heads, 1), block: 256,
            [
                .pointer(queries.address), .pointer(keys.address), .pointer(values.address), .pointer(out.address),
                .int(firstPosition), .int(heads), .int(kvHeads), .int(headDimension), .int(capacity), .int(window ?? 0),
                .float(scale),
            ])
    }

    /// Every segment's KV store and attention in two or three launches (one or two for a decode
    /// step): a table of (cache addresses, position, ring size, window) per row is uploaded, and
    /// each block finds its sequence there.
    public func attentionBatch(
        queries: CUDABuffer, keys: CUDABuffer, values: CUDABuffer, segments: [AttentionSegment<CUDABuffer>], heads: Int,
        kvHeads: Int, headDimension: Int, scale: Float, norms: HeadNorms<CUDABuffer, CUDAMatrix>?, into out: CUDABuffer,
        prefetching next: [CUDAMatrix]
    ) -> Bool {
        attentionBatch(
            queries: queries, keys: keys, values: values, segments: segments, heads: heads, kvHeads: kvHeads,
            headDimension: headDimension, scale: scale, norms: norms, into: out, projecting: nil, prefetching: next) != .none
    }

    /// The same, and (`fusedOutput`, a one-token step of one sequence whose attention takes shares)
    /// the shares' merge with the output projection as one launch (`attention_output_bf16`).
    public func attentionBatch(
        queries: CUDABuffer, keys: CUDABuffer, values: CUDABuffer, segments: [AttentionSegment<CUDABuffer>], heads: Int,
        kvHeads: Int, headDimension: Int, scale: Float, norms: HeadNorms<CUDABuffer, CUDAMatrix>?, into out: CUDABuffer,
        projection: CUDAMatrix, into projected: CUDABuffer, prefetching next: [CUDAMatrix]
    ) -> AttentionReach {
        attentionBatch(
            queries: queries, keys: keys, values: values, segments: segments, heads: heads, kvHeads: kvHeads,
            headDimension: headDimension, scale: scale, norms: norms, into: out, projecting: (projection, projected),
            prefetching: next)
    }

    private func attentionBatch(
        queries: CUDABuffer, keys: CUDABuffer, values: CUDABuffer, segments: [AttentionSegment<CUDABuffer>], heads: Int,
        kvHeads: Int, headDimension: Int, scale: Float, norms: HeadNorms<CUDABuffer, CUDAMatrix>?, into out: CUDABuffer,
        projecting projection: (weight: CUDAMatrix, into: CUDABuffer)?, prefetching next: [CUDAMatrix]
    ) -> AttentionReach {
        precondition(heads % kvHeads == 0)
        precondition(
            headDimension % 32 == 0 && headDimension <= GemmaKernels.attentionMaximumDimension,
            "the CUDA attention kernel takes head dimensions that are multiples of 32 up to 256")
        let width = kvHeads * headDimension
        let (table, rows, mostKeys, half) = Self.segmentRows(segments, width: width)
        guard rows > 0 else { return .attended }
        precondition(rows * width <= min(keys.count, values.count) && rows * heads * headDimension <= min(queries.count, out.count))
        let rowsTable = table.withUnsafeBytes { context.stage($0) }
        // Each row its sequence's one new token (a decode step): attention_rows stores the keys and
        // values itself, one launch a layer fewer. Rows of one sequence read each other's new keys
        // from the cache, so those are stored in a launch before.
        let storeInside = segments.allSatisfy { $0.rows == 1 }
        // Each row's own q/k norms and RoPE inside the attention when it stores the keys too (a
        // decode step): the launch of norm_rope fewer. Otherwise norm_rope first.
        let inside = storeInside && fusedHeadNorms ? norms : nil
        if let norms {
            if inside != nil {
                Self.checkHeadNorms(norms.queryNorm, norms.keyNorm, norms.table, rows: rows, headDimension: headDimension)
                lock.lock()
                headNormsInside += 1
                lock.unlock()
            } else {
                normRope(
                    queries: queries, keys: keys, rows: rows, heads: heads, kvHeads: kvHeads, headDimension: headDimension,
                    queryNorm: norms.queryNorm, keyNorm: norms.keyNorm, epsilon: norms.epsilon, table: norms.table)
            }
        }
        if !storeInside {
            context.launch(
                kernel("kv_store_rows"), grid: (rows, 1, 1), block: 256,
                [.pointer(keys.address), .pointer(values.address), .pointer(rowsTable), .int(width), .int(half ? 1 : 0)])
        }
        // The keys are cut into shares (`attentionShares`), one block each, then merged.
        let decode = rows <= GemmaKernels.gemvMaximumTokens
        let (splits, share, most) = attentionShares(mostKeys: mostKeys, decode: decode)
        let partials = splits > 1 ? attentionPartials(rows * heads * (decode ? most : splits) * (headDimension + 2)) : 0
        context.launch(
            kernel("attention_rows"), grid: (rows, heads, splits), block: 256,
            [
                .pointer(queries.address), .pointer(rowsTable), .pointer(out.address), .pointer(partials), .int(heads),
                .int(kvHeads), .int(headDimension), .float(scale), .int(splits), .int(share), .int(half ? 1 : 0),
                .pointer(keys.address), .pointer(values.address), .int(storeInside ? 1 : 0),
            ] + prefetchRanges(next, rows: rows, blocks: rows * heads * splits, kind: prefetchKindInKernel) + [
                .pointer(inside?.queryNorm.address ?? 0), .pointer(inside?.keyNorm.address ?? 0),
                .pointer(inside?.table.address ?? 0), .float(inside?.epsilon ?? 0),
                .int(attentionTrims ? 1 : 0), .int(attentionEarlyLoads ? 1 : 0), .int(prefetchKindInKernel.kernelValue),
            ])
        // A separate merge: merged by the last share inside attention_rows (a fence, a count and
        // the merge in one block) took 19.6 µs a layer on an H200 against 11.5 + 3.7 µs this way.
        // Merged inside the output projection instead (each of its 288 blocks loading every share
        // itself, one launch a layer fewer), a 1B step took 1.489 ms against 1.413 ms this way on an
        // H100: the blocks' loads of the shares (64 KiB each) cost more than the launch saved.
        if splits > 1 {
            precondition(splits <= 32 && headDimension <= 256, "attention_combine merges at most 32 shares of heads up to 256")
            if rows == 1, storeInside, let projection, outputFused(projection.weight, into: projection.into, heads: heads,
                headDimension: headDimension, partials: partials, splits: splits)
            {
                return .projected
            }
            context.launch(
                kernel("attention_combine"), grid: (rows, heads, 1), block: 256,
                [.pointer(partials), .pointer(out.address), .int(heads), .int(headDimension), .int(splits)])
        }
        return .attended
    }

    /// One row's attention shares (`partials`) merged and multiplied by `weight` into `out` in one
    /// launch (`attention_output_bf16`), where `fusedOutput` asks for it and the shapes fit; false
    /// (nothing launched) otherwise.
    private func outputFused(
        _ weight: CUDAMatrix, into out: CUDABuffer, heads: Int, headDimension: Int, partials: CUDAContext.DevicePointer,
        splits: Int
    ) -> Bool {
        let m = weight.rows, groups = (weight.rows + GemmaKernels.outputRows - 1) / GemmaKernels.outputRows
        guard weight.storage == .bf16, weight.columns == heads * headDimension, m <= out.count,
            headDimension % 8 == 0, headDimension <= GemmaKernels.attentionMaximumDimension
        else { return false }
        lock.lock()
        guard outputFusion else {
            lock.unlock()
            return false
        }
        if outputParts == nil || outputParts!.count < heads * m { outputParts = makeBuffer(count: heads * m) }
        // Zeroed by the allocation; each launch leaves its tickets at zero.
        if outputTickets == nil || outputTickets!.count < groups { outputTickets = makeBuffer(count: groups) }
        let (parts, tickets) = (outputParts!, outputTickets!)
        outputLaunches += 1
        lock.unlock()
        context.launch(
            kernel("attention_output_bf16"), grid: (groups, heads, 1), block: 256,
            [
                .pointer(partials), .pointer(weight.address), .pointer(parts.address), .pointer(out.address),
                .pointer(tickets.address), .int(m), .int(heads), .int(headDimension), .int(splits),
            ])
        return true
    }

    /// A one-token step's layer, or its first half, as one or two persistent launches where
    /// `persistentLayers` asks for it and the layer has the shapes of the launches it replaces (bf16
    /// weights, the residual norms and head norms fused as those launches fuse them); else `.none`.
    public func decodeLayer(_ layer: DecodeLayer<CUDABuffer, CUDAMatrix>) -> DecodeLayerReach {
        lock.lock()
        let mode = persistentMode, perSM = persistentPerSM, mlpBlocks = mlpPerSM
        lock.unlock()
        guard mode != .off else { return .none }
        let whole = mode != .attention
        let hidden = layer.query.columns, dim = layer.headDimension, heads = layer.heads, kvHeads = layer.kvHeads
        let qkv = [layer.query, layer.key, layer.value], post = layer.postAttention
        let width = layer.gate.rows, queryWidth = heads * dim
        guard layer.segment.rows == 1, layer.segment.firstRow == 0, hidden % 8 == 0, fusedHeadNorms,
            (qkv + [layer.output, layer.gate, layer.up, layer.down]).allSatisfy({ $0.storage == .bf16 }),
            qkv.allSatisfy({ $0.columns == hidden }), heads % kvHeads == 0, dim % 32 == 0,
            dim <= GemmaKernels.attentionMaximumDimension, layer.query.rows == queryWidth,
            layer.key.rows == kvHeads * dim, layer.value.rows == kvHeads * dim,
            layer.output.rows == hidden, layer.output.columns == queryWidth,
            layer.gate.columns == hidden, layer.up.rows == width, layer.up.columns == hidden,
            layer.down.rows == hidden, layer.down.columns == width, width % 8 == 0,
            layer.queries.count >= queryWidth, layer.attention.count >= queryWidth,
            min(layer.keys.count, layer.values.count) >= kvHeads * dim, layer.normed.count >= hidden,
            layer.projected.count >= hidden, layer.gated.count >= width
        else { return .none }
        // The post-attention norm goes inside as gemv_gelu_norm_bf16 takes it; the input norm too, on
        // the same buffers the other way round (the model's): phase 1 reads the residual from the post
        // norm's accumulator and writes it to its source, phase 5 back.
        guard let postNorm = fusedArguments(post), post.dimension == hidden, post.x === layer.projected else { return .none }
        let (residual, residual2) = (post.source ?? post.accumulator, post.accumulator)
        var inputNorm: [CUDAContext.Argument] = [.pointer(0), .pointer(0)]
        if let input = layer.input {
            guard fusedArguments(input) != nil, input.dimension == hidden, input.accumulator === residual,
                (input.source ?? input.accumulator) === residual2, input.normed === post.normed, input.x === layer.projected
            else { return .none }
            inputNorm = [.pointer(input.weight.address), .pointer(input.next.address)]
        }
        Self.checkHeadNorms(layer.norms.queryNorm, layer.norms.keyNorm, layer.norms.table, rows: 1, headDimension: dim)
        let grid = context.device.multiprocessors * perSM

        let (table, _, mostKeys, half) = Self.segmentRows([layer.segment], width: kvHeads * dim)
        let rowsTable = table.withUnsafeBytes { context.stage($0) }
        let (splits, share, most) = attentionShares(mostKeys: mostKeys, decode: true)
        precondition(splits <= 32, "attention_combine merges at most 32 shares")
        let partials = splits > 1 ? attentionPartials(heads * most * (dim + 2)) : 0
        let total = qkv.reduce(0) { $0 + $1.rows }
        var arguments: [CUDAContext.Argument] = [.pointer(gridBarrier.address)]
        arguments += qkv.map { .pointer($0.address) }
        arguments += [layer.queries, layer.keys, layer.values].map { .pointer($0.address) }
        arguments += qkv.map { .int($0.rows) }
        arguments += [
            .pointer(layer.input?.x.address ?? layer.normed.address), .int(hidden),
            .int(GemmaKernels.gemvSplits(rows: total, columns: hidden)),
        ]
        // w, next, then the residual's two buffers, the normed row, epsilon and ticket that both norms share.
        arguments += inputNorm + [.pointer(residual.address), .pointer(residual2.address), postNorm[4]]
        arguments += [.float(layer.input?.epsilon ?? post.epsilon), postNorm[6]]
        arguments += [
            .pointer(rowsTable), .pointer(layer.attention.address), .pointer(partials), .int(heads), .int(kvHeads), .int(dim),
            .float(layer.scale), .int(splits), .int(share), .int(half ? 1 : 0), .pointer(layer.norms.queryNorm.address),
            .pointer(layer.norms.keyNorm.address), .pointer(layer.norms.table.address), .float(layer.norms.epsilon),
        ]
        // The persistent kernels ask a line at a time (prefetch_ahead's default).
        arguments += prefetchRanges([layer.output, layer.gate, layer.up], rows: 1, blocks: grid, kind: .lines)
        arguments += [
            .pointer(layer.output.address), .pointer(layer.projected.address), .int(hidden), .int(queryWidth),
            .int(GemmaKernels.gemvSplits(rows: hidden, columns: queryWidth)),
            .pointer(layer.gate.address), .pointer(layer.up.address), .pointer(layer.gated.address), .int(width),
            .int(GemmaKernels.gemvSplits(rows: width, columns: hidden)), postNorm[0], postNorm[1], .float(post.epsilon),
            .pointer(layer.down.address), .pointer(layer.projected.address), .int(hidden),
            .int(GemmaKernels.gemvSplits(rows: hidden, columns: width)),
        ]
        context.launch(
            kernel(mode == .whole ? "decode_layer" : "decode_attention"), grid: (grid, 1, 1), block: 256,
            arguments + [stamps(grid: grid)])
        if mode == .halves {
            let mlpGrid = context.device.multiprocessors * mlpBlocks
            context.launch(kernel("decode_mlp"), grid: (mlpGrid, 1, 1), block: 256, arguments + [stamps(grid: mlpGrid)])
        }
        lock.lock()
        persistentLayerLaunches += mode == .halves ? 2 : 1
        headNormsInside += 1
        fusedLaunches += (layer.input != nil ? 1 : 0) + (whole ? 1 : 0)
        lock.unlock()
        return whole ? .whole : .attention
    }

    /// The next launch's region of the stamps (`stamp` in the kernels), or none.
    private func stamps(grid: Int) -> CUDAContext.Argument {
        lock.lock()
        defer { lock.unlock() }
        guard let buffer = stampBuffer, stampGrids.count < stampCapacity, grid <= Self.stampBlocks else { return .pointer(0) }
        let address = buffer.address + UInt64(stampGrids.count * Self.stampBlocks * 16 * 8)
        stampGrids.append(grid)
        return .pointer(address)
    }

    /// From now, the next `launches` persistent launches stamp their blocks' times at each phase
    /// (`decode_layer`'s comment numbers them), for `endPersistentStamps`.
    public func beginPersistentStamps(launches: Int) throws {
        let buffer = try CUDABuffer(context: context, count: launches * Self.stampBlocks * 16 * 2)
        lock.lock()
        stampBuffer = buffer
        stampGrids = []
        stampCapacity = launches
        lock.unlock()
    }

    /// The stamps since `beginPersistentStamps`, once the work queued has run: per launch, per block,
    /// 16 times in nanoseconds (0: that point not reached, or none); stamping stops.
    public func endPersistentStamps() throws -> [[[UInt64]]] {
        lock.lock()
        let buffer = stampBuffer, grids = stampGrids
        stampBuffer = nil
        stampGrids = []
        lock.unlock()
        guard let buffer, !grids.isEmpty else { return [] }
        try context.synchronize()
        var words = [UInt64](repeating: 0, count: grids.count * Self.stampBlocks * 16)
        words.withUnsafeMutableBytes { context.download(buffer.address, bytes: $0.count, into: $0.baseAddress!) }
        return grids.enumerated().map { launch, grid in
            (0..<grid).map { block in
                let first = (launch * Self.stampBlocks + block) * 16
                return Array(words[first..<first + 16])
            }
        }
    }

    /// attentionBatch's table of rows (`SegmentRow` in the kernels: each row's cache ring, position,
    /// capacity and window), its row count, the most keys a row reads, and whether the caches hold bf16.
    static func segmentRows(
        _ segments: [AttentionSegment<CUDABuffer>], width: Int
    ) -> (table: [UInt64], rows: Int, mostKeys: Int, half: Bool) {
        let half = segments.first.map { $0.keys.elementBytes == 2 } ?? false
        precondition(
            segments.allSatisfy { ($0.keys.elementBytes == 2) == half && $0.values.elementBytes == $0.keys.elementBytes },
            "every cache of a step holds the same type")
        var table: [UInt64] = []
        var rows = 0
        var mostKeys = 0
        for segment in segments {
            let oldestNeeded = segment.window.map { max(0, segment.firstPosition - $0 + 1) } ?? 0
            precondition(
                segment.firstPosition + segment.rows - 1 - oldestNeeded < segment.capacity,
                "the KV cache is too small for this batch")
            precondition(segment.firstRow == rows, "segments must cover the rows in order")
            precondition(segment.capacity * width <= min(segment.keys.count, segment.values.count))
            let lastPosition = segment.firstPosition + segment.rows - 1
            mostKeys = max(mostKeys, lastPosition + 1 - (segment.window.map { max(0, lastPosition - $0 + 1) } ?? 0))
            for r in 0..<segment.rows {
                table.append(segment.keys.address)
                table.append(segment.values.address)
                table.append(UInt64(UInt32(segment.firstPosition + r)) | UInt64(UInt32(segment.capacity)) << 32)
                table.append(UInt64(UInt32(segment.window ?? 0)))
            }
            rows += segment.rows
        }
        return (table, rows, mostKeys, half)
    }

    /// How attention cuts each row's keys: into `splits` shares of `share` keys (at most `most`, at
    /// any length: what the partials' scratch holds). A decode step (a few rows) takes
    /// `decodeShares` shares of 32 keys, and past those keys `longDecodeShares` of 32 (or of the next
    /// multiple of 32 that covers the longest row), so that even one sequence spreads over many SMs:
    /// a block of 256 keys took 45 µs on an H200, nearly all of it waiting on loads; shares past a
    /// row's keys are empty. A fixed count and a round share keep the launch (and so the step's CUDA
    /// graph) the same for 512 keys at a time (1024 past 512). A prefill takes shares of about 256
    /// keys, up to 32.
    private func attentionShares(mostKeys: Int, decode: Bool) -> (splits: Int, share: Int, most: Int) {
        Self.attentionShares(mostKeys: mostKeys, decode: decode, short: decodeShares, long: longDecodeShares)
    }

    static func attentionShares(mostKeys: Int, decode: Bool, short: Int, long: Int) -> (splits: Int, share: Int, most: Int) {
        guard decode else {
            let share = max(256, (mostKeys + 31) / 32)
            return (max(1, (mostKeys + share - 1) / share), share, 32)
        }
        let long = max(short, long)
        let count = mostKeys > 32 * short ? long : short
        let share = 32 * max(1, (mostKeys + 32 * count - 1) / (32 * count))
        return (mostKeys > 32 ? count : 1, share, long)
    }

    /// Room for `count` floats of attention shares. A decode step asks for the most shares at once,
    /// so the scratch is not regrown (a wait in the middle of a step) as its contexts grow.
    private func attentionPartials(_ count: Int) -> CUDAContext.DevicePointer {
        lock.lock()
        defer { lock.unlock() }
        if partialScratch == nil || partialScratch!.count < count { partialScratch = makeBuffer(count: count) }
        return partialScratch!.address
    }

    /// attention_rows' three (address, bytes) ranges to ask L2 for (`CUDABackend.prefetchShares`); none
    /// in a step of several rows (their products are bound by activation loads, and asking L2 for the
    /// weights slowed them before, see gemv_pairs).
    private func prefetchRanges(_ next: [CUDAMatrix], rows: Int, blocks: Int, kind: PrefetchKind) -> [CUDAContext.Argument] {
        let budget = rows == 1 ? Self.prefetchBudget(prefetchAheadBytes, blocks: blocks, kind: kind) : 0
        let bytes = Self.prefetchShares(next.prefix(3).map(\.bytes), budget: budget)
        var ranges: [CUDAContext.Argument] = []
        for i in 0..<3 {
            let share = i < bytes.count ? bytes[i] : 0
            ranges += [.pointer(share > 0 ? next[i].address : 0), .u64(UInt64(share))]
        }
        return ranges
    }

    /// `budget`, cut to 16 lines a thread of attention_rows' `blocks` blocks (512 KiB a block): a short
    /// context's attention has few blocks (4 for the 1B below 33 keys), and each prefetch its
    /// threads issue comes before its own loads. Bulk: one instruction a thread (4 MiB a block).
    public static func prefetchBudget(_ budget: Int, blocks: Int, kind: PrefetchKind = .lines) -> Int {
        min(budget, blocks * 256 * (kind == .lines ? 16 : GemmaKernels.prefetchBulkLines) * 128)
    }

    /// How many of the first bytes of each matrix to ask L2 for, within `budget`: the same share of
    /// each (so the MLP's gate and up, read side by side, find the same rows in L2), whole 128-byte
    /// lines, all of each where they fit.
    static func prefetchShares(_ sizes: [Int], budget: Int) -> [Int] {
        let total = sizes.reduce(0, +)
        let share = total > 0 ? min(1, Double(budget) / Double(total)) : 0
        return sizes.map { share >= 1 ? $0 : Int(Double($0) * share) / 128 * 128 }
    }

    public func geluMultiply(_ gate: CUDABuffer, _ up: CUDABuffer, count: Int) {
        precondition(count <= gate.count && count <= up.count)
        context.launch(
            kernel("gelu_tanh_mul"), grid: (blocks(count, 256), 1, 1), block: 256,
            [.pointer(gate.address), .pointer(up.address), .pointer(gate.address), .int(count)])
    }

    public func add(_ x: CUDABuffer, into accumulator: CUDABuffer, count: Int) {
        precondition(count <= x.count && count <= accumulator.count)
        context.launch(
            kernel("add_rows"), grid: (blocks(count, 256), 1, 1), block: 256,
            [.pointer(accumulator.address), .pointer(x.address), .int(count)])
    }

    public func softmax(_ x: CUDABuffer, rows: Int, columns: Int) {
        precondition(rows * columns <= x.count)
        context.launch(kernel("softmax_rows"), grid: (rows, 1, 1), block: 1024, [.pointer(x.address), .int(columns)])
    }

    /// The index of each row's largest value (lowest index on ties), computed on the device: only
    /// `rows` integers come back instead of rows × columns floats.
    public func argmax(_ x: CUDABuffer, rows: Int, columns: Int) -> [Int] {
        let out = launchArgmax(x, rows: rows, columns: columns)
        var result = [Int32](repeating: 0, count: rows)
        result.withUnsafeMutableBytes { context.download(out.address, bytes: rows * 4, into: $0.baseAddress!) }
        return result.map(Int.init)
    }

    /// Queues the argmax kernels; the ids (Int32) land in the returned buffer (`argmaxOut`).
    private func launchArgmax(_ x: CUDABuffer, rows: Int, columns: Int) -> CUDABuffer {
        precondition(rows * columns <= x.count)
        lock.lock()
        defer { lock.unlock() }
        if argmaxOut == nil || argmaxOut!.count < rows { argmaxOut = makeBuffer(count: max(rows, 256)) }
        let out = argmaxOut!
        argmaxLaunches += 1
        // Long rows in slices, one block each, then merged.
        let slices = Self.logitSlices(columns)
        if argmaxParts == nil || argmaxParts!.count < rows * slices * 2 { argmaxParts = makeBuffer(count: max(rows, 16) * 128) }
        let parts = argmaxParts!
        context.launch(
            kernel("argmax_rows"), grid: (rows, slices, 1), block: 256,
            [.pointer(x.address), .pointer(parts.address), .int(columns)])
        context.launch(
            kernel("argmax_finish"), grid: (rows, 1, 1), block: 32,
            [.pointer(parts.address), .pointer(out.address), .int(slices)])
        return out
    }

    // MARK: pipelined decode steps

    /// Needs the driver's asynchronous copies to the host and events (every CUDA 12 driver), and
    /// not `INFERENCE_PIPELINE=off`.
    public var pipelinesSteps: Bool { context.readbacksAvailable && pipelineAllowed }

    public func beginPipelinedStep(place: Int?) { context.stageInRegion(place, of: pipelinePlaces) }

    public func embedDrawn(rows: [Int], table: CUDAMatrix, scale: Float, into out: CUDABuffer) {
        precondition(rows.count * table.columns <= out.count && table.storage == .bf16)
        lock.lock()
        let chosen = argmaxOut
        embeddedDrawn += 1
        lock.unlock()
        guard let chosen else { preconditionFailure("embedDrawn before any queueDraws") }
        precondition(rows.allSatisfy { $0 >= 0 && $0 < chosen.count }, "a drawn row past the argmax's rows")
        let map = rows.map { Int32(truncatingIfNeeded: $0) }.withUnsafeBytes { context.stage($0) }
        context.launch(
            kernel("embed_drawn"), grid: (rows.count, 1, 1), block: 256,
            [.pointer(table.address), .pointer(chosen.address), .pointer(map), .pointer(out.address), .int(table.columns),
             .float(scale)])
    }

    /// How many steps took their tokens from the device (`embedDrawn`), for checks that the
    /// pipelined path ran.
    public var drawnEmbeds: Int {
        lock.lock()
        defer { lock.unlock() }
        return embeddedDrawn
    }
    private var embeddedDrawn = 0

    public func queueDraws(
        _ x: CUDABuffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?], pending: [Int]?,
        place: Int
    ) {
        precondition(
            draws.count == rows && logprobs.count == rows && (pending?.count ?? rows) == rows
                && queuesDraws(draws, logprobs: logprobs), "a queued draw per row")
        let scored = logprobs.contains { $0 != nil }
        let out: CUDABuffer
        var results: CUDABuffer?
        if !scored && draws.allSatisfy(\.isPlainArgmax) {
            out = launchArgmax(x, rows: rows, columns: columns)
        } else {
            lock.lock()
            if scored {
                (out, results) = launchSample(
                    x, rows: rows, columns: columns, softcap: softcap, draws: draws, logprobs: logprobs, pending: pending)
            } else {
                out = launchSample(x, rows: rows, columns: columns, softcap: softcap, draws: draws, pending: pending)
            }
            lock.unlock()
        }
        context.queueReadback(out.address, bytes: rows * 4, place: place)
        // The logprobs' numbers go to the same place, after the ids.
        if let results {
            context.queueReadback(results.address, bytes: Self.logprobNumbers(logprobs) * 4, place: place, offset: rows * 4)
        }
        lock.lock()
        queuedLogprobs[place] = scored ? (logprobs, columns) : nil
        lock.unlock()
    }

    /// Penalty entries that fit the staging area (`stagedPenaltyBytes`): a longer history is uploaded
    /// to a buffer of its own at once, which a step still queued could be reading. Logprobs of at
    /// most `TokenDraw.maximumLogprobs` alternatives, whose numbers fit a readback place beside the ids.
    public func queuesDraws(_ draws: [TokenDraw], logprobs: [Int?]) -> Bool {
        let entries = draws.reduce(0) { $0 + ($1.penalties?.entries.count ?? 0) }
        return 3 * entries <= Self.stagedPenaltyBytes / 4 / 2  // padded to at most twice the words
            && logprobs.allSatisfy { ($0 ?? 0) >= 0 && ($0 ?? 0) <= TokenDraw.maximumLogprobs }
            && (logprobs.count + Self.logprobNumbers(logprobs)) * 4 <= CUDAContext.readbackCapacity
    }

    public var pipelineStamp: Int {
        lock.lock()
        defer { lock.unlock() }
        return argmaxLaunches
    }
    private var argmaxLaunches = 0

    public func queuedTokens(rows: Int, place: Int) -> [GeneratedToken] {
        var result = [Int32](repeating: 0, count: rows)
        result.withUnsafeMutableBytes { context.finishReadback(place: place, bytes: rows * 4, into: $0.baseAddress!) }
        let ids = result.map(Int.init)
        lock.lock()
        let scored = queuedLogprobs[place]
        lock.unlock()
        guard let scored else { return ids.map { GeneratedToken(id: $0, logprob: .nan, top: []) } }
        precondition(scored.logprobs.count == rows, "place \(place) was queued with logprobs for \(scored.logprobs.count) rows, not \(rows)")
        var numbers = [Float](repeating: 0, count: Self.logprobNumbers(scored.logprobs))
        numbers.withUnsafeMutableBytes {
            context.finishReadback(place: place, bytes: $0.count, offset: rows * 4, into: $0.baseAddress!)
        }
        return Self.tokens(ids, logprobs: scored.logprobs, numbers: numbers, columns: scored.columns)
    }

    public var drawsOnDevice: Bool { true }

    /// Slices a row of logits is cut into for the kernels that spread one row over many SMs (argmax,
    /// sampling candidates): at least 4096 logits each, at most 64 (262144 logits: 64).
    static func logitSlices(_ columns: Int) -> Int { max(1, min(64, columns / 4096)) }

    /// The recorded work goes to the GPU now (as a graph once it repeats): the GPU runs the first
    /// layers of a step while the host records the next ones.
    public func submit() { context.flush() }

    /// `apply_penalties` on the drawn rows, in place: the per-row table and the (id, count, bias) entries go
    /// through the staging area, the entries padded to 3 × a power of two words so that a steady batch keeps
    /// the same step shape (and its CUDA graph) while the outputs grow.
    /// `pending`: the last draws' ids and, per row, which of them it generated that its penalties do
    /// not count yet (`queueDraws`).
    private func applyPenalties(
        _ x: CUDABuffer, rows: Int, columns: Int, softcap: Float, draws: [TokenDraw],
        pending: (ids: CUDAContext.DevicePointer, rows: [Int])?
    ) {
        var table = [UInt8](repeating: 0, count: rows * 24)
        var entries: [UInt32] = []
        table.withUnsafeMutableBytes { bytes in
            for (r, draw) in draws.enumerated() {
                let p = bytes.baseAddress! + r * 24
                let penalties = draw.penalties
                p.storeBytes(of: UInt32(entries.count / 3), toByteOffset: 0, as: UInt32.self)
                p.storeBytes(of: UInt32(penalties?.entries.count ?? 0), toByteOffset: 4, as: UInt32.self)
                p.storeBytes(of: penalties?.presence ?? 0, toByteOffset: 8, as: Float.self)
                p.storeBytes(of: penalties?.frequency ?? 0, toByteOffset: 12, as: Float.self)
                p.storeBytes(of: penalties?.repetition ?? 1, toByteOffset: 16, as: Float.self)
                for entry in penalties?.entries ?? [] {
                    entries.append(UInt32(truncatingIfNeeded: entry.id))
                    entries.append(UInt32(truncatingIfNeeded: entry.count) << 1 | (entry.seen ? 1 : 0))
                    entries.append(entry.bias.bitPattern)
                }
            }
        }
        var padded = 3
        while padded < entries.count { padded *= 2 }
        entries += [UInt32](repeating: 0, count: padded - entries.count)
        let rowTable = table.withUnsafeBytes { context.stage($0) }
        let list: CUDAContext.DevicePointer
        if entries.count * 4 <= Self.stagedPenaltyBytes {
            list = entries.withUnsafeBytes { context.stage($0) }
        } else {
            // A history too long for the staging area (a repetition penalty over very long prompts):
            // a buffer of its own, uploaded now (this step then runs without its graph).
            if penaltyScratch == nil || penaltyScratch!.count < entries.count { penaltyScratch = makeBuffer(count: entries.count) }
            entries.withUnsafeBytes { context.upload($0.baseAddress!, bytes: $0.count, to: penaltyScratch!.address) }
            list = penaltyScratch!.address
        }
        let pendingRows = pending.map { pending in
            pending.rows.map { Int32(truncatingIfNeeded: $0) }.withUnsafeBytes { context.stage($0) }
        }
        context.launch(
            kernel("apply_penalties"), grid: (rows, 1, 1), block: 256,
            [
                .pointer(x.address), .int(columns), .float(softcap), .pointer(rowTable), .pointer(list),
                .pointer(pending?.ids ?? 0), .pointer(pendingRows ?? 0),
            ])
    }

    /// `sample_rows`: each row's cuts and Gumbel-max draw in one block; only the ids come back.
    public func sample(_ x: CUDABuffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw]) -> [Int] {
        precondition(rows * columns <= x.count && draws.count == rows)
        guard rows > 0 else { return [] }
        lock.lock()
        defer { lock.unlock() }
        let out = launchSample(x, rows: rows, columns: columns, softcap: softcap, draws: draws)
        return downloadTokens(out, rows: rows)
    }

    /// The draw as above, and where logprobs are wanted, `logprob_slices` and `logprob_merge` over copies of those rows
    /// taken before the penalties change them: a few numbers per row come back, not its logits.
    public func sample(
        _ x: CUDABuffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?]
    ) -> [GeneratedToken] {
        precondition(rows * columns <= x.count && draws.count == rows && logprobs.count == rows)
        let wanted = logprobs.indices.filter { logprobs[$0] != nil }
        let top = wanted.map { logprobs[$0]! }.max() ?? 0
        guard rows > 0, !wanted.isEmpty, top <= TokenDraw.maximumLogprobs else {
            return sampleWithHostLogprobs(x, rows: rows, columns: columns, softcap: softcap, draws: draws, logprobs: logprobs)
        }
        lock.lock()
        defer { lock.unlock() }
        let (out, results) = launchSample(x, rows: rows, columns: columns, softcap: softcap, draws: draws, logprobs: logprobs)
        let ids = downloadTokens(out, rows: rows)
        var numbers = [Float](repeating: 0, count: Self.logprobNumbers(logprobs))
        numbers.withUnsafeMutableBytes { context.download(results.address, bytes: $0.count, into: $0.baseAddress!) }
        return Self.tokens(ids, logprobs: logprobs, numbers: numbers, columns: columns)
    }

    /// `launchSample`, and `launchLogprobs` for the rows whose `logprobs` are set (the most
    /// alternatives any asks for, at most `TokenDraw.maximumLogprobs`), in row order, over copies of
    /// the rows that `apply_penalties` changes in place (sample_rows does not): its penalized rows,
    /// and with a soft cap every row, which it caps for sample_rows. The caller holds the lock.
    private func launchSample(
        _ x: CUDABuffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?],
        pending: [Int]? = nil
    ) -> (ids: CUDABuffer, logprobs: CUDABuffer) {
        let wanted = logprobs.indices.filter { logprobs[$0] != nil }
        let top = wanted.map { logprobs[$0]! }.max() ?? 0
        let anyPenalties = draws.contains { $0.penalties != nil }
        let penalized = wanted.filter { anyPenalties && (softcap != nil || draws[$0].penalties != nil) }
        if !penalized.isEmpty && (logprobCopies == nil || logprobCopies!.count < penalized.count * columns) {
            logprobCopies = makeBuffer(count: penalized.count * columns)
        }
        var addresses = wanted.map { x.address + UInt64($0 * columns * 4) }
        for (k, r) in penalized.enumerated() {
            let copy = logprobCopies!.address + UInt64(k * columns * 4)
            context.copy(x.address + UInt64(r * columns * 4), to: copy, bytes: columns * 4)
            addresses[wanted.firstIndex(of: r)!] = copy
        }
        let out = launchSample(x, rows: rows, columns: columns, softcap: softcap, draws: draws, pending: pending)
        let results = launchLogprobs(
            rows: addresses, columns: columns, softcap: softcap, source: wanted.map { Int32($0) }, tokens: out.address, top: top)
        return (out, results)
    }

    /// How many numbers `logprob_merge` leaves for the rows whose `logprobs` are set: 2 + 2 × the most
    /// alternatives any asks for, a row.
    static func logprobNumbers(_ logprobs: [Int?]) -> Int {
        let wanted = logprobs.compactMap { $0 }
        return wanted.count * (2 + 2 * (wanted.max() ?? 0))
    }

    /// Each row's token `ids[r]`, with, for the rows whose `logprobs` are set, `logprob_merge`'s numbers
    /// (`numbers`: those rows in order, each with as many alternatives as the most any asks for),
    /// cut to the alternatives it asks for.
    static func tokens(_ ids: [Int], logprobs: [Int?], numbers: [Float], columns: Int) -> [GeneratedToken] {
        let wanted = logprobs.indices.filter { logprobs[$0] != nil }
        let top = wanted.map { logprobs[$0]! }.max() ?? 0
        let scored = parseLogprobs(numbers, rows: wanted.count, top: top, ids: wanted.map { ids[$0] }, columns: columns)
        var tokens = ids.map { GeneratedToken(id: $0, logprob: .nan, top: []) }
        for (k, r) in wanted.enumerated() {
            tokens[r] = scored[k]
            tokens[r].top = Array(scored[k].top.prefix(logprobs[r]!))
        }
        return tokens
    }

    /// The logprobs' launches straight over the logits (no draw changes them): per row, the given token's
    /// logprob and `top` alternatives come back.
    public func logprobs(
        _ x: CUDABuffer, firstRow: Int, rows: Int, columns: Int, softcap: Float?, tokens: [Int], top: Int
    ) -> [GeneratedToken] {
        precondition((firstRow + rows) * columns <= x.count && tokens.count == rows)
        guard rows > 0 else { return [] }
        guard top <= TokenDraw.maximumLogprobs else {
            return hostLogprobs(x, firstRow: firstRow, rows: rows, columns: columns, softcap: softcap, tokens: tokens, top: top)
        }
        lock.lock()
        defer { lock.unlock() }
        let ids = tokens.map { Int32(truncatingIfNeeded: $0) }.withUnsafeBytes { context.stage($0) }
        let results = launchLogprobs(
            rows: (firstRow..<firstRow + rows).map { x.address + UInt64($0 * columns * 4) }, columns: columns,
            softcap: softcap, source: (0..<Int32(rows)).map { $0 }, tokens: ids, top: top)
        return readLogprobs(results, rows: rows, top: top, ids: tokens, columns: columns)
    }

    /// Queues `logprob_slices` and `logprob_merge` over the rows at `rows` (device addresses), scoring tokens[source[r]];
    /// its numbers are in the returned buffer.
    private func launchLogprobs(
        rows: [UInt64], columns: Int, softcap: Float?, source: [Int32], tokens: CUDAContext.DevicePointer, top: Int
    ) -> CUDABuffer {
        precondition((0...TokenDraw.maximumLogprobs).contains(top), "the logprob kernels report 0 to \(TokenDraw.maximumLogprobs) alternatives")
        let width = 2 + 2 * top
        // Room for a pipelined step's most rows at the most alternatives from the first: growing
        // frees the old buffer, which waits for the device in the middle of a step.
        if logprobOut == nil || logprobOut!.count < rows.count * width {
            let most = BatchRunner<CUDABackend>.pipelinedRows * (2 + 2 * TokenDraw.maximumLogprobs)
            logprobOut = makeBuffer(count: max(most, rows.count * width))
        }
        let slices = Self.logitSlices(columns)
        let partWidth = 3 + 2 * TokenDraw.maximumLogprobs  // LOGPROB_PART
        if logprobParts == nil || logprobParts!.count < rows.count * slices * partWidth {
            logprobParts = makeBuffer(count: max(16, rows.count) * slices * partWidth)
        }
        let table = rows.withUnsafeBytes { context.stage($0) }
        let sources = source.withUnsafeBytes { context.stage($0) }
        let common: [CUDAContext.Argument] = [
            .pointer(table), .int(columns), .float(softcap ?? 0), .pointer(sources), .pointer(tokens), .int(top),
        ]
        context.launch(
            kernel("logprob_slices"), grid: (rows.count, slices, 1), block: 512, common + [.pointer(logprobParts!.address)])
        context.launch(
            kernel("logprob_merge"), grid: (rows.count, 1, 1), block: 512,
            common + [.pointer(logprobParts!.address), .int(slices), .pointer(logprobOut!.address)])
        return logprobOut!
    }

    /// `logprob_merge`'s numbers for `rows` rows, as tokens `ids` with `top` alternatives each.
    private func readLogprobs(_ results: CUDABuffer, rows: Int, top: Int, ids: [Int], columns: Int) -> [GeneratedToken] {
        var numbers = [Float](repeating: 0, count: rows * (2 + 2 * top))
        numbers.withUnsafeMutableBytes { context.download(results.address, bytes: $0.count, into: $0.baseAddress!) }
        return Self.parseLogprobs(numbers, rows: rows, top: top, ids: ids, columns: columns)
    }

    /// `logprob_merge`'s numbers (`numbers`) for `rows` rows, as tokens `ids` with `top` alternatives each.
    static func parseLogprobs(_ numbers: [Float], rows: Int, top: Int, ids: [Int], columns: Int) -> [GeneratedToken] {
        let width = 2 + 2 * top
        return (0..<rows).map { k in
            let o = k * width
            return GeneratedToken(
                id: ids[k], logprob: numbers[o],
                top: (0..<top).compactMap { j in
                    let id = Int(numbers[o + 2 + 2 * j].bitPattern)
                    return id < columns ? TokenLogprob(id: id, logprob: numbers[o + 3 + 2 * j]) : nil
                },
                rank: Int(Int32(bitPattern: numbers[o + 1].bitPattern)))
        }
    }

    /// Penalties (when any) and `sample_rows`, queued; the ids stay in the returned buffer. `pending`:
    /// row r generated row pending[r] of the last draws (still in this buffer), which its penalties do
    /// not count yet (`queueDraws`).
    private func launchSample(
        _ x: CUDABuffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], pending: [Int]? = nil
    ) -> CUDABuffer {
        let last = argmaxOut
        if argmaxOut == nil || argmaxOut!.count < rows { argmaxOut = makeBuffer(count: max(rows, 256)) }
        precondition(pending == nil || (last === argmaxOut && pending!.allSatisfy { $0 >= 0 && $0 < last!.count }),
            "pending tokens are rows of the last draws")
        let out = argmaxOut!
        argmaxLaunches += 1  // (the caller holds the lock) the ids a pipelined step would embed are overwritten
        var table = [UInt8](repeating: 0, count: rows * TokenDraw.rowBytes)
        table.withUnsafeMutableBytes { bytes in
            for (r, draw) in draws.enumerated() { draw.write(to: bytes.baseAddress! + r * TokenDraw.rowBytes) }
        }
        var cap = softcap ?? 0
        if draws.contains(where: { $0.penalties != nil }) {
            applyPenalties(
                x, rows: rows, columns: columns, softcap: cap, draws: draws, pending: pending.map { (argmaxOut!.address, $0) })
            cap = 0  // applied with the penalties
        }
        let parameters = table.withUnsafeBytes { context.stage($0) }
        // Rows with a top-k cut of at most 256 are drawn from each slice's own top-k
        // (sample_candidates), the slices spread over the SMs.
        let slices = Self.logitSlices(columns)
        precondition(slices <= 64, "sample_rows lists at most 64 slices of a row")
        let places = rows * slices * GemmaKernels.sampleCandidatesPerSlice
        if candidateValues == nil || candidateValues!.count < places {
            candidateValues = makeBuffer(count: places)
            candidateIds = makeBuffer(count: places)
            candidateCounts = makeBuffer(count: max(rows, 16) * 64)
        }
        let values = candidateValues!, ids = candidateIds!, counts = candidateCounts!
        // Rows without a top-k cut (a client that sets only the temperature, or only top_p) are
        // drawn on the slices too, once each slice's maximum is known (sample_maxima): on one block
        // they took 0.46 ms (temperature only) and 1.2 ms (top-p 0.9) a step on an H100, 1B shape.
        var maxima: CUDAContext.DevicePointer = 0, masses: CUDAContext.DevicePointer = 0
        if draws.contains(where: { $0.temperature > 0 && !($0.topK > 0 && $0.topK < columns) }) {  // the kernels' uncut()
            if candidateMaxima == nil || candidateMaxima!.count < rows * slices {
                candidateMaxima = makeBuffer(count: max(rows, 16) * 64)
                candidateMasses = makeBuffer(count: max(rows, 16) * 64 * 2)  // u64 each
            }
            maxima = candidateMaxima!.address
            masses = candidateMasses!.address
            context.launch(
                kernel("sample_maxima"), grid: (rows, slices, 1), block: 512,
                [.pointer(x.address), .int(columns), .float(cap), .pointer(parameters), .pointer(maxima)])
        }
        context.launch(
            kernel("sample_candidates"), grid: (rows, slices, 1), block: 512,
            [
                .pointer(x.address), .int(columns), .float(cap), .pointer(parameters), .pointer(values.address),
                .pointer(ids.address), .pointer(counts.address), .pointer(maxima), .pointer(masses),
            ])
        context.launch(
            kernel("sample_rows"), grid: (rows, 1, 1), block: 512,
            [
                .pointer(x.address), .pointer(out.address), .int(columns), .float(cap), .pointer(parameters),
                .pointer(values.address), .pointer(ids.address), .pointer(counts.address), .int(slices),
                .pointer(maxima), .pointer(masses),
            ])
        return out
    }

    private func downloadTokens(_ out: CUDABuffer, rows: Int) -> [Int] {
        var result = [Int32](repeating: 0, count: rows)
        result.withUnsafeMutableBytes { context.download(out.address, bytes: rows * 4, into: $0.baseAddress!) }
        return result.map(Int.init)
    }
}
