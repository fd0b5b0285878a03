import CUDA
import Foundation
import TestSupport
import Testing

@testable import CUDABackend
@testable import Inference
@testable import InferenceServer

/// The CUDA backend end to end on a machine without a GPU: the real NVRTC compiles the real kernels
/// to a CUBIN (the module must load), and Emulator/cuda_emulator.cpp, built here from the same
/// kernel source, stands in for libcuda.so.1 and runs them on the CPU with block and warp barriers
/// as on the GPU. So the kernels' arithmetic and indexing, the backend's launch shapes, argument
/// order and buffer offsets are all checked against the CPU backend and the golden references.
/// What it cannot check (speed, real hardware, cuBLAS) is scripts/gpu-check's, on a GPU.
@Suite(.serialized) struct EmulatedGPUTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    struct Unavailable: Error, CustomStringConvertible { var description: String }

    /// The emulator library, built once per run into a temporary folder.
    static let emulator: Result<String, Unavailable> = {
        do {
            let folder = NSTemporaryDirectory() + "cuda-emulator-" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try GemmaKernels.source.write(toFile: folder + "/kernels.cu", atomically: true, encoding: .utf8)
            try GemmaKernels.names.map { "KERNEL(\($0))\n" }.joined()
                .write(toFile: folder + "/registry.inc", atomically: true, encoding: .utf8)
            let library = folder + "/libcuda.so.1"
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Emulator/cuda_emulator.cpp"
            let compiler = (try? run(["which", "clang++"]))?.status == 0 ? "clang++" : "c++"
            let result = try run([
                compiler, "-std=c++17", "-O2", "-U_FORTIFY_SOURCE", "-shared", "-fPIC", "-I", folder, "-o", library, source,
            ])
            guard result.status == 0 else { return .failure(Unavailable(description: "the emulator did not build:\n\(result.stderr)")) }
            return .success(library)
        } catch {
            return .failure(Unavailable(description: "the emulator did not build: \(error)"))
        }
    }()

    static func environment() throws -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["INFERENCE_LIBCUDA"] = try emulator.get()
        env["INFERENCE_CUBLAS"] = "off"
        return env
    }

    static let cache = KernelCache(directory: NSTemporaryDirectory() + "emulated-gpu-kernels")

    /// The backend on the emulated GPU (cuBLAS off: products go through the kernels under test).
    static let backend: Result<CUDABackend, Unavailable> = {
        do {
            return .success(try CUDABackend(useCUBLAS: false, cache: cache, environment: try environment()))
        } catch {
            return .failure(Unavailable(description: "\(error)"))
        }
    }()

    /// The same with an f32 KV cache (the default is bf16), for comparisons with the CPU at f32 bars.
    static let exactBackend: Result<CUDABackend, Unavailable> = {
        do {
            return .success(try CUDABackend(useCUBLAS: false, cache: cache, kvCache: .float32, environment: try environment()))
        } catch {
            return .failure(Unavailable(description: "\(error)"))
        }
    }()

    @Test func theBackendLoadsTheRealCUBINThroughTheDriverAPI() throws {
        let gpu = try Self.backend.get()
        #expect(gpu.context.device.name == "CUDA emulator (CPU)")
        #expect(KernelCache.isCUBIN(gpu.kernels.cubin))
        #expect(gpu.name.hasPrefix("cuda ("))
        // The emulator is an sm_90 that follows the PTX ISA's mma fragments: the self-check passes.
        #expect(gpu.tensorCoreProblem == nil)
        #expect(gpu.name.hasSuffix(", tensor cores)"))
    }

    /// A GPU newer than NVRTC 12.2 knows (a Blackwell, sm_120): the kernels go as PTX for the newest
    /// architecture it knows, which the driver compiles at load (the emulator takes the PTX and runs
    /// the same kernels); the backend starts and its tensor-core self-check (a product against the
    /// host) passes. Cached like a CUBIN, under a name of its own.
    @Test func aGPUNewerThanNVRTCGetsPTX() throws {
        let setArchitecture = try Self.emulatorSwitch("cudaEmulatorSetArchitecture")
        setArchitecture(120)
        defer { setArchitecture(90) }
        let folder = try TemporaryDirectory()
        let gpu = try CUDABackend(useCUBLAS: false, cache: KernelCache(directory: folder.path), environment: try Self.environment())
        #expect(gpu.context.device.architecture == 120)
        let nvrtc = try NVRTC(environment: try Self.environment())
        guard !nvrtc.supportedArchitectures.contains(120) else { return }  // a newer NVRTC makes a CUBIN
        let newest = try #require(nvrtc.supportedArchitectures.max())
        #expect(gpu.kernels.ptxArchitecture == newest && !gpu.kernels.fromCache)
        #expect(KernelCache.isPTX(gpu.kernels.cubin) && gpu.kernels.path.hasSuffix("-sm_120-compute_\(newest).ptx"))
        #expect(GemmaKernels.names.allSatisfy { KernelCache.module(gpu.kernels.cubin, defines: $0) })
        #expect(gpu.tensorCoreProblem == nil)
        let again = try KernelCache(directory: folder.path).cubin(
            source: GemmaKernels.source, architecture: 120, options: GemmaKernels.options, compiler: nvrtc)
        #expect(again.fromCache && again.cubin == gpu.kernels.cubin && again.ptxArchitecture == newest)
    }

    @Test func everyOperationMatchesTheCPUBackend() throws {
        var check = try GPUCheck(gpu: try Self.backend.get(), seed: UInt64.random(in: 0...UInt64.max))
        let results = try check.operations()
        #expect(results.count >= 25)
        for result in results { #expect(result.passed, "\(result.line)") }
    }

    /// `sample_rows` against `TokenDraw.choose` over many small rows with every mix of cuts, on
    /// logits with many ties (the radix selection's hardest case: equal keys at the cut), and rows
    /// with NaN, -inf and +inf.
    /// 48 rows × 700 logits with every mix of cuts, half of them full of ties, some with penalties
    /// (one with a history too long for the staging area), and rows of NaN, +inf and -inf at the end.
    static func drawCases() -> (rows: Int, columns: Int, logits: [Float], draws: [TokenDraw]) {
        var generator = Xoshiro256StarStar(seed: 77)
        let rows = 48, columns = 700
        var logits: [Float] = []
        var draws: [TokenDraw] = []
        for r in 0..<rows {
            let tied = r % 2 == 0
            logits += (0..<columns).map { _ in
                let v = Float.random(in: -6...6, using: &generator)
                return tied ? (v * 2).rounded() / 2 : v
            }
            draws.append(
                TokenDraw(
                    temperature: [0, 0.5, 1, 1.7][r % 4], topK: [0, 1, 7, 64, 699, 700][r % 6],
                    topP: [1, 0.95, 0.5, 0.05][(r / 4) % 4], minP: [0, 0.01, 0.2][(r / 3) % 3], seed: generator.next()))
            if r % 5 == 1 {
                // Penalties on some rows: a history of up to 40 distinct tokens, some biased (logit_bias;
                // -inf bars a token, as min_tokens does with the end tokens).
                let ids = Set((0..<40).map { _ in Int(generator.next() % UInt64(columns + 5)) }).sorted()
                let biases: [Float] = [0, 0, 2.5, -7.25, 100, -.infinity]
                draws[r].penalties = TokenPenalties(
                    presence: [0, 0.5][r % 2], frequency: 0.25, repetition: [1, 1.3][(r / 5) % 2],
                    entries: ids.map {
                        .init(
                            id: $0, count: Int(generator.next() % 4), seen: generator.next() % 3 != 0,
                            bias: biases[Int(generator.next() % 6)])
                    })
            }
        }
        // A history too long for the staging area (more than 1 MiB of entries): its own upload.
        draws[6].penalties = TokenPenalties(
            presence: 0.4, frequency: 0.2, repetition: 1.2,
            entries: (0..<140_000).map { .init(id: $0, count: $0 % 3, seen: $0 % 2 == 0) })
        for c in 0..<columns where c % 3 == 0 { logits[(rows - 2) * columns + c] = .nan }
        logits[(rows - 3) * columns + 17] = .infinity  // top-p then measures nothing and leaves the cut
        for c in 0..<columns { logits[(rows - 1) * columns + c] = c == 5 ? .nan : -.infinity }
        return (rows, columns, logits, draws)
    }

    @Test func drawsOnTheDeviceMatchTheHostVersion() throws {
        let gpu = try Self.backend.get()
        let (rows, columns, logits, draws) = Self.drawCases()
        let buffer = gpu.makeBuffer(count: logits.count)
        for softcap: Float? in [nil, 2] {
            gpu.write(logits, to: buffer, offset: 0)  // the penalties are applied in place
            let drawn = gpu.sample(buffer, rows: rows, columns: columns, softcap: softcap, draws: draws)
            for r in 0..<rows {
                let wanted = draws[r].choose(Array(logits[r * columns..<(r + 1) * columns]), softcap: softcap)
                #expect(drawn[r] == wanted, "row \(r) (\(draws[r]), softcap \(softcap ?? 0))")
            }
            if softcap == nil { #expect(drawn[rows - 1] == 0) }  // capped, -inf is a finite -2
        }
    }

    /// Draws of rows long enough to be cut in slices (20000 logits: 4 slices, the last shorter),
    /// each slice's top-k kept as candidates and those that can still be drawn gathered: the host's
    /// tokens exactly, with ties across slices, rows mostly -inf, top-k at the largest a candidate
    /// draw takes (256), too many ties to gather, and with top-p and min-p.
    @Test func candidateDrawsAcrossSlicesMatchTheHost() throws {
        let gpu = try Self.backend.get()
        let columns = 20_000
        var generator = Xoshiro256StarStar(seed: 12)
        var logits: [Float] = []
        var draws: [TokenDraw] = []
        func row(_ values: [Float], _ draw: TokenDraw) {
            logits += values
            draws.append(draw)
        }
        let random = { (scale: Float) in (0..<columns).map { _ in Float.random(in: -scale...scale, using: &generator) } }
        row(random(6), TokenDraw(temperature: 1, topK: 256, topP: 1, minP: 0, seed: 1))
        row(random(3), TokenDraw(temperature: 0.7, topK: 40, topP: 0.9, minP: 0, seed: 2))
        row(random(8), TokenDraw(temperature: 1.2, topK: 64, topP: 0.95, minP: 0.05, seed: 3))
        // Values on a coarse grid: many ties at the cut, in every slice.
        row(random(4).map { ($0 * 2).rounded() / 2 }, TokenDraw(temperature: 1, topK: 30, topP: 1, minP: 0, seed: 4))
        // Nearly all -inf: the finite few sit in one slice, fewer than top-k.
        var sparse = [Float](repeating: -.infinity, count: columns)
        for i in 0..<7 { sparse[15_000 + i * 3] = Float(i) * 0.5 }
        row(sparse, TokenDraw(temperature: 0.9, topK: 20, topP: 0.8, minP: 0, seed: 5))
        // 500 ties at the top of each slice: within a slice's 512 places, but more in all than
        // sample_rows gathers past the slices' cuts (1536), so it reads the slices' places instead.
        var tied = random(3)
        for i in stride(from: 0, to: columns, by: 10) { tied[i] = 4 }
        row(tied, TokenDraw(temperature: 1, topK: 200, topP: 0.9, minP: 0, seed: 6))
        // Small cuts across the slices, hot enough that the k-th token is often the one drawn: a cut
        // sample_rows takes from the slices' largest keys that drops it changes the token.
        row(random(1), TokenDraw(temperature: 4, topK: 3, topP: 1, minP: 0, seed: 7))
        row(random(1), TokenDraw(temperature: 4, topK: 8, topP: 1, minP: 0, seed: 8))
        // The row's top 20 all in one slice: more than the 8 keys it lists toward the cut.
        var crowded = random(1)
        for i in 0..<30 { crowded[100 + i] = 2 + Float(i) * 0.001 }
        row(crowded, TokenDraw(temperature: 1, topK: 20, topP: 1, minP: 0, seed: 9))
        // No top-k cut, drawn on the slices: the temperature alone (with min-p, and a top-k of the
        // whole row, which is none), then top-p: a narrower row (a nucleus of about a thousand), a
        // peaked one (a few: the cut from the slices' listed keys), a flat one (too wide: the whole
        // row on one block), and one whose nucleus crowds one slice, past the 256 it lists, at top-p
        // 0.3 (within them) and 0.9 (past them: the whole row).
        row(random(6), TokenDraw(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 10))
        row(random(6), TokenDraw(temperature: 0.7, topK: columns, topP: 1, minP: 0.1, seed: 11))
        row(random(12), TokenDraw(temperature: 0.5, topK: 0, topP: 0.9, minP: 0, seed: 12))
        row(random(20), TokenDraw(temperature: 0.3, topK: 0, topP: 0.9, minP: 0, seed: 20))
        row(random(0.5), TokenDraw(temperature: 1, topK: 0, topP: 0.9, minP: 0, seed: 13))
        row(random(4), TokenDraw(temperature: 1, topK: 0, topP: 0.5, minP: 0.02, seed: 14))
        var crowdedNucleus = random(1)
        for i in 0..<400 { crowdedNucleus[2000 + i] = 9 + Float(i % 97) * 0.01 }
        row(crowdedNucleus, TokenDraw(temperature: 1, topK: 0, topP: 0.3, minP: 0, seed: 15))
        row(crowdedNucleus, TokenDraw(temperature: 1, topK: 0, topP: 0.9, minP: 0, seed: 16))
        // An infinite logit: the one-block draw, as the host's. NaNs count as -inf, on the slices.
        var infinite = random(2)
        infinite[12_345] = .infinity
        row(infinite, TokenDraw(temperature: 1, topK: 0, topP: 0.8, minP: 0, seed: 17))
        var holes = random(5)
        for i in stride(from: 3, to: columns, by: 7) { holes[i] = .nan }
        row(holes, TokenDraw(temperature: 1.3, topK: 0, topP: 1, minP: 0, seed: 18))
        row(holes, TokenDraw(temperature: 1.3, topK: 0, topP: 0.7, minP: 0, seed: 19))
        let rows = draws.count
        let buffer = gpu.makeBuffer(count: logits.count)
        for seedShift: UInt64 in [0, 100, 200, 300, 400, 500] {
            let shifted = draws.map { draw -> TokenDraw in
                var d = draw
                d.seed = draw.seed + seedShift
                return d
            }
            gpu.write(logits, to: buffer, offset: 0)
            let drawn = gpu.sample(buffer, rows: rows, columns: columns, softcap: nil, draws: shifted)
            for r in 0..<rows {
                let wanted = shifted[r].choose(Array(logits[r * columns..<(r + 1) * columns]))
                #expect(drawn[r] == wanted, "row \(r) (\(shifted[r]))")
            }
        }
    }

    /// A queued step's penalized draws after the model's final soft cap (Gemma 3 has none; Gemma 2's
    /// checkpoints do), counting the token each row drew in the step before, still on the device
    /// (`pending`, the rows permuted): each row's token is the host's choice with that token accepted,
    /// and the logprobs queued with them are those of the same draws made at once.
    @Test func cappedQueuedDrawsCountThePendingTokens() throws {
        let gpu = try Self.backend.get()
        let columns = 4096, rows = 3
        var generator = Xoshiro256StarStar(seed: 97)
        // Step 1: a plain argmax whose row i chooses 40 + 7i.
        var first = (0..<rows * columns).map { _ in Float.random(in: -1...1, using: &generator) }
        for i in 0..<rows { first[i * columns + 40 + 7 * i] = 5 }
        // Step 2: those three tokens, and 900, lead every row, each row's pending token (below) far
        // first, but near enough after a cap of 2 that a penalty on it moves a greedy row's choice;
        // greedy rows and a sampled one, and every kind of penalty.
        let pending = [2, 0, 1]  // row r drew row pending[r]'s token of step 1
        var second = (0..<rows * columns).map { _ in Float.random(in: -1...1, using: &generator) }
        for r in 0..<rows {
            let own = 40 + 7 * pending[r]
            let order = [own] + [40, 47, 54, 900].filter { $0 != own }
            for (j, token) in order.enumerated() { second[r * columns + token] = j == 0 ? 6 : 1.85 - Float(j) * 0.05 }
        }
        let repeated = TokenPenalties(presence: 0, frequency: 0, repetition: 1.5, entries: [.init(id: 900, count: 1, seen: true)])
        let counted = TokenPenalties(presence: 0.4, frequency: 0.3, repetition: 1, entries: [.init(id: 900, count: 1, seen: false, bias: 0.1)])
        var draws = [
            TokenDraw(temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0),
            TokenDraw(temperature: 0.3, topK: 8, topP: 0.9, minP: 0, seed: 31),
            TokenDraw(temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0),
        ]
        draws[0].penalties = repeated
        draws[1].penalties = counted
        draws[2].penalties = counted
        let buffer = gpu.makeBuffer(count: rows * columns)
        gpu.beginPipelinedStep(place: 0)
        gpu.write(first, to: buffer, offset: 0)
        let none = [Int?](repeating: nil, count: rows)
        gpu.queueDraws(
            buffer, rows: rows, columns: columns, softcap: nil, draws: [TokenDraw](repeating: .argmax, count: rows),
            logprobs: none, pending: nil, place: 0)
        gpu.beginPipelinedStep(place: 1)
        gpu.write(second, to: buffer, offset: 0)
        let scores: [Int?] = [nil, 3, 5]  // logprobs too, of the logits before the penalties
        gpu.queueDraws(buffer, rows: rows, columns: columns, softcap: 2, draws: draws, logprobs: scores, pending: pending, place: 1)
        let drew = gpu.queuedTokens(rows: rows, place: 0).map(\.id)
        let queued = gpu.queuedTokens(rows: rows, place: 1)
        let chosen = queued.map(\.id)
        gpu.beginPipelinedStep(place: nil)
        #expect(drew == [40, 47, 54])
        // The same draws at once, their penalties counting the tokens on the host: the same tokens and
        // logprobs, bit for bit.
        gpu.write(second, to: buffer, offset: 0)
        let alone = gpu.sample(
            buffer, rows: rows, columns: columns, softcap: 2, draws: draws.indices.map { draws[$0].accepting(drew[pending[$0]]) },
            logprobs: scores)
        #expect(chosen == alone.map(\.id))
        #expect(queued.map(\.logprob.bitPattern) == alone.map(\.logprob.bitPattern))
        #expect(queued.map(\.top) == alone.map(\.top))
        #expect(queued[0].logprob.isNaN && queued[0].top.isEmpty && queued[1].top.count == 3 && queued[2].top.count == 5)
        for r in 0..<rows {
            let token = drew[pending[r]]
            let row = Array(second[r * columns..<(r + 1) * columns])
            let wanted = draws[r].accepting(token).choose(row, softcap: 2)
            #expect(chosen[r] == wanted, "row \(r) after token \(token)")
            // The pending token and the cap matter: without either, a greedy row chooses otherwise.
            if r != 1 {
                #expect(draws[r].choose(row, softcap: 2) != wanted, "row \(r): the pending token must move the choice")
                #expect(draws[r].accepting(token).choose(row) != wanted, "row \(r): the cap must move the choice")
            }
        }
    }

    /// Logprobs beside a draw on the device: the drawn token's and the top ones', from the logits
    /// before the penalties the same step applies, equal to what the host reports (`Logprobs.token`)
    /// within f32 rounding, with ties ordered by id as on the host.
    @Test func logprobsOnTheDeviceMatchTheHost() throws {
        let gpu = try Self.backend.get()
        let (rows, columns, logits, draws) = Self.drawCases()
        let wanted: [Int?] = (0..<rows).map { [nil, 0, 1, 5, 20, 3][$0 % 6] }
        let buffer = gpu.makeBuffer(count: logits.count)
        for softcap: Float? in [nil, 2] {
            gpu.write(logits, to: buffer, offset: 0)
            let drawn = gpu.sample(buffer, rows: rows, columns: columns, softcap: softcap, draws: draws, logprobs: wanted)
            for r in 0..<rows - 3 {  // the NaN and infinite rows have no meaningful logprobs
                var row = Array(logits[r * columns..<(r + 1) * columns])
                let id = draws[r].choose(row, softcap: softcap)
                #expect(drawn[r].id == id, "row \(r)")
                guard let top = wanted[r] else {
                    #expect(drawn[r].logprob.isNaN && drawn[r].top.isEmpty, "row \(r)")
                    continue
                }
                if let cap = softcap { row = row.map { Foundation.tanh($0 / cap) * cap } }
                let host = Logprobs.token(id, of: row, top: top)
                #expect(abs(drawn[r].logprob - host.logprob) < 1e-4, "row \(r): \(drawn[r].logprob) vs \(host.logprob)")
                #expect(drawn[r].top.map(\.id) == host.top.map(\.id), "row \(r), softcap \(softcap ?? 0)")
                #expect(drawn[r].rank == host.rank, "row \(r): rank \(drawn[r].rank ?? -1) vs \(host.rank ?? -1)")
                for (a, b) in zip(drawn[r].top, host.top) {
                    #expect(abs(a.logprob - b.logprob) < 1e-4, "row \(r): \(a) vs \(b)")
                }
            }
        }
        // More alternatives than the kernel reports: the logits of that step come to the host.
        gpu.write(logits, to: buffer, offset: 0)
        let many = gpu.sample(buffer, rows: 2, columns: columns, softcap: nil, draws: Array(draws[0..<2]), logprobs: [21, nil])
        let first = Array(logits[0..<columns])
        #expect(many[0] == Logprobs.token(draws[0].choose(first, softcap: nil), of: first, top: 21))
        #expect(many[1].id == draws[1].choose(Array(logits[columns..<2 * columns]), softcap: nil) && many[1].top.isEmpty)
    }

    /// A top-p nucleus too wide to gather (about 1,700 tokens spread over 8 slices, each of whose
    /// 256 candidates holds all of its share): the draw reads the slices' places with the row's mass,
    /// and gives the host's token.
    @Test func wideNucleusDrawsMatchTheHost() throws {
        let gpu = try Self.backend.get()
        let columns = 32_768  // 8 slices
        #expect(CUDABackend.logitSlices(columns) == 8)
        var generator = Xoshiro256StarStar(seed: 41)
        var logits = (0..<columns).map { _ in Float.random(in: -1...1, using: &generator) }
        for i in 0..<2_000 { logits[i * 16 + 3] = 2 + Float.random(in: -0.5...0.5, using: &generator) }
        let buffer = gpu.makeBuffer(count: columns)
        for seed: UInt64 in 1...8 {
            let draw = TokenDraw(temperature: 1, topK: 0, topP: 0.25, minP: 0, seed: seed)
            gpu.write(logits, to: buffer, offset: 0)
            let drawn = gpu.sample(buffer, rows: 1, columns: columns, softcap: nil, draws: [draw])
            #expect(drawn == [draw.choose(logits)], "seed \(seed)")
        }
    }

    /// Logprobs of rows cut into several slices (logprob_slices, then logprob_merge): ids and ranks
    /// as the host's, logprobs within f32 rounding, with ties that span slices ordered by id, a
    /// slice of only -inf, and the top list drawn from every slice.
    @Test func logprobsAcrossSlicesMatchTheHost() throws {
        let gpu = try Self.backend.get()
        let columns = 20_000  // 4 slices
        #expect(CUDABackend.logitSlices(columns) == 4)
        var generator = Xoshiro256StarStar(seed: 31)
        let random = { (scale: Float) in (0..<columns).map { _ in Float.random(in: -scale...scale, using: &generator) } }
        var rows: [[Float]] = [random(5), random(3).map { ($0 * 2).rounded() / 2 }]
        var quiet = random(4)
        for i in 0..<5_000 { quiet[i] = -.infinity }  // the first slice
        rows.append(quiet)
        var spread = random(1)
        for (k, i) in [3, 5_100, 10_002, 19_999, 7, 15_000].enumerated() { spread[i] = 6 - Float(k % 3) }
        rows.append(spread)
        // Fewer finite values than the top list: the rest are -inf, reported by the lowest ids.
        var sparse = [Float](repeating: -.infinity, count: columns)
        for i in 0..<7 { sparse[12_000 + i * 997] = Float(i) * 0.5 }
        rows.append(sparse)
        let tokens = [17, 4_999, 2_500, 10_002, 12_997]
        let buffer = gpu.makeBuffer(count: rows.count * columns)
        gpu.write(rows.flatMap { $0 }, to: buffer, offset: 0)
        for top in [0, 1, 5, 20] {
            let scored = gpu.logprobs(buffer, firstRow: 0, rows: rows.count, columns: columns, softcap: nil, tokens: tokens, top: top)
            for (r, row) in rows.enumerated() {
                let host = Logprobs.token(tokens[r], of: row, top: top)
                let same = { (a: Float, b: Float) in a == b || abs(a - b) < 1e-4 }
                #expect(same(scored[r].logprob, host.logprob), "row \(r): \(scored[r].logprob) vs \(host.logprob)")
                #expect(scored[r].rank == host.rank, "row \(r), top \(top)")
                #expect(scored[r].top.map(\.id) == host.top.map(\.id), "row \(r), top \(top)")
                for (a, b) in zip(scored[r].top, host.top) { #expect(same(a.logprob, b.logprob), "row \(r): \(a) vs \(b)") }
            }
        }
    }

    // MARK: the real Gemma 3 270M

    static var modelFolder: String { root + "/models/gemma-3-270m" }

    static func realModel() throws -> (cpu: Engine, gpu: Gemma3Model<CUDABackend>) {
        guard FileManager.default.fileExists(atPath: modelFolder + "/model.safetensors") else {
            throw Unavailable(description: "no weights at \(modelFolder): scripts/test fetches them first")
        }
        let engine = try Engine.load(path: modelFolder, exactActivations: true)
        return (engine, try Gemma3Model(config: engine.config, weights: engine.weights, backend: try backend.get()))
    }

    /// shared/golden's rule at its f32 bar: the bf16 checkpoint goes to the device unchanged and the
    /// activations stay f32, so the GPU path must meet what the CPU path meets. One case, two steps:
    /// every launch is emulated, and the 262144-row LM head alone is 8 million emulated threads.
    @Test func theRealModelMeetsTheGoldenReference() throws {
        let (_, model) = try Self.realModel()
        let file = Self.root + "/Tests/InferenceTests/Fixtures/gemma-3-270m-transformers.json"
        var golden = try #require(try GPUCheck.goldenCases(file: file).first { $0.name == "capital" })
        golden.steps = Array(golden.steps.prefix(2))
        let result = try GPUCheck.golden(model, golden, margin: 0.05, tolerance: 0.02)
        #expect(result.passed && result.steps == 2, "\(result.steps) steps, largest difference \(result.difference)")
    }

    // MARK: a small random Gemma 3

    /// A small Gemma 3 with random bf16 weights in a safetensors folder: two sliding layers with an
    /// 8-token window and a global one, grouped-query heads (4 over 2) of dimension 64, so prompts of
    /// a few dozen tokens wrap the rings and cross prefill chunks.
    /// A model of `shape`, its random weights from `seed`, written into `directory` and loaded with
    /// f32 activations.
    static func randomEngine(_ shape: RandomGemma, in directory: TemporaryDirectory, seed: UInt64) throws -> Engine {
        let path = directory.path + "/random-\(seed)"
        try shape.write(to: path, seed: seed)
        return try Engine.load(path: path, exactActivations: true)
    }

    static func smallModel(in directory: TemporaryDirectory, seed: UInt64) throws -> String {
        let shape = RandomGemma(
            vocabulary: 1024, hidden: 128, intermediate: 256, layers: 3, heads: 4, kvHeads: 2, headDim: 64, slidingWindow: 8,
            maxPositions: 256)
        try shape.write(to: directory.path + "/small", seed: seed)
        return directory.path + "/small"
    }

    /// Continuous batching on the device against the CPU: prompts longer than the window and the
    /// prefill chunk, prefilled one by one, then decoded together step by step; every step's logits
    /// agree, and the greedy tokens chosen on the device are the argmax of those logits.
    /// Every decode step's logits for `prompts` decoded together, greedily, after their prefills.
    static func decodeLogits(
        _ model: Gemma3Model<CUDABackend>, prompts: [[Int]], contextLength: Int, prefillChunk: Int, steps: Int
    ) throws -> [[Float]] {
        let runner = BatchRunner(model: model, maximumSequences: prompts.count, prefillChunk: prefillChunk)
        let slots = prompts.map { _ in runner.makeSlot(contextLength: contextLength) }
        var next = try zip(slots, prompts).map { Sampler.argmax(try runner.prefill($0, $1)) }
        var logits: [[Float]] = []
        for _ in 0..<steps {
            let step = try runner.decode(slots, tokens: next)
            logits += step
            next = step.map(Sampler.argmax)
        }
        return logits
    }

    /// A backend of its own that launches kernel by kernel (`INFERENCE_CUDA_GRAPHS=off`): the
    /// reference a graphed backend's replays must equal bit for bit.
    static func backendWithoutGraphs() throws -> CUDABackend {
        var settings = try Self.environment()
        settings["INFERENCE_CUDA_GRAPHS"] = "off"
        return try CUDABackend(useCUBLAS: false, cache: cache, environment: settings)
    }

    /// Decode steps of a fixed batch are recorded, captured as a CUDA graph on their second
    /// sighting and replayed from then on; the replays give bit for bit the logits of launching each
    /// kernel directly (graphs off), including across a KV cache growth and a new attention split.
    @Test func repeatedStepsReplayACapturedGraph() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 91), exactActivations: true)
        let direct = try Self.backendWithoutGraphs()
        #expect(direct.context.graphStatistics.disabled == "turned off")
        let graphed = try Self.backend.get()
        let before = graphed.context.graphStatistics
        #expect(before.disabled == nil)
        // The emulator says sm_90 and CUDA 12.4: recorded steps launch dependently (cuLaunchKernelEx,
        // whose config the emulator reads with cuda.h's layout), launches one by one do not.
        #expect(graphed.context.dependentLaunchProblem == nil && graphed.context.dependentLaunchEnabled)
        let dependentLaunches = try Self.emulatorCounter("cudaEmulatorDependentLaunches")
        let dependentBefore = dependentLaunches()
        var results: [[[Float]]] = []
        for backend in [graphed, direct] {
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: backend)
            // Contexts cross 256 keys (a second attention share) during the steps.
            results.append(
                try Self.decodeLogits(
                    model, prompts: [(0..<250).map { 3 + $0 % 900 }, Array(10...20)], contextLength: 256, prefillChunk: 64,
                    steps: 6))
        }
        #expect(results[0] == results[1])
        #expect(dependentLaunches() > dependentBefore + 10)
        #expect(graphed.context.dependentLaunchProblem == nil, "still on after the steps")
        let after = graphed.context.graphStatistics
        #expect(after.captured > before.captured)
        #expect(after.replayed >= before.replayed + 2)
        #expect(direct.context.graphStatistics.replayed == 0)
    }

    /// Decode steps that draw on the device with logprobs (one request with penalties, whose rows are
    /// copied before them) are captured and replayed like the rest: the same tokens and numbers,
    /// bit for bit, as launching kernel by kernel; and the scores of a prompt (the logprob kernels straight
    /// over the logits, from a first row past the drawn one) equal the host's.
    @Test func drawsWithLogprobsReplayLikeDirectLaunches() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 95), exactActivations: true)
        let direct = try Self.backendWithoutGraphs()
        let graphed = try Self.backend.get()
        let before = graphed.context.graphStatistics
        var results: [[GeneratedToken]] = []
        for backend in [graphed, direct] {
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: backend)
            let runner = BatchRunner(model: model, maximumSequences: 2, prefillChunk: 16)
            let slots = [runner.makeSlot(contextLength: 64), runner.makeSlot(contextLength: 64)]
            var seeds = Xoshiro256StarStar(seed: 17)
            var history = [Array(5...12), Array(40...49)]
            var tokens: [GeneratedToken] = []
            var next = history
            for _ in 0..<8 {
                let work = (0..<2).map { i in
                    var item = BatchRunner<CUDABackend>.Work(slot: slots[i], tokens: next[i])
                    item.draw = TokenDraw(temperature: 0.9, topK: 20, topP: 0.9, minP: 0, seed: seeds.next())
                    if i == 1 {
                        item.draw!.penalties = TokenPenalties(
                            presence: 0.5, frequency: 0.5, repetition: 1.3,
                            entries: Set(history[1]).sorted().map { id in .init(id: id, count: 1, seen: true) })
                    }
                    item.logprobs = [3, 0][i]
                    return item
                }
                let drawn = try runner.outputs(work).map { output -> GeneratedToken in
                    guard case .token(let token) = output else { preconditionFailure("a drawn token was asked for") }
                    return token
                }
                #expect(drawn[0].top.count == 3 && drawn[1].top.isEmpty && drawn.allSatisfy { $0.logprob <= 0 })
                tokens += drawn
                next = drawn.map { [$0.id] }
                for i in 0..<2 { history[i].append(drawn[i].id) }
            }
            results.append(tokens)
        }
        #expect(results[0] == results[1])
        #expect(graphed.context.graphStatistics.replayed >= before.replayed + 2)
        // Prompt scores from row 1 of the logits on: the device's numbers against the host's.
        let columns = engine.config.vocabularySize
        var generator = Xoshiro256StarStar(seed: 3)
        let logits = (0..<4 * columns).map { _ in Float.random(in: -8...8, using: &generator) }
        let buffer = graphed.makeBuffer(count: logits.count)
        graphed.write(logits, to: buffer, offset: 0)
        let targets = [7, columns - 1, 0]
        let device = graphed.logprobs(buffer, firstRow: 1, rows: 3, columns: columns, softcap: 5, tokens: targets, top: 20)
        let host = graphed.hostLogprobs(buffer, firstRow: 1, rows: 3, columns: columns, softcap: 5, tokens: targets, top: 20)
        #expect(device.map(\.id) == targets && device.map { $0.top.map(\.id) } == host.map { $0.top.map(\.id) })
        #expect(device.map(\.rank) == host.map(\.rank) && host.allSatisfy { ($0.rank ?? 0) >= 1 })
        for (a, b) in zip(device, host) {
            #expect(abs(a.logprob - b.logprob) < 1e-4)
            for (x, y) in zip(a.top, b.top) { #expect(abs(x.logprob - y.logprob) < 1e-4) }
        }
        // A row shorter than the alternatives asked for gives what it has; a token outside it, NaN.
        let short = graphed.makeBuffer(count: 2 * 6)
        graphed.write([1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1], to: short, offset: 0)
        let few = graphed.logprobs(short, firstRow: 0, rows: 2, columns: 6, softcap: nil, tokens: [2, 9], top: 8)
        #expect(few[0].top.map(\.id) == [5, 4, 3, 2, 1, 0] && few[1].top.map(\.id) == [0, 1, 2, 3, 4, 5])
        #expect(abs(few[0].logprob - few[0].top[3].logprob) < 1e-6 && few[1].logprob.isNaN)
        // Token 2 of [1, 2, 3, 4, 5, 6] (value 3) is outranked by three: rank 3 + itself = 4; an
        // outside token ranks 0.
        #expect(few[0].rank == 4 && few[1].rank == 0)
    }

    /// A new one-sequence runner on `gpu` over `engine`'s weights (as the backend's settings are now):
    /// `prompt` prefilled, then `decodedLogits` of `steps` greedy steps; the runner, slot and next
    /// token, for more.
    static func decodedLogits(_ engine: Engine, on gpu: CUDABackend, prompt: [Int], steps: Int) throws -> (
        logits: [[Float]], runner: BatchRunner<CUDABackend>, slot: BatchRunner<CUDABackend>.Slot, next: [Int]
    ) {
        let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
        let runner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 16)
        let slot = runner.makeSlot(contextLength: 64)
        var next = [Sampler.argmax(try runner.prefill(slot, prompt))]
        let logits = try decodedLogits(runner, slot, next: &next, steps: steps)
        return (logits, runner, slot, next)
    }

    /// `decodedLogits` of `model` on the CPU (the reference), over a runner of its own.
    static func decodedLogits(_ model: Gemma3Model<CPUBackend>, prompt: [Int], steps: Int) throws -> [[Float]] {
        let runner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 16)
        let slot = runner.makeSlot(contextLength: 64)
        var next = [Sampler.argmax(try runner.prefill(slot, prompt))]
        var logits: [[Float]] = []
        for _ in 0..<steps {
            let rows = try runner.decode([slot], tokens: next)
            logits += rows
            next = rows.map(Sampler.argmax)
        }
        return logits
    }

    /// The logits of `steps` decode steps of one sequence, each fed the last one's argmax (`next`,
    /// left as the last step's).
    static func decodedLogits(
        _ runner: BatchRunner<CUDABackend>, _ slot: BatchRunner<CUDABackend>.Slot, next: inout [Int], steps: Int
    ) throws -> [[Float]] {
        var logits: [[Float]] = []
        for _ in 0..<steps {
            let rows = try runner.decode([slot], tokens: next)
            logits += rows
            next = rows.map(Sampler.argmax)
        }
        return logits
    }

    /// `steps` decode steps' logits of `engine` with `setting` off, on, and on with the blocks and
    /// threads run in reverse order, each within the float32 bar of the CPU's; `check` then sees
    /// whether it was on and the profile of one step more. The setting is left off.
    static func turnedRuns(
        _ engine: Engine, on gpu: CUDABackend, _ setting: ReferenceWritableKeyPath<CUDABackend, Bool>, prompt: [Int], steps: Int,
        check: (Bool, CUDAContext.StepProfile) throws -> Void
    ) throws -> [[[Float]]] {
        let reverse = try emulatorSwitch("cudaEmulatorReverseThreads")
        defer {
            gpu[keyPath: setting] = false
            reverse(0)
        }
        let cpu = try decodedLogits(engine.model, prompt: prompt, steps: steps)
        var runs: [[[Float]]] = []
        for (on, reversed) in [(false, false), (true, false), (true, true)] {
            gpu[keyPath: setting] = on
            reverse(reversed ? 1 : 0)
            let (logits, runner, slot, next) = try decodedLogits(engine, on: gpu, prompt: prompt, steps: steps)
            for step in 0..<steps {
                let error = GPUCheck.relativeError(logits[step], cpu[step])
                #expect(error < 1e-4, "on \(on), reversed \(reversed), step \(step): \(error)")
            }
            try check(on, try #require(try gpu.context.profileStep { _ = try runner.decode([slot], tokens: next) }))
            runs.append(logits)
        }
        return runs
    }

    /// One of the emulator's switches, found in the library the driver loaded (not an environment
    /// variable: other suites run beside this one). The library stays loaded with the driver.
    static func emulatorSwitch(_ name: String) throws -> @convention(c) (Int32) -> Void {
        let library = dlopen(try emulator.get(), RTLD_NOW)
        guard let symbol = dlsym(library, name) else { throw Unavailable(description: "the emulator has no \(name)") }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Void).self)
    }

    /// One of the emulator's counters (see `emulatorSwitch`).
    static func emulatorCounter(_ name: String) throws -> @convention(c) () -> UInt {
        let library = dlopen(try emulator.get(), RTLD_NOW)
        guard let symbol = dlsym(library, name) else { throw Unavailable(description: "the emulator has no \(name)") }
        return unsafeBitCast(symbol, to: (@convention(c) () -> UInt).self)
    }

    /// The kernels with each block's threads run highest index first between barriers, and the
    /// blocks last first: a read of what another thread wrote without a barrier between (a missing
    /// __syncthreads), or of what another block of the launch writes (the KV rows a decode step's
    /// attention stores), gets another value in one of the two orders, so the checks that pass in
    /// order must pass reversed too.
    @Test func everyOperationMatchesWithTheThreadsReversed() throws {
        let reverse = try Self.emulatorSwitch("cudaEmulatorReverseThreads")
        reverse(1)
        defer { reverse(0) }
        var check = try GPUCheck(gpu: try Self.backend.get(), seed: 2024)
        for result in try check.operations() { #expect(result.passed, "\(result.line)") }
        let gpu = try Self.backend.get()
        let (rows, columns, logits, draws) = Self.drawCases()
        let buffer = gpu.makeBuffer(count: logits.count)
        gpu.write(logits, to: buffer, offset: 0)
        let wanted: [Int?] = (0..<rows).map { $0 % 2 == 0 ? 20 : nil }
        let drawn = gpu.sample(buffer, rows: rows, columns: columns, softcap: nil, draws: draws, logprobs: wanted)
        for r in 0..<rows - 3 {
            let row = Array(logits[r * columns..<(r + 1) * columns])
            #expect(drawn[r].id == draws[r].choose(row, softcap: nil), "row \(r)")
            if wanted[r] != nil { #expect(drawn[r].top.map(\.id) == Logprobs.top(row, 20).map(\.id), "row \(r)") }
        }
    }

    /// A driver that refuses to capture: the backend turns graphs off, says why, and the steps it
    /// had recorded still run once, with the logits of a backend that never tried.
    @Test func aRefusedCaptureFallsBackToDirectLaunches() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 93), exactActivations: true)
        var results: [[[Float]]] = []
        var statistics: [CUDAContext.GraphStatistics] = []
        for refuse in [true, false] {
            var environment = try Self.environment()
            if !refuse { environment["INFERENCE_CUDA_GRAPHS"] = "off" }
            let refuseCapture = try Self.emulatorSwitch("cudaEmulatorRefuseCapture")
            refuseCapture(refuse ? 1 : 0)
            defer { refuseCapture(0) }
            let backend = try CUDABackend(useCUBLAS: false, cache: Self.cache, environment: environment)
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: backend)
            results.append(
                try Self.decodeLogits(model, prompts: [Array(5...17), Array(30...35)], contextLength: 64, prefillChunk: 8, steps: 4))
            statistics.append(backend.context.graphStatistics)
        }
        #expect(results[0] == results[1])
        #expect(statistics[0].captured == 0 && statistics[0].replayed == 0)
        #expect(statistics[0].disabled?.contains("cuStreamBeginCapture") == true, "\(statistics[0])")
        #expect(statistics[1].disabled == "turned off")
    }

    @Test func batchedDecodeMatchesTheCPU() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 77), exactActivations: true)
        let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: try Self.exactBackend.get())
        let gpuRunner = BatchRunner(model: model, maximumSequences: 3, prefillChunk: 16)
        let cpuRunner = BatchRunner(model: engine.model, maximumSequences: 3, prefillChunk: 16)
        let prompts = [Array(1...5), (0..<37).map { 2 + ($0 * 37) % 1000 }, (0..<20).map { 900 - $0 * 13 }]
        let gpuSlots = prompts.map { _ in gpuRunner.makeSlot(contextLength: 128) }
        let cpuSlots = prompts.map { _ in cpuRunner.makeSlot(contextLength: 128) }
        var next: [Int] = []
        for (i, prompt) in prompts.enumerated() {
            let g = try gpuRunner.prefill(gpuSlots[i], prompt)
            let c = try cpuRunner.prefill(cpuSlots[i], prompt)
            #expect(GPUCheck.relativeError(g, c) < 1e-4, "prefill \(i)")
            next.append(Sampler.argmax(c))
        }
        let greedySlots = prompts.map { _ in gpuRunner.makeSlot(contextLength: 128) }
        for (i, prompt) in prompts.enumerated() { _ = try gpuRunner.prefill(greedySlots[i], prompt) }
        for step in 0..<12 {
            let c = try cpuRunner.decode(cpuSlots, tokens: next)
            let g = try gpuRunner.decode(gpuSlots, tokens: next)
            for (row, (a, b)) in zip(g, c).enumerated() {
                #expect(GPUCheck.relativeError(a, b) < 1e-4, "step \(step), sequence \(row)")
            }
            let chosen = try gpuRunner.decodeGreedy(greedySlots, tokens: next)
            #expect(chosen == g.map(Sampler.argmax), "step \(step)")
            next = c.map(Sampler.argmax)
        }
        // The default bf16 cache: keys and values rounded to 8 bits of mantissa, logits within 1%.
        let half = BatchRunner(
            model: try Gemma3Model(config: engine.config, weights: engine.weights, backend: try Self.backend.get()),
            maximumSequences: 3, prefillChunk: 16)
        #expect(try Self.backend.get().cacheElementBytes == 2)
        for prompt in prompts {
            let g = try half.prefill(half.makeSlot(contextLength: 128), prompt)
            let c = try cpuRunner.prefill(cpuRunner.makeSlot(contextLength: 128), prompt)
            let error = GPUCheck.relativeError(g, c)
            #expect(error > 0 && error < 1e-2, "bf16 cache: \(error)")
        }
    }

    /// Pipelined greedy steps (the next step queued with its tokens still on the device before this
    /// one is read back) choose the tokens that steps one at a time choose, and leave the caches as
    /// they do, bit for bit: through steps of every sequence, of some (others stopped: the queued
    /// step's rows are reused), a prefill between them (the queued step is dropped), a slot reset
    /// and refilled, rows in another order, and to the end of a context, where the next step must
    /// fail as it does one step at a time.
    @Test func pipelinedGreedyStepsMatchStepsOneAtATime() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 80), exactActivations: true)
        // A backend of its own: tests running beside this one would share another's staging area.
        let gpu = try CUDABackend(useCUBLAS: false, cache: Self.cache, kvCache: .float32, environment: try Self.environment())
        #expect(gpu.pipelinesSteps)
        let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
        let prompts = [Array(1...5), (0..<23).map { 2 + ($0 * 37) % 1000 }, (0..<9).map { 900 - $0 * 13 }]
        var runs: [[Int]] = []
        var logits: [[[Float]]] = []
        var drawn: [Int] = []
        for pipelined in [false, true] {
            let runner = BatchRunner(model: model, maximumSequences: 3, prefillChunk: 16)
            runner.pipelining = pipelined
            let before = gpu.drawnEmbeds
            let waitsBefore = gpu.context.stagingWaits
            defer {
                // One runner's pipeline never waits for the GPU to stage (the other runner's once).
                #expect(gpu.context.stagingWaits == waitsBefore + (pipelined ? 1 : 0))
            }
            let slots = prompts.map { _ in runner.makeSlot(contextLength: 40) }
            var next = try zip(slots, prompts).map { Sampler.argmax(try runner.prefill($0, $1)) }
            var tokens: [Int] = []
            func steps(_ count: Int, _ rows: [Int]) throws {
                for _ in 0..<count {
                    let chosen = try runner.decodeGreedy(rows.map { slots[$0] }, tokens: rows.map { next[$0] })
                    for (row, token) in zip(rows, chosen) { next[row] = token }
                    tokens += chosen
                }
            }
            try steps(4, [0, 1, 2])
            try steps(3, [0, 2])  // sequence 1 stopped: the queued step's rows for 0 and 2
            slots[1].reset()
            next[1] = Sampler.argmax(try runner.prefill(slots[1], [7, 8, 9]))  // drops the queued step
            try steps(2, [2, 1, 0])
            try steps(2, [1])
            // Sequence 1 (3 + 4 tokens) runs on alone to its context's end (40): a last step, then none.
            try steps(40 - slots[1].tokenCount, [1])
            #expect(slots[1].tokenCount == 40)
            #expect(throws: InferenceError.self) { try runner.decodeGreedy([slots[1]], tokens: [next[1]]) }
            try steps(1, [0, 2])
            // Another runner on the same backend while this one has a step queued (its readback not
            // waited for): its prefill must wait for the GPU before reusing the staging area, once.
            let waits = gpu.context.stagingWaits
            let other = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 16)
            _ = try other.prefill(other.makeSlot(contextLength: 40), [3, 4, 5])
            #expect(gpu.context.stagingWaits == waits + (pipelined ? 1 : 0))
            try steps(1, [0, 2])
            runs.append(tokens)
            logits.append(try runner.decode([slots[0], slots[2]], tokens: [next[0], next[2]]))
            drawn.append(gpu.drawnEmbeds - before)
        }
        #expect(runs[0] == runs[1], "pipelined greedy tokens differ from one step at a time")
        let sameLogits = logits[0] == logits[1]  // (not printed in full)
        #expect(sameLogits, "the caches after pipelined steps differ")
        #expect(drawn[0] == 0 && drawn[1] > 30, "steps that took their tokens on the device: \(drawn)")
    }

    /// What a dropped queued step leaves: its keys and values at one position past the sequence,
    /// which a reused prefix must count (window 8, prefill chunk 4: rings of 11; a sequence of 11
    /// tokens with a step queued at 11 has overwritten the oldest key a query at 5 reads), and two
    /// runners stepping in turn on one backend, each embedding its own ids. Pipelined and not:
    /// the same logits and tokens.
    @Test func pipelinedStepsKeepPrefixReuseAndRunnersApart() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 81), exactActivations: true)
        let gpu = try CUDABackend(useCUBLAS: false, cache: Self.cache, kvCache: .float32, environment: try Self.environment())
        let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
        var reused: [[Float]] = [], turns: [[Int]] = []
        for pipelined in [false, true] {
            let runner = BatchRunner(model: model, maximumSequences: 2, prefillChunk: 4)
            runner.pipelining = pipelined
            let slot = runner.makeSlot(contextLength: 64)
            var next = [Sampler.argmax(try runner.prefill(slot, [11, 12, 13, 14, 15]))]
            while slot.tokenCount < 11 { next = try runner.decodeGreedy([slot], tokens: next) }
            // The scheduler's reuse of a freed slot for a prompt sharing its first 5 tokens.
            let prompt = Array(slot.tokens.prefix(5)) + [21, 22, 23]
            let shared = slot.reusablePrefix(of: prompt)
            if shared > 0 { slot.keep(prefix: shared) } else { slot.reset() }
            reused.append(try runner.prefill(slot, Array(prompt[shared...])))

            let other = BatchRunner(model: model, maximumSequences: 2, prefillChunk: 4)
            other.pipelining = pipelined
            let slots = [runner.makeSlot(contextLength: 64), other.makeSlot(contextLength: 64)]
            var tokens = [Sampler.argmax(try runner.prefill(slots[0], [5, 6, 7])), Sampler.argmax(try other.prefill(slots[1], [8, 9]))]
            var chosen: [Int] = []
            for _ in 0..<6 {
                tokens[0] = try runner.decodeGreedy([slots[0]], tokens: [tokens[0]])[0]
                tokens[1] = try other.decodeGreedy([slots[1]], tokens: [tokens[1]])[0]
                chosen += tokens
            }
            turns.append(chosen)
        }
        let fresh = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 4)
        let whole = try fresh.prefill(fresh.makeSlot(contextLength: 64), [11, 12, 13, 14, 15, 21, 22, 23])
        #expect(GPUCheck.relativeError(reused[0], whole) < 1e-5, "prefix reuse one step at a time")
        #expect(GPUCheck.relativeError(reused[1], whole) < 1e-5, "prefix reuse after a dropped queued step")
        #expect(turns[0] == turns[1], "two runners in turn")
    }

    /// A small model on a backend of its own (tests running beside one share its staging area
    /// otherwise), with an f32 cache, and three prompts: what the pipelined draws' tests run.
    static func pipelineModel(in directory: TemporaryDirectory, seed: UInt64) throws -> (Gemma3Model<CUDABackend>, CUDABackend) {
        let engine = try Engine.load(path: try smallModel(in: directory, seed: seed), exactActivations: true)
        let gpu = try CUDABackend(useCUBLAS: false, cache: cache, kvCache: .float32, environment: try environment())
        return (try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu), gpu)
    }
    static let pipelinePrompts = [Array(1...5), (0..<11).map { 2 + ($0 * 37) % 1000 }, (0..<9).map { 900 - $0 * 13 }]

    /// Pipelined sampled steps: rows drawn with seeds known a step ahead (`Work.nextDraw`, as the
    /// scheduler peeks its samplers' next seeds) beside a greedy row choose the tokens that steps one
    /// at a time choose with the same seeds. A wrong guess of the next seed drops the queued step
    /// (it is not taken with the seed it guessed), as do penalties it was not queued with (a row
    /// penalized for one step); the steps after them pipeline again. A row on its last token
    /// (`isLast`) gets no step queued ahead: the others' is taken, and with none left none is
    /// queued. A greedy row alone does not take a step queued for it beside sampled rows (drawn by
    /// the sampling kernels, not the argmax a fresh step of it would run). Row 0 asks for 3 logprobs
    /// every step, which come back with the queued step's tokens, the same bits as one at a time; a
    /// step whose greedy row asks for logprobs too starts anew (its queued step had none), and so
    /// does the one after it (queued with them); two rows of a queued step of three, with 3 and 5
    /// logprobs, each get their own.
    @Test func pipelinedDrawsMatchStepsOneAtATime() throws {
        let directory = try TemporaryDirectory()
        let (model, gpu) = try Self.pipelineModel(in: directory, seed: 82)
        let prompts = Self.pipelinePrompts
        let kinds = [
            TokenDraw(temperature: 6, topK: 40, topP: 0.95, minP: 0, seed: 0), TokenDraw.argmax,
            TokenDraw(temperature: 40, topK: 0, topP: 1, minP: 0, seed: 0),
        ]
        var runs: [[Int]] = []
        var scored: [[GeneratedToken]] = []
        var taken: [Int] = []
        for pipelined in [false, true] {
            let runner = BatchRunner(model: model, maximumSequences: 3, prefillChunk: 16)
            runner.pipelining = pipelined
            let slots = prompts.map { _ in runner.makeSlot(contextLength: 64) }
            var next = try zip(slots, prompts).map { Sampler.argmax(try runner.prefill($0, $1)) }
            var seeds = (0..<3).map { Xoshiro256StarStar(seed: 50 + UInt64($0)) }
            var tokens: [Int] = []
            var scores: [GeneratedToken] = []
            /// One step of `rows`; `guess` (a row, a seed) replaces that row's next seed with a wrong
            /// one, `penalized` gives that row a penalty, the rows in `last` end with it, and row r
            /// asks for logprobs[r] logprobs.
            func step(
                _ rows: [Int] = [0, 1, 2], guess: (Int, UInt64)? = nil, penalized: Int? = nil, last: Set<Int> = [],
                logprobs: [Int: Int] = [0: 3]
            ) throws {
                let work = rows.map { i in
                    var item = BatchRunner<CUDABackend>.Work(slot: slots[i], tokens: [next[i]])
                    item.draw = kinds[i]
                    item.logprobs = logprobs[i]
                    if !kinds[i].isArgmax {
                        item.draw!.seed = seeds[i].next()
                        var peek = seeds[i]
                        item.nextDraw = kinds[i]
                        item.nextDraw!.seed = guess?.0 == i ? guess!.1 : peek.next()
                    }
                    if penalized == i {
                        item.draw!.penalties = TokenPenalties(presence: 0.5, frequency: 0, repetition: 1, entries: [
                            .init(id: next[i], count: 1, seen: true)
                        ])
                    }
                    item.isLast = last.contains(i)
                    return item
                }
                let drawn = try runner.outputs(work).map {
                    guard case .token(let token) = $0 else { preconditionFailure("a token was asked for") }
                    return token
                }
                let chosen = drawn.map(\.id)
                for (row, token) in zip(rows, chosen) { next[row] = token }
                tokens += chosen
                for (row, token) in zip(rows, drawn) where logprobs[row] != nil {
                    #expect(!token.logprob.isNaN && token.top.count == logprobs[row]!, "row \(row)'s logprobs")
                    scores.append(token)
                }
            }
            for _ in 0..<5 { try step() }
            try step(guess: (0, 12345))
            for _ in 0..<3 { try step() }
            try step(penalized: 2)
            try step(logprobs: [0: 3, 1: 2])  // the greedy row with logprobs: anew, and the next too
            // Rows 0 and 2 with 3 and 5 logprobs: anew, then taken; then rows 0 and 2 alone take their
            // rows of a step queued for all three (each its own logprobs), and the next step anew.
            try step(logprobs: [0: 3, 2: 5])
            try step(logprobs: [0: 3, 2: 5])
            try step([0, 2], logprobs: [0: 3, 2: 5])
            for _ in 0..<4 { try step() }
            try step(last: [1])
            try step([0, 2])  // the step queued for 0 and 2 alone
            try step([0, 1])  // 1 was not in it: a step anew, and one queued for 0 and 1
            try step([1])  // queued beside a sampled row: drawn by the sampling kernels, so anew
            let embeds = gpu.drawnEmbeds
            try step([1], last: [1])  // taken, and nothing queued after it
            #expect(gpu.drawnEmbeds == embeds, "a step queued ahead of a last token")
            runs.append(tokens)
            scored.append(scores)
            taken.append(runner.stepsTakenAhead)
        }
        #expect(runs[0] == runs[1], "pipelined draws differ from one step at a time")
        #expect(scored[0].map(\.logprob.bitPattern) == scored[1].map(\.logprob.bitPattern) && scored[0].map(\.top) == scored[1].map(\.top),
            "pipelined logprobs differ from one step at a time")
        #expect(Set(runs[0].enumerated().filter { $0.offset % 3 == 0 }.map(\.element)).count > 3, "the draws vary")
        // 23 steps: the first, the one after the wrong guess, the penalized one, the one with the
        // greedy row's logprobs, the one after it and the one after that (other logprobs), the one
        // after rows 0 and 2 alone, and the two whose rows the step queued ahead does not fit start
        // anew; the other 15 were queued ahead.
        #expect(taken == [0, 15], "steps taken from the queued step: \(taken)")
    }

    /// Pipelined steps of draws with penalties, from the server's own `Sampler`s: each step queued
    /// ahead applies its rows' penalties without the token each chose last (unknown then), and the
    /// device counts that token itself, as `Sampler.accept` would. Presence, frequency and
    /// repetition penalties, a logit bias and min_tokens (ends barred) choose the tokens of steps one
    /// at a time, every step after the first taken from the step queued ahead. The greedy row's
    /// bias makes token 7 its choice until the frequency penalty outweighs it, a count that a token
    /// left uncounted (or counted once too often) would move. One row ends partway (`isLast`), so
    /// the next step's rows count tokens of other rows of the draws before them.
    @Test func pipelinedPenalizedDrawsMatchStepsOneAtATime() throws {
        let directory = try TemporaryDirectory()
        let (model, _) = try Self.pipelineModel(in: directory, seed: 83)
        let prompts = Self.pipelinePrompts
        var biased = SamplingParameters(temperature: 30, topP: 0.9, presencePenalty: 2, frequencyPenalty: 1.5, seed: 4)
        biased.logitBias = [7: 5, 11: -100]
        var greedy = SamplingParameters(temperature: 0, repetitionPenalty: 1.8, frequencyPenalty: 20)
        greedy.logitBias = [7: 50]
        var barred = SamplingParameters(temperature: 20, topK: 30, repetitionPenalty: 1.3, frequencyPenalty: 3, seed: 9)
        barred.minTokens = 6
        barred.minTokensStopIDs = [1, 106]
        let parameters = [biased, greedy, barred]
        let steps = 12
        var runs: [[[Int]]] = []  // per run, each row's tokens
        var taken: [Int] = []
        for pipelined in [false, true] {
            let runner = BatchRunner(model: model, maximumSequences: 3, prefillChunk: 16)
            runner.pipelining = pipelined
            let slots = prompts.map { _ in runner.makeSlot(contextLength: 64) }
            var samplers = zip(parameters, prompts).map { Sampler(parameters: $0, prompt: $1) }
            var next = try zip(slots, prompts).map { Sampler.argmax(try runner.prefill($0, $1)) }
            for i in samplers.indices { samplers[i].accept(next[i]) }
            var tokens: [[Int]] = [[], [], []]
            for step in 0..<steps {
                // Row 0 ends at step 5: the steps after it take rows 1 and 2 of the one before, so the
                // device counts, for row r of a step, the token of another row of the last draws.
                let rows = step <= 5 ? [0, 1, 2] : [1, 2]
                let work = rows.map { i in
                    var item = BatchRunner<CUDABackend>.Work(slot: slots[i], tokens: [next[i]])
                    item.draw = samplers[i].nextDraw()
                    item.nextDraw = samplers[i].upcomingDraw()
                    item.isLast = i == 0 && step == 5
                    return item
                }
                let chosen = try runner.outputs(work).map {
                    guard case .token(let token) = $0 else { preconditionFailure("a token was asked for") }
                    return token.id
                }
                for (i, token) in zip(rows, chosen) {
                    samplers[i].accept(token)
                    next[i] = token
                    tokens[i].append(token)
                }
            }
            runs.append(tokens)
            taken.append(runner.stepsTakenAhead)
        }
        #expect(runs[0] == runs[1], "pipelined penalized draws differ from one step at a time")
        let sevens = runs[0][1].filter { $0 == 7 }.count
        #expect(sevens > 1 && sevens < steps / 2, "the greedy row's biased token: \(runs[0][1])")
        #expect(!runs[0][2].prefix(5).contains(1) && !runs[0][2].prefix(5).contains(106))
        #expect(taken == [0, steps - 1], "steps taken from the queued step: \(taken)")
    }

    /// gpu-check's step profile: every launch of a greedy decode step is timed alone (the norms
    /// counted per layer), the step's graph is timed whole, and the replays leave the sequences as
    /// they were: the tokens after a profiled step are those of a run without one. The profiled run
    /// submits its steps in pieces of two layers, replayed as their own graphs: the same tokens, and
    /// the profile still counts the whole step.
    @Test func aStepProfileTimesEveryOperationAndLeavesTheSequencesAsTheyWere() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 78), exactActivations: true)
        let gpu = try Self.backend.get()
        let prompts = [Array(1...5), (0..<20).map { 900 - $0 * 13 }]
        var runs: [[Int]] = []
        var after: [[[Float]]] = []
        for profiled in [false, true] {
            var model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
            if profiled { model.layersPerSubmission = 2 }
            let replays = gpu.context.graphStatistics.replayed
            defer {
                // The steps' first pieces (two layers) are replayed; the last (one layer and the head) is
                // too short to capture.
                if profiled { #expect(gpu.context.graphStatistics.replayed >= replays + 3, "the first pieces replayed") }
            }
            let runner = BatchRunner(model: model, maximumSequences: 2, prefillChunk: 16)
            runner.pipelining = false  // a replayed queued step would embed the ids its own argmax left
            let slots = prompts.map { _ in runner.makeSlot(contextLength: 64) }
            var next = try zip(slots, prompts).map { Sampler.argmax(try runner.prefill($0, $1)) }
            var tokens: [Int] = []
            for step in 0..<5 {
                if profiled && step == 3 {
                    let profile = try #require(try gpu.context.profileStep { next = try runner.decodeGreedy(slots, tokens: next) })
                    let count = { (name: String) in profile.operations.filter { $0.name == name }.reduce(0) { $0 + $1.count } }
                    let layers = engine.config.layerCount
                    #expect(count("rms_norm") == 2)  // the first layer's input norm and the final norm
                    #expect(count("rms_norm_add_norm") == 2 * layers - 1)
                    #expect(count("rms_norm_add") == 1)
                    // q, k and v in one; output; down; the LM head (two sequences: two rows per warp part)
                    #expect(count("gemv_pairs_bf16") == 3 * layers + 1)
                    #expect(count("gemv_gelu_bf16") == layers)
                    #expect(count("gelu_tanh_mul") == 0)
                    #expect(count("argmax_finish") == 1)
                    #expect(count("attention_rows") == layers)
                    #expect(count("argmax_rows") == 1)
                    #expect(profile.operations.allSatisfy { $0.seconds > 0 })
                    #expect(profile.graphSeconds > 0 && profile.recordSeconds > 0)
                } else {
                    next = try runner.decodeGreedy(slots, tokens: next)
                }
                tokens += next
            }
            runs.append(tokens)
            // The logits of later steps, which read the KV rows of the profiled one, bit for bit.
            var logits: [[Float]] = []
            for _ in 0..<3 {
                let rows = try runner.decode(slots, tokens: next)
                logits += rows
                next = rows.map(Sampler.argmax)
            }
            after.append(logits)
        }
        #expect(runs[0] == runs[1])
        let same = after[0] == after[1]  // (not printed in full: 3 steps of logits)
        #expect(same, "the logits of the steps after the profiled one differ")
    }

    /// A step of one sequence takes its residual norms inside the products after them (two launches a
    /// layer fewer) and its q/k norms and RoPE inside its attention (one fewer), and its logits are
    /// the same bits as with each norm launched on its own. Its attention asks L2 for the budget's
    /// share of each layer's output, gate and up weights, and for nothing outside them: line by line
    /// (the unfused run) or in bulk ranges of 16 KiB (the fused run; the emulator counts their lines).
    @Test func aOneSequenceStepFusesItsNorms() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 79), exactActivations: true)
        let gpu = try Self.backend.get()
        #expect(gpu.fusedNormProblem == nil, "the fused norms' self-check at start")
        let chosenPrefetch = gpu.prefetchAheadBytes, chosenKind = gpu.prefetchAheadKind
        if ProcessInfo.processInfo.environment["INFERENCE_PREFETCH_AHEAD"] == nil {
            #expect(chosenPrefetch == 0, "no prefetch by default")
        }
        defer {
            gpu.fusedNorms = true
            gpu.fusedHeadNorms = true
            gpu.prefetchAheadBytes = chosenPrefetch
            gpu.prefetchAheadKind = chosenKind
        }
        let layers = engine.config.layerCount
        let c = engine.config
        let sizes = [c.hiddenSize * c.headCount * c.headDimension * 2] + [Int](repeating: c.intermediateSize * c.hiddenSize * 2, count: 2)
        gpu.prefetchAheadBytes = sizes.reduce(0, +) / 2
        let shares = CUDABackend.prefetchShares(sizes, budget: gpu.prefetchAheadBytes)
        #expect(shares.reduce(0, +) > 0 && shares.reduce(0, +) < sizes.reduce(0, +), "the emulator's L2 budget cuts")
        let prefetched = try Self.emulatorCounter("cudaEmulatorPrefetchedLines")
        let strays = try Self.emulatorCounter("cudaEmulatorStrayPrefetches")
        var runs: [[[Float]]] = []
        for fused in [true, false] {
            gpu.fusedNorms = fused
            gpu.fusedHeadNorms = fused
            gpu.prefetchAheadKind = fused ? .bulk : .lines
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
            let runner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 16)
            runner.pipelining = false  // one step queued per call: the prefetches of one step are counted
            let slot = runner.makeSlot(contextLength: 64)
            var next = [Sampler.argmax(try runner.prefill(slot, (0..<11).map { 700 - $0 * 17 }))]
            let (lines, stray) = (prefetched(), strays())
            next = try runner.decodeGreedy([slot], tokens: next)
            #expect(Int(prefetched() - lines) == layers * shares.map { ($0 + 127) / 128 }.reduce(0, +))
            #expect(strays() == stray, "a prefetch outside the weights")
            let profile = try #require(try gpu.context.profileStep { next = try runner.decodeGreedy([slot], tokens: next) })
            let count = { (name: String) in profile.operations.filter { $0.name == name }.reduce(0) { $0 + $1.count } }
            // The first layer's input norm and the final norm stay rms_norm, the last post norm rms_norm_add.
            #expect(count("rms_norm") == 2 && count("rms_norm_add") == 1)
            #expect(count("rms_norm_add_norm") == (fused ? 0 : 2 * layers - 1))
            #expect(count("gemv_norm_bf16") + count("gemv_norm_staged_bf16") == (fused ? layers - 1 : 0))
            #expect(count("gemv_gelu_norm_bf16") == (fused ? layers : 0))
            #expect(count("gemv_gelu_bf16") == (fused ? 0 : layers))
            #expect(count("norm_rope") == (fused ? 0 : layers))
            #expect(count("attention_rows") == layers)
            var logits: [[Float]] = []
            for _ in 0..<4 {
                let rows = try runner.decode([slot], tokens: next)
                logits += rows
                next = rows.map(Sampler.argmax)
            }
            runs.append(logits)
        }
        let same = runs[0] == runs[1]  // (not printed in full: 4 steps of logits)
        #expect(same, "the logits with fused norms differ from those with the norms' own launches")
    }

    /// A decode step's attention takes `decodeShares` shares of 32 keys while the keys fit them, then
    /// `longDecodeShares` (more blocks for long contexts), with a share that grows by 32 keys at a
    /// time after that; a prefill, shares of at least 256 keys. Across that change the GPU's logits
    /// stay the CPU's (short shares of 2 here, so that the change comes at 64 keys).
    @Test func longContextsTakeMoreShares() throws {
        func shares(_ keys: Int, short: Int = 16, long: Int = 32) -> [Int] {
            let s = CUDABackend.attentionShares(mostKeys: keys, decode: true, short: short, long: long)
            return [s.splits, s.share, s.most]
        }
        #expect(shares(20) == [1, 32, 32] && shares(33) == [16, 32, 32] && shares(512) == [16, 32, 32])
        #expect(shares(513) == [32, 32, 32] && shares(1024) == [32, 32, 32] && shares(1025) == [32, 64, 32])
        #expect(shares(4096) == [32, 128, 32] && shares(600, long: 16) == [16, 64, 16] && shares(600, long: 8) == [16, 64, 16])
        let prefill = CUDABackend.attentionShares(mostKeys: 1000, decode: false, short: 16, long: 32)
        #expect(prefill.splits == 4 && prefill.share == 256)

        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 101), exactActivations: true)
        let gpu = try Self.exactBackend.get()
        let chosen = gpu.decodeShares
        defer { gpu.decodeShares = chosen }
        gpu.decodeShares = 2
        let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
        let gpuRunner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 16)
        let cpuRunner = BatchRunner(model: engine.model, maximumSequences: 1, prefillChunk: 16)
        let (gpuSlot, cpuSlot) = (gpuRunner.makeSlot(contextLength: 128), cpuRunner.makeSlot(contextLength: 128))
        let prompt = (0..<60).map { 3 + ($0 * 53) % 900 }
        _ = try gpuRunner.prefill(gpuSlot, prompt)
        var next = [Sampler.argmax(try cpuRunner.prefill(cpuSlot, prompt))]
        let heads = engine.config.headCount
        for step in 0..<8 {  // keys 61 to 68: 2 shares, then 32 (the sliding-window layers' keys fit one)
            var g: [[Float]] = []
            if step == 0 || step == 7 {
                let profile = try #require(try gpu.context.profileStep { g = try gpuRunner.decode([gpuSlot], tokens: next) })
                let shapes = Set(profile.operations.filter { $0.name == "attention_rows" }.map(\.shape))
                #expect(shapes.contains("1x\(heads)x\(step == 0 ? 2 : 32) / 256") && shapes.count <= 2, "\(shapes)")
            } else {
                g = try gpuRunner.decode([gpuSlot], tokens: next)
            }
            let c = try cpuRunner.decode([cpuSlot], tokens: next)
            #expect(GPUCheck.relativeError(g[0], c[0]) < 1e-4, "step \(step)")
            next = c.map(Sampler.argmax)
        }
    }

    /// The fused MLP (`fusedMLP`, off by default): one launch a layer instead of gate/up and down, over
    /// three slices of 256 intermediate rows (hidden 256: two output rows a warp, two copies of down
    /// a thread); the logits the CPU's (within the float32 bar: its down sums run in another order
    /// than the down product's), and the same bits with the blocks and threads reversed (each block
    /// waits for its slice, and the slices' partials are added in slice order, whichever block
    /// finishes last). Then a model of one slice on the same backend (its scratch left by three).
    @Test func fusedMLPMatchesTheCPU() throws {
        let directory = try TemporaryDirectory()
        let shape = RandomGemma(
            vocabulary: 1024, hidden: 256, intermediate: 768, layers: 2, heads: 4, kvHeads: 2, headDim: 64, slidingWindow: 8,
            maxPositions: 256)
        let engine = try Self.randomEngine(shape, in: directory, seed: 103)
        let gpu = try Self.exactBackend.get()
        #expect(!gpu.fusedMLP, "off by default")
        let prompt = (0..<20).map { 40 + $0 * 37 }
        let runs = try Self.turnedRuns(engine, on: gpu, \.fusedMLP, prompt: prompt, steps: 5) { fused, step in
            let count = { (name: String) in step.operations.filter { $0.name == name }.reduce(0) { $0 + $1.count } }
            let layers = engine.config.layerCount
            #expect(count("mlp_fused_bf16") == (fused ? layers : 0) && count("gemv_gelu_norm_bf16") == (fused ? 0 : layers))
        }
        let same = runs[1] == runs[2]  // (not printed in full)
        #expect(same, "the fused MLP's logits depend on the order its blocks run in")

        let small = try Engine.load(path: try Self.smallModel(in: directory, seed: 107), exactActivations: true)
        gpu.fusedMLP = true
        defer { gpu.fusedMLP = false }
        let launches = gpu.fusedMLPLaunches
        let fused = try Self.decodedLogits(small, on: gpu, prompt: prompt, steps: 3).logits
        #expect(gpu.fusedMLPLaunches > launches, "the one-slice model's MLP was not fused")
        gpu.fusedMLP = false
        let unfused = try Self.decodedLogits(small, on: gpu, prompt: prompt, steps: 3).logits
        for (a, b) in zip(fused, unfused) { #expect(GPUCheck.relativeError(a, b) < 1e-4, "one slice after three") }
    }

    /// Attention's shares merged inside the output projection (`fusedOutput`, off by default): one
    /// launch where attention_combine and the product were, in the full-attention layer once its
    /// keys pass 32 (the sliding layer's 8 keys take one share: nothing to merge, the product as
    /// before). Head dimension 128 (half a warp's lanes a row), 4 heads over 256 output rows (8
    /// groups of 32): the logits the CPU's within the float32 bar, and the same bits with the blocks
    /// and threads reversed (the heads' sums are added in head order by whichever block is last).
    @Test func outputFusedWithTheMergeMatchesTheCPU() throws {
        let directory = try TemporaryDirectory()
        let shape = RandomGemma(
            vocabulary: 512, hidden: 256, intermediate: 512, layers: 2, heads: 4, kvHeads: 1, headDim: 128, slidingWindow: 8,
            maxPositions: 256)
        let engine = try Self.randomEngine(shape, in: directory, seed: 113)
        let gpu = try Self.exactBackend.get()
        #expect(!gpu.fusedOutput, "off by default")
        let prompt = (0..<40).map { 3 + $0 * 11 }
        var launches = gpu.fusedOutputLaunches
        let runs = try Self.turnedRuns(engine, on: gpu, \.fusedOutput, prompt: prompt, steps: 4) { fused, step in
            // (The profile pins it to one launch a step, in the full layer.)
            #expect((gpu.fusedOutputLaunches > launches) == fused, "the output fused \(gpu.fusedOutputLaunches - launches) times")
            launches = gpu.fusedOutputLaunches
            let count = { (name: String) in step.operations.filter { $0.name == name }.reduce(0) { $0 + $1.count } }
            #expect(count("attention_output_bf16") == (fused ? 1 : 0) && count("attention_combine") == (fused ? 0 : 1))
        }
        #expect(runs[0] != runs[1], "the fused sums run in another order (else this test would not see the fusion)")
        let same = runs[1] == runs[2]  // (not printed in full)
        #expect(same, "the fused output's logits depend on the order its blocks run in")
    }

    /// One-token products with their weights staged in shared memory before their wait: the same
    /// logits bit for bit as without, for each mode, with the threads in order and reversed (each
    /// thread reads only the chunks it copied); the staged kernels are the ones that ran. Hidden 1152
    /// and 4096 intermediate rows (one warp a gate/up row): gate's and up's fifth chunk a thread is
    /// read past the stage, as in the 1B model, and down takes four warps a row.
    @Test func stagedWeightsGiveTheSameBits() throws {
        let directory = try TemporaryDirectory()
        let shape = RandomGemma(
            vocabulary: 512, hidden: 1152, intermediate: 4096, layers: 1, heads: 4, kvHeads: 1, headDim: 64, slidingWindow: 8,
            maxPositions: 256)
        let engine = try Self.randomEngine(shape, in: directory, seed: 109)
        let gpu = try Self.exactBackend.get()
        #expect(gpu.stagedWeights == .products, "the products staged by default")
        let reverse = try Self.emulatorSwitch("cudaEmulatorReverseThreads")
        defer {
            gpu.stagedWeights = .products
            reverse(0)
        }
        let prompt = (0..<4).map { 17 + $0 * 29 }
        let modes: [(CUDABackend.StagedWeights, Bool)] = [(.off, false), (.products, false), (.gateUp, false), (.on, false), (.on, true)]
        var runs: [[[Float]]] = []
        for (mode, reversed) in modes {
            gpu.stagedWeights = mode
            reverse(reversed ? 1 : 0)
            let launches = gpu.stagedLaunches
            let (logits, runner, slot, next) = try Self.decodedLogits(engine, on: gpu, prompt: prompt, steps: 2)
            runs.append(logits)
            #expect((gpu.stagedLaunches > launches) == (mode != .off), "\(mode)")
            guard mode == .on && !reversed else { continue }
            // Every one-token product of the step: q/k/v (its norm fused), the output projection,
            // gate/up (its norm fused), down and the LM head (a grid of 128 blocks: the emulator holds it).
            let profile = try #require(try gpu.context.profileStep { _ = try runner.decode([slot], tokens: next) })
            let count = { (name: String) in
                profile.operations.filter { $0.name == name || $0.name.hasPrefix(name + "@") }.reduce(0) { $0 + $1.count }
            }
            #expect(count("gemv_norm_staged_bf16") + count("gemv_staged_bf16") == 4 && count("gemv_gelu_norm_staged_bf16") == 1)
            #expect(count("gemv_norm_bf16") + count("gemv_bf16") + count("gemv_gelu_norm_bf16") == 0)
        }
        for (run, (mode, reversed)) in zip(runs, modes).dropFirst() {
            let same = run == runs[0]  // (not printed in full)
            #expect(same, "staged \(mode), reversed \(reversed): not the unstaged logits' bits")
        }
    }

    /// A one-sequence decode step's layers as one persistent launch each (`decode_layer`: its phases
    /// behind grid barriers, the emulator running its 8 blocks side by side), as two (`decode_mlp`
    /// after the first half), or their first halves alone:
    /// the same logits bit for bit as launch by launch, with blocks and threads in order and reversed,
    /// over steps whose attention takes one share and then sixteen (past 32 keys); and pipelined
    /// greedy steps choose the same tokens.
    @Test func persistentLayersGiveTheLaunchesBits() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 83), exactActivations: true)
        let gpu = try Self.backend.get()
        #expect(gpu.persistentProblem == nil, "the emulator says how many blocks an SM holds")
        #expect(gpu.persistentLayers == .off, "off by default")
        let reverse = try Self.emulatorSwitch("cudaEmulatorReverseThreads")
        let chosenPrefetch = gpu.prefetchAheadBytes
        defer {
            gpu.persistentLayers = .off
            gpu.prefetchAheadBytes = chosenPrefetch
            reverse(0)
        }
        // The attention phase asks L2 for the next weights too (a hint: the same logits), all inside them.
        gpu.prefetchAheadBytes = 96 << 10
        let (prefetched, strays) = (try Self.emulatorCounter("cudaEmulatorPrefetchedLines"), try Self.emulatorCounter("cudaEmulatorStrayPrefetches"))
        let (linesBefore, straysBefore) = (prefetched(), strays())
        let layers = engine.config.layerCount
        let prompt = (0..<29).map { 650 - $0 * 19 }
        var runs: [[[Float]]] = []
        var greedy: [[Int]] = []
        let modes: [(CUDABackend.PersistentLayers, Bool)] = [
            (.off, false), (.attention, false), (.halves, false), (.whole, false), (.halves, true), (.whole, true),
        ]
        for (mode, reversed) in modes {
            gpu.persistentLayers = mode
            reverse(reversed ? 1 : 0)
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
            let runner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 16)
            let slot = runner.makeSlot(contextLength: 64)
            let before = gpu.persistentLaunches
            var next = [Sampler.argmax(try runner.prefill(slot, prompt))]
            // Positions 29 to 34: the full layers' keys pass 32.
            let logits = try Self.decodedLogits(runner, slot, next: &next, steps: 6)
            #expect(gpu.persistentLaunches - before == 6 * layers * (mode == .off ? 0 : mode == .halves ? 2 : 1), "\(mode)")
            runs.append(logits)
            var tokens: [Int] = []
            for _ in 0..<4 {
                next = try runner.decodeGreedy([slot], tokens: next)
                tokens += next
            }
            greedy.append(tokens)
        }
        #expect(prefetched() > linesBefore && strays() == straysBefore, "prefetches outside the weights")
        for (i, run) in runs.enumerated().dropFirst() {
            let same = run == runs[0]  // (not printed in full: 6 steps of logits)
            #expect(same, "\(modes[i]): the logits differ from those launch by launch")
            #expect(greedy[i] == greedy[0], "\(modes[i]): pipelined greedy tokens")
        }
    }

    /// A decode step's attention gives the same logits bit for bit with its loads before its wait for
    /// the qkv product or after, trimmed (the step's key and value stored by a row's last share, the
    /// new key read only by its share, empty shares left at once) or not, across the 32 keys where its
    /// keys are cut into shares, with its blocks and threads in either order: the defaults (early,
    /// trimmed) against every other. (The emulator runs launches one after another, so the early
    /// loads see what late ones would: this holds their arithmetic and the store's place; which
    /// statements may come before the wait, everyKernelWaitsForTheOneBeforeIt pins down.)
    @Test func attentionSettingsGiveTheSameBits() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 89), exactActivations: true)
        let gpu = try Self.backend.get()
        #expect(gpu.attentionEarlyLoads && gpu.attentionTrims, "early and trimmed by default")
        let reverse = try Self.emulatorSwitch("cudaEmulatorReverseThreads")
        defer {
            gpu.attentionEarlyLoads = true
            gpu.attentionTrims = true
            reverse(0)
        }
        let prompt = (0..<28).map { 700 - $0 * 23 }
        let settings = [
            (true, true, false), (false, true, false), (true, false, false), (false, false, false), (true, true, true),
            (false, false, true),
        ]
        var runs: [[[Float]]] = []
        for (early, trimmed, reversed) in settings {
            gpu.attentionEarlyLoads = early
            gpu.attentionTrims = trimmed
            reverse(reversed ? 1 : 0)
            runs.append(try Self.decodedLogits(engine, on: gpu, prompt: prompt, steps: 7).logits)  // positions 28 to 34: past 32 keys
        }
        for (i, run) in runs.enumerated().dropFirst() {
            let same = run == runs[0]  // (not printed in full: 7 steps of logits)
            #expect(same, "early, trimmed, reversed: \(settings[i]): the logits differ from the defaults'")
        }
    }

    /// The persistent launches' stamps (each block's clock at each phase, here the emulator's count of
    /// stamps): no block leaves a grid barrier before every block has arrived at it, each block's
    /// stamps come in order, and each launch stamps where it starts and ends; gpu-check reads the
    /// same stamps on a GPU to say where a persistent layer's time goes.
    @Test func persistentStampsShowEveryBlockMeetingAtEachBarrier() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 84), exactActivations: true)
        let gpu = try Self.backend.get()
        defer { gpu.persistentLayers = .off }
        let layers = engine.config.layerCount
        for mode in [CUDABackend.PersistentLayers.whole, .halves, .attention] {
            gpu.persistentLayers = mode
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
            let runner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 16)
            runner.pipelining = false
            let slot = runner.makeSlot(contextLength: 64)
            var next = [Sampler.argmax(try runner.prefill(slot, (0..<40).map { 300 + $0 * 11 }))]
            next = try runner.decodeGreedy([slot], tokens: next)
            try gpu.beginPersistentStamps(launches: 2 * layers)
            next = try runner.decodeGreedy([slot], tokens: next)
            let launches = try gpu.endPersistentStamps()
            #expect(launches.count == layers * (mode == .halves ? 2 : 1), "\(mode)")
            var barriers = 0
            for (l, blocks) in launches.enumerated() {
                let mlp = mode == .halves && l % 2 == 1
                #expect(blocks.count == (mlp ? 16 : 8), "\(mode) launch \(l): the grid")
                let (first, last) = mlp ? (8, 11) : (0, mode == .whole ? 11 : 7)
                for stamps in blocks {
                    let reached = stamps.filter { $0 > 0 }
                    #expect(stamps[first] > 0 && stamps[last] > 0 && reached == reached.sorted(), "\(mode) launch \(l): \(stamps)")
                }
                for arrival in [1, 3, 5, 7, 9] where blocks.allSatisfy({ $0[arrival] > 0 && $0[arrival + 1] > 0 }) {
                    barriers += 1
                    let lastIn = blocks.map { $0[arrival] }.max()!, firstOut = blocks.map { $0[arrival + 1] }.min()!
                    #expect(firstOut > lastIn, "\(mode) launch \(l): a block left barrier \(arrival) before all arrived")
                }
            }
            // Per layer: after q/k/v and attention (and the merge, past 32 keys); after the output
            // projection and gate/up in one launch; after gate/up alone in decode_mlp.
            #expect(barriers >= layers * (mode == .whole ? 4 : mode == .halves ? 3 : 2), "\(mode): the barriers stamped")
        }
    }

    /// What a one-sequence step's attention asks L2 for: all of the next products' weights where they
    /// fit, else the same share of each in whole lines, within the budget.
    @Test func prefetchSharesFitTheBudget() {
        let sizes = [2_359_296, 15_925_248, 15_925_248]  // 1B: the output projection, gate, up
        #expect(CUDABackend.prefetchShares(sizes, budget: 64 << 20) == sizes)
        #expect(CUDABackend.prefetchShares(sizes, budget: 0) == [0, 0, 0])
        let half = CUDABackend.prefetchShares(sizes, budget: 17_104_896)
        #expect(half.allSatisfy { $0 % 128 == 0 } && half.reduce(0, +) <= 17_104_896)
        #expect(half[1] == half[2] && abs(Double(half[0]) / Double(sizes[0]) - 0.5) < 1e-3)
        #expect(CUDABackend.prefetchShares([], budget: 1 << 20) == [])
        // A short context's attention (4 blocks) asks for 2 MiB at most; 16 shares of 4 heads, 32 MiB.
        #expect(CUDABackend.prefetchBudget(25 << 20, blocks: 4) == 2 << 20)
        #expect(CUDABackend.prefetchBudget(40 << 20, blocks: 64) == 32 << 20)
        #expect(CUDABackend.prefetchBudget(3 << 20, blocks: 64) == 3 << 20)
        // Bulk prefetches: one 16 KiB instruction a thread, 4 MiB a block.
        #expect(CUDABackend.prefetchBudget(40 << 20, blocks: 64, kind: .bulk) == 40 << 20)
        #expect(CUDABackend.prefetchBudget(64 << 20, blocks: 4, kind: .evictLast) == 16 << 20)
    }

    /// A small model with the real tokenizer, for the server's scheduler (scripts/test fetches the
    /// tokenizer first), and the limits both scheduler tests serve it under.
    static func schedulerEngine(in directory: TemporaryDirectory, seed: UInt64) throws -> Engine {
        let folder = try smallModel(in: directory, seed: seed)
        guard FileManager.default.fileExists(atPath: modelFolder + "/tokenizer.json") else {
            throw Unavailable(description: "no tokenizer at \(modelFolder): scripts/test fetches it first")
        }
        return try Engine.load(path: folder, tokenizerDirectory: modelFolder, exactActivations: true)
    }
    static let schedulerLimits = SchedulerLimits(maximumRunning: 6, maximumWaiting: 8, cacheBytes: 64 << 20, prefillTokensPerStep: 16)

    /// The server's streams through pipelined steps: greedy requests of different lengths that end
    /// at different steps (a queued step's rows reused for the ones that go on), one that arrives
    /// while others run (the queued step is taken before its prefill starts), seeded sampled ones
    /// (drawn a step ahead with their samplers' next seeds), one with penalties and one with
    /// logprobs (queued with the step) get the tokens and logprobs they get with pipelining off, on
    /// the same kernels.
    @Test func theSchedulerPipelinesStreams() async throws {
        let directory = try TemporaryDirectory()
        let engine = try Self.schedulerEngine(in: directory, seed: 6)
        let limits = Self.schedulerLimits
        var outputs: [[[Int]]] = []
        var logprobs: [[UInt32]] = []
        var drawn: [Int] = [], taken: [Int] = []
        for pipelined in [false, true] {
            var env = try Self.environment()
            if !pipelined { env["INFERENCE_PIPELINE"] = "off" }
            let gpu = try CUDABackend(useCUBLAS: false, cache: Self.cache, environment: env)
            #expect(gpu.pipelinesSteps == pipelined)
            let served = try ServedModel(
                engine: engine, names: ["small"], contextLength: 96, limits: limits, metrics: ServerMetrics(modelName: "small"),
                device: .cuda(gpu))
            served.scheduler.start()
            func request(_ prompt: [Int], _ count: Int, _ sampling: SamplingParameters? = nil, top: Int? = nil) -> SequenceRequest {
                var greedy = SamplingParameters()
                greedy.temperature = 0
                var parameters = GenerationParameters(maxTokens: count, sampling: sampling ?? greedy)
                parameters.computeLogprobs = top != nil
                parameters.topLogprobs = top ?? 0
                return SequenceRequest(prompt: prompt, parameters: parameters)
            }
            var scores: [UInt32] = []  // the logprobs of the tokens that have them, and of their alternatives
            /// The handle's tokens to its end, or the first `limit` of them.
            func tokens(_ events: inout AsyncStream<SequenceEvent>.Iterator, limit: Int = .max) async -> [Int] {
                var ids: [Int] = []
                while ids.count < limit, let event = await events.next() {
                    switch event {
                    case .token(let token):
                        ids.append(token.id)
                        if !token.logprob.isNaN { scores += [token.logprob.bitPattern] + token.top.map(\.logprob.bitPattern) }
                    case .failed(let message): Issue.record("failed: \(message)")
                    default: break
                    }
                }
                return ids
            }
            func tokens(_ handle: SequenceHandle) async -> [Int] {
                var events = handle.events.makeAsyncIterator()
                return await tokens(&events)
            }
            let specs: [([Int], Int, SamplingParameters?)] = [
                ([2, 5], 3, nil), (Array(3...9), 6, nil), (Array(100...119), 9, nil), (Array(200...230), 14, nil),
                (Array(40...52), 12, SamplingParameters(temperature: 40, topP: 0.95, seed: 1234)),
                (Array(40...52), 10, SamplingParameters(temperature: 30, topK: 50, seed: 77)),
                (Array(60...70), 3, SamplingParameters(temperature: 30, presencePenalty: 0.5, seed: 99)),
                (Array(80...92), 8, SamplingParameters(temperature: 20, topK: 40, seed: 5)),
            ]
            let handles = try specs.enumerated().map { i, spec in
                try served.scheduler.submit(request(spec.0, spec.1, spec.2, top: i == specs.count - 1 ? 2 : nil))
            }
            var run = [await tokens(handles[0])]
            // Arrives while the others still run (and some prompts are still being prefilled).
            let late = try served.scheduler.submit(request(Array(300...311), 8))
            // Arrives while the others decode in pipelined steps (every prompt started, the penalized
            // request done): the step queued ahead is taken before its prompt starts.
            var longest = handles[3].events.makeAsyncIterator()
            let first = await tokens(&longest, limit: 9)
            let later = try served.scheduler.submit(request(Array(400...410), 4))
            for handle in handles[1..<3] { run.append(await tokens(handle)) }
            run.append(await first + tokens(&longest))
            for handle in handles[4...] { run.append(await tokens(handle)) }
            run.append(await tokens(late))
            run.append(await tokens(later))
            served.scheduler.stop(reason: "done")
            outputs.append(run)
            logprobs.append(scores)
            drawn.append(gpu.drawnEmbeds)
            taken.append(try #require(served.scheduler as? Scheduler<CUDABackend>).runner.stepsTakenAhead)
        }
        #expect(outputs[0].map(\.count) == [3, 6, 9, 14, 12, 10, 3, 8, 8, 4])
        #expect(Set(outputs[0][4]).count > 4 && Set(outputs[0][5]).count > 4, "the draws vary: \(outputs[0])")
        #expect(outputs[1] == outputs[0], "pipelined streams differ")
        // Logprobs, not only tokens, from the queued steps: close, not the same bits, since with
        // pipelining off a prompt's chunk may share a decode step (a product of more rows, whose
        // sums differ in their last bits).
        let gap = zip(logprobs[0], logprobs[1]).map { abs(Float(bitPattern: $0) - Float(bitPattern: $1)) }.max() ?? .infinity
        #expect(logprobs[0].count == 8 * 3 && logprobs[1].count == logprobs[0].count && gap < 1e-3, "pipelined logprobs differ by \(gap)")
        #expect(drawn[0] == 0 && drawn[1] > 3, "steps that took their tokens on the device: \(drawn)")
        #expect(taken[0] == 0 && taken[1] > 3, "steps taken from a step queued ahead: \(taken)")
        // None dropped: not for a prompt starting beside the streams (the queued step is taken
        // first), nor for a request's last token (none is queued after it).
        #expect(taken == drawn, "steps queued ahead \(drawn), taken \(taken)")
    }

    /// The server's scheduler on the device: concurrent requests, batched, give the tokens the CPU
    /// scheduler gives (greedy), and the KV budget comes from the GPU's memory; all of it after the
    /// start-up tuning has turned the backend's settings (whose runner is gone by then).
    @Test func theSchedulerServesFromTheDevice() async throws {
        let directory = try TemporaryDirectory()
        let engine = try Self.schedulerEngine(in: directory, seed: 5)
        let limits = Self.schedulerLimits
        let sampledPrompt = Array(40...52)
        let sampled = SamplingParameters(temperature: 6, topK: 40, topP: 0.95, seed: 1234)
        let penalized = SamplingParameters(
            temperature: 2, topP: 0.9, repetitionPenalty: 1.5, presencePenalty: 0.5, frequencyPenalty: 0.5, seed: 99)
        var outputs: [[[Int]]] = []
        var scored: [[GeneratedToken]] = []  // per device: the greedy request that wants logprobs
        var promptScores: [[GeneratedToken?]] = []  // per device: a prompt scored in chunks (echo + logprobs)
        let gpu = try Self.backend.get()
        let stagedBefore = gpu.stagedLaunches
        let (staging, prefetch) = (gpu.stagedWeights, gpu.prefetchAheadBytes)
        defer {
            gpu.stagedWeights = staging
            gpu.prefetchAheadBytes = prefetch
        }
        for device in [ComputeDevice.cpu, .cuda(gpu)] {
            // On the device, after the start-up tuning (short here): the tokens are still the CPU's.
            let served = try ServedModel(
                engine: engine, names: ["small"], contextLength: 96, limits: limits, metrics: ServerMetrics(modelName: "small"),
                device: device, tuning: DecodeTuning.Plan(knobs: [.stagedWeights, .prefetchAhead], rounds: 1, budget: 0, promptTokens: 16))
            if case .cuda = device { #expect(gpu.stagedLaunches > stagedBefore, "the tuning did not run") }
            #expect(served.scheduler.limits.cacheBytes <= 64 << 20)
            served.scheduler.start()
            var greedy = SamplingParameters()
            greedy.temperature = 0
            // Without logprobs, as the server asks when none are wanted: the tokens are chosen where
            // the logits are (the argmax, and on the GPU the draw too).
            func request(_ prompt: [Int], _ sampling: SamplingParameters) -> SequenceRequest {
                var parameters = GenerationParameters(maxTokens: 6, sampling: sampling)
                parameters.computeLogprobs = false
                return SequenceRequest(prompt: prompt, parameters: parameters)
            }
            var handles = try [Array(3...9), Array(100...130), [2, 5]].map { try served.scheduler.submit(request($0, greedy)) }
            // The same seeded sampled request twice, beside the greedy ones, and one with penalties.
            for _ in 0..<2 { handles.append(try served.scheduler.submit(request(sampledPrompt, sampled))) }
            handles.append(try served.scheduler.submit(request(sampledPrompt, penalized)))
            // The first greedy request again, with logprobs (the chosen token's and 3 more).
            var withLogprobs = request(Array(3...9), greedy)
            withLogprobs.parameters.computeLogprobs = true
            withLogprobs.parameters.topLogprobs = 3
            handles.append(try served.scheduler.submit(withLogprobs))
            var logprobTokens: [GeneratedToken] = []
            // A 31-token prompt scored with 2 alternatives per token, prefilled 16 tokens a step.
            let scoring = try served.scheduler.submit(
                SequenceRequest(prompt: Array(100...130), parameters: GenerationParameters(maxTokens: 0), promptLogprobs: 2))
            for await event in scoring.events {
                switch event {
                case .promptLogprobs(let entries): promptScores.append(entries)
                case .failed(let message): Issue.record("failed: \(message)")
                default: break
                }
            }
            var tokens: [[Int]] = []
            for handle in handles {
                var ids: [Int] = []
                for await event in handle.events {
                    switch event {
                    case .token(let token):
                        ids.append(token.id)
                        if handle === handles.last { logprobTokens.append(token) }
                    case .failed(let message): Issue.record("failed: \(message)")
                    default: break
                    }
                }
                tokens.append(ids)
            }
            served.scheduler.stop(reason: "done")
            outputs.append(tokens)
            scored.append(logprobTokens)
        }
        #expect(outputs[0].allSatisfy { $0.count == 6 })
        // Logprobs: the device computes them beside its draw; the same greedy tokens, and the same
        // numbers as the CPU's host sampler within what the bf16 cache moves them.
        for device in 0..<2 {
            #expect(outputs[device][6] == outputs[device][0])
            #expect(scored[device].allSatisfy { $0.top.count == 3 && $0.top[0].id == $0.id && $0.top[0].logprob == $0.logprob })
        }
        #expect(promptScores.count == 2 && promptScores.allSatisfy { $0.count == 31 && $0[0] == nil })
        for (cpu, gpu) in zip(promptScores[0].dropFirst(), promptScores[1].dropFirst()) {
            guard let cpu, let gpu else { Issue.record("a prompt token without logprobs"); continue }
            // Rank by rank: the bf16 cache may swap two alternatives a few thousandths apart.
            #expect(cpu.id == gpu.id && gpu.top.count == 2 && cpu.top.first?.id == gpu.top.first?.id, "\(cpu) vs \(gpu)")
            #expect(abs(cpu.logprob - gpu.logprob) < 0.05, "\(cpu) vs \(gpu)")
            for (a, b) in zip(cpu.top, gpu.top) { #expect(abs(a.logprob - b.logprob) < 0.05, "\(cpu) vs \(gpu)") }
        }
        #expect(promptScores[0].dropFirst().map { $0?.id } == Array(101...130))
        for (cpu, gpu) in zip(scored[0], scored[1]) {
            #expect(abs(cpu.logprob - gpu.logprob) < 0.05 && cpu.top.first?.id == gpu.top.first?.id, "\(cpu) vs \(gpu)")
            for (a, b) in zip(cpu.top, gpu.top) { #expect(abs(a.logprob - b.logprob) < 0.05, "\(a) vs \(b)") }
        }
        #expect(Array(outputs[1].prefix(3)) == Array(outputs[0].prefix(3)))
        // On the device a sampled request's tokens are drawn there: each step's token is
        // `TokenDraw.choose` of that step's logits with the next seed of the request's generator.
        // The reference takes the CPU's logits, through the protocol's host `sample`.
        let runner = BatchRunner(model: engine.model, maximumSequences: 1)
        let slot = runner.makeSlot(contextLength: 96)
        var seeds = Xoshiro256StarStar(seed: 1234)
        var expected: [Int] = []
        var item = BatchRunner<CPUBackend>.Work(slot: slot, tokens: sampledPrompt)
        for _ in 0..<6 {
            item.draw = TokenDraw(sampled, seed: seeds.next())
            guard case .token(let token) = try runner.outputs([item])[0] else { Issue.record("no token"); return }
            expected.append(token.id)
            item = .init(slot: slot, tokens: [token.id])
        }
        #expect(outputs[1][3] == expected)
        #expect(outputs[1][4] == expected)
        #expect(Set(expected).count > 1, "\(expected)")
        // With penalties: the request's sampler gives each step's seed and penalties, as the scheduler does.
        var sampler = Sampler(parameters: penalized, prompt: sampledPrompt)
        let penalizedSlot = runner.makeSlot(contextLength: 96)
        var penalizedExpected: [Int] = []
        item = BatchRunner<CPUBackend>.Work(slot: penalizedSlot, tokens: sampledPrompt)
        for _ in 0..<6 {
            item.draw = TokenDraw(penalized, seed: sampler.nextSeed(), penalties: sampler.penalties())
            guard case .token(let token) = try runner.outputs([item])[0] else { Issue.record("no token"); return }
            sampler.accept(token.id)
            penalizedExpected.append(token.id)
            item = .init(slot: penalizedSlot, tokens: [token.id])
        }
        #expect(outputs[1][5] == penalizedExpected)
    }
}
