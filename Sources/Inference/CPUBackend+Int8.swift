import _Builtin_intrinsics.intel

/// Products of Q8_0 and Q5_0 weights with activations quantized to int8, as llama.cpp computes its
/// decode: each 32-element block of x becomes 32 int8 and one f32 scale (Q8_0 itself), and a block's
/// dot product is 32 byte products summed in integers by AVX2 (`vpmaddubsw`, `vpmaddwd`), then
/// scaled once. Decode reads every weight once per token and was bound by widening each weight to
/// f32; this does a block in a handful of instructions, so the product runs at memory speed.
///
/// The activations lose precision (int8 per block, about 0.4% relative). The path is used for
/// products of up to `CPUBackend.int8RowLimit` rows (decode of a few sequences) and can be turned off
/// (`CPUBackend(exact:)`); the golden tests use the exact path. Each row of x is quantized on its
/// own, so a sequence gets the same numbers alone or among up to that many, but not in a larger batch,
/// which takes the f32 kernel (as in llama.cpp, results can depend on the batch).
enum Int8Product {
    /// Formats this path covers (the bulk of Gemma 3 GGUF K-quant files: the Q8_0 embedding/LM head
    /// and the Q5_0 projections).
    static func covers(_ format: WeightFormat) -> Bool { format == .q8_0 || format == .q5_0 }

    /// x quantized per 32-element block: values (rows, count) int8 and scales (rows, count / 32).
    struct Activations {
        let values: UnsafeMutablePointer<Int8>
        let scales: UnsafeMutablePointer<Float>
        let count: Int

        init(_ x: UnsafePointer<Float>, rows: Int, count: Int) {
            self.count = count
            let blocks = count / 32
            values = .allocate(capacity: max(1, rows * count))
            scales = .allocate(capacity: max(1, rows * blocks))
            for b in 0..<rows * blocks {
                let source = x + 32 * b
                var maximum = SIMD8<Float>()
                for i in stride(from: 0, to: 32, by: 8) {
                    let v = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD8<Float>.self)
                    maximum = pointwiseMax(maximum, pointwiseMax(v, -v))
                }
                let scale = maximum.max() / 127
                let inverse: Float = scale == 0 ? 0 : 1 / scale
                scales[b] = scale
                for i in stride(from: 0, to: 32, by: 8) {
                    let v = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD8<Float>.self) * inverse
                    let q = SIMD8<Int32>(v.rounded(.toNearestOrEven))
                    UnsafeMutableRawPointer(values + 32 * b + i).storeBytes(
                        of: SIMD8<Int8>(truncatingIfNeeded: q), as: SIMD8<Int8>.self)
                }
            }
        }

        func free() {
            values.deallocate()
            scales.deallocate()
        }
    }

    /// out[t, r] = weight[r, :] · x[t, :] for every row r and each of the `n` rows of x.
    static func matmul(
        _ x: UnsafePointer<Float>, _ n: Int, _ weight: WeightTensor, _ out: UnsafeMutablePointer<Float>
    ) {
        let k = weight.columns
        let m = weight.rows
        let blocks = k / 32
        let activations = Activations(x, rows: n, count: k)
        defer { activations.free() }
        let isQ8 = weight.format == .q8_0
        let base = weight.data
        let rowBytes = weight.rowBytes
        let xq = activations.values
        let xs = activations.scales
        Parallel.forRanges(m, minimumChunk: 64, granularity: 16) { range in
            // One weight row against the tokens four at a time: each block of the row is unpacked once
            // and multiplied with four tokens' blocks. The format test is hoisted out of the loops.
            for r in range {
                let w = base + r * rowBytes
                var t = 0
                while t + 4 <= n {
                    let sums = isQ8 ? four(w, xq + t * k, xs + t * blocks, k, blocks, q8: true)
                        : four(w, xq + t * k, xs + t * blocks, k, blocks, q8: false)
                    for j in 0..<4 { out[(t + j) * m + r] = sums[j] }
                    t += 4
                }
                while t < n {
                    out[t * m + r] = isQ8 ? one(w, xq + t * k, xs + t * blocks, blocks, q8: true)
                        : one(w, xq + t * k, xs + t * blocks, blocks, q8: false)
                    t += 1
                }
            }
        }
    }

    /// Block b of a row: its 32 values as int8 and its scale.
    @inline(__always) static func unpack(_ w: UnsafeRawPointer, _ b: Int, q8: Bool) -> (__m256i, Float) {
        if q8 {
            let p = w + 34 * b
            return (bytes(p + 2), half(p))
        }
        let p = w + 22 * b
        let qs = p.loadUnaligned(fromByteOffset: 6, as: SIMD16<UInt8>.self)
        let nibbles = SIMD32<UInt8>(lowHalf: qs & 0x0F, highHalf: qs &>> 4)
        let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
        // Byte i takes byte i / 8 of qh; the mask then leaves 0xFF exactly where bit i is set.
        let spread = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0)
        let set = _mm256_cmpeq_epi8(
            _mm256_or_si256(
                _mm256_shuffle_epi8(_mm256_set1_epi32(Int32(bitPattern: qh)), spread), _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
            _mm256_set1_epi64x(-1))
        // nibble | 0xF0 is nibble - 16 as int8 (bit clear); a set bit leaves nibble + 16 - 16.
        return (_mm256_or_si256(unsafeBitCast(nibbles, to: __m256i.self), _mm256_andnot_si256(set, _mm256_set1_epi8(-16))), half(p))
    }

    /// Σ over 32 lanes of a·x where a's absolute values and signs are given apart (`vpmaddubsw`
    /// multiplies unsigned by signed bytes), as eight int32 partial sums in f32.
    @inline(__always) static func dot(_ absolute: __m256i, _ signs: __m256i, _ x: __m256i) -> __m256 {
        let products = _mm256_maddubs_epi16(absolute, _mm256_sign_epi8(x, signs))
        return _mm256_cvtepi32_ps(_mm256_madd_epi16(products, _mm256_set1_epi16(1)))
    }

    /// One row against one token.
    @inline(__always) static func one(
        _ w: UnsafeRawPointer, _ xq: UnsafePointer<Int8>, _ xs: UnsafePointer<Float>, _ blocks: Int, q8: Bool
    ) -> Float {
        var acc = _mm256_setzero_ps()
        for b in 0..<blocks {
            let (values, d) = unpack(w, b, q8: q8)
            let product = dot(_mm256_sign_epi8(values, values), values, bytes(xq + 32 * b))
            acc = _mm256_fmadd_ps(product, _mm256_set1_ps(d * xs[b]), acc)
        }
        return sum(acc)
    }

    /// One row against four tokens (x rows `k` apart), sharing each unpacked block. Each token's sum
    /// is accumulated in the same order as `one`, so results do not depend on the grouping.
    @inline(__always) static func four(
        _ w: UnsafeRawPointer, _ xq: UnsafePointer<Int8>, _ xs: UnsafePointer<Float>, _ k: Int, _ blocks: Int, q8: Bool
    ) -> SIMD4<Float> {
        var a0 = _mm256_setzero_ps()
        var a1 = _mm256_setzero_ps()
        var a2 = _mm256_setzero_ps()
        var a3 = _mm256_setzero_ps()
        for b in 0..<blocks {
            let (values, d) = unpack(w, b, q8: q8)
            let absolute = _mm256_sign_epi8(values, values)
            let x = xq + 32 * b
            a0 = _mm256_fmadd_ps(dot(absolute, values, bytes(x)), _mm256_set1_ps(d * xs[b]), a0)
            a1 = _mm256_fmadd_ps(dot(absolute, values, bytes(x + k)), _mm256_set1_ps(d * xs[blocks + b]), a1)
            a2 = _mm256_fmadd_ps(dot(absolute, values, bytes(x + 2 * k)), _mm256_set1_ps(d * xs[2 * blocks + b]), a2)
            a3 = _mm256_fmadd_ps(dot(absolute, values, bytes(x + 3 * k)), _mm256_set1_ps(d * xs[3 * blocks + b]), a3)
        }
        return SIMD4(sum(a0), sum(a1), sum(a2), sum(a3))
    }

    /// An fp16 scale (repeated here: debug builds inline only within a file, see Dequantize.swift).
    @inline(__always) static func half(_ p: UnsafeRawPointer) -> Float {
        Float(Float16(bitPattern: p.loadUnaligned(as: UInt16.self)))
    }

    @inline(__always) static func bytes(_ p: UnsafeRawPointer) -> __m256i {
        unsafeBitCast(p.loadUnaligned(as: SIMD32<Int8>.self), to: __m256i.self)
    }

    @inline(__always) static func sum(_ v: __m256) -> Float {
        unsafeBitCast(v, to: SIMD8<Float>.self).sum()
    }
}
