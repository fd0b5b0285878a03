import CPrefetch
import Foundation
import _Builtin_intrinsics.intel

/// Products of Q8_0, Q5_0, Q4_K and Q6_K weights with activations quantized to int8, as llama.cpp computes its
/// decode: each 32-element block of x becomes 32 int8 and one f32 scale (Q8_0 itself), and a block's
/// dot product is 32 byte products summed in integers by AVX2 (`vpmaddubsw`, `vpmaddwd`), then
/// scaled once. Decode reads every weight once per token and was bound by widening each weight to
/// f32; this does a block in a handful of instructions, so the product runs at memory speed.
///
/// The activations lose precision (int8 per block, about 0.4% relative). On CPUs without AVX-512
/// VNNI (with it, `WeightTiles` does every product of these formats) the path is used for products of
/// up to `CPUBackend.int8RowLimit` rows (decode of a few sequences); it can be turned off
/// (`CPUBackend(exact:)`); the golden tests use the exact path. Each row of x is quantized on its
/// own, so a sequence gets the same numbers alone or among up to that many, but not in a larger batch,
/// which takes the f32 kernel (as in llama.cpp, results can depend on the batch).
enum Int8Product {
    /// Formats this path covers: all of a Gemma 3 Q4_K_M file (the Q8_0 embedding/LM head, the Q5_0
    /// projections, the Q4_K and Q6_K output and down projections).
    static func covers(_ format: WeightFormat) -> Bool {
        format == .q8_0 || format == .q5_0 || format == .q4_K || format == .q6_K
    }

    /// x quantized per 32-element block: values (rows, count) int8 and scales (rows, count / 32).
    struct Activations {
        let values: UnsafeMutablePointer<Int8>
        let scales: UnsafeMutablePointer<Float>
        /// scale × Σ values per block: what a block's x sums to, for the Q4_K minimums.
        let sums: UnsafeMutablePointer<Float>
        let count: Int

        init(_ x: UnsafePointer<Float>, rows: Int, count: Int) {
            self.count = count
            let blocks = count / 32
            values = .allocate(capacity: max(1, rows * count))
            scales = .allocate(capacity: max(1, rows * blocks))
            sums = .allocate(capacity: max(1, rows * blocks))
            // Intrinsics: Swift's generic SIMD rounding conversion is a per-lane call, which cost more
            // than a tenth of a decode step. cvtps rounds to nearest even, as llama.cpp's roundf-free path.
            let signMask = _mm256_set1_ps(-0.0)
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)
            for b in 0..<rows * blocks {
                let source = UnsafeRawPointer(x + 32 * b)
                let v0 = _mm256_loadu_ps(source.assumingMemoryBound(to: Float.self))
                let v1 = _mm256_loadu_ps((source + 32).assumingMemoryBound(to: Float.self))
                let v2 = _mm256_loadu_ps((source + 64).assumingMemoryBound(to: Float.self))
                let v3 = _mm256_loadu_ps((source + 96).assumingMemoryBound(to: Float.self))
                let maximum = _mm256_max_ps(
                    _mm256_max_ps(_mm256_andnot_ps(signMask, v0), _mm256_andnot_ps(signMask, v1)),
                    _mm256_max_ps(_mm256_andnot_ps(signMask, v2), _mm256_andnot_ps(signMask, v3)))
                let scale = unsafeBitCast(maximum, to: SIMD8<Float>.self).max() / 127
                let inverse = _mm256_set1_ps(scale == 0 ? 0 : 1 / scale)
                scales[b] = scale
                let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inverse))
                let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inverse))
                let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inverse))
                let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inverse))
                let total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3))
                sums[b] = scale * Float(unsafeBitCast(total, to: SIMD8<Int32>.self).wrappedSum())
                // The packs work within 128-bit lanes; the permutation puts the 32 bytes back in order.
                let packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3))
                _mm256_storeu_si256(
                    UnsafeMutableRawPointer(values + 32 * b).assumingMemoryBound(to: __m256i.self),
                    _mm256_permutevar8x32_epi32(packed, order))
            }
        }

        func free() {
            values.deallocate()
            scales.deallocate()
            sums.deallocate()
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
        let kind: Kind = switch weight.format {
        case .q8_0: .q8
        case .q5_0: .q5
        case .q4_K: .q4K
        default: .q6K
        }
        let base = weight.data
        let rowBytes = weight.rowBytes
        let xq = activations.values
        let xs = activations.scales
        let xsum = activations.sums
        let rows = Rows(base: base, rowBytes: rowBytes, xq: xq, xs: xs, xsum: xsum, k: k, blocks: blocks, n: n, m: m, out: out)
        Parallel.forRanges(m, minimumChunk: 64, granularity: 16) { range in
            // One function per format, so each is compiled with its format and group sizes constant.
            switch kind {
            case .q8: rows.q8(range)
            case .q5: rows.q5(range)
            case .q4K: rows.q4K(range)
            case .q6K: rows.q6K(range)
            }
        }
    }

    /// The operands of one product, and its row loop.
    struct Rows {
        let base: UnsafeRawPointer, rowBytes: Int
        let xq: UnsafePointer<Int8>, xs: UnsafePointer<Float>, xsum: UnsafePointer<Float>
        let k: Int, blocks: Int, n: Int, m: Int
        let out: UnsafeMutablePointer<Float>

        @inline(never) func q8(_ range: Range<Int>) { each(range, .q8) }
        @inline(never) func q5(_ range: Range<Int>) { each(range, .q5) }
        @inline(never) func q4K(_ range: Range<Int>) { each(range, .q4K) }
        @inline(never) func q6K(_ range: Range<Int>) { each(range, .q6K) }

        /// Each weight row against the tokens up to four at a time: each block of the row is unpacked
        /// once and multiplied with every token's block.
        @inline(__always) func each(_ range: Range<Int>, _ kind: Kind) {
            let ahead = Int8Product.prefetchRows
            for r in range {
                let w = base + r * rowBytes
                if r + ahead < range.upperBound { inference_prefetch_range(base + (r + ahead) * rowBytes, rowBytes) }
                var t = 0
                while t < n {
                    let g = min(4, n - t)
                    let x = xq + t * k, s = xs + t * blocks, sums = xsum + t * blocks
                    let result: SIMD4<Float> = switch g {
                    case 4: group(kind, 4, w, x, s, sums, k, blocks)
                    case 3: group(kind, 3, w, x, s, sums, k, blocks)
                    case 2: group(kind, 2, w, x, s, sums, k, blocks)
                    default: group(kind, 1, w, x, s, sums, k, blocks)
                    }
                    for j in 0..<g { out[(t + j) * m + r] = result[j] }
                    t += g
                }
            }
        }
    }

    enum Kind { case q8, q5, q4K, q6K }

    /// Rows ahead whose weights are fetched while a row is multiplied. A decode step of one sequence
    /// streams every weight once and is bound by memory, yet ran at about 12 GB/s where two cores
    /// read 19 here; fetching ahead took `bench-batch` on the 270M Q4_K_M from 28.0-28.9 to
    /// 24.2-25.2 ms per step at batch 1 (2 to 16 rows ahead all gave about this; batch 4, bound by
    /// arithmetic, did not change; checked again as 28.1-28.6 without and 25.0-25.9 with, in
    /// alternation). INFERENCE_PREFETCH_ROWS overrides it (0: off; experiments).
    static let prefetchRows = Int(ProcessInfo.processInfo.environment["INFERENCE_PREFETCH_ROWS"] ?? "") ?? 4

    @inline(__always) static func group(
        _ kind: Kind, _ tokens: Int, _ w: UnsafeRawPointer, _ xq: UnsafePointer<Int8>, _ xs: UnsafePointer<Float>,
        _ xsum: UnsafePointer<Float>, _ k: Int, _ blocks: Int
    ) -> SIMD4<Float> {
        switch kind {
        case .q8: return smallBlocks(w, xq, xs, xsum, k, blocks, tokens: tokens, q8: true)
        case .q5: return smallBlocks(w, xq, xs, xsum, k, blocks, tokens: tokens, q8: false)
        case .q4K: return superBlocks(w, xq, xs, xsum, k, blocks, tokens: tokens, q6: false)
        case .q6K: return superBlocks(w, xq, xs, xsum, k, blocks, tokens: tokens, q6: true)
        }
    }

    /// One Q8_0 or Q5_0 row (32-value blocks) against `tokens` (1...4) tokens, x rows `k` apart. Each
    /// token's sum is accumulated in the same order whatever the group, so results do not depend on it.
    /// Q5_0's values are taken unsigned (q in 0...31, value q − 16): Σ (q − 16)·x = Σ q·x − 16·Σ x, so
    /// the product needs no sign juggling and the block sums of x supply the offset.
    @inline(__always) static func smallBlocks(
        _ w: UnsafeRawPointer, _ xq: UnsafePointer<Int8>, _ xs: UnsafePointer<Float>, _ xsum: UnsafePointer<Float>,
        _ k: Int, _ blocks: Int, tokens: Int, q8: Bool
    ) -> SIMD4<Float> {
        var acc = Accumulators()
        let ones = _mm256_set1_epi16(1)
        for b in 0..<blocks {
            let (values, d) = unpack(w, b, q8: q8)
            acc.add(b, d, values, ones, signed: q8, xq, xs, k, blocks, tokens)
            if !q8 { acc.subtract(16 * d, b, xsum, blocks, tokens) }
        }
        return acc.sums(tokens)
    }

    /// Block b of a row: its 32 values as int8 (Q5_0: unsigned, 0...31) and its scale.
    @inline(__always) static func unpack(_ w: UnsafeRawPointer, _ b: Int, q8: Bool) -> (__m256i, Float) {
        if q8 {
            let p = w + 34 * b
            return (bytes(p + 2), half(p))
        }
        let p = w + 22 * b
        let qs = unsafeBitCast(p.loadUnaligned(fromByteOffset: 6, as: SIMD16<UInt8>.self), to: __m128i.self)
        let mask = _mm_set1_epi8(0x0F)
        let nibbles = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), mask), _mm_and_si128(qs, mask))
        let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
        // Byte i takes byte i / 8 of qh; the mask then leaves 0xFF exactly where bit i is set.
        let spread = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0)
        let set = _mm256_cmpeq_epi8(
            _mm256_or_si256(
                _mm256_shuffle_epi8(_mm256_set1_epi32(Int32(bitPattern: qh)), spread), _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe)),
            _mm256_set1_epi64x(-1))
        return (_mm256_or_si256(nibbles, _mm256_and_si256(set, _mm256_set1_epi8(0x10))), half(p))
    }

    /// One K-quant row (256-value super-blocks) against `tokens` (1...4) tokens, x rows `k` apart.
    ///
    /// Q4_K: value = d·sc[j]·q − dmin·m[j] per 32-value sub-block j, q in 0...15, six-bit sc and m
    /// packed in 12 bytes. Σ value·x = d·sc·Σ q·x − dmin·m·Σ x, and Σ x per block is precomputed.
    /// Q6_K: value = d·sc[i]·(q − 32) per 16 values, q six bits split over ql (low four) and qh (high
    /// two), sc int8. Each 32-value group takes two scales, applied by `vpmaddwd` to the pair sums.
    /// Intrinsics only: Swift's generic SIMD byte shifts are not lowered to single instructions.
    @inline(__always) static func superBlocks(
        _ w: UnsafeRawPointer, _ xq: UnsafePointer<Int8>, _ xs: UnsafePointer<Float>, _ xsum: UnsafePointer<Float>,
        _ k: Int, _ blocks: Int, tokens: Int, q6: Bool
    ) -> SIMD4<Float> {
        var acc = Accumulators()
        let low4 = _mm256_set1_epi8(0x0F)
        let low2 = _mm256_set1_epi8(0x03)
        let bias = _mm256_set1_epi8(32)
        for s in 0..<k / 256 {
            if q6 {
                let p = w + 210 * s
                let d = half(p + 208)
                for h in 0..<2 {
                    let ql = p + 64 * h
                    let a = bytes(ql)
                    let c = bytes(ql + 32)
                    let qh = bytes(p + 128 + 32 * h)
                    let sc = p + 192 + 8 * h
                    let base = 8 * s + 4 * h
                    // Group g: values 32g..<32g + 32 of this half; scales 2g (first 16 values) and 2g + 1.
                    let g0 = _mm256_or_si256(_mm256_and_si256(a, low4), _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4))
                    let g1 = _mm256_or_si256(
                        _mm256_and_si256(c, low4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4))
                    let g2 = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(a, 4), low4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4))
                    let g3 = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(c, 4), low4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4))
                    acc.add(base, d, _mm256_sub_epi8(g0, bias), q6Scales(sc, 0), signed: true, xq, xs, k, blocks, tokens)
                    acc.add(base + 1, d, _mm256_sub_epi8(g1, bias), q6Scales(sc, 1), signed: true, xq, xs, k, blocks, tokens)
                    acc.add(base + 2, d, _mm256_sub_epi8(g2, bias), q6Scales(sc, 2), signed: true, xq, xs, k, blocks, tokens)
                    acc.add(base + 3, d, _mm256_sub_epi8(g3, bias), q6Scales(sc, 3), signed: true, xq, xs, k, blocks, tokens)
                }
            } else {
                let p = w + 144 * s
                let d = half(p)
                let dmin = half(p + 2)
                let packed = (p + 4).assumingMemoryBound(to: UInt8.self)
                for pair in 0..<4 {
                    let q = bytes(p + 16 + 32 * pair)
                    for nibble in 0..<2 {
                        let j = 2 * pair + nibble
                        let (sc, mn) = scaleAndMinimum(packed, j)
                        let values = nibble == 0 ? _mm256_and_si256(q, low4) : _mm256_and_si256(_mm256_srli_epi16(q, 4), low4)
                        let b = 8 * s + j
                        acc.add(b, d, values, _mm256_set1_epi16(Int16(sc)), signed: false, xq, xs, k, blocks, tokens)
                        let m = dmin * Float(mn)
                        acc.subtract(m, b, xsum, blocks, tokens)
                    }
                }
            }
        }
        return acc.sums(tokens)
    }

    /// Q6_K's two int8 scales of group g, one per 16 values, as int16 lanes for `vpmaddwd`.
    @inline(__always) static func q6Scales(_ sc: UnsafeRawPointer, _ g: Int) -> __m256i {
        let first = Int16(sc.load(fromByteOffset: 2 * g, as: Int8.self))
        let second = Int16(sc.load(fromByteOffset: 2 * g + 1, as: Int8.self))
        return _mm256_set_m128i(_mm_set1_epi16(second), _mm_set1_epi16(first))
    }

    /// Up to four tokens' running sums for one weight row.
    struct Accumulators {
        var a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
        /// Scalar offsets (Q4_K minimums, Q5_0's −16), kept apart from the vectors: inserting into a
        /// SIMD4 lane per block cost a fifth of the decode step.
        var m0: Float = 0, m1: Float = 0, m2: Float = 0, m3: Float = 0

        /// Subtracts factor · Σ x of block b from each token's sum.
        @inline(__always) mutating func subtract(_ factor: Float, _ b: Int, _ xsum: UnsafePointer<Float>, _ blocks: Int, _ tokens: Int) {
            m0 += factor * xsum[b]
            if tokens > 1 { m1 += factor * xsum[blocks + b] }
            if tokens > 2 { m2 += factor * xsum[2 * blocks + b] }
            if tokens > 3 { m3 += factor * xsum[3 * blocks + b] }
        }

        /// Adds block b's integer products (pair sums weighted by `scales`) times d · xs for each token.
        @inline(__always) mutating func add(
            _ b: Int, _ d: Float, _ values: __m256i, _ scales: __m256i, signed: Bool,
            _ xq: UnsafePointer<Int8>, _ xs: UnsafePointer<Float>, _ k: Int, _ blocks: Int, _ tokens: Int
        ) {
            let absolute = signed ? _mm256_sign_epi8(values, values) : values
            @inline(__always) func product(_ x: __m256i) -> __m256 {
                let pairs = _mm256_maddubs_epi16(absolute, signed ? _mm256_sign_epi8(x, values) : x)
                return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, scales))
            }
            let x = xq + 32 * b
            a0 = _mm256_fmadd_ps(product(bytes(x)), _mm256_set1_ps(d * xs[b]), a0)
            if tokens > 1 { a1 = _mm256_fmadd_ps(product(bytes(x + k)), _mm256_set1_ps(d * xs[blocks + b]), a1) }
            if tokens > 2 { a2 = _mm256_fmadd_ps(product(bytes(x + 2 * k)), _mm256_set1_ps(d * xs[2 * blocks + b]), a2) }
            if tokens > 3 { a3 = _mm256_fmadd_ps(product(bytes(x + 3 * k)), _mm256_set1_ps(d * xs[3 * blocks + b]), a3) }
        }

        /// The first `tokens` sums (the other lanes are zero).
        @inline(__always) func sums(_ tokens: Int) -> SIMD4<Float> {
            var result = SIMD4<Float>(sum(a0) - m0, 0, 0, 0)
            if tokens > 1 { result[1] = sum(a1) - m1 }
            if tokens > 2 { result[2] = sum(a2) - m2 }
            if tokens > 3 { result[3] = sum(a3) - m3 }
            return result
        }
    }

    /// Sub-block j's six-bit scale and minimum from Q4_K's 12 packed bytes (llama.cpp's get_scale_min_k4).
    @inline(__always) static func scaleAndMinimum(_ b: UnsafePointer<UInt8>, _ j: Int) -> (UInt8, UInt8) {
        if j < 4 { return (b[j] & 63, b[j + 4] & 63) }
        return ((b[j + 4] & 0x0F) | ((b[j - 4] >> 6) << 4), (b[j + 4] >> 4) | ((b[j] >> 6) << 4))
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
