import Foundation
import TestSupport
import Testing

@testable import Inference

/// Each CPU kernel against a plain Double-precision reference on small random tensors.
@Suite struct CPUBackendTests {
    let backend: CPUBackend
    // Exact: these compare against f32 references (the int8 decode path has Int8ProductTests).
    init() throws { backend = try CPUBackend(exact: true) }

    func buffer(_ values: [Float]) -> CPUBuffer {
        let b = backend.makeBuffer(count: values.count)
        backend.write(values, to: b, offset: 0)
        return b
    }

    func f32Tensor(_ values: [Float], shape: [Int]) throws -> WeightTensor {
        try WeightTensor(name: "t", format: .f32, shape: shape, bytes: f32Bytes(values))
    }

    @Test(arguments: [WeightFormat.f32, .bf16, .q8_0, .q4_K, .q6_K, .q5_0])
    func matmulMatchesTheReferenceForEveryBatchSize(format: WeightFormat) throws {
        var random = TestRandom(seed: 21 + UInt64(format.ggmlType))
        let columns = 256
        let rows = 101  // rows not a multiple of the 3-row kernel or the 48-row block
        let bytes = (0..<rows).flatMap { _ in ScalarReference.randomRow(format, count: columns, &random) }
        let weight = try WeightTensor(name: "w", format: format, shape: [rows, columns], bytes: bytes)
        let dense = ScalarReference.dequantize(format, bytes, count: rows * columns)
        for n in [1, 2, 3, 4, 5, 9] {
            let x = random.floats(n * columns)
            let out = backend.makeBuffer(count: n * rows)
            backend.matmul(buffer(x), rows: n, weight: weight, into: out)
            let result = backend.read(out, offset: 0, count: n * rows)
            for t in 0..<n {
                for r in 0..<rows {
                    var expected = 0.0
                    var magnitude = 0.0
                    for k in 0..<columns {
                        expected += Double(x[t * columns + k]) * Double(dense[r * columns + k])
                        magnitude += abs(Double(x[t * columns + k]) * Double(dense[r * columns + k]))
                    }
                    #expect(
                        abs(Double(result[t * rows + r]) - expected) <= 1e-5 * max(1, magnitude),
                        "\(format) n \(n) t \(t) r \(r)")
                }
            }
        }
    }

    @Test func rmsNormScalesByTheRootMeanSquare() throws {
        var random = TestRandom(seed: 1)
        let rows = 3
        let dimension = 20
        let x = random.floats(rows * dimension, scale: 3)
        let w = random.floats(dimension)
        let out = backend.makeBuffer(count: rows * dimension)
        backend.rmsNorm(
            buffer(x), rows: rows, dimension: dimension, weight: try f32Tensor(w, shape: [dimension]), epsilon: 1e-6,
            into: out)
        let result = backend.read(out, offset: 0, count: rows * dimension)
        for r in 0..<rows {
            let slice = x[(r * dimension)..<((r + 1) * dimension)].map(Double.init)
            let scale = 1 / (slice.reduce(0) { $0 + $1 * $1 } / Double(dimension) + 1e-6).squareRoot()
            for j in 0..<dimension {
                #expect(abs(Double(result[r * dimension + j]) - slice[j] * scale * Double(w[j])) < 1e-5)
            }
        }
    }

    @Test func ropeRotatesHalfSplitPairs() throws {
        var random = TestRandom(seed: 2)
        let heads = 2
        let headDim = 8
        let positions = [5, 900, 7]  // not consecutive, as in a batched decode
        let frequencies: [Float] = [1, 0.1, 0.01, 0.001]
        let table = backend.makeBuffer(count: positions.count * headDim)
        backend.ropeTable(positions: positions, inverseFrequencies: frequencies, into: table)
        let x = random.floats(positions.count * heads * headDim)
        let b = buffer(x)
        backend.rope(b, rows: positions.count, heads: heads, headDimension: headDim, table: table)
        let result = backend.read(b, offset: 0, count: x.count)
        for (row, position) in positions.enumerated() {
            for h in 0..<heads {
                let base = (row * heads + h) * headDim
                for j in 0..<4 {
                    let angle = Double(position) * Double(frequencies[j])
                    let a = Double(x[base + j])
                    let c = Double(x[base + j + 4])
                    #expect(abs(Double(result[base + j]) - (a * cos(angle) - c * sin(angle))) < 1e-5)
                    #expect(abs(Double(result[base + j + 4]) - (c * cos(angle) + a * sin(angle))) < 1e-5)
                }
            }
        }
    }

    /// Naive attention over explicit key/value lists by position.
    func referenceAttention(
        q: [Float], keys: [[Float]], values: [[Float]], position: Int, window: Int?, scale: Float
    ) -> [Float] {
        let first = window.map { max(0, position - $0 + 1) } ?? 0
        let scores = (first...position).map { p in
            zip(q, keys[p]).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } * Double(scale)
        }
        let maximum = scores.max()!
        let weights = scores.map { exp($0 - maximum) }
        let total = weights.reduce(0, +)
        var out = [Double](repeating: 0, count: q.count)
        for (i, p) in (first...position).enumerated() {
            for d in 0..<q.count { out[d] += weights[i] / total * Double(values[p][d]) }
        }
        return out.map(Float.init)
    }

    @Test(arguments: [(nil, 64), (4, 6), (3, 9)] as [(Int?, Int)])
    func attentionMatchesTheReferenceThroughTheRing(window: Int?, capacity: Int) throws {
        var random = TestRandom(seed: UInt64(capacity))
        let heads = 4
        let kvHeads = 2
        let headDim = 8
        let total = 20
        let batch = 3
        let keys = (0..<total).map { _ in (0..<kvHeads).map { _ in random.floats(headDim) } }
        let values = (0..<total).map { _ in (0..<kvHeads).map { _ in random.floats(headDim) } }
        let keyBuffer = backend.makeBuffer(count: capacity * kvHeads * headDim)
        let valueBuffer = backend.makeBuffer(count: capacity * kvHeads * headDim)
        var position = 0
        while position < total {
            let n = min(batch, total - position)
            for p in position..<position + n {
                let slot = p % capacity
                backend.write(keys[p].flatMap { $0 }, to: keyBuffer, offset: slot * kvHeads * headDim)
                backend.write(values[p].flatMap { $0 }, to: valueBuffer, offset: slot * kvHeads * headDim)
            }
            let q = random.floats(n * heads * headDim)
            let out = backend.makeBuffer(count: n * heads * headDim)
            backend.attention(
                queries: buffer(q), keys: keyBuffer, values: valueBuffer, rows: n, firstPosition: position,
                heads: heads,
                kvHeads: kvHeads, headDimension: headDim, capacity: capacity, window: window, scale: 0.3, into: out)
            let result = backend.read(out, offset: 0, count: n * heads * headDim)
            for t in 0..<n {
                for h in 0..<heads {
                    let kv = h / (heads / kvHeads)
                    let expected = referenceAttention(
                        q: Array(q[((t * heads + h) * headDim)..<((t * heads + h + 1) * headDim)]),
                        keys: keys.map { $0[kv] }, values: values.map { $0[kv] }, position: position + t,
                        window: window, scale: 0.3)
                    for d in 0..<headDim {
                        #expect(
                            abs(result[(t * heads + h) * headDim + d] - expected[d]) < 1e-5, "p \(position + t) h \(h)")
                    }
                }
            }
            position += n
        }
    }

    @Test func geluMultiplyIsTheTanhApproximationOnTheGate() throws {
        let gate: [Float] = [-3, -1, -0.5, 0, 0.5, 1, 3, 10]
        let up: [Float] = [1, 2, 3, 4, 5, 6, 7, 0.5]
        let g = buffer(gate)
        backend.geluMultiply(g, buffer(up), count: gate.count)
        let result = backend.read(g, offset: 0, count: gate.count)
        for i in gate.indices {
            let x = Double(gate[i])
            let gelu = 0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
            #expect(abs(Double(result[i]) - gelu * Double(up[i])) < 1e-5)
        }
    }

    @Test func softmaxAddAndEmbed() throws {
        let x = buffer([1, 2, 3, 1000, 1000, 1000])
        backend.softmax(x, rows: 2, columns: 3)
        let s = backend.read(x, offset: 0, count: 6)
        let e = [exp(-2.0), exp(-1.0), 1.0]
        for i in 0..<3 { #expect(abs(Double(s[i]) - e[i] / e.reduce(0, +)) < 1e-6) }
        for i in 3..<6 { #expect(abs(s[i] - 1.0 / 3) < 1e-6) }

        let accumulator = buffer([1, 2, 3])
        backend.add(buffer([10, 20, 30]), into: accumulator, count: 3)
        #expect(backend.read(accumulator, offset: 0, count: 3) == [11, 22, 33])

        let table = try WeightTensor(
            name: "e", format: .bf16, shape: [3, 2],
            bytes: [0, 0x3F, 0, 0x40, 0, 0xC0, 0, 0x3F, 0x80, 0x3F, 0, 0])  // [[0.5, 2], [-2, 0.5], [1, 0]]
        let out = backend.makeBuffer(count: 4)
        backend.embed([2, 1], table: table, scale: 3, into: out)
        #expect(backend.read(out, offset: 0, count: 4) == [3, 0, -6, 1.5])
    }
}
