import CInt8
import Foundation
import Synchronization

/// A Q8_0, Q5_0, Q4_K or Q6_K matrix repacked for AVX-512 VNNI (`vpdpbusd`: 64 byte products summed into 16
/// int32 lanes in one instruction), multiplied with activations quantized to int8 per 32-value
/// block as `Int8Product` quantizes them (the layout is in CInt8's int8_tiles.h).
///
/// Why: a decode step of many sequences was bound by f32 multiply-adds (the register-blocked
/// `CPUBackend.gemm`, 16 multiply-adds per cycle per core, after widening each weight to f32), and
/// the 270M model's LM head alone is 168 M of its 268 M multiply-adds per token. `vpdpbusd` does 64
/// per instruction on int8, and the weights need no widening. Each 16 rows × 32 columns of the
/// matrix is one tile (576, 384 or 640 bytes by format) and a group of 16 rows is one sequential
/// stream of them, read from memory once per product and from cache for each further 8 tokens.
///
/// `CPUBackend.matrix` attaches one to each such matrix on CPUs with AVX-512 VNNI; the packed copy
/// is made by the first product (`Gemma3Model.packTiles()` makes them all up front) and takes
/// 1.125 bytes per weight (Q8_0, Q5_0), 0.75 (Q4_K, whose q stay nibbles) or 1.25 (Q6_K).
///
/// `@unchecked Sendable`: the packed copy is made once, under the mutex, and only read afterwards.
final class Int8Tiles: @unchecked Sendable {
    /// Whether this CPU runs the kernels (AVX-512 F/BW/VL/VNNI, and an OS that saves their state).
    /// INFERENCE_INT8_TILES=off turns them off (comparisons, and a way out if they misbehave).
    static let available: Bool =
        ProcessInfo.processInfo.environment["INFERENCE_INT8_TILES"] != "off" && int8_tiles_available() != 0

    /// Formats whose values are small integers times a scale (less a minimum) per 16 or 32 columns:
    /// all of a Gemma 3 Q4_K_M file.
    static func covers(_ format: WeightFormat) -> Bool { tileFormat(format) != nil }

    static func tileFormat(_ format: WeightFormat) -> int8_tiles_format? {
        switch format {
        case .q8_0: INT8_TILES_Q8_0
        case .q5_0: INT8_TILES_Q5_0
        case .q4_K: INT8_TILES_Q4_K
        case .q6_K: INT8_TILES_Q6_K
        default: nil
        }
    }

    let rows: Int
    let columns: Int
    private let format: int8_tiles_format
    private let groups: Int
    /// The matrix as stored, until it is packed.
    private let source: WeightTensor
    /// The packed copy, made by the first product (or `pack()`): on a machine where the model runs on
    /// a GPU, the CPU model is loaded but never multiplies, and should cost neither the time nor the memory.
    private let packed = Mutex<OwnedBytes?>(nil)

    init(_ tensor: WeightTensor) {
        guard let format = Self.tileFormat(tensor.format) else { preconditionFailure("no tiles for \(tensor.format)") }
        // Whole blocks per row (GGUF loading checks it; a tensor built from bytes checks only the total).
        precondition(tensor.columns % tensor.format.blockElements == 0, "rows of \(tensor.format) must be whole blocks")
        self.format = format
        source = tensor
        rows = tensor.rows
        columns = tensor.columns
        groups = (rows + 15) / 16
        byteCount = groups * (columns / 32) * int8_tiles_tile_bytes(format)
    }

    /// Bytes of the packed copy (what a product reads).
    let byteCount: Int

    /// The packed copy, made now if it was not yet. Once it is made, a mapped file's pages of the
    /// stored matrix are dropped from this process's resident memory (they stay in the page cache,
    /// reclaimable, and are read again if the matrix is: the tied embedding is, a row per token), so
    /// the process does not hold the model twice.
    @discardableResult
    func pack() -> UnsafeRawPointer {
        packed.withLock { storage in
            if let storage { return UnsafeRawPointer(storage.pointer) }
            let bytes = OwnedBytes(count: byteCount)
            let (format, tensor, destination) = (format, source, bytes.pointer)
            Parallel.forRanges(groups, minimumChunk: 64) { range in
                int8_tiles_pack(
                    format, tensor.data, tensor.rowBytes, tensor.rows, tensor.columns, 16 * range.lowerBound,
                    16 * range.upperBound, destination)
            }
            (source.owner as? MappedFile)?.dropPages(source.data, count: source.byteCount)
            storage = bytes
            return UnsafeRawPointer(bytes.pointer)
        }
    }

    /// out[t, r] = W[r, :] · x[t, :] for t < n (out rows `rows` apart).
    func product(_ x: UnsafePointer<Float>, _ n: Int, _ out: UnsafeMutablePointer<Float>) {
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
        let (packed, rows, columns, format) = (pack(), rows, columns, format)
        // Chunks of at least 4 groups (64 rows): the smallest products (256 rows, one token) are a
        // few microseconds, where handing out more chunks costs more than it spreads.
        Parallel.forRanges(groups, minimumChunk: 4) { range in
            int8_tiles_product(
                format, packed, rows, columns, range.lowerBound, range.upperBound, values, scales, sums, n, out, rows)
        }
    }
}
