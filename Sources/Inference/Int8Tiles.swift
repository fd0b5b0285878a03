import CInt8
import Foundation

/// A Q8_0 or Q5_0 matrix repacked for AVX-512 VNNI (`vpdpbusd`: 64 byte products summed into 16
/// int32 lanes in one instruction), multiplied with activations quantized to int8 per 32-value
/// block as `Int8Product` quantizes them (the layout is in CInt8's int8_tiles.h).
///
/// Why: a decode step of many sequences was bound by f32 multiply-adds (the register-blocked
/// `CPUBackend.gemm`, 16 multiply-adds per cycle per core, after widening each weight to f32), and
/// the 270M model's LM head alone is 168 M of its 268 M multiply-adds per token. `vpdpbusd` does 64
/// per instruction on int8, and the weights need no widening. Each 16 rows × 32 columns of the
/// matrix is one sequential 576-byte tile, so a group of rows is read once however many tokens.
///
/// The packed copy is made when the model loads (`CPUBackend.matrix`), only on CPUs with AVX-512
/// VNNI, and is resident beside the mapped file: 1.125 bytes per weight.
///
/// `@unchecked Sendable`: the tiles are written once in `init` and only read afterwards.
final class Int8Tiles: @unchecked Sendable {
    /// Whether this CPU runs the kernels (AVX-512 F/BW/VL/VNNI, and an OS that saves their state).
    /// INFERENCE_INT8_TILES=off turns them off (comparisons, and a way out if they misbehave).
    static let available: Bool =
        ProcessInfo.processInfo.environment["INFERENCE_INT8_TILES"] != "off" && int8_tiles_available() != 0

    /// Formats whose values are exactly int8 times one scale per 32 columns.
    static func covers(_ format: WeightFormat) -> Bool { format == .q8_0 || format == .q5_0 }

    let rows: Int
    let columns: Int
    private let groups: Int
    private let storage: OwnedBytes

    init(_ tensor: WeightTensor) {
        precondition(Self.covers(tensor.format) && tensor.columns % 32 == 0)
        rows = tensor.rows
        columns = tensor.columns
        groups = (rows + 15) / 16
        storage = OwnedBytes(count: groups * (columns / 32) * INT8_TILE_BYTES)
        let packed = storage.pointer
        let q8 = tensor.format == .q8_0
        Parallel.forRanges(groups, minimumChunk: 64) { range in
            let (source, rowBytes, rows, columns) = (tensor.data, tensor.rowBytes, tensor.rows, tensor.columns)
            let r0 = 16 * range.lowerBound, r1 = 16 * range.upperBound
            if q8 {
                int8_tiles_pack_q8_0(source, rowBytes, rows, columns, r0, r1, packed)
            } else {
                int8_tiles_pack_q5_0(source, rowBytes, rows, columns, r0, r1, packed)
            }
        }
    }

    /// Bytes of the packed copy.
    var byteCount: Int { groups * (columns / 32) * INT8_TILE_BYTES }

    /// out[t, r] = W[r, :] · x[t, :] for t < n (out rows `rows` apart).
    func product(_ x: UnsafePointer<Float>, _ n: Int, _ out: UnsafeMutablePointer<Float>) {
        let blocks = columns / 32
        let values = UnsafeMutablePointer<Int8>.allocate(capacity: n * columns)
        let scales = UnsafeMutablePointer<Float>.allocate(capacity: n * blocks)
        let bias = UnsafeMutablePointer<Int32>.allocate(capacity: n * blocks)
        defer {
            values.deallocate()
            scales.deallocate()
            bias.deallocate()
        }
        int8_tiles_quantize(x, n, columns, values, scales, bias)
        let (packed, rows, columns) = (UnsafeRawPointer(storage.pointer), rows, columns)
        // Chunks of at least 4 groups (64 rows): the smallest products (256 rows, one token) are a
        // few microseconds, where handing out more chunks costs more than it spreads.
        Parallel.forRanges(groups, minimumChunk: 4) { range in
            int8_tiles_product(
                packed, rows, columns, range.lowerBound, range.upperBound, values, scales, bias, n, out, rows)
        }
    }
}
