// Dequantize and DotProduct share this file on purpose: debug builds compile the module file by file
// (no whole-module optimization), and the optimizer can only inline the small lane helpers below
// into kernels in the same file; across files every SIMD load would become a call (10x slower).

/// Widening of stored weights to f32, one row at a time, for every `WeightFormat`.
///
/// Each block function follows ggml's `dequantize_row_*` (ggml-quants.c; the layouts are quoted in
/// gemma3-and-serving.md §3.5), vectorized with SIMD lanes. Prefill dequantizes a block of rows
/// into a small scratch buffer and multiplies it against every prompt token, so the cost is paid once
/// per row per batch; decode uses the fused kernels in `DotProduct` instead.
enum Dequantize {
    /// Writes the `count` elements of a row starting at `source` to `y`. `count` is a whole number of blocks.
    static func row(_ format: WeightFormat, _ source: UnsafeRawPointer, count: Int, into y: UnsafeMutablePointer<Float>)
    {
        switch format {
        case .f32:
            UnsafeMutableRawPointer(y).copyMemory(from: source, byteCount: count * 4)
        case .bf16:
            var i = 0
            while i + 8 <= count {
                store(bf16x8(source, i), y + i)
                i += 8
            }
            while i < count {
                y[i] = Float(bitPattern: UInt32(source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
                i += 1
            }
        case .f16:
            var i = 0
            while i + 8 <= count {
                store(f16x8(source, i), y + i)
                i += 8
            }
            while i < count {
                y[i] = half(source, 2 * i)
                i += 1
            }
        case .q8_0:
            for b in 0..<count / format.blockElements {
                q8_0(source + b * format.blockBytes, y + b * format.blockElements)
            }
        case .q4_0:
            for b in 0..<count / format.blockElements {
                q4_0(source + b * format.blockBytes, y + b * format.blockElements)
            }
        case .q4_1:
            for b in 0..<count / format.blockElements {
                q4_1(source + b * format.blockBytes, y + b * format.blockElements)
            }
        case .q5_0:
            for b in 0..<count / format.blockElements {
                q5_0(source + b * format.blockBytes, y + b * format.blockElements)
            }
        case .q5_1:
            for b in 0..<count / format.blockElements {
                q5_1(source + b * format.blockBytes, y + b * format.blockElements)
            }
        case .q4_K:
            for b in 0..<count / format.blockElements {
                q4_K(source + b * format.blockBytes, y + b * format.blockElements)
            }
        case .q6_K:
            for b in 0..<count / format.blockElements {
                q6_K(source + b * format.blockBytes, y + b * format.blockElements)
            }
        }
    }

    // MARK: - Blocks (p: the block's first byte, y: its 32 or 256 outputs)

    /// Q8_0: { half d; int8 qs[32] } → y[j] = qs[j] * d.
    @inline(__always) static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for i in 0..<4 {
            store(floats(p.loadUnaligned(fromByteOffset: 2 + 8 * i, as: SIMD8<Int8>.self)) * d, y + 8 * i)
        }
    }

    /// Q4_0: { half d; uint8 qs[16] } → y[j] = ((qs[j] & 15) - 8) * d, y[j + 16] = ((qs[j] >> 4) - 8) * d.
    @inline(__always) static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for i in 0..<2 {
            let q = p.loadUnaligned(fromByteOffset: 2 + 8 * i, as: SIMD8<UInt8>.self)
            store((floats(q & 0x0F) - 8) * d, y + 8 * i)
            store((floats(q &>> 4) - 8) * d, y + 16 + 8 * i)
        }
    }

    /// Q4_1: { half d, m; uint8 qs[16] } → y = q * d + m with the same nibble order as Q4_0.
    @inline(__always) static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let m = SIMD8<Float>(repeating: half(p, 2))
        for i in 0..<2 {
            let q = p.loadUnaligned(fromByteOffset: 4 + 8 * i, as: SIMD8<UInt8>.self)
            store(floats(q & 0x0F) * d + m, y + 8 * i)
            store(floats(q &>> 4) * d + m, y + 16 + 8 * i)
        }
    }

    /// `fifthBitTable[b]` holds 8 bytes, byte j = bit j of `b` moved to bit 4: the 5th bits of eight
    /// Q5 elements from one byte of `qh`, with one load instead of eight shifts.
    /// `nonisolated(unsafe)`: written once by the initializer, read-only afterwards.
    nonisolated(unsafe) static let fifthBitTable: UnsafePointer<UInt64> = {
        let table = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
        for b in 0..<256 {
            var bytes: UInt64 = 0
            for j in 0..<8 where (b >> j) & 1 == 1 { bytes |= UInt64(0x10) << UInt64(8 * j) }
            table[b] = bytes
        }
        return UnsafePointer(table)
    }()

    /// The 5th bits of elements 8·i ..< 8·i + 8 of a Q5 block whose `qh` (little-endian u32) is given.
    @inline(__always) static func fifthBits(_ table: UnsafePointer<UInt64>, _ qh: UInt32, _ i: UInt32) -> SIMD8<UInt8> {
        unsafeBitCast(table[Int((qh >> (8 * i)) & 0xFF)], to: SIMD8<UInt8>.self)
    }

    /// Q5_0: { half d; uint8 qh[4]; uint8 qs[16] } → x = (nibble | fifth bit << 4) - 16, y = x * d.
    @inline(__always) static func q5_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
        let table = fifthBitTable
        for i in 0..<2 {
            let q = p.loadUnaligned(fromByteOffset: 6 + 8 * i, as: SIMD8<UInt8>.self)
            store((floats((q & 0x0F) | fifthBits(table, qh, UInt32(i))) - 16) * d, y + 8 * i)
            store((floats((q &>> 4) | fifthBits(table, qh, UInt32(2 + i))) - 16) * d, y + 16 + 8 * i)
        }
    }

    /// Q5_1: { half d, m; uint8 qh[4]; uint8 qs[16] } → y = x * d + m (x without the -16).
    @inline(__always) static func q5_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let m = SIMD8<Float>(repeating: half(p, 2))
        let qh = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
        let table = fifthBitTable
        for i in 0..<2 {
            let q = p.loadUnaligned(fromByteOffset: 8 + 8 * i, as: SIMD8<UInt8>.self)
            store(floats((q & 0x0F) | fifthBits(table, qh, UInt32(i))) * d + m, y + 8 * i)
            store(floats((q &>> 4) | fifthBits(table, qh, UInt32(2 + i))) * d + m, y + 16 + 8 * i)
        }
    }

    /// ggml's `get_scale_min_k4`: the 6-bit scale and min of Q4_K sub-block `j` (0..<8) from `scales[12]`.
    @inline(__always) static func scaleMin(_ j: Int, _ q: UnsafeRawPointer) -> (scale: Float, min: Float) {
        func byte(_ i: Int) -> UInt8 { q.load(fromByteOffset: i, as: UInt8.self) }
        if j < 4 { return (Float(byte(j) & 63), Float(byte(j + 4) & 63)) }
        let scale = (byte(j + 4) & 0x0F) | ((byte(j - 4) >> 6) << 4)
        let min = (byte(j + 4) >> 4) | ((byte(j) >> 6) << 4)
        return (Float(scale), Float(min))
    }

    /// Q4_K: { half d, dmin; uint8 scales[12]; uint8 qs[128] }: 8 sub-blocks of 32; each 64 elements
    /// take 32 bytes, low nibbles first (scale 2i), then high nibbles (scale 2i + 1); y = d·sc·q − dmin·m.
    @inline(__always) static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let dmin = half(p, 2)
        let scales = p + 4
        for j in 0..<4 {
            let (sc1, m1) = scaleMin(2 * j, scales)
            let (sc2, m2) = scaleMin(2 * j + 1, scales)
            let d1 = d * sc1
            let d2 = d * sc2
            let min1 = SIMD8<Float>(repeating: dmin * m1)
            let min2 = SIMD8<Float>(repeating: dmin * m2)
            for i in 0..<4 {
                let q = p.loadUnaligned(fromByteOffset: 16 + 32 * j + 8 * i, as: SIMD8<UInt8>.self)
                store(floats(q & 0x0F) * d1 - min1, y + 64 * j + 8 * i)
                store(floats(q &>> 4) * d2 - min2, y + 64 * j + 32 + 8 * i)
            }
        }
    }

    /// Q6_K: { uint8 ql[128], qh[64]; int8 scales[16]; half d }: per 128 elements, four groups of 32
    /// assembled from a nibble of ql and two bits of qh, minus 32, times d · scale (16 elements each).
    @inline(__always) static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 208)
        for n in 0..<2 {
            let ql = 64 * n
            let qh = 128 + 32 * n
            let sc = 192 + 8 * n
            let out = y + 128 * n
            for l in stride(from: 0, to: 32, by: 8) {
                let s = l / 16
                let a = p.loadUnaligned(fromByteOffset: ql + l, as: SIMD8<UInt8>.self)
                let b = p.loadUnaligned(fromByteOffset: ql + l + 32, as: SIMD8<UInt8>.self)
                let h = p.loadUnaligned(fromByteOffset: qh + l, as: SIMD8<UInt8>.self)
                func scale(_ i: Int) -> Float { d * Float(p.load(fromByteOffset: sc + s + i, as: Int8.self)) }
                store((floats((a & 0x0F) | ((h & 3) &<< 4)) - 32) * scale(0), out + l)
                store((floats((b & 0x0F) | (((h &>> 2) & 3) &<< 4)) - 32) * scale(2), out + l + 32)
                store((floats((a &>> 4) | (((h &>> 4) & 3) &<< 4)) - 32) * scale(4), out + l + 64)
                store((floats((b &>> 4) | (((h &>> 6) & 3) &<< 4)) - 32) * scale(6), out + l + 96)
            }
        }
    }

    // MARK: - Lane helpers

    @inline(__always) static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always) static func floats(_ v: SIMD8<UInt8>) -> SIMD8<Float> {
        SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: v))
    }

    @inline(__always) static func floats(_ v: SIMD8<Int8>) -> SIMD8<Float> {
        SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: v))
    }

    /// Eight bf16 values from element `i` of `p`: a bf16 is the top half of an f32.
    @inline(__always) static func bf16x8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        let bits =
            SIMD8<UInt32>(truncatingIfNeeded: p.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self)) &<< 16
        return unsafeBitCast(bits, to: SIMD8<Float>.self)
    }

    @inline(__always) static func f16x8(_ p: UnsafeRawPointer, _ i: Int) -> SIMD8<Float> {
        SIMD8<Float>(p.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<Float16>.self))
    }

    @inline(__always) static func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always) static func store(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }
}

/// Fused "dequantize and multiply" kernels: the dot product of one stored weight row with an f32
/// vector, reading each weight byte once and never writing the widened row anywhere. Decode (one
/// token) is a matrix-vector product bound by memory bandwidth (gemma3-and-serving.md §5.2), so these
/// keep the loads streaming and accumulate in f32 SIMD lanes with FMA (`addingProduct`).
///
/// Quantized formats with an offset or a minimum (Q4_0's −8, Q4_K's −dmin·m, Q6_K's −32, ...) use
/// Σ (a·q + b)·x = a·Σ q·x + b·Σ x, with the Σ x of every 16 elements of x computed once per
/// matrix-vector product (`XSums`) instead of once per row.
enum DotProduct {
    typealias D = Dequantize

    /// Sums of x over each 16 consecutive elements: sums[i] = Σ x[16i ..< 16i + 16].
    struct XSums {
        let pointer: UnsafeMutablePointer<Float>
        init(_ x: UnsafePointer<Float>, count: Int) {
            let groups = count / 16
            pointer = .allocate(capacity: max(groups, 1))
            for g in 0..<groups { pointer[g] = (x8(x, 16 * g) + x8(x, 16 * g + 8)).sum() }
        }
        func free() { pointer.deallocate() }
        /// Σ over the 32 elements of block b.
        @inline(__always) func block(_ b: Int) -> Float { pointer[2 * b] + pointer[2 * b + 1] }
    }

    /// Whether `row` reads `XSums` for this format (the plain float formats do not).
    static func needsSums(_ format: WeightFormat) -> Bool { format.blockElements > 1 }

    /// Σ row[i] · x[i] over `count` elements (a whole number of blocks); `sums` from `XSums(x)` for
    /// quantized formats.
    @inline(__always)
    static func row(
        _ format: WeightFormat, _ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: XSums?, count: Int
    ) -> Float {
        switch format {
        case .f32: return f32(row.assumingMemoryBound(to: Float.self), x, count)
        case .bf16: return bf16(row, x, count)
        case .f16: return f16(row, x, count)
        case .q8_0: return q8_0(row, x, count / 32)
        case .q4_0: return q4_0(row, x, sums!, count / 32)
        case .q4_1: return q4_1(row, x, sums!, count / 32)
        case .q5_0: return q5_0(row, x, sums!, count / 32)
        case .q5_1: return q5_1(row, x, sums!, count / 32)
        case .q4_K: return q4_K(row, x, sums!, count / 256)
        case .q6_K: return q6_K(row, x, sums!, count / 256)
        }
    }

    /// One row on its own (tests, odd callers): computes the sums itself.
    static func row(_ format: WeightFormat, _ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, count: Int) -> Float {
        guard needsSums(format) else { return self.row(format, row, x, nil, count: count) }
        let sums = XSums(x, count: count)
        defer { sums.free() }
        return self.row(format, row, x, sums, count: count)
    }

    @inline(__always) static func x8(_ x: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> { D.load(x + i) }

    static func f32(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var a0 = SIMD8<Float>()
        var a1 = SIMD8<Float>()
        var a2 = SIMD8<Float>()
        var a3 = SIMD8<Float>()
        var i = 0
        while i + 32 <= count {
            a0 = a0.addingProduct(D.load(w + i), x8(x, i))
            a1 = a1.addingProduct(D.load(w + i + 8), x8(x, i + 8))
            a2 = a2.addingProduct(D.load(w + i + 16), x8(x, i + 16))
            a3 = a3.addingProduct(D.load(w + i + 24), x8(x, i + 24))
            i += 32
        }
        while i + 8 <= count {
            a0 = a0.addingProduct(D.load(w + i), x8(x, i))
            i += 8
        }
        var sum = ((a0 + a1) + (a2 + a3)).sum()
        while i < count {
            sum += w[i] * x[i]
            i += 1
        }
        return sum
    }

    static func bf16(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var a0 = SIMD8<Float>()
        var a1 = SIMD8<Float>()
        var a2 = SIMD8<Float>()
        var a3 = SIMD8<Float>()
        var i = 0
        while i + 32 <= count {
            a0 = a0.addingProduct(D.bf16x8(w, i), x8(x, i))
            a1 = a1.addingProduct(D.bf16x8(w, i + 8), x8(x, i + 8))
            a2 = a2.addingProduct(D.bf16x8(w, i + 16), x8(x, i + 16))
            a3 = a3.addingProduct(D.bf16x8(w, i + 24), x8(x, i + 24))
            i += 32
        }
        while i + 8 <= count {
            a0 = a0.addingProduct(D.bf16x8(w, i), x8(x, i))
            i += 8
        }
        var sum = ((a0 + a1) + (a2 + a3)).sum()
        while i < count {
            sum += Float(bitPattern: UInt32(w.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) * x[i]
            i += 1
        }
        return sum
    }

    static func f16(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var a0 = SIMD8<Float>()
        var a1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= count {
            a0 = a0.addingProduct(D.f16x8(w, i), x8(x, i))
            a1 = a1.addingProduct(D.f16x8(w, i + 8), x8(x, i + 8))
            i += 16
        }
        while i + 8 <= count {
            a0 = a0.addingProduct(D.f16x8(w, i), x8(x, i))
            i += 8
        }
        var sum = (a0 + a1).sum()
        while i < count {
            sum += D.half(w, 2 * i) * x[i]
            i += 1
        }
        return sum
    }

    /// Σ q·x over one 32-element block whose quants are the lanes of a, b, c, e (elements 0-7, 8-15, 16-23, 24-31).
    @inline(__always)
    static func block(
        _ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>, _ e: SIMD8<Float>, _ x: UnsafePointer<Float>
    ) -> SIMD8<Float> {
        (a * x8(x, 0)).addingProduct(b, x8(x, 8)) + (c * x8(x, 16)).addingProduct(e, x8(x, 24))
    }

    static func q8_0(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ blocks: Int) -> Float {
        // Two accumulators so consecutive blocks do not wait on each other's FMA.
        var even = SIMD8<Float>()
        var odd = SIMD8<Float>()
        var b = 0
        @inline(__always) func one(_ b: Int) -> SIMD8<Float> {
            let p = w + 34 * b
            return block(
                D.floats(p.loadUnaligned(fromByteOffset: 2, as: SIMD8<Int8>.self)),
                D.floats(p.loadUnaligned(fromByteOffset: 10, as: SIMD8<Int8>.self)),
                D.floats(p.loadUnaligned(fromByteOffset: 18, as: SIMD8<Int8>.self)),
                D.floats(p.loadUnaligned(fromByteOffset: 26, as: SIMD8<Int8>.self)), x + 32 * b)
        }
        while b + 2 <= blocks {
            even = even.addingProduct(one(b), D.half(w + 34 * b, 0))
            odd = odd.addingProduct(one(b + 1), D.half(w + 34 * (b + 1), 0))
            b += 2
        }
        if b < blocks { even = even.addingProduct(one(b), D.half(w + 34 * b, 0)) }
        return (even + odd).sum()
    }

    static func q4_0(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: XSums, _ blocks: Int) -> Float {
        var acc = SIMD8<Float>()
        var offsets: Float = 0
        for b in 0..<blocks {
            let p = w + 18 * b
            let q0 = p.loadUnaligned(fromByteOffset: 2, as: SIMD8<UInt8>.self)
            let q1 = p.loadUnaligned(fromByteOffset: 10, as: SIMD8<UInt8>.self)
            let d = D.half(p, 0)
            acc = acc.addingProduct(
                block(D.floats(q0 & 0x0F), D.floats(q1 & 0x0F), D.floats(q0 &>> 4), D.floats(q1 &>> 4), x + 32 * b), d)
            offsets += d * sums.block(b)
        }
        return acc.sum() - 8 * offsets
    }

    static func q4_1(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: XSums, _ blocks: Int) -> Float {
        var acc = SIMD8<Float>()
        var minimums: Float = 0
        for b in 0..<blocks {
            let p = w + 20 * b
            let q0 = p.loadUnaligned(fromByteOffset: 4, as: SIMD8<UInt8>.self)
            let q1 = p.loadUnaligned(fromByteOffset: 12, as: SIMD8<UInt8>.self)
            acc = acc.addingProduct(
                block(D.floats(q0 & 0x0F), D.floats(q1 & 0x0F), D.floats(q0 &>> 4), D.floats(q1 &>> 4), x + 32 * b),
                D.half(p, 0))
            minimums += D.half(p, 2) * sums.block(b)
        }
        return acc.sum() + minimums
    }

    static func q5_0(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: XSums, _ blocks: Int) -> Float {
        var acc = SIMD8<Float>()
        var offsets: Float = 0
        let table = D.fifthBitTable
        for b in 0..<blocks {
            let p = w + 22 * b
            let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
            let q0 = p.loadUnaligned(fromByteOffset: 6, as: SIMD8<UInt8>.self)
            let q1 = p.loadUnaligned(fromByteOffset: 14, as: SIMD8<UInt8>.self)
            let d = D.half(p, 0)
            acc = acc.addingProduct(
                block(
                    D.floats((q0 & 0x0F) | D.fifthBits(table, qh, 0)),
                    D.floats((q1 & 0x0F) | D.fifthBits(table, qh, 1)),
                    D.floats((q0 &>> 4) | D.fifthBits(table, qh, 2)), D.floats((q1 &>> 4) | D.fifthBits(table, qh, 3)),
                    x + 32 * b), d)
            offsets += d * sums.block(b)
        }
        return acc.sum() - 16 * offsets
    }

    static func q5_1(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: XSums, _ blocks: Int) -> Float {
        var acc = SIMD8<Float>()
        var minimums: Float = 0
        let table = D.fifthBitTable
        for b in 0..<blocks {
            let p = w + 24 * b
            let qh = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
            let q0 = p.loadUnaligned(fromByteOffset: 8, as: SIMD8<UInt8>.self)
            let q1 = p.loadUnaligned(fromByteOffset: 16, as: SIMD8<UInt8>.self)
            acc = acc.addingProduct(
                block(
                    D.floats((q0 & 0x0F) | D.fifthBits(table, qh, 0)),
                    D.floats((q1 & 0x0F) | D.fifthBits(table, qh, 1)),
                    D.floats((q0 &>> 4) | D.fifthBits(table, qh, 2)), D.floats((q1 &>> 4) | D.fifthBits(table, qh, 3)),
                    x + 32 * b),
                D.half(p, 0))
            minimums += D.half(p, 2) * sums.block(b)
        }
        return acc.sum() + minimums
    }

    static func q4_K(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: XSums, _ blocks: Int) -> Float {
        var acc = SIMD8<Float>()
        var minimums: Float = 0
        for b in 0..<blocks {
            let p = w + 144 * b
            let xb = x + 256 * b
            let d = D.half(p, 0)
            let dmin = D.half(p, 2)
            for j in 0..<4 {
                let (sc1, m1) = D.scaleMin(2 * j, p + 4)
                let (sc2, m2) = D.scaleMin(2 * j + 1, p + 4)
                let xl = xb + 64 * j
                let xh = xl + 32
                var sl = SIMD8<Float>()
                var sh = SIMD8<Float>()
                for i in 0..<4 {
                    let q = p.loadUnaligned(fromByteOffset: 16 + 32 * j + 8 * i, as: SIMD8<UInt8>.self)
                    sl = sl.addingProduct(D.floats(q & 0x0F), x8(xl, 8 * i))
                    sh = sh.addingProduct(D.floats(q &>> 4), x8(xh, 8 * i))
                }
                // Σ (d·sc·q − dmin·m)·x = d·sc·Σ q·x − dmin·m·Σ x, per sub-block of 32.
                acc = acc.addingProduct(sl, d * sc1)
                acc = acc.addingProduct(sh, d * sc2)
                minimums += dmin * (m1 * sums.block(8 * b + 2 * j) + m2 * sums.block(8 * b + 2 * j + 1))
            }
        }
        return acc.sum() - minimums
    }

    static func q6_K(_ w: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: XSums, _ blocks: Int) -> Float {
        var acc = SIMD8<Float>()
        var offsets: Float = 0
        for b in 0..<blocks {
            let p = w + 210 * b
            let xb = x + 256 * b
            let d = D.half(p, 208)
            for n in 0..<2 {
                let ql = 64 * n
                let qh = 128 + 32 * n
                let sc = 192 + 8 * n
                let xn = xb + 128 * n
                for s in 0..<2 {
                    // 16 elements (two lanes of 8) share one scale within each of the four groups.
                    var g0 = SIMD8<Float>()
                    var g1 = SIMD8<Float>()
                    var g2 = SIMD8<Float>()
                    var g3 = SIMD8<Float>()
                    for half in 0..<2 {
                        let l = 16 * s + 8 * half
                        let a = p.loadUnaligned(fromByteOffset: ql + l, as: SIMD8<UInt8>.self)
                        let c = p.loadUnaligned(fromByteOffset: ql + l + 32, as: SIMD8<UInt8>.self)
                        let h = p.loadUnaligned(fromByteOffset: qh + l, as: SIMD8<UInt8>.self)
                        g0 = g0.addingProduct(D.floats((a & 0x0F) | ((h & 3) &<< 4)), x8(xn, l))
                        g1 = g1.addingProduct(D.floats((c & 0x0F) | (((h &>> 2) & 3) &<< 4)), x8(xn, l + 32))
                        g2 = g2.addingProduct(D.floats((a &>> 4) | (((h &>> 4) & 3) &<< 4)), x8(xn, l + 64))
                        g3 = g3.addingProduct(D.floats((c &>> 4) | (((h &>> 6) & 3) &<< 4)), x8(xn, l + 96))
                    }
                    func scale(_ i: Int) -> Float { d * Float(p.load(fromByteOffset: sc + s + i, as: Int8.self)) }
                    let s0 = scale(0)
                    let s2 = scale(2)
                    let s4 = scale(4)
                    let s6 = scale(6)
                    acc = acc.addingProduct(g0, s0)
                    acc = acc.addingProduct(g1, s2)
                    acc = acc.addingProduct(g2, s4)
                    acc = acc.addingProduct(g3, s6)
                    // The −32 of every quant, against the 16-element sums of x (group index in units of 16).
                    let group = (256 * b + 128 * n + 16 * s) / 16
                    offsets +=
                        s0 * sums.pointer[group] + s2 * sums.pointer[group + 2] + s4 * sums.pointer[group + 4]
                        + s6 * sums.pointer[group + 6]
                }
            }
        }
        return acc.sum() - 32 * offsets
    }
}
