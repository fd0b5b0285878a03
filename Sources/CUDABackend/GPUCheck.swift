import CUDA
import Foundation
import Inference

/// What `inference-server gpu-check` runs on a machine with an NVIDIA GPU (scripts/gpu-check): every
/// operation of the CUDA backend against the CPU backend on fresh random inputs, a whole model on
/// both, the golden references of shared/golden on the GPU, and decode/prefill speed against the
/// card's memory bandwidth. Each check returns lines to print and whether it passed.
public struct GPUCheck {
    public let gpu: CUDABackend
    public let cpu: CPUBackend
    private var random: Xoshiro256StarStar

    public init(gpu: CUDABackend, seed: UInt64 = 0x5EED) throws {
        self.gpu = gpu
        cpu = try CPUBackend(exact: true)
        random = Xoshiro256StarStar(seed: seed)
    }

    public struct Result {
        public var name: String
        public var error: Double
        public var tolerance: Double
        public var passed: Bool { error.isFinite && error <= tolerance }
        public var line: String {
            String(format: "%@ %-44@ relative error %.2e (bar %.0e)", passed ? "ok  " : "FAIL", name as NSString, error, tolerance)
        }
    }

    // MARK: operations

    /// ‖a − b‖ / ‖b‖, infinite when a holds a NaN or the lengths differ.
    public static func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        guard a.count == b.count else { return .infinity }
        var difference = 0.0, reference = 0.0
        for (x, y) in zip(a, b) {
            guard x.isFinite else { return .infinity }
            difference += Double(x - y) * Double(x - y)
            reference += Double(y) * Double(y)
        }
        return reference == 0 ? (difference == 0 ? 0 : .infinity) : (difference / reference).squareRoot()
    }

    private mutating func values(_ count: Int, scale: Float = 1) -> [Float] {
        (0..<count).map { _ in (random.unit() * 2 - 1) * scale }
    }

    /// A KV cache's values, f32 or bf16 widened.
    private func cacheContents(_ buffer: CUDABuffer) -> [Float] {
        guard buffer.elementBytes == 2 else { return gpu.read(buffer, offset: 0, count: buffer.count) }
        var bits = [UInt16](repeating: 0, count: buffer.count)
        bits.withUnsafeMutableBytes { gpu.context.download(buffer.address, bytes: $0.count, into: $0.baseAddress!) }
        return bits.map { Float(bitPattern: UInt32(UInt16(littleEndian: $0)) << 16) }
    }

    /// A KV cache buffer on the GPU holding `values` (as bf16 when `half`).
    private func cache(_ values: [Float], half: Bool) throws -> CUDABuffer {
        let buffer = try CUDABuffer(context: gpu.context, count: values.count, elementBytes: half ? 2 : 4)
        if half {
            let bits = values.map { CUDABackend.bfloat16Bits($0).littleEndian }
            bits.withUnsafeBytes { gpu.context.upload($0.baseAddress!, bytes: $0.count, to: buffer.address) }
        } else {
            gpu.write(values, to: buffer, offset: 0)
        }
        return buffer
    }

    /// The same values in a CPU and a GPU buffer.
    private func pair(_ values: [Float]) -> (CPUBuffer, CUDABuffer) {
        let c = cpu.makeBuffer(count: values.count)
        cpu.write(values, to: c, offset: 0)
        let g = gpu.makeBuffer(count: values.count)
        gpu.write(values, to: g, offset: 0)
        return (c, g)
    }

    /// A GPU output buffer filled with NaN, so an element a kernel leaves unwritten fails the check.
    private func poisoned(_ count: Int) -> CUDABuffer {
        let buffer = gpu.makeBuffer(count: count)
        gpu.write([Float](repeating: .nan, count: count), to: buffer, offset: 0)
        return buffer
    }

    private mutating func bf16Matrix(rows: Int, columns: Int, scale: Float) throws -> WeightTensor {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(rows * columns * 2)
        for _ in 0..<rows * columns {
            let bits = CUDABackend.bfloat16Bits((random.unit() * 2 - 1) * scale)
            bytes.append(UInt8(bits & 0xFF))
            bytes.append(UInt8(bits >> 8))
        }
        return try WeightTensor(name: "random", format: .bf16, shape: [rows, columns], bytes: bytes)
    }

    private func f32Vector(_ values: [Float]) throws -> WeightTensor {
        try WeightTensor(name: "norm", format: .f32, shape: [values.count], bytes: values.withUnsafeBytes { Array($0) })
    }

    /// Every operation of the backend, each on fresh random inputs, against the CPU backend in f32.
    public mutating func operations() throws -> [Result] {
        var results: [Result] = []
        // Products: gemv (≤ 16 rows, f32 activations) and the many-row path (cuBLAS with bf16
        // activations when present, else the tensor cores or the tiled gemm), and the tensor-core and
        // tiled gemms themselves whatever is present, on shapes that are not whole tiles.
        if let problem = gpu.tensorCoreProblem, problem.contains("self-check") {
            results.append(Result(name: "tensor-core product: \(problem)", error: .infinity, tolerance: 0))
        }
        for (m, k) in [(1152, 640), (640, 2048), (1000, 1152)] {
            let tensor = try bf16Matrix(rows: m, columns: k, scale: 0.05)
            let cw = try cpu.matrix(tensor), gw = try gpu.matrix(tensor)
            for rows in [1, 3, 8, 16, 21, 64] {
                let (cx, gx) = pair(values(rows * k))
                let cy = cpu.makeBuffer(count: rows * m)
                let gy = poisoned(rows * m)
                cpu.matmul(cx, rows: rows, weight: cw, into: cy)
                gpu.matmul(gx, rows: rows, weight: gw, into: gy)
                // Many rows: cuBLAS (bf16 activations), else the tensor cores (two bf16 parts), else tiled (f32).
                let manyRows = rows > GemmaKernels.gemvMaximumTokens
                let path = !manyRows ? "" : gpu.cublas != nil ? " cuBLAS" : gpu.prefillWithTensorCores ? " tensor cores" : " tiled"
                results.append(Result(
                    name: "matmul \(rows)x\(k) · (\(m)x\(k))ᵀ" + path,
                    error: Self.relativeError(gpu.read(gy, offset: 0, count: rows * m), cpu.read(cy, offset: 0, count: rows * m)),
                    tolerance: path == " cuBLAS" ? 1e-2 : path == " tensor cores" ? 1e-4 : 1e-5))
            }
            for rows in [17, 100] {
                let (cx, gx) = pair(values(rows * k))
                let cy = cpu.makeBuffer(count: rows * m)
                let gy = poisoned(rows * m)
                cpu.matmul(cx, rows: rows, weight: cw, into: cy)
                gpu.matmulBuiltIn(gx, rows: rows, weight: gw, into: gy, tensorCores: false)
                results.append(Result(
                    name: "matmul \(rows)x\(k) · (\(m)x\(k))ᵀ tiled",
                    error: Self.relativeError(gpu.read(gy, offset: 0, count: rows * m), cpu.read(cy, offset: 0, count: rows * m)),
                    tolerance: 1e-5))
                guard gpu.tensorCoreProblem == nil else { continue }
                // Two bf16 parts per activation: about 16 of its bits, so near the f32 kernels.
                let gt = poisoned(rows * m)
                gpu.matmulBuiltIn(gx, rows: rows, weight: gw, into: gt, tensorCores: true)
                results.append(Result(
                    name: "matmul \(rows)x\(k) · (\(m)x\(k))ᵀ tensor cores",
                    error: Self.relativeError(gpu.read(gt, offset: 0, count: rows * m), cpu.read(cy, offset: 0, count: rows * m)),
                    tolerance: 1e-4))
            }
        }
        // A decode step's fused products: q, k and v in one launch (rows of a block straddling two
        // matrices), and gate, up and GELU in one, against the CPU's separate steps.
        do {
            let k = 2048
            let shapes = [501, 129, 130]  // odd: a warp's two rows straddle two matrices
            let tensors = try shapes.map { try bf16Matrix(rows: $0, columns: k, scale: 0.05) }
            let cws = try tensors.map { try cpu.matrix($0) }, gws = try tensors.map { try gpu.matrix($0) }
            let gate = try bf16Matrix(rows: 1000, columns: 1152, scale: 0.05), up = try bf16Matrix(rows: 1000, columns: 1152, scale: 0.05)
            let (cg, cu) = (try cpu.matrix(gate), try cpu.matrix(up)), (gg, gu) = (try gpu.matrix(gate), try gpu.matrix(up))
            for rows in [1, 5, 16] {
                let (cx, gx) = pair(values(rows * k))
                let cys = shapes.map { cpu.makeBuffer(count: rows * $0) }, gys = shapes.map { poisoned(rows * $0) }
                cpu.matmul(cx, rows: rows, weights: cws, into: cys)
                gpu.matmul(gx, rows: rows, weights: gws, into: gys)
                let error = zip(zip(cys, gys), shapes).map { pair, m in
                    Self.relativeError(gpu.read(pair.1, offset: 0, count: rows * m), cpu.read(pair.0, offset: 0, count: rows * m))
                }.max()!
                results.append(Result(name: "matmul \(rows)x\(k) · three matrices (q, k, v)", error: error, tolerance: 1e-5))
                let (hx, ghx) = pair(values(rows * 1152))
                let cy = cpu.makeBuffer(count: rows * 1000), cs = cpu.makeBuffer(count: rows * 1000)
                let gy = poisoned(rows * 1000), gs = poisoned(rows * 1000)
                cpu.gatedMatmul(hx, rows: rows, gate: cg, up: cu, width: 1000, into: cy, scratch: cs)
                gpu.gatedMatmul(ghx, rows: rows, gate: gg, up: gu, width: 1000, into: gy, scratch: gs)
                results.append(Result(
                    name: "gelu(x · gateᵀ) * (x · upᵀ) \(rows)x1152, 1000 rows",
                    error: Self.relativeError(gpu.read(gy, offset: 0, count: rows * 1000), cpu.read(cy, offset: 0, count: rows * 1000)),
                    tolerance: 1e-5))
            }
        }
        // A token's products do not depend on the batch: its row alone (one row per warp) and within
        // 16 (two rows per warp) give the same bits.
        do {
            let tensor = try bf16Matrix(rows: 1152, columns: 6912, scale: 0.05)
            let gw = try gpu.matrix(tensor)
            let x = values(16 * 6912)
            let (_, gx) = pair(x)
            let alone = poisoned(1152), batch = poisoned(16 * 1152)
            gpu.matmul(gx, rows: 1, weight: gw, into: alone)
            gpu.matmul(gx, rows: 16, weight: gw, into: batch)
            let same = gpu.read(alone, offset: 0, count: 1152) == gpu.read(batch, offset: 0, count: 1152)
            results.append(Result(name: "matmul 1 row alone and among 16: the same bits", error: same ? 0 : 1, tolerance: 0))
        }
        // Embedding rows (bf16 table), scaled.
        do {
            let table = try bf16Matrix(rows: 1000, columns: 640, scale: 0.1)
            let ids = (0..<37).map { _ in Int(random.next() % 1000) }
            let cy = cpu.makeBuffer(count: ids.count * 640)
            let gy = poisoned(ids.count * 640)
            cpu.embed(ids, table: try cpu.matrix(table), scale: 25.3, into: cy)
            gpu.embed(ids, table: try gpu.matrix(table), scale: 25.3, into: gy)
            results.append(Result(
                name: "embed 37 rows of 640", error: Self.relativeError(gpu.read(gy, offset: 0, count: gy.count), cpu.read(cy, offset: 0, count: cy.count)),
                tolerance: 1e-6))
        }
        // RMS norm over hidden rows and over heads.
        for (rows, dimension) in [(5, 640), (64, 1152), (9 * 4, 256)] {
            let weight = try f32Vector(values(dimension, scale: 2))
            let (cx, gx) = pair(values(rows * dimension, scale: 3))
            let cy = cpu.makeBuffer(count: rows * dimension)
            let gy = poisoned(rows * dimension)
            cpu.rmsNorm(cx, rows: rows, dimension: dimension, weight: try cpu.matrix(weight), epsilon: 1e-6, into: cy)
            gpu.rmsNorm(gx, rows: rows, dimension: dimension, weight: try gpu.matrix(weight), epsilon: 1e-6, into: gy)
            results.append(Result(
                name: "rms_norm \(rows)x\(dimension)", error: Self.relativeError(gpu.read(gy, offset: 0, count: gy.count), cpu.read(cy, offset: 0, count: cy.count)),
                tolerance: 1e-5))
        }
        // The fused residual norm and the fused q/k norm + RoPE, against the CPU's separate steps.
        do {
            let rows = 7, dimension = 1152
            let weight = try f32Vector(values(dimension, scale: 2))
            let (cx, gx) = pair(values(rows * dimension, scale: 3))
            let (ca, ga) = pair(values(rows * dimension))
            cpu.rmsNormAdd(cx, rows: rows, dimension: dimension, weight: try cpu.matrix(weight), epsilon: 1e-6, into: ca)
            gpu.rmsNormAdd(gx, rows: rows, dimension: dimension, weight: try gpu.matrix(weight), epsilon: 1e-6, into: ga)
            results.append(Result(
                name: "rms_norm_add 7x1152", error: Self.relativeError(gpu.read(ga, offset: 0, count: ga.count), cpu.read(ca, offset: 0, count: ca.count)),
                tolerance: 1e-5))
            // With the next block's input norm, written over x as the model does (fresh inputs: the
            // CPU's rmsNormAdd may overwrite x).
            let next = try f32Vector(values(dimension, scale: 2))
            let (cy, gy) = pair(values(rows * dimension, scale: 3))
            let (cb, gb) = pair(values(rows * dimension))
            cpu.rmsNormAddNorm(
                cy, rows: rows, dimension: dimension, weight: try cpu.matrix(weight), next: try cpu.matrix(next), epsilon: 1e-6,
                into: cb, normed: cy)
            gpu.rmsNormAddNorm(
                gy, rows: rows, dimension: dimension, weight: try gpu.matrix(weight), next: try gpu.matrix(next), epsilon: 1e-6,
                into: gb, normed: gy)
            let sums = Self.relativeError(gpu.read(gb, offset: 0, count: gb.count), cpu.read(cb, offset: 0, count: cb.count))
            let normed = Self.relativeError(gpu.read(gy, offset: 0, count: gy.count), cpu.read(cy, offset: 0, count: cy.count))
            results.append(Result(name: "rms_norm_add_norm 7x1152", error: max(sums, normed), tolerance: 1e-5))
            // Heads of 256 (the 270M's and 1B's) and of 128 (Gemma 3 27B: a head on 16 lanes, each
            // dimension's RoPE partner 8 lanes away).
            let positions = (0..<9).map { 500 + $0 * 611 }
            for (heads, kvHeads, dimension, base) in [(4, 1, 256, 1_000_000.0), (8, 2, 128, 10_000.0)] {
                let frequencies = (0..<dimension / 2).map { j in Float(1 / pow(base, Double(2 * j) / Double(dimension))) }
                let ct = cpu.makeBuffer(count: positions.count * dimension), gt = gpu.makeBuffer(count: positions.count * dimension)
                cpu.ropeTable(positions: positions, inverseFrequencies: frequencies, into: ct)
                gpu.ropeTable(positions: positions, inverseFrequencies: frequencies, into: gt)
                let qw = try f32Vector(values(dimension, scale: 2)), kw = try f32Vector(values(dimension, scale: 2))
                let (cq, gq) = pair(values(positions.count * heads * dimension, scale: 2))
                let (ck, gk) = pair(values(positions.count * kvHeads * dimension, scale: 2))
                cpu.normRope(
                    queries: cq, keys: ck, rows: positions.count, heads: heads, kvHeads: kvHeads, headDimension: dimension,
                    queryNorm: try cpu.matrix(qw), keyNorm: try cpu.matrix(kw), epsilon: 1e-6, table: ct)
                gpu.normRope(
                    queries: gq, keys: gk, rows: positions.count, heads: heads, kvHeads: kvHeads, headDimension: dimension,
                    queryNorm: try gpu.matrix(qw), keyNorm: try gpu.matrix(kw), epsilon: 1e-6, table: gt)
                let q = Self.relativeError(gpu.read(gq, offset: 0, count: gq.count), cpu.read(cq, offset: 0, count: cq.count))
                let k = Self.relativeError(gpu.read(gk, offset: 0, count: gk.count), cpu.read(ck, offset: 0, count: ck.count))
                let shape = dimension == 256 ? "\(heads) + \(kvHeads) heads" : "\(heads) + \(kvHeads) heads of \(dimension)"
                results.append(Result(name: "norm_rope 9 tokens, \(shape)", error: max(q, k), tolerance: 1e-5))
            }
        }
        // A one-token step's residual norm inside the product after it (gemv_norm_bf16,
        // gemv_gelu_norm_bf16), written over x as the model does, against the CPU's separate steps;
        // and the same bits as the norm's own launch, so a token's numbers do not depend on whether
        // its step fused the norm. Two rows take the norm's own launch.
        for (rows, dimension) in [(1, 640), (1, 2048), (2, 1152)] {
            let weight = try f32Vector(values(dimension, scale: 2)), next = try f32Vector(values(dimension, scale: 2))
            let (cw, cn, gw, gn) = (try cpu.matrix(weight), try cpu.matrix(next), try gpu.matrix(weight), try gpu.matrix(next))
            let shapes = [257, 64, 64]
            let tensors = try shapes.map { try bf16Matrix(rows: $0, columns: dimension, scale: 0.05) }
            let cws = try tensors.map { try cpu.matrix($0) }, gws = try tensors.map { try gpu.matrix($0) }
            let gate = try bf16Matrix(rows: 300, columns: dimension, scale: 0.05), up = try bf16Matrix(rows: 300, columns: dimension, scale: 0.05)
            let (cg, cu, gg, gu) = (try cpu.matrix(gate), try cpu.matrix(up), try gpu.matrix(gate), try gpu.matrix(up))
            let x = values(rows * dimension, scale: 3), residual = values(rows * dimension)
            for gated in [false, true] {
                let (cx, ca) = (pair(x).0, pair(residual).0)
                let widths = gated ? [300] : shapes
                let cys = widths.map { cpu.makeBuffer(count: rows * $0) }
                let cpuNorm = ResidualNorm(cx, rows: rows, dimension: dimension, weight: cw, next: cn, epsilon: 1e-6, into: ca, normed: cx)
                if gated {
                    cpu.gatedMatmul(after: cpuNorm, gate: cg, up: cu, width: 300, into: cys[0], scratch: cpu.makeBuffer(count: rows * 300))
                } else {
                    cpu.matmul(after: cpuNorm, weights: cws, into: cys)
                }
                var outputs: [[[Float]]] = []  // per run: the products, the residual, the normed row
                var fusedRuns = 0
                let setting = gpu.fusedNorms
                defer { gpu.fusedNorms = setting }
                // In place; not fused; fused from one residual buffer into another, the normed row
                // apart from x (as the model's: no block waits on a count of who has read).
                for (fused, apart) in [(true, false), (false, false), (true, true)] {
                    let (gx, ga) = (pair(x).1, pair(residual).1)
                    let gys = widths.map { poisoned(rows * $0) }
                    let (into, normed) = apart ? (poisoned(rows * dimension), poisoned(rows * dimension)) : (ga, gx)
                    let norm = ResidualNorm(
                        gx, rows: rows, dimension: dimension, weight: gw, next: gn, epsilon: 1e-6, from: apart ? ga : nil,
                        into: into, normed: normed)
                    gpu.fusedNorms = fused
                    let launches = gpu.fusedNormLaunches
                    if gated {
                        gpu.gatedMatmul(after: norm, gate: gg, up: gu, width: 300, into: gys[0], scratch: poisoned(rows * 300))
                    } else {
                        gpu.matmul(after: norm, weights: gws, into: gys)
                    }
                    if fused { fusedRuns += gpu.fusedNormLaunches - launches }
                    outputs.append(zip(gys, widths).map { gpu.read($0, offset: 0, count: rows * $1) } + [
                        gpu.read(into, offset: 0, count: into.count), gpu.read(normed, offset: 0, count: normed.count),
                    ])
                }
                let expected = zip(cys, widths).map { cpu.read($0, offset: 0, count: rows * $1) } + [
                    cpu.read(ca, offset: 0, count: rows * dimension), cpu.read(cx, offset: 0, count: rows * dimension),
                ]
                let error = zip(outputs[0], expected).map { Self.relativeError($0, $1) }.max()!
                let name = gated ? "gelu(x · gateᵀ) * (x · upᵀ)" : "q, k, v"
                results.append(Result(
                    name: "residual norm + \(name) \(rows)x\(dimension)"
                        + (rows > 1 ? "" : gpu.fusedNormProblem == nil ? " fused" : " (not fused: \(gpu.fusedNormProblem!))"),
                    error: error, tolerance: 1e-5))
                if rows == 1 {
                    // Fails unless the fused kernel ran (else both runs took the norm's own launch).
                    results.append(Result(
                        name: "residual norm + \(name) 1x\(dimension): fused, the same bits",
                        error: outputs[0] == outputs[1] && fusedRuns == 2 ? 0 : 1, tolerance: 0))
                }
                results.append(Result(
                    name: "residual norm + \(name) \(rows)x\(dimension) from one residual buffer into another: the same bits",
                    error: outputs[2] == outputs[0] ? 0 : 1, tolerance: 0))
            }
        }
        // RoPE at late positions (large angles).
        do {
            let positions = (0..<11).map { 30_000 + $0 * 37 }
            let frequencies = (0..<128).map { j in Float(1 / pow(10_000.0, Double(2 * j) / 256)) }
            let ct = cpu.makeBuffer(count: positions.count * 256), gt = gpu.makeBuffer(count: positions.count * 256)
            cpu.ropeTable(positions: positions, inverseFrequencies: frequencies, into: ct)
            gpu.ropeTable(positions: positions, inverseFrequencies: frequencies, into: gt)
            let (cx, gx) = pair(values(positions.count * 4 * 256))
            cpu.rope(cx, rows: positions.count, heads: 4, headDimension: 256, table: ct)
            gpu.rope(gx, rows: positions.count, heads: 4, headDimension: 256, table: gt)
            results.append(Result(
                name: "rope 11 tokens x 4 heads at 30000+", error: Self.relativeError(gpu.read(gx, offset: 0, count: gx.count), cpu.read(cx, offset: 0, count: cx.count)),
                tolerance: 1e-6))
        }
        // Attention: a prefill from 0 with a window, a decode row against a wrapped ring, GQA; heads
        // of 256 (Gemma 3 up to 12B) and of 128 (27B: half the lanes hold none of a row).
        for (rows, first, capacity, window, heads, kvHeads, dimension) in [
            (37, 0, 64, 16 as Int?, 4, 1, 256), (1, 300, 64, 32 as Int?, 4, 1, 256), (5, 700, 1024, nil as Int?, 8, 2, 256),
            (128, 128, 1024, nil as Int?, 4, 1, 256), (9, 40, 64, nil as Int?, 4, 2, 128),
        ] {
            let (cq, gq) = pair(values(rows * heads * dimension))
            let (ck, gk) = pair(values(capacity * kvHeads * dimension))
            let (cv, gv) = pair(values(capacity * kvHeads * dimension))
            let cy = cpu.makeBuffer(count: rows * heads * dimension)
            let gy = poisoned(rows * heads * dimension)
            cpu.attention(
                queries: cq, keys: ck, values: cv, rows: rows, firstPosition: first, heads: heads, kvHeads: kvHeads,
                headDimension: dimension, capacity: capacity, window: window, scale: 0.0625, into: cy)
            gpu.attention(
                queries: gq, keys: gk, values: gv, rows: rows, firstPosition: first, heads: heads, kvHeads: kvHeads,
                headDimension: dimension, capacity: capacity, window: window, scale: 0.0625, into: gy)
            results.append(Result(
                name: "attention \(rows) rows at \(first), ring \(capacity), window \(window.map(String.init) ?? "-"), \(heads)/\(kvHeads) heads of \(dimension)",
                error: Self.relativeError(gpu.read(gy, offset: 0, count: gy.count), cpu.read(cy, offset: 0, count: cy.count)),
                tolerance: 1e-5))
        }
        // Batched KV store and attention over three sequences: contexts long enough to be cut into
        // shares (and merged), a wrapped sliding ring, a prefill chunk beside decode rows; with f32
        // and with bf16 caches (the reference then holds the same bf16-rounded keys and values).
        // A decode step (every row its sequence's one new token) stores the keys inside the attention
        // launch: the caches must then hold exactly what the CPU stored.
        // Heads of 128 (Gemma 3 27B), 8 of them over 2 kv heads: half the lanes hold none of a row.
        for (half, decode, dimension) in [
            (false, false, 256), (true, false, 256), (false, true, 256), (true, true, 256), (true, false, 128),
            (true, true, 128),
        ] {
            let heads = dimension == 128 ? 8 : 4, kvHeads = dimension == 128 ? 2 : 1, width = kvHeads * dimension
            let specs: [(capacity: Int, window: Int?, first: Int, rows: Int)] =
                decode
                ? [(1024, nil, 900, 1), (600, 512, 2000, 1), (64, 32, 300, 1)]
                : [(1024, nil, 900, 1), (600, 512, 2000, 1), (1024, nil, 300, 5)]
            func stored(_ v: [Float]) -> [Float] {
                half ? v.map { Float(bitPattern: UInt32(CUDABackend.bfloat16Bits($0)) << 16) } : v
            }
            let total = specs.reduce(0) { $0 + $1.rows }
            let (cq, gq) = pair(values(total * heads * dimension))
            let newKeys = values(total * width), newValues = values(total * width)
            let (_, gk) = pair(newKeys)
            let (_, gv) = pair(newValues)
            let (ck, _) = pair(stored(newKeys))
            let (cv, _) = pair(stored(newValues))
            var gpuSegments: [AttentionSegment<CUDABuffer>] = []
            var cpuCaches: [CPUBackend.Buffer] = []
            let cy = cpu.makeBuffer(count: total * heads * dimension)
            var row = 0
            for spec in specs {
                let keys = values(spec.capacity * width), cacheValues = values(spec.capacity * width)
                let (cKeys, _) = pair(stored(keys))
                let (cValues, _) = pair(stored(cacheValues))
                cpuCaches += [cKeys, cValues]
                gpuSegments.append(AttentionSegment(
                    keys: try cache(keys, half: half), values: try cache(cacheValues, half: half), capacity: spec.capacity,
                    window: spec.window, firstPosition: spec.first, firstRow: row, rows: spec.rows))
                // The reference: the CPU's ring store and attention, one sequence at a time.
                for r in 0..<spec.rows {
                    let slot = (spec.first + r) % spec.capacity
                    cpu.copy(ck, offset: (row + r) * width, to: cKeys, offset: slot * width, count: width)
                    cpu.copy(cv, offset: (row + r) * width, to: cValues, offset: slot * width, count: width)
                }
                let q = cpu.makeBuffer(count: spec.rows * heads * dimension), o = cpu.makeBuffer(count: spec.rows * heads * dimension)
                cpu.copy(cq, offset: row * heads * dimension, to: q, offset: 0, count: spec.rows * heads * dimension)
                cpu.attention(
                    queries: q, keys: cKeys, values: cValues, rows: spec.rows, firstPosition: spec.first, heads: heads,
                    kvHeads: kvHeads, headDimension: dimension, capacity: spec.capacity, window: spec.window, scale: 0.0625,
                    into: o)
                cpu.copy(o, offset: 0, to: cy, offset: row * heads * dimension, count: spec.rows * heads * dimension)
                row += spec.rows
            }
            let gy = poisoned(total * heads * dimension)
            let done = gpu.attentionBatch(
                queries: gq, keys: gk, values: gv, segments: gpuSegments, heads: heads, kvHeads: kvHeads,
                headDimension: dimension, scale: 0.0625, norms: nil, into: gy, prefetching: [])
            let what = (decode ? "3 sequences' decode rows" : "3 sequences") + (dimension == 128 ? ", 8/2 heads of 128" : "")
            results.append(Result(
                name: "attention of \(what) in one step (shares\(half ? ", bf16 cache" : ""))",
                error: done ? Self.relativeError(gpu.read(gy, offset: 0, count: gy.count), cpu.read(cy, offset: 0, count: cy.count)) : .infinity,
                tolerance: 1e-5))
            let gpuCaches = gpuSegments.flatMap { [$0.keys, $0.values] }
            let cacheError = zip(gpuCaches, cpuCaches).map { g, c in
                Self.relativeError(cacheContents(g), cpu.read(c, offset: 0, count: c.count))
            }.max() ?? .infinity
            results.append(Result(
                name: "KV rows stored by the attention of \(what)\(half ? " (bf16 cache)" : "")", error: cacheError, tolerance: 0))
        }
        // A decode step's q/k norms and RoPE inside its attention (attention_rows with the norms),
        // against norm_rope then the same attention: the same bits in the output and in the stored
        // keys, so a token's numbers do not depend on which ran (norm_rope is held to the CPU above).
        for (half, dimension) in [(true, 256), (false, 256), (true, 128)] {
            let heads = dimension == 128 ? 8 : 4, kvHeads = dimension == 128 ? 2 : 1, width = kvHeads * dimension
            let specs: [(capacity: Int, window: Int?, first: Int)] = [(1024, nil, 900), (600, 512, 2000), (64, 32, 300)]
            let positions = specs.map(\.first)
            let frequencies = (0..<dimension / 2).map { j in Float(1 / pow(10_000.0, Double(2 * j) / Double(dimension))) }
            let table = gpu.makeBuffer(count: positions.count * dimension)
            gpu.ropeTable(positions: positions, inverseFrequencies: frequencies, into: table)
            let norms = HeadNorms(
                queryNorm: try gpu.matrix(try f32Vector(values(dimension, scale: 2))),
                keyNorm: try gpu.matrix(try f32Vector(values(dimension, scale: 2))), epsilon: 1e-6, table: table)
            let queries = values(specs.count * heads * dimension, scale: 3), keys = values(specs.count * width, scale: 3)
            let newValues = values(specs.count * width)
            let caches = try specs.map { _ in (values(1024 * width), values(1024 * width)) }
            var outputs: [[Float]] = [], stored: [[Float]] = []
            for fused in [false, true] {
                let (_, gq) = pair(queries)
                let (_, gk) = pair(keys)
                let (_, gv) = pair(newValues)
                let segments = try zip(specs, caches).enumerated().map { row, item in
                    AttentionSegment(
                        keys: try cache(item.1.0, half: half), values: try cache(item.1.1, half: half), capacity: item.0.capacity,
                        window: item.0.window, firstPosition: item.0.first, firstRow: row, rows: 1)
                }
                if !fused {
                    gpu.normRope(
                        queries: gq, keys: gk, rows: specs.count, heads: heads, kvHeads: kvHeads, headDimension: dimension,
                        queryNorm: norms.queryNorm, keyNorm: norms.keyNorm, epsilon: norms.epsilon, table: table)
                }
                let setting = gpu.fusedHeadNorms
                let before = gpu.fusedHeadNormLaunches
                gpu.fusedHeadNorms = true
                let gy = poisoned(specs.count * heads * dimension)
                _ = gpu.attentionBatch(
                    queries: gq, keys: gk, values: gv, segments: segments, heads: heads, kvHeads: kvHeads,
                    headDimension: dimension, scale: 0.0625, norms: fused ? norms : nil, into: gy, prefetching: [])
                gpu.fusedHeadNorms = setting
                // The fused path must have run (else this compares norm_rope with itself).
                let ran = gpu.fusedHeadNormLaunches - before == (fused ? 1 : 0)
                outputs.append(ran ? gpu.read(gy, offset: 0, count: gy.count) : [])
                stored.append(segments.flatMap { cacheContents($0.keys) + cacheContents($0.values) })
            }
            let same = outputs[0].count > 0 && outputs[1].count > 0 && zip(outputs[0], outputs[1]).allSatisfy { $0.bitPattern == $1.bitPattern }
            let sameCache = zip(stored[0], stored[1]).allSatisfy { $0.bitPattern == $1.bitPattern }
            results.append(Result(
                name: "q/k norms and RoPE inside a decode step's attention (\(heads)/\(kvHeads) heads of \(dimension)\(half ? ", bf16 cache" : "")), against norm_rope: same bits",
                error: same && sameCache ? 0 : .infinity, tolerance: 0))
        }
        // A one-sequence decode row's attention shares merged inside the output projection
        // (attention_output_bf16, whatever `fusedOutput` is set to), against the CPU's attention and
        // product: 16 shares (900 keys) and 32 (2000), heads of 256 over 1152 rows (the 1B's) and 8
        // of 128 over 640 (rows past the last whole group of 32 need none: 640 is 20 of them).
        for (heads, kvHeads, dimension, hidden, first) in [(4, 1, 256, 1152, 900), (4, 1, 256, 1152, 2000), (8, 2, 128, 640, 900)] {
            let width = kvHeads * dimension, capacity = 2048
            let (cq, gq) = pair(values(heads * dimension))
            let newKeys = values(width).map { Float(bitPattern: UInt32(CUDABackend.bfloat16Bits($0)) << 16) }
            let newValues = values(width).map { Float(bitPattern: UInt32(CUDABackend.bfloat16Bits($0)) << 16) }
            let (ck, gk) = pair(newKeys)
            let (cv, gv) = pair(newValues)
            let keys = values(capacity * width).map { Float(bitPattern: UInt32(CUDABackend.bfloat16Bits($0)) << 16) }
            let cacheValues = values(capacity * width).map { Float(bitPattern: UInt32(CUDABackend.bfloat16Bits($0)) << 16) }
            let (cKeys, _) = pair(keys)
            let (cValues, _) = pair(cacheValues)
            cpu.copy(ck, offset: 0, to: cKeys, offset: first * width, count: width)
            cpu.copy(cv, offset: 0, to: cValues, offset: first * width, count: width)
            let co = cpu.makeBuffer(count: heads * dimension)
            cpu.attention(
                queries: cq, keys: cKeys, values: cValues, rows: 1, firstPosition: first, heads: heads, kvHeads: kvHeads,
                headDimension: dimension, capacity: capacity, window: nil, scale: 0.0625, into: co)
            let tensor = try bf16Matrix(rows: hidden, columns: heads * dimension, scale: 0.05)
            let cw = try cpu.matrix(tensor), gw = try gpu.matrix(tensor)
            let cy = cpu.makeBuffer(count: hidden)
            cpu.matmul(co, rows: 1, weight: cw, into: cy)
            let segment = AttentionSegment(
                keys: try cache(keys, half: true), values: try cache(cacheValues, half: true), capacity: capacity, window: nil,
                firstPosition: first, firstRow: 0, rows: 1)
            let setting = gpu.fusedOutput, before = gpu.fusedOutputLaunches
            gpu.fusedOutput = true
            let gy = poisoned(hidden)
            let reach = gpu.attentionBatch(
                queries: gq, keys: gk, values: gv, segments: [segment], heads: heads, kvHeads: kvHeads, headDimension: dimension,
                scale: 0.0625, norms: nil, into: poisoned(heads * dimension), projection: gw, into: gy, prefetching: [])
            gpu.fusedOutput = setting
            let ran = reach == .projected && gpu.fusedOutputLaunches == before + 1
            results.append(Result(
                name: "attention's \(first + 1) keys merged inside the output projection (\(heads)/\(kvHeads) heads of \(dimension), \(hidden) rows)",
                error: ran ? Self.relativeError(gpu.read(gy, offset: 0, count: hidden), cpu.read(cy, offset: 0, count: hidden)) : .infinity,
                tolerance: 1e-5))
        }
        // Elementwise: gelu_tanh(gate) * up, residual add, softmax.
        do {
            let count = 3 * 6912
            let (cg, gg) = pair(values(count, scale: 4))
            let (cu, gu) = pair(values(count))
            cpu.geluMultiply(cg, cu, count: count)
            gpu.geluMultiply(gg, gu, count: count)
            results.append(Result(
                name: "gelu_tanh_mul \(count)", error: Self.relativeError(gpu.read(gg, offset: 0, count: count), cpu.read(cg, offset: 0, count: count)),
                tolerance: 1e-6))
            let (ca, ga) = pair(values(count))
            cpu.add(cu, into: ca, count: count)
            gpu.add(gu, into: ga, count: count)
            results.append(Result(
                name: "add \(count)", error: Self.relativeError(gpu.read(ga, offset: 0, count: count), cpu.read(ca, offset: 0, count: count)),
                tolerance: 1e-7))
            let (cs, gs) = pair(values(3 * 262_144, scale: 20))
            cpu.softmax(cs, rows: 3, columns: 262_144)
            gpu.softmax(gs, rows: 3, columns: 262_144)
            results.append(Result(
                name: "softmax 3x262144", error: Self.relativeError(gpu.read(gs, offset: 0, count: gs.count), cpu.read(cs, offset: 0, count: cs.count)),
                tolerance: 1e-4))  // f32 sums over 262144 terms in different orders
            let logits = values(4 * 262_144, scale: 20)
            let (_, gl) = pair(logits)
            let expected = (0..<4).map { r in Sampler.argmax(Array(logits[r * 262_144..<(r + 1) * 262_144])) }
            let found = gpu.argmax(gl, rows: 4, columns: 262_144)
            results.append(Result(name: "argmax 4x262144", error: found == expected ? 0 : .infinity, tolerance: 0))
            // Token draws: the kernel's cuts and Gumbel-max draw against the host version, row by row
            // (flatter logits, so that top-p keeps many tokens), without and with a soft cap.
            var penalized = TokenDraw(temperature: 0.9, topK: 0, topP: 0.95, minP: 0, seed: 6)
            penalized.penalties = TokenPenalties(
                presence: 0.5, frequency: 0.3, repetition: 1.3,
                entries: (0..<200).map {
                    .init(id: $0 * 1311, count: $0 % 3, seen: $0 % 4 != 0, bias: [0, 1.5, -3, -.infinity][$0 % 4])
                })
            let draws = [
                penalized,
                TokenDraw(temperature: 0.7, topK: 0, topP: 1, minP: 0, seed: 1),
                TokenDraw(temperature: 1, topK: 40, topP: 1, minP: 0, seed: 2),
                TokenDraw(temperature: 1.3, topK: 0, topP: 0.9, minP: 0, seed: 3),
                TokenDraw(temperature: 0.8, topK: 0, topP: 1, minP: 0.05, seed: 4),
                TokenDraw(temperature: 1, topK: 50, topP: 0.8, minP: 0.02, seed: 5),
                TokenDraw.argmax,
            ]
            let flat = values(draws.count * 262_144, scale: 4)
            let (_, gf) = pair(flat)
            for softcap: Float? in [nil, 3] {
                gpu.write(flat, to: gf, offset: 0)  // the penalties are applied in place
                let wanted = draws.indices.map { r in
                    draws[r].choose(Array(flat[r * 262_144..<(r + 1) * 262_144]), softcap: softcap)
                }
                let drawn = gpu.sample(gf, rows: draws.count, columns: 262_144, softcap: softcap, draws: draws)
                // The GPU's expf/logf/tanhf may differ from the host's by an ulp, which can flip a
                // near-tie: one row in seven may differ; a systematic fault differs in most.
                let misses = zip(wanted, drawn).filter { $0 != $1 }.count
                results.append(Result(
                    name: "sample \(draws.count)x262144\(softcap == nil ? "" : " capped") (rows differing)", error: Double(misses),
                    tolerance: 1))
            }
            // Peaked rows (a trained model's, more often than flat ones): a small top-k, and top-p or
            // the temperature alone with no top-k, whose nucleus the draw gathers from the slices.
            do {
                let peakedDraws = [
                    TokenDraw(temperature: 0.3, topK: 0, topP: 0.9, minP: 0, seed: 11),
                    TokenDraw(temperature: 1, topK: 0, topP: 0.5, minP: 0, seed: 12),
                    TokenDraw(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 13),
                    TokenDraw(temperature: 2, topK: 3, topP: 1, minP: 0, seed: 14),
                ]
                let peaked = values(peakedDraws.count * 262_144, scale: 20)
                let (_, gp) = pair(peaked)
                let wanted = peakedDraws.indices.map { r in peakedDraws[r].choose(Array(peaked[r * 262_144..<(r + 1) * 262_144])) }
                let drawn = gpu.sample(gp, rows: peakedDraws.count, columns: 262_144, softcap: nil, draws: peakedDraws)
                results.append(Result(
                    name: "sample \(peakedDraws.count)x262144 peaked (rows differing)",
                    error: Double(zip(wanted, drawn).filter { $0 != $1 }.count), tolerance: 1))
            }
            // Ties at a top-k cut past a slice's candidate places (all equal; 3000 equal at the top
            // of one slice): the draw falls back to the whole row and keeps every tie, as the host.
            do {
                var tied = [Float](repeating: 0.5, count: 2 * 262_144)
                for i in 0..<3000 { tied[262_144 + 5000 + i] = 2 }
                let tiedDraws = [
                    TokenDraw(temperature: 1, topK: 10, topP: 1, minP: 0, seed: 8),
                    TokenDraw(temperature: 1, topK: 5, topP: 0.9, minP: 0, seed: 9),
                ]
                let (_, gt) = pair(tied)
                let wanted = tiedDraws.indices.map { r in tiedDraws[r].choose(Array(tied[r * 262_144..<(r + 1) * 262_144])) }
                let drawn = gpu.sample(gt, rows: 2, columns: 262_144, softcap: nil, draws: tiedDraws)
                results.append(Result(
                    name: "sample 2x262144 with ties past a slice's places (rows differing)",
                    error: Double(zip(wanted, drawn).filter { $0 != $1 }.count), tolerance: 0))
            }
            // Logprobs beside the draw (the logprob kernels over copies taken before the penalties): the
            // drawn token's and the top ones' against the host's log-softmax of the same rows.
            let wantedLogprobs: [Int?] = [20, 0, 5, nil, 1, 20, 3]
            for softcap: Float? in [nil, 3] {
                gpu.write(flat, to: gf, offset: 0)
                let drawn = gpu.sample(
                    gf, rows: draws.count, columns: 262_144, softcap: softcap, draws: draws, logprobs: wantedLogprobs)
                var difference = 0.0
                for r in draws.indices {
                    guard let top = wantedLogprobs[r] else { continue }
                    var row = Array(flat[r * 262_144..<(r + 1) * 262_144])
                    if let cap = softcap { row = row.map { Foundation.tanh($0 / cap) * cap } }
                    let host = Logprobs.token(drawn[r].id, of: row, top: top)
                    // An id out of place (an ulp of tanhf can swap two near-equal logits) counts as
                    // the gap between their logprobs, which is then within the tolerance anyway.
                    guard drawn[r].top.count == host.top.count else { difference = .infinity; continue }
                    difference = max(difference, Double(abs(drawn[r].logprob - host.logprob)))
                    for (a, b) in zip(drawn[r].top, host.top) { difference = max(difference, Double(abs(a.logprob - b.logprob))) }
                }
                results.append(Result(
                    name: "logprobs \(draws.count)x262144\(softcap == nil ? "" : " capped") (largest difference)",
                    error: difference, tolerance: 1e-3))
            }
            // Prompt scoring: the logprob kernels straight over rows 2..<6 of the logits, against the host's.
            gpu.write(flat, to: gf, offset: 0)
            let targets = [0, 1311, 262_143, 77]
            let device = gpu.logprobs(gf, firstRow: 2, rows: 4, columns: 262_144, softcap: 3, tokens: targets, top: 20)
            let host = gpu.hostLogprobs(gf, firstRow: 2, rows: 4, columns: 262_144, softcap: 3, tokens: targets, top: 20)
            var scoreDifference = 0.0
            for (a, b) in zip(device, host) {
                guard a.id == b.id && a.top.count == b.top.count else { scoreDifference = .infinity; continue }
                scoreDifference = max(scoreDifference, Double(abs(a.logprob - b.logprob)))
                for (x, y) in zip(a.top, b.top) { scoreDifference = max(scoreDifference, Double(abs(x.logprob - y.logprob))) }
            }
            results.append(Result(name: "prompt logprobs 4x262144 capped (largest difference)", error: scoreDifference, tolerance: 1e-3))
            // The token's rank counts the values at least its own: an ulp of tanhf apart between host
            // and device may move it by one where values nearly tie.
            let rankDifference = zip(device, host).map { Double(abs(($0.rank ?? -9) - ($1.rank ?? 9))) }.max() ?? 0
            results.append(Result(name: "prompt logprob ranks 4x262144 capped (largest difference)", error: rankDifference, tolerance: 1))
        }
        try gpu.synchronize()
        return results
    }

    // MARK: a whole model

    /// The same prompt through the model on both backends: prefill, then greedy decode steps from the
    /// CPU's choices, comparing every step's logits. Returns the worst relative error and how many
    /// steps picked the same token.
    public static func compareModels(
        cpu: Gemma3Model<CPUBackend>, gpu: Gemma3Model<CUDABackend>, prompt: [Int], steps: Int
    ) throws -> (error: Double, agreeing: Int, steps: Int) {
        let c = cpu.makeSession(maximumBatch: 128)
        let g = gpu.makeSession(maximumBatch: 128)
        var cl = try c.append(prompt)
        var gl = try g.append(prompt)
        var worst = relativeError(gl, cl)
        var agreeing = Sampler.argmax(cl) == Sampler.argmax(gl) ? 1 : 0
        for _ in 0..<steps {
            let next = Sampler.argmax(cl)
            cl = try c.append([next])
            gl = try g.append([next])
            worst = max(worst, relativeError(gl, cl))
            if Sampler.argmax(cl) == Sampler.argmax(gl) { agreeing += 1 }
        }
        return (worst, agreeing, steps + 1)
    }

    /// The logits of a greedy run on the device: the prompt's last, then `steps` steps'.
    public static func greedyLogits(_ model: Gemma3Model<CUDABackend>, prompt: [Int], steps: Int) throws -> [[Float]] {
        let session = model.makeSession(maximumBatch: 128)
        var logits = [try session.append(prompt)]
        for _ in 0..<steps { logits.append(try session.append([Sampler.argmax(logits.last!)])) }
        return logits
    }

    // MARK: golden references

    public struct GoldenCase: Decodable {
        public var name: String
        public var input_ids: [Int]
        public var greedy_ids: [Int]
        public var steps: [GoldenStep]
    }
    public struct GoldenStep: Decodable {
        public var top: [[Double]]
        public var logsumexp: Double
    }
    struct GoldenFile: Decodable { var generation: [GoldenCase] }

    public static func goldenCases(file: String) throws -> [GoldenCase] {
        try JSONDecoder().decode(GoldenFile.self, from: Data(contentsOf: URL(fileURLWithPath: file))).generation
    }

    /// shared/golden/README.md's rule on the GPU: greedy from the reference's input ids; until the
    /// first step whose reference top-2 margin is under `margin`, the ids must be equal and each
    /// top-10 logit and logprob within `tolerance`. Returns (steps compared, largest difference, ok).
    public static func golden<Backend>(
        _ model: Gemma3Model<Backend>, _ golden: GoldenCase, margin: Double, tolerance: Double
    ) throws -> (steps: Int, difference: Double, passed: Bool) {
        let session = model.makeSession(maximumBatch: 128)
        var logits = try session.append(golden.input_ids)
        var steps = 0
        var difference = 0.0
        for (index, step) in golden.steps.enumerated() {
            if step.top[0][1] - step.top[1][1] < margin { break }
            let chosen = Sampler.argmax(logits)
            guard chosen == golden.greedy_ids[index] else { return (steps, difference, false) }
            let logSumExp = Double(Logprobs.logSumExp(logits))
            for pair in step.top {
                let id = Int(pair[0])
                difference = max(difference, abs(Double(logits[id]) - pair[1]))
                difference = max(difference, abs((Double(logits[id]) - logSumExp) - (pair[1] - step.logsumexp)))
            }
            steps += 1
            if index + 1 < golden.steps.count { logits = try session.append([chosen]) }
        }
        return (steps, difference, steps > 0 && difference <= tolerance)
    }

    // MARK: speed

    /// Device-to-device copy bandwidth (bytes read plus written per second), the ceiling for decode.
    public static func measuredBandwidth(_ gpu: CUDABackend, bytes: Int = 1 << 30) throws -> Double {
        let a = try gpu.tryMakeBuffer(count: bytes / 4), b = try gpu.tryMakeBuffer(count: bytes / 4)
        gpu.copy(a, offset: 0, to: b, offset: 0, count: bytes / 4)
        try gpu.synchronize()
        var best = Double.infinity
        for _ in 0..<10 {
            let start = DispatchTime.now().uptimeNanoseconds
            gpu.copy(a, offset: 0, to: b, offset: 0, count: bytes / 4)
            try gpu.synchronize()
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
        }
        return 2 * Double(bytes) / best
    }

    /// Weight bytes one decode step reads: every matrix once (the tied embedding once, as the LM
    /// head), in the backend's bf16.
    public static func weightBytesPerStep(_ weights: Gemma3Weights) -> Int {
        let layers = weights.layers.reduce(0) { total, l in
            total + [l.query, l.key, l.value, l.output, l.gate, l.up, l.down].reduce(0) { $0 + $1.elementCount * 2 }
        }
        return layers + weights.lmHead.elementCount * 2
    }
}

/// Gemma 3 shapes with random bf16 weights, written as a Hugging Face folder (config.json and
/// model.safetensors) that `Engine.load` reads: for GPU checks and timings where no checkpoint (or
/// no PyTorch to make one) is at hand, and for the emulated-GPU tests.
public struct RandomGemma: Sendable {
    public var vocabulary: Int, hidden: Int, intermediate: Int, layers: Int, heads: Int, kvHeads: Int, headDim: Int
    public var slidingWindow: Int, maxPositions: Int

    /// Gemma 3 270M's and 1B's shapes (their config.json).
    public static let shape270M = RandomGemma(
        vocabulary: 262_144, hidden: 640, intermediate: 2048, layers: 18, heads: 4, kvHeads: 1, headDim: 256,
        slidingWindow: 512, maxPositions: 32_768)
    public static let shape1B = RandomGemma(
        vocabulary: 262_144, hidden: 1152, intermediate: 6912, layers: 26, heads: 4, kvHeads: 1, headDim: 256,
        slidingWindow: 512, maxPositions: 32_768)

    /// Three small layers: for trying the checks end to end on the CUDA emulator (the tests' shape).
    public static let shapeTiny = RandomGemma(
        vocabulary: 1024, hidden: 128, intermediate: 256, layers: 3, heads: 4, kvHeads: 2, headDim: 64, slidingWindow: 8,
        maxPositions: 4096)

    public init(
        vocabulary: Int, hidden: Int, intermediate: Int, layers: Int, heads: Int, kvHeads: Int, headDim: Int,
        slidingWindow: Int, maxPositions: Int
    ) {
        self.vocabulary = vocabulary
        self.hidden = hidden
        self.intermediate = intermediate
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.slidingWindow = slidingWindow
        self.maxPositions = maxPositions
    }

    /// Writes `folder`/config.json and `folder`/model.safetensors (every sixth layer global, as Gemma 3).
    public func write(to folder: String, seed: UInt64) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let types = (0..<layers).map { ($0 + 1) % 6 == 0 || layers < 6 && $0 == layers - 1 ? "\"full_attention\"" : "\"sliding_attention\"" }
        let config = """
            {"model_type": "gemma3_text", "vocab_size": \(vocabulary), "hidden_size": \(hidden),
             "intermediate_size": \(intermediate), "num_hidden_layers": \(layers), "num_attention_heads": \(heads),
             "num_key_value_heads": \(kvHeads), "head_dim": \(headDim), "max_position_embeddings": \(maxPositions),
             "sliding_window": \(slidingWindow), "rms_norm_eps": 1e-6, "query_pre_attn_scalar": \(headDim),
             "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "layer_types": [\(types.joined(separator: ", "))],
             "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": true}
            """
        try config.write(toFile: folder + "/config.json", atomically: true, encoding: .utf8)
        var tensors: [(String, [Int])] = [("model.embed_tokens.weight", [vocabulary, hidden]), ("model.norm.weight", [hidden])]
        for i in 0..<layers {
            let p = "model.layers.\(i)."
            tensors += [
                (p + "input_layernorm.weight", [hidden]), (p + "self_attn.q_proj.weight", [heads * headDim, hidden]),
                (p + "self_attn.k_proj.weight", [kvHeads * headDim, hidden]),
                (p + "self_attn.v_proj.weight", [kvHeads * headDim, hidden]), (p + "self_attn.q_norm.weight", [headDim]),
                (p + "self_attn.k_norm.weight", [headDim]), (p + "self_attn.o_proj.weight", [hidden, heads * headDim]),
                (p + "post_attention_layernorm.weight", [hidden]), (p + "pre_feedforward_layernorm.weight", [hidden]),
                (p + "mlp.gate_proj.weight", [intermediate, hidden]), (p + "mlp.up_proj.weight", [intermediate, hidden]),
                (p + "mlp.down_proj.weight", [hidden, intermediate]), (p + "post_feedforward_layernorm.weight", [hidden]),
            ]
        }
        var header: [String] = []
        var offset = 0
        for (name, shape) in tensors {
            let bytes = shape.reduce(1, *) * 2
            header.append("\"\(name)\": {\"dtype\": \"BF16\", \"shape\": \(shape), \"data_offsets\": [\(offset), \(offset + bytes)]}")
            offset += bytes
        }
        var json = Array(("{" + header.joined(separator: ", ") + "}").utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        let path = folder + "/model.safetensors"
        FileManager.default.createFile(atPath: path, contents: nil)
        let file = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? file.close() }
        try file.write(contentsOf: withUnsafeBytes(of: UInt64(json.count).littleEndian) { Data($0) } + Data(json))
        // Streamed a tensor slice at a time: a 1B-shaped model is 2 GB.
        var random = Xoshiro256StarStar(seed: seed)
        for (name, shape) in tensors {
            let scale: Float = shape.count == 1 ? 0.3 : (name.contains("embed") ? 0.5 : 1.7 / Float(shape[1]).squareRoot())
            var remaining = shape.reduce(1, *)
            while remaining > 0 {
                let count = min(remaining, 1 << 20)
                var chunk = [UInt16](repeating: 0, count: count)
                for i in 0..<count { chunk[i] = CUDABackend.bfloat16Bits((random.unit() * 2 - 1) * scale).littleEndian }
                try file.write(contentsOf: chunk.withUnsafeBytes { Data($0) })
                remaining -= count
            }
        }
    }
}

extension Xoshiro256StarStar {
    /// Uniform in [0, 1), 24 bits.
    mutating func unit() -> Float { Float(next() >> 40) / Float(1 << 24) }
}
