import Foundation
import TestSupport
import Testing

@testable import Inference

/// The int8 decode products: the bit-level unpacking of Q8_0 and Q5_0 blocks and the integer dot
/// products must give exactly Σ (weight · quantized x), and stay close to the f32 product.
@Suite struct Int8ProductTests {
    /// x quantized as llama.cpp's quantize_row_q8_0 does: per 32, scale = max|x| / 127, round to nearest even.
    static func quantized(_ x: [Float]) -> [Float] {
        var out: [Float] = []
        for b in 0..<x.count / 32 {
            let block = x[(32 * b)..<(32 * b + 32)]
            let scale = (block.map { abs($0) }.max() ?? 0) / 127
            let inverse: Float = scale == 0 ? 0 : 1 / scale
            out += block.map { (($0 * inverse).rounded(.toNearestOrEven)) * scale }
        }
        return out
    }

    @Test(arguments: [WeightFormat.q8_0, .q5_0, .q4_K, .q6_K])
    func productsEqualTheQuantizedReference(format: WeightFormat) throws {
        var random = TestRandom(seed: UInt64(format.ggmlType) + 7)
        let k = format.blockElements == 256 ? 1024 : 640
        let m = 37
        // The same rows for every group size.
        let (bytes, weights) = ScalarReference.randomMatrix(format, rows: m, columns: k, &random)
        for n in [1, 2, 7] {  // groups of one, two, four and three tokens
            let x = (0..<n).map { _ in random.floats(k) }
            var out = [Float](repeating: .nan, count: n * m)
            let flat = x.flatMap { $0 }
            let tensor = try WeightTensor(name: "w", format: format, shape: [m, k], bytes: bytes)
            flat.withUnsafeBufferPointer { xs in
                out.withUnsafeMutableBufferPointer { Int8Product.matmul(xs.baseAddress!, n, tensor, $0.baseAddress!) }
            }
            for t in 0..<n {
                let q = Self.quantized(x[t])
                for r in 0..<m {
                    let exact = zip(weights[r], q).reduce(Double(0)) { $0 + Double($1.0) * Double($1.1) }
                    let full = zip(weights[r], x[t]).reduce(Double(0)) { $0 + Double($1.0) * Double($1.1) }
                    let magnitude = zip(weights[r], x[t]).reduce(Double(0)) { $0 + abs(Double($1.0) * Double($1.1)) }
                    let got = Double(out[t * m + r])
                    #expect(abs(got - exact) <= 1e-5 * magnitude, "\(format) token \(t) row \(r): \(got) vs \(exact)")
                    #expect(abs(got - full) <= 2e-2 * magnitude, "\(format) token \(t) row \(r): \(got) vs f32 \(full)")
                }
            }
        }
    }
}
