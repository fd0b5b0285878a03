import CKernels
import Foundation
import Synchronization

/// A matrix repacked for the AVX-512 dot-product instructions, in groups of 16 rows that are each one
/// sequential stream of 16-row × 32-column tiles (layouts in CKernels' int8_tiles.h and bf16_tiles.h):
///
/// - **int8** (Q8_0, Q5_0, Q4_K, Q6_K; AVX-512 VNNI): `vpdpbusd` sums 64 byte products into 16 int32
///   lanes per instruction; the activations are quantized to int8 per 32 values as `Int8Product`
///   does. Tiles of 544, 352, 384 or 640 bytes: 1.0625 bytes per weight (Q8_0) and 0.6875 (Q5_0,
///   whose q stay nibbles and a bit mask), as the file holds them, 0.75 (Q4_K, nibbles) or 1.25
///   (Q6_K).
/// - **bf16** (a checkpoint's bf16; AVX-512 BF16): `vdpbf16ps` sums 32 bf16 products into 16 f32
///   lanes; each activation is split into two bf16 parts, both multiplied, so a product keeps about
///   16 bits of it and the golden tests' f32 bar holds (x rounded to bf16 alone, as llama.cpp does,
///   moved the 270M's logits by up to 0.2); every sum stays f32. Tiles of 1024 bytes: the weights'
///   own 2 bytes.
///
/// Why: a decode step of many sequences was bound by f32 multiply-adds (the register-blocked
/// `CPUBackend.gemm`, after widening each weight to f32): on the 270M, 16 sequences took 69 ms a
/// step from Q4_K_M and 72 ms from bf16, where the weights take 8-17 ms to read. These instructions
/// do 4x (int8) and 2x (bf16, so 1x with both parts of x) the f32 rate on the Zen 4 we measure
/// on, need no widening, and a broadcast of 4 (2) columns of one token multiplies 16 rows at once,
/// so there is nothing to reduce across lanes. A group is read from memory once per product (row by row, 16 rows read
/// side by side, it streamed at half the speed) and from cache for each further 8 tokens.
///
/// Each row of x is quantized (split) on its own, so a sequence gets the same numbers alone or in
/// any batch. `CPUBackend.matrix` attaches tiles to each such matrix unless activations are
/// exact; the packed copy is made by the first product (`Gemma3Model.packTiles()` makes them all
/// up front).
///
/// `@unchecked Sendable`: the packed copy is made once, under the mutex, and only read afterwards.
final class WeightTiles: @unchecked Sendable {
    /// Whether this CPU runs the int8 kernels (AVX-512 F/BW/VL/VNNI, and an OS that saves their
    /// state). INFERENCE_INT8_TILES=off turns them off (comparisons, and a way out if they misbehave).
    static let int8Available: Bool =
        ProcessInfo.processInfo.environment["INFERENCE_INT8_TILES"] != "off" && int8_tiles_available() != 0
    /// Whether this CPU runs the bf16 kernels (AVX-512 F/BW/VL/BF16). INFERENCE_BF16_TILES=off turns them off.
    static let bf16Available: Bool =
        ProcessInfo.processInfo.environment["INFERENCE_BF16_TILES"] != "off" && bf16_tiles_available() != 0

    enum Kind: Equatable {
        case int8(int8_tiles_format)
        case bf16
    }

    /// The tiles this CPU has for a matrix of `format` with rows of `columns`, if any.
    static func kind(_ format: WeightFormat, columns: Int) -> Kind? {
        guard columns % 32 == 0 else { return nil }
        switch format {
        case .q8_0 where int8Available: return .int8(INT8_TILES_Q8_0)
        case .q5_0 where int8Available: return .int8(INT8_TILES_Q5_0)
        case .q4_K where int8Available: return .int8(INT8_TILES_Q4_K)
        case .q6_K where int8Available: return .int8(INT8_TILES_Q6_K)
        case .bf16 where bf16Available: return .bf16
        default: return nil
        }
    }

    let kind: Kind
    let rows: Int
    let columns: Int
    private let groups: Int
    /// The matrix as stored, until it is packed.
    private let source: WeightTensor
    /// The packed copy, made by the first product (or `pack()`): on a machine where the model runs on
    /// a GPU, the CPU model is loaded but never multiplies, and should cost neither the time nor the memory.
    private let packed = Mutex<OwnedBytes?>(nil)
    /// Bytes of the packed copy (what a product reads).
    let byteCount: Int

    /// Nil when this CPU has no tiles for the tensor (`kind(_:columns:)`).
    init?(_ tensor: WeightTensor) {
        guard tensor.shape.count == 2, let kind = Self.kind(tensor.format, columns: tensor.columns) else { return nil }
        // Whole blocks per row (GGUF loading checks it; a tensor built from bytes checks only the total).
        precondition(tensor.columns % tensor.format.blockElements == 0, "rows of \(tensor.format) must be whole blocks")
        self.kind = kind
        source = tensor
        rows = tensor.rows
        columns = tensor.columns
        groups = (rows + 15) / 16
        let tileBytes = switch kind {
        case .int8(let format): int8_tiles_tile_bytes(format)
        case .bf16: 1024
        }
        byteCount = groups * (columns / 32) * tileBytes
    }

    /// The packed copy, made now if it was not yet. As each part is packed, a mapped file's whole
    /// pages of its rows are dropped from this process's resident memory (they stay in the page
    /// cache, reclaimable, and are read again if the matrix is: the tied embedding is, a row per
    /// token), so the process does not hold the model twice.
    @discardableResult
    func pack() -> UnsafeRawPointer {
        packed.withLock { storage in
            if let storage { return UnsafeRawPointer(storage.pointer) }
            let bytes = OwnedBytes(count: byteCount)
            let (kind, tensor, destination) = (kind, source, bytes.pointer)
            let file = source.owner as? MappedFile
            Parallel.forRanges(groups, minimumChunk: 64) { range in
                let (r0, r1) = (16 * range.lowerBound, 16 * range.upperBound)
                switch kind {
                case .int8(let format):
                    int8_tiles_pack(format, tensor.data, tensor.rowBytes, tensor.rows, tensor.columns, r0, r1, destination)
                case .bf16:
                    bf16_tiles_pack(tensor.data, tensor.rows, tensor.columns, r0, r1, destination)
                }
                // Each part as soon as it is packed, so that at most a few parts are resident twice
                // (the 270M's bf16 LM head is 335 MB; packed whole, it was, and the peak with it).
                let end = min(r1, tensor.rows)
                file?.dropPages(tensor.row(r0), count: (end - r0) * tensor.rowBytes)
            }
            storage = bytes
            return UnsafeRawPointer(bytes.pointer)
        }
    }

    /// out[t, r] = W[r, :] · x[t, :] for t < n (out rows `rows` apart).
    func product(_ x: UnsafePointer<Float>, _ n: Int, _ out: UnsafeMutablePointer<Float>) {
        let (packed, rows, columns) = (pack(), rows, columns)
        // Chunks of at least 4 groups (64 rows): the smallest products (256 rows, one token) are a
        // few microseconds, where handing out more chunks costs more than it spreads.
        switch kind {
        case .int8(let format):
            let blocks = columns / 32
            let values = UnsafeMutablePointer<Int8>.allocate(capacity: n * columns)
            let scales = UnsafeMutablePointer<Float>.allocate(capacity: n * blocks)
            let sums = UnsafeMutablePointer<Int32>.allocate(capacity: n * 2 * blocks)
            defer {
                values.deallocate()
                scales.deallocate()
                sums.deallocate()
            }
            int8_tiles_quantize(x, n, columns, values, scales, sums)
            Parallel.forRanges(groups, minimumChunk: 4) { range in
                int8_tiles_product(
                    format, packed, rows, columns, range.lowerBound, range.upperBound, values, scales, sums, n, out, rows)
            }
        case .bf16:
            let stride = bf16_tiles_stride(columns)
            let high = UnsafeMutablePointer<UInt16>.allocate(capacity: 2 * n * stride)
            defer { high.deallocate() }
            let low = high + n * stride
            bf16_tiles_convert(x, n, columns, high, low)
            Parallel.forRanges(groups, minimumChunk: 4) { range in
                bf16_tiles_product(packed, rows, columns, range.lowerBound, range.upperBound, high, low, n, out, rows)
            }
        }
    }
}

extension Gemma3Model where Backend == CPUBackend {
    /// The instructions this model's tiles use ("AVX-512 VNNI", "AVX-512 BF16"), empty without tiles.
    public var tileInstructions: [String] {
        let kinds = productMatrices.compactMap { $0.tiles?.kind }
        var names: [String] = []
        if kinds.contains(where: { $0 != .bf16 }) { names.append("AVX-512 VNNI") }
        if kinds.contains(.bf16) { names.append("AVX-512 BF16") }
        return names
    }

    /// Every matrix a decoded token is multiplied with: each layer's projections, then the LM head.
    var productMatrices: [WeightTensor] {
        layers.flatMap { [$0.query, $0.key, $0.value, $0.output, $0.gate, $0.up, $0.down] } + [lmHead]
    }

    /// Packs every matrix's tiles now rather than in the first products (`WeightTiles.pack`), so
    /// that a server is ready when it says so and timings leave it out. Returns the bytes packed
    /// (0 on a CPU without the instructions, or with exact activations).
    @discardableResult
    public func packTiles() -> Int {
        productMatrices.reduce(0) { total, matrix in
            guard let tiles = matrix.tiles else { return total }
            tiles.pack()
            return total + tiles.byteCount
        }
    }
}
