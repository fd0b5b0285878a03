import Foundation
import TestSupport
import Testing

@testable import Inference

/// The AVX-512 tiles (`WeightTiles`), reached as the engine reaches them (`CPUBackend.matrix`, then
/// `matmul`): each product exactly Σ weight · x as the kernel rounds x (int8 per 32 values, or split
/// into two bf16 parts), and close to the f32 product. 37 rows (two whole groups of 16 and a partial
/// one) and token counts that take every tile width (1...8) and the split of more than 8 tokens.
@Suite struct WeightTilesTests {
    static let rows = 37
    static let tokenCounts = [1, 2, 3, 4, 5, 6, 7, 8, 11, 17]

    @Test(.enabled(if: WeightTiles.int8Available, "this CPU has no AVX-512 VNNI"), arguments: [WeightFormat.q8_0, .q5_0, .q4_K, .q6_K])
    func tilesEqualTheQuantizedReference(format: WeightFormat) throws {
        var random = TestRandom(seed: UInt64(format.ggmlType) + 11)
        let k = format.blockElements == 256 ? 768 : 640
        try check(format, columns: k, &random, expected: { $0 != .bf16 }, bar: 2e-2) { x in
            Int8ProductTests.quantized(x).map(Double.init)
        }
    }

    @Test(.enabled(if: WeightTiles.bf16Available, "this CPU has no AVX-512 BF16"), arguments: [96, 640])
    func bf16TilesEqualTheSplitReference(columns k: Int) throws {
        var random = TestRandom(seed: UInt64(k) + 5)
        // x as the kernel splits it: high = bf16(x), low = bf16(x - high). Dropping the low part
        // would be off by about 1e-4 of the magnitude (8 bits of x), ten times the exact bar.
        try check(.bf16, columns: k, &random, expected: { $0 == .bf16 }, bar: 2e-5) { x in
            x.map { v in
                let high = Gemma3Config.roundedToBFloat16(v)
                return Double(high) + Double(Gemma3Config.roundedToBFloat16(v - high))
            }
        }
    }

    /// Packs a random `format` matrix through the backend, multiplies random x of every token count,
    /// and checks each result against Σ w · rounded(x) (within 1e-5 of the magnitude Σ |w · x|) and
    /// against Σ w · x (within `bar`).
    func check(
        _ format: WeightFormat, columns k: Int, _ random: inout TestRandom, expected kind: (WeightTiles.Kind) -> Bool,
        bar: Double, rounded: ([Float]) -> [Double]
    ) throws {
        let m = Self.rows
        let (bytes, weights) = ScalarReference.randomMatrix(format, rows: m, columns: k, &random)
        let backend = try CPUBackend()
        let tensor = try backend.matrix(WeightTensor(name: "w", format: format, shape: [m, k], bytes: bytes))
        #expect(tensor.tiles.map { kind($0.kind) } == true, "the backend did not pack a \(format) matrix as expected")
        for n in Self.tokenCounts {
            let x = (0..<n).map { _ in random.floats(k) }
            let input = backend.makeBuffer(count: n * k)
            backend.write(x.flatMap { $0 }, to: input, offset: 0)
            let output = backend.makeBuffer(count: n * m)
            backend.write([Float](repeating: .nan, count: n * m), to: output, offset: 0)
            backend.matmul(input, rows: n, weight: tensor, into: output)
            let out = backend.read(output, offset: 0, count: n * m)
            for t in 0..<n {
                let xr = rounded(x[t])
                for r in 0..<m {
                    let exact = zip(weights[r], xr).reduce(Double(0)) { $0 + Double($1.0) * $1.1 }
                    let full = zip(weights[r], x[t]).reduce(Double(0)) { $0 + Double($1.0) * Double($1.1) }
                    let magnitude = zip(weights[r], x[t]).reduce(Double(0)) { $0 + abs(Double($1.0) * Double($1.1)) }
                    let got = Double(out[t * m + r])
                    #expect(abs(got - exact) <= 1e-5 * magnitude, "\(format) n \(n) token \(t) row \(r): \(got) vs \(exact)")
                    #expect(abs(got - full) <= bar * magnitude, "\(format) n \(n) token \(t) row \(r): \(got) vs f32 \(full)")
                }
            }
        }
    }
}
