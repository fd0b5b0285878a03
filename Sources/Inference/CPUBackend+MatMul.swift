import CPrefetch
import Foundation
/// Matrix products on the CPU. One token (decode) is a matrix-vector product streaming the weight
/// once through the fused `DotProduct` kernels; several tokens (prefill) widen a block of weight rows
/// to f32 once and multiply it against every token with a register-blocked kernel (4 tokens × 3 rows
/// of SIMD8 accumulators), so the weight is read once per batch and the work is FMA-bound.
extension CPUBackend {
    /// Rows of weights widened per block in the batched path: 3 × 16 rows of up to 2048 f32 stay in L2.
    static let rowBlock = 48
    /// Up to this many rows, int8 products (each weight block unpacked once for up to four tokens)
    /// beat widening the weights to f32 for the register-blocked kernel. Measured with
    /// `inference-server bench-batch` on the 270M Q4_K_M (ms per decode step, int8 / f32): 1 row
    /// 25-27 / 37, 2 rows 38 / 75, 4 rows 61-64 / 78, 6 rows 100 / 111, 7 rows 110 / 117, 8 rows
    /// 125 / 115. INFERENCE_INT8_ROWS overrides it (experiments).
    static let int8RowLimit = Int(ProcessInfo.processInfo.environment["INFERENCE_INT8_ROWS"] ?? "") ?? 7

    public func matmul(_ x: CPUBuffer, rows: Int, weight: WeightTensor, into out: CPUBuffer) {
        let inner = weight.columns
        let outer = weight.rows
        precondition(rows * inner <= x.count && rows * outer <= out.count, "matmul shapes do not fit the buffers")
        if let tiles = weight.tiles, !exact {
            tiles.product(x.pointer, rows, out.pointer)
        } else if !exact && rows <= Self.int8RowLimit && Int8Product.covers(weight.format) {
            Int8Product.matmul(x.pointer, rows, weight, out.pointer)
        } else if rows == 1 {
            Self.matvec(x.pointer, weight, out.pointer)
        } else {
            Self.gemm(x.pointer, rows, weight, out.pointer)
        }
    }

    /// out[r] = weight[r, :] · x.  x: (in), out: (outDim)
    static func matvec(_ x: UnsafePointer<Float>, _ weight: WeightTensor, _ out: UnsafeMutablePointer<Float>) {
        let inner = weight.columns
        let format = weight.format
        let sums = DotProduct.needsSums(format) ? DotProduct.XSums(x, count: inner) : nil
        defer { sums?.free() }
        Parallel.forRanges(weight.rows, minimumChunk: 64, granularity: 16) { range in
            for r in range { out[r] = DotProduct.row(format, weight.row(r), x, sums, count: inner) }
        }
    }

    /// out[t, r] = weight[r, :] · x[t, :].  x: (n, in), out: (n, outDim)
    static func gemm(_ x: UnsafePointer<Float>, _ n: Int, _ weight: WeightTensor, _ out: UnsafeMutablePointer<Float>) {
        let k = weight.columns
        let m = weight.rows
        let format = weight.format
        Parallel.forRanges(m, minimumChunk: 3, granularity: rowBlock) { range in
            // scratch: (rowBlock, k) f32, this thread's widened weight rows
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rowBlock * k)
            defer { scratch.deallocate() }
            var r0 = range.lowerBound
            while r0 < range.upperBound {
                let block = min(rowBlock, range.upperBound - r0)
                for i in 0..<block { Dequantize.row(format, weight.row(r0 + i), count: k, into: scratch + i * k) }
                // The next block's weights are fetched from memory while this one is multiplied: the
                // weights are read once per step and would otherwise stall the widening above (a
                // fifth of a 16-sequence step was spent there). Spread over the kernel calls, a few
                // cache lines each, so the fetches overlap the FMAs.
                let next = min(rowBlock, range.upperBound - r0 - block)
                var line = next > 0 ? weight.row(r0 + block) : weight.data
                let end = line + next * weight.rowBytes
                let calls = (n + 3) / 4 * ((block + 2) / 3)
                let stride = ((next * weight.rowBytes + 63) / 64 + calls - 1) / calls * 64
                var t = 0
                while t < n {
                    var i = 0
                    while i < block {
                        kernel4x3(x, n: n, t: t, scratch, rows: block, i: i, k: k, out: out, stride: m, column: r0)
                        let stop = min(end, line + stride)
                        while line < stop {
                            inference_prefetch(line)
                            line += 64
                        }
                        i += 3
                    }
                    t += 4
                }
                r0 += block
            }
        }
    }

    /// out[t + a, column + i + b] for a < 4, b < 3 (clipped to n tokens and `rows` rows): twelve dot
    /// products of length k sharing their loads. Clipped lanes repeat the last valid row and are not stored.
    @inline(__always)
    static func kernel4x3(
        _ x: UnsafePointer<Float>, n: Int, t: Int, _ w: UnsafePointer<Float>, rows: Int, i: Int, k: Int,
        out: UnsafeMutablePointer<Float>, stride: Int, column: Int
    ) {
        let x0 = x + t * k
        let x1 = x + min(t + 1, n - 1) * k
        let x2 = x + min(t + 2, n - 1) * k
        let x3 = x + min(t + 3, n - 1) * k
        let w0 = w + i * k
        let w1 = w + min(i + 1, rows - 1) * k
        let w2 = w + min(i + 2, rows - 1) * k
        var c00 = SIMD8<Float>()
        var c01 = SIMD8<Float>()
        var c02 = SIMD8<Float>()
        var c10 = SIMD8<Float>()
        var c11 = SIMD8<Float>()
        var c12 = SIMD8<Float>()
        var c20 = SIMD8<Float>()
        var c21 = SIMD8<Float>()
        var c22 = SIMD8<Float>()
        var c30 = SIMD8<Float>()
        var c31 = SIMD8<Float>()
        var c32 = SIMD8<Float>()
        var j = 0
        while j + 8 <= k {
            let b0 = loadLanes(w0 + j)
            let b1 = loadLanes(w1 + j)
            let b2 = loadLanes(w2 + j)
            let a0 = loadLanes(x0 + j)
            c00 = c00.addingProduct(a0, b0)
            c01 = c01.addingProduct(a0, b1)
            c02 = c02.addingProduct(a0, b2)
            let a1 = loadLanes(x1 + j)
            c10 = c10.addingProduct(a1, b0)
            c11 = c11.addingProduct(a1, b1)
            c12 = c12.addingProduct(a1, b2)
            let a2 = loadLanes(x2 + j)
            c20 = c20.addingProduct(a2, b0)
            c21 = c21.addingProduct(a2, b1)
            c22 = c22.addingProduct(a2, b2)
            let a3 = loadLanes(x3 + j)
            c30 = c30.addingProduct(a3, b0)
            c31 = c31.addingProduct(a3, b1)
            c32 = c32.addingProduct(a3, b2)
            j += 8
        }
        var s00 = c00.sum()
        var s01 = c01.sum()
        var s02 = c02.sum()
        var s10 = c10.sum()
        var s11 = c11.sum()
        var s12 = c12.sum()
        var s20 = c20.sum()
        var s21 = c21.sum()
        var s22 = c22.sum()
        var s30 = c30.sum()
        var s31 = c31.sum()
        var s32 = c32.sum()
        while j < k {
            s00 += x0[j] * w0[j]
            s01 += x0[j] * w1[j]
            s02 += x0[j] * w2[j]
            s10 += x1[j] * w0[j]
            s11 += x1[j] * w1[j]
            s12 += x1[j] * w2[j]
            s20 += x2[j] * w0[j]
            s21 += x2[j] * w1[j]
            s22 += x2[j] * w2[j]
            s30 += x3[j] * w0[j]
            s31 += x3[j] * w1[j]
            s32 += x3[j] * w2[j]
            j += 1
        }
        let tokens = min(4, n - t)
        let columns = min(3, rows - i)
        @inline(__always) func put(_ a: Int, _ v0: Float, _ v1: Float, _ v2: Float) {
            guard a < tokens else { return }
            let row = out + (t + a) * stride + column + i
            row[0] = v0
            if columns > 1 { row[1] = v1 }
            if columns > 2 { row[2] = v2 }
        }
        put(0, s00, s01, s02)
        put(1, s10, s11, s12)
        put(2, s20, s21, s22)
        put(3, s30, s31, s32)
    }
}

// Lane helpers, repeated per file: debug builds only inline within a file (see Dequantize.swift).
@inline(__always) private func loadLanes(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always) private func storeLanes(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
