import Foundation
import TestSupport
import Testing

@testable import Inference

/// Plain scalar transcriptions of ggml's dequantize_row_* (gemma3-and-serving.md §3.5): the reference
/// the SIMD row dequantizers and fused dot kernels are checked against.
enum ScalarReference {
    static func half(_ b: [UInt8], _ i: Int) -> Float {
        Float(Float16(bitPattern: UInt16(b[i]) | UInt16(b[i + 1]) << 8))
    }
    static func u32(_ b: [UInt8], _ i: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[i + $1]) << (8 * $1) } }

    static func dequantize(_ format: WeightFormat, _ b: [UInt8], count: Int) -> [Float] {
        var y: [Float] = []
        let blocks = count / format.blockElements
        for block in 0..<blocks {
            let x = Array(b[(block * format.blockBytes)..<((block + 1) * format.blockBytes)])
            switch format {
            case .f32: y.append(Float(bitPattern: u32(x, 0)))
            case .f16: y.append(half(x, 0))
            case .bf16: y.append(Float(bitPattern: (UInt32(x[0]) | UInt32(x[1]) << 8) << 16))
            case .q8_0:
                let d = half(x, 0)
                for j in 0..<32 { y.append(Float(Int8(bitPattern: x[2 + j])) * d) }
            case .q4_0:
                let d = half(x, 0)
                var out = [Float](repeating: 0, count: 32)
                for j in 0..<16 {
                    out[j] = Float(Int(x[2 + j] & 0x0F) - 8) * d
                    out[j + 16] = Float(Int(x[2 + j] >> 4) - 8) * d
                }
                y += out
            case .q4_1:
                let d = half(x, 0)
                let m = half(x, 2)
                var out = [Float](repeating: 0, count: 32)
                for j in 0..<16 {
                    out[j] = Float(x[4 + j] & 0x0F) * d + m
                    out[j + 16] = Float(x[4 + j] >> 4) * d + m
                }
                y += out
            case .q5_0, .q5_1:
                let d = half(x, 0)
                let m: Float = format == .q5_1 ? half(x, 2) : 0
                let qh = u32(x, format == .q5_1 ? 4 : 2)
                let qs = format == .q5_1 ? 8 : 6
                var out = [Float](repeating: 0, count: 32)
                for j in 0..<16 {
                    let xh0 = ((qh >> UInt32(j)) << 4) & 0x10
                    let xh1 = (qh >> UInt32(j + 12)) & 0x10
                    let bias = format == .q5_0 ? 16 : 0
                    let x0 = Int(UInt32(x[qs + j] & 0x0F) | xh0) - bias
                    let x1 = Int(UInt32(x[qs + j] >> 4) | xh1) - bias
                    out[j] = Float(x0) * d + m
                    out[j + 16] = Float(x1) * d + m
                }
                y += out
            case .q4_K:
                let d = half(x, 0)
                let dmin = half(x, 2)
                let scales = Array(x[4..<16])
                func scaleMin(_ j: Int) -> (Float, Float) {
                    if j < 4 { return (Float(scales[j] & 63), Float(scales[j + 4] & 63)) }
                    return (
                        Float((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4)),
                        Float((scales[j + 4] >> 4) | ((scales[j - 0] >> 6) << 4))
                    )
                }
                var q = 16
                var index = 0
                for _ in stride(from: 0, to: 256, by: 64) {
                    let (sc1, m1) = scaleMin(index)
                    let (sc2, m2) = scaleMin(index + 1)
                    for l in 0..<32 { y.append(d * sc1 * Float(x[q + l] & 0xF) - dmin * m1) }
                    for l in 0..<32 { y.append(d * sc2 * Float(x[q + l] >> 4) - dmin * m2) }
                    q += 32
                    index += 2
                }
            case .q6_K:
                let d = half(x, 208)
                var out = [Float](repeating: 0, count: 256)
                var ql = 0
                var qh = 128
                var sc = 192
                var base = 0
                for _ in stride(from: 0, to: 256, by: 128) {
                    for l in 0..<32 {
                        let s = l / 16
                        let q1 = Int((x[ql + l] & 0xF) | (((x[qh + l] >> 0) & 3) << 4)) - 32
                        let q2 = Int((x[ql + l + 32] & 0xF) | (((x[qh + l] >> 2) & 3) << 4)) - 32
                        let q3 = Int((x[ql + l] >> 4) | (((x[qh + l] >> 4) & 3) << 4)) - 32
                        let q4 = Int((x[ql + l + 32] >> 4) | (((x[qh + l] >> 6) & 3) << 4)) - 32
                        func scale(_ i: Int) -> Float { d * Float(Int8(bitPattern: x[sc + s + i])) }
                        out[base + l] = scale(0) * Float(q1)
                        out[base + l + 32] = scale(2) * Float(q2)
                        out[base + l + 64] = scale(4) * Float(q3)
                        out[base + l + 96] = scale(6) * Float(q4)
                    }
                    base += 128
                    ql += 64
                    qh += 32
                    sc += 8
                }
                y += out
            }
        }
        return y
    }

    /// `rows` random rows of `format` (`randomRow`): their bytes, and each row dequantized.
    static func randomMatrix(_ format: WeightFormat, rows: Int, columns: Int, _ random: inout TestRandom) -> (
        bytes: [UInt8], weights: [[Float]]
    ) {
        var bytes: [UInt8] = []
        var weights: [[Float]] = []
        for _ in 0..<rows {
            let row = randomRow(format, count: columns, &random)
            bytes += row
            weights.append(dequantize(format, row, count: columns))
        }
        return (bytes, weights)
    }

    /// Random blocks whose fp16 scales are finite and modest, so products stay comparable.
    static func randomRow(_ format: WeightFormat, count: Int, _ random: inout TestRandom) -> [UInt8] {
        var bytes = random.bytes(format.byteCount(elements: count)!)
        func putHalf(_ at: Int, _ value: Float) {
            let bits = Float16(value).bitPattern
            bytes[at] = UInt8(bits & 0xFF)
            bytes[at + 1] = UInt8(bits >> 8)
        }
        for block in 0..<count / format.blockElements {
            let b = block * format.blockBytes
            switch format {
            case .f32:
                let bits = Float.random(in: -2...2, using: &random).bitPattern
                for i in 0..<4 { bytes[b + i] = UInt8((bits >> (8 * UInt32(i))) & 0xFF) }
            case .f16: putHalf(b, Float.random(in: -2...2, using: &random))
            case .bf16:
                bytes[b + 1] = UInt8.random(in: 0x3C...0x40, using: &random) | (random.next() & 1 == 0 ? 0 : 0x80)
            case .q8_0, .q4_0, .q5_0: putHalf(b, Float.random(in: -0.1...0.1, using: &random))
            case .q4_1, .q5_1:
                putHalf(b, Float.random(in: -0.1...0.1, using: &random))
                putHalf(b + 2, Float.random(in: -0.5...0.5, using: &random))
            case .q4_K:
                putHalf(b, Float.random(in: 0...0.01, using: &random))
                putHalf(b + 2, Float.random(in: 0...0.01, using: &random))
            case .q6_K: putHalf(b + 208, Float.random(in: -0.01...0.01, using: &random))
            }
        }
        return bytes
    }
}

@Suite struct DequantizeTests {
    static let formats = WeightFormat.allCases

    @Test(arguments: formats)
    func rowDequantizationMatchesTheScalarReference(format: WeightFormat) throws {
        var random = TestRandom(seed: UInt64(format.ggmlType) + 1)
        for count in [256, 512, 1024] {
            let row = ScalarReference.randomRow(format, count: count, &random)
            let expected = ScalarReference.dequantize(format, row, count: count)
            var actual = [Float](repeating: .nan, count: count)
            row.withUnsafeBytes { raw in
                actual.withUnsafeMutableBufferPointer {
                    Dequantize.row(format, raw.baseAddress!, count: count, into: $0.baseAddress!)
                }
            }
            for i in 0..<count {
                // ggml computes d·sc·q − dmin·m unfused; FMA may differ in the last bit.
                #expect(abs(actual[i] - expected[i]) <= 1e-6 * max(1, abs(expected[i])), "\(format) element \(i)")
            }
        }
    }

    @Test(arguments: formats)
    func fusedDotProductMatchesTheScalarReference(format: WeightFormat) throws {
        var random = TestRandom(seed: UInt64(format.ggmlType) + 100)
        for count in [256, 768, 2048] {
            let row = ScalarReference.randomRow(format, count: count, &random)
            let weights = ScalarReference.dequantize(format, row, count: count)
            let x = random.floats(count)
            let expected = zip(weights, x).reduce(Double(0)) { $0 + Double($1.0) * Double($1.1) }
            let magnitude = zip(weights, x).reduce(Double(0)) { $0 + abs(Double($1.0) * Double($1.1)) }
            let actual = row.withUnsafeBytes { raw in
                x.withUnsafeBufferPointer { DotProduct.row(format, raw.baseAddress!, $0.baseAddress!, count: count) }
            }
            #expect(abs(Double(actual) - expected) <= 1e-5 * max(1, magnitude), "\(format) count \(count)")
        }
    }

    /// The CPU engine reads Q5_0 matrices rewritten as Q8_0: the same values, bit for bit.
    @Test func q5RewrittenAsQ8WidensToTheSameValues() throws {
        var random = TestRandom(seed: 55)
        let bytes = (0..<6).flatMap { _ in ScalarReference.randomRow(.q5_0, count: 256, &random) }
        let q5 = try WeightTensor(name: "w", format: .q5_0, shape: [6, 256], bytes: bytes)
        let q8 = q5.q5AsQ8()
        #expect(q8.format == .q8_0 && q8.shape == [6, 256] && q8.byteCount == 6 * 8 * 34)
        let (a, b) = (q5.floats(), q8.floats())
        #expect(a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern })
        #expect(Set(a).count > 100, "the random rows should cover many values")
    }

    @Test func oddLengthsUseTheScalarTail() throws {
        // Plain float rows need not be multiples of 8.
        var random = TestRandom(seed: 5)
        for format in [WeightFormat.f32, .f16, .bf16] {
            for count in [1, 7, 13, 37] {
                let row = ScalarReference.randomRow(format, count: count, &random)
                let weights = ScalarReference.dequantize(format, row, count: count)
                let x = random.floats(count)
                let expected = zip(weights, x).reduce(Float(0)) { $0 + $1.0 * $1.1 }
                let actual = row.withUnsafeBytes { raw in
                    x.withUnsafeBufferPointer {
                        DotProduct.row(format, raw.baseAddress!, $0.baseAddress!, count: count)
                    }
                }
                #expect(abs(actual - expected) <= 1e-4, "\(format) count \(count)")
            }
        }
    }
}
