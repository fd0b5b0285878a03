import Foundation

/// The CPU implementation of `ComputeBackend`: f32 activations in heap buffers, weights read in place
/// from the mapped file, SIMD kernels compiled for AVX2/FMA (Package.swift), both cores through
/// `Parallel`.
public struct CPUBackend: ComputeBackend {
    public typealias Buffer = CPUBuffer
    public typealias Matrix = WeightTensor

    public var name: String {
        var parts = ["\(Parallel.threadCount) threads"]
        if !exact && WeightTiles.int8Available { parts.append("AVX-512 VNNI") }
        if !exact && WeightTiles.bf16Available { parts.append("AVX-512 BF16") }
        return "cpu (" + parts.joined(separator: ", ") + ")"
    }

    /// When true, activations stay f32 in every product; when false (the default, as llama.cpp),
    /// products with Q8_0/Q5_0/Q4_K/Q6_K weights quantize the activations to int8: all of them on a
    /// CPU with AVX-512 VNNI (`WeightTiles`), those of few rows elsewhere (`Int8Product`); on a CPU with
    /// AVX-512 BF16, products with bf16 weights split each activation into two bf16 parts (`WeightTiles`).
    public let exact: Bool

    /// Refuses to run on a CPU without the instructions the kernels were compiled with.
    public init(exact: Bool = false) throws {
        try CPUFeatures.check()
        self.exact = exact
    }

    public func makeBuffer(count: Int) -> CPUBuffer { CPUBuffer(count: count) }

    public func read(_ buffer: CPUBuffer, offset: Int, count: Int) -> [Float] {
        precondition(offset >= 0 && offset + count <= buffer.count)
        return Array(UnsafeBufferPointer(start: buffer.pointer + offset, count: count))
    }

    /// Each row's argmax where it lies (no copy of its 1 MB).
    public func argmax(_ x: CPUBuffer, rows: Int, columns: Int) -> [Int] {
        precondition(rows * columns <= x.count)
        return (0..<rows).map { Sampler.argmax(x.pointer + $0 * columns, count: columns) }
    }

    public func write(_ values: [Float], to buffer: CPUBuffer, offset: Int) {
        precondition(offset >= 0 && offset + values.count <= buffer.count)
        values.withUnsafeBufferPointer { (buffer.pointer + offset).update(from: $0.baseAddress!, count: values.count) }
    }

    public func copy(
        _ source: CPUBuffer, offset sourceOffset: Int, to destination: CPUBuffer, offset destinationOffset: Int,
        count: Int
    ) {
        precondition(sourceOffset + count <= source.count && destinationOffset + count <= destination.count)
        (destination.pointer + destinationOffset).update(from: source.pointer + sourceOffset, count: count)
    }

    /// The tensor itself (it is read in place), with tiles for the AVX-512 VNNI or BF16 products when
    /// this CPU has them and activations need not be exact (`WeightTiles`; packed on first use).
    public func matrix(_ tensor: WeightTensor) throws -> WeightTensor {
        guard !exact, let tiles = WeightTiles(tensor) else { return tensor }
        var packed = tensor
        packed.tiles = tiles
        return packed
    }

    public func embed(_ tokens: [Int], table: WeightTensor, scale: Float, into out: CPUBuffer) {
        let dimension = table.columns
        precondition(tokens.count * dimension <= out.count)
        for (i, token) in tokens.enumerated() {
            precondition(token >= 0 && token < table.rows, "token id out of range")
            let y = out.pointer + i * dimension
            Dequantize.row(table.format, table.row(token), count: dimension, into: y)
            for j in 0..<dimension { y[j] *= scale }
        }
    }

    public func rmsNorm(
        _ x: CPUBuffer, rows: Int, dimension: Int, weight: WeightTensor, epsilon: Float, into out: CPUBuffer
    ) {
        precondition(
            weight.format == .f32 && weight.elementCount == dimension && rows * dimension <= min(x.count, out.count))
        let w = weight.data.assumingMemoryBound(to: Float.self)
        let input = x.pointer
        let output = out.pointer
        Parallel.forRanges(rows, minimumChunk: max(1, 16_384 / dimension)) { range in
            for r in range {
                let xr = input + r * dimension
                let yr = output + r * dimension
                var squares = SIMD8<Float>()
                var j = 0
                while j + 8 <= dimension {
                    let v = loadLanes(xr + j)
                    squares = squares.addingProduct(v, v)
                    j += 8
                }
                var sum = squares.sum()
                while j < dimension {
                    sum += xr[j] * xr[j]
                    j += 1
                }
                // Gemma3RMSNorm: x * rsqrt(mean(x²) + eps), then * (1 + w), all in f32 (§1.3).
                let inverse = 1 / (sum / Float(dimension) + epsilon).squareRoot()
                for k in 0..<dimension { yr[k] = (xr[k] * inverse) * w[k] }
            }
        }
    }

    public func ropeTable(positions: [Int], inverseFrequencies: [Float], into table: CPUBuffer) {
        precondition(positions.count * 2 * inverseFrequencies.count <= table.count)
        Self.fillRopeTable(positions: positions, inverseFrequencies: inverseFrequencies, into: table.pointer)
    }

    /// The cos/sin table of `ropeTable` written to host memory: (positions, 2, headDim / 2). Public so
    /// that a GPU backend builds the very same table and uploads it.
    public static func fillRopeTable(positions: [Int], inverseFrequencies: [Float], into table: UnsafeMutablePointer<Float>) {
        let half = inverseFrequencies.count
        for (row, position) in positions.enumerated() {
            let cosines = table + row * 2 * half
            let sines = cosines + half
            for j in 0..<half {
                // HF forms the angle as an f32 product (inv_freq @ position_ids) and takes cos/sin in f32.
                let angle = Double(Float(position) * inverseFrequencies[j])
                cosines[j] = Float(Foundation.cos(angle))
                sines[j] = Float(Foundation.sin(angle))
            }
        }
    }

    public func rope(_ x: CPUBuffer, rows: Int, heads: Int, headDimension: Int, table: CPUBuffer) {
        let half = headDimension / 2
        precondition(rows * heads * headDimension <= x.count && rows * headDimension <= table.count)
        let base = x.pointer
        let angles = table.pointer
        Parallel.forRanges(rows, minimumChunk: 64) { range in
            for r in range {
                let cosines = angles + r * 2 * half
                let sines = cosines + half
                for h in 0..<heads {
                    let v = base + (r * heads + h) * headDimension
                    for j in 0..<half {
                        // q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1) (§1.3, NeoX layout).
                        let a = v[j]
                        let b = v[j + half]
                        v[j] = a * cosines[j] - b * sines[j]
                        v[j + half] = b * cosines[j] + a * sines[j]
                    }
                }
            }
        }
    }

    public func geluMultiply(_ gate: CPUBuffer, _ up: CPUBuffer, count: Int) {
        precondition(count <= gate.count && count <= up.count)
        let g = gate.pointer
        let u = up.pointer
        Parallel.forRanges(count, minimumChunk: 4096, granularity: 8) { range in
            VectorMath.geluMultiply(g + range.lowerBound, u + range.lowerBound, count: range.count)
        }
    }

    public func add(_ x: CPUBuffer, into accumulator: CPUBuffer, count: Int) {
        precondition(count <= x.count && count <= accumulator.count)
        let a = accumulator.pointer
        let b = x.pointer
        for i in 0..<count { a[i] += b[i] }
    }

    public func softmax(_ x: CPUBuffer, rows: Int, columns: Int) {
        precondition(rows * columns <= x.count)
        for r in 0..<rows { Self.softmax(x.pointer + r * columns, columns) }
    }

    /// In-place softmax of `count` floats, max-subtracted as torch does.
    @inline(__always)
    static func softmax(_ v: UnsafeMutablePointer<Float>, _ count: Int) {
        VectorMath.softmax(v, count: count)
    }
}

/// A zero-filled f32 buffer on the heap, 64-byte aligned.
///
/// Not `Sendable`: a session's buffers belong to the one task that runs it; the kernels share them
/// with their worker threads only for the duration of one call, on disjoint ranges.
public final class CPUBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { pointer.deallocate() }
}

// Lane helpers, repeated per file: debug builds only inline within a file (see Dequantize.swift).
@inline(__always) private func loadLanes(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always) private func storeLanes(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
