import ArgumentParser
import CUDA
import CUDABackend
import Foundation
import Inference

/// `gpu-check` (hidden; scripts/gpu-check runs it): the CUDA backend's checks and figures on a
/// machine with an NVIDIA GPU. Exits 1 when a check fails.
struct GPUCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gpu-check",
        abstract: "Check the CUDA backend against the CPU backend and the golden references; time it.",
        discussion: """
            --ops checks every kernel against the CPU backend on fresh random inputs. With --model, the \
            whole model runs on both backends and their logits are compared; --golden FILE (a \
            shared/golden JSON) runs its cases on the GPU by the README's bf16 rule; --bench times \
            prefill and decode at batch 1 and 16 and prints them against the card's measured memory \
            bandwidth.
            """,
        shouldDisplay: false)

    @OptionGroup var options: ModelOptions

    @Flag(help: "Check every operation against the CPU backend.")
    var ops = false

    @Option(help: "A shared/golden JSON whose generation cases run on the GPU (needs --model).")
    var golden: String?

    @Flag(help: "Compare the model's logits on the GPU and the CPU (needs --model).")
    var compare = false

    @Flag(help: "Time prefill and decode at batch 1 and 16 (needs --model).")
    var bench = false

    @Flag(
        name: .customLong("decode-sweep"),
        help: "Time one-sequence greedy decode with each setting and kernel off in turn, alternated (needs --model).")
    var decodeSweep = false

    @Flag(help: "First tune a one-sequence decode step's settings on this card, as the server does at start (needs --model).")
    var tune = false

    @Option(help: "Decode steps timed per batch size.")
    var steps = 128

    @Option(
        name: .customLong("sweep-prompt"),
        help: "Tokens of the prompt each --decode-sweep timing starts from (the keys its attention reads; at most 4080 less --steps).")
    var sweepPrompt = 64

    @Option(help: "Write the figures as JSON to this file.")
    var json: String?

    @Flag(name: .customLong("no-cublas"), help: "Use the built-in kernels for every product.")
    var noCUBLAS = false

    @Option(
        name: .customLong("write-random-model"),
        help: "Write Gemma 3 270m- or 1b-shaped (or tiny) random bf16 weights to FOLDER and exit (no GPU needed), as SHAPE:FOLDER.")
    var randomModel: String?

    func run() throws {
        if let randomModel {
            let parts = randomModel.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2, let shape = ["270m": RandomGemma.shape270M, "1b": RandomGemma.shape1B, "tiny": RandomGemma.shapeTiny][parts[0]] else {
                throw ValidationError("--write-random-model takes 270m:FOLDER, 1b:FOLDER or tiny:FOLDER (three small layers, for the CUDA emulator)")
            }
            try shape.write(to: parts[1], seed: 1234)
            print("random \(parts[0])-shaped weights in \(parts[1])")
            return
        }
        let started = Date()
        let gpu = try CUDABackend(useCUBLAS: !noCUBLAS)
        let device = gpu.context.device
        print("device      \(device.name), sm_\(device.architecture), \(device.multiprocessors) SMs, driver CUDA \(gpu.context.driver.versionString)")
        print("nvrtc       \(gpu.nvrtcPath); kernels \(gpu.kernels.fromCache ? "from the cache" : "compiled") (\(String(format: "%.2f", Date().timeIntervalSince(started))) s to ready)")
        print("cublas      \(gpu.cublas?.path ?? "not used: \(gpu.cublasProblem ?? "")")")
        print("tensor      \(gpu.tensorCoreProblem.map { "cores not used: \($0)" } ?? "cores used for prefill products without cuBLAS (gemm_mma_bf16, self-check passed)")")
        print("norms       \(gpu.fusedNormProblem.map { "not fused: \($0)" } ?? (gpu.fusedNorms ? "fused into the next product in one-sequence steps of hidden size up to \(GemmaKernels.fusedNormMaximum) (self-check passed)" : "not fused (turned off)"))")
        print("head norms  \(gpu.fusedHeadNorms ? "q/k norms and RoPE inside the attention of decode steps" : "q/k norms and RoPE in norm_rope's launch (turned off)")")
        print("early loads \(gpu.attentionEarlyLoads ? "a decode step's attention loads its first keys and values before it waits for the qkv product" : "a decode step's attention loads after its wait (INFERENCE_ATTENTION_EARLY_LOADS=off)")")
        print("persistent  \(gpu.persistentProblem.map { "layers unavailable: \($0)" } ?? "layers \(gpu.persistentLayers.rawValue) (decode_layer and decode_attention: \(gpu.persistentBlocksPerMultiprocessor) blocks an SM, decode_mlp \(gpu.persistentMLPBlocksPerMultiprocessor), over \(device.multiprocessors) SMs; INFERENCE_PERSISTENT_LAYERS=off, attention, halves or whole)")")
        if gpu.prefetchAheadBytes == 0 {
            print("prefetch    none asked of L2 by a one-sequence step's attention (INFERENCE_PREFETCH_AHEAD=MiB asks for the next weights)")
        } else {
            let perBlock = CUDABackend.prefetchBudget(Int.max, blocks: 1, kind: gpu.prefetchAheadKind) >> 10
            print(String(format: "prefetch    %.1f MiB of the next products' weights asked of L2 during a one-sequence step's attention, %@ (at most %d KiB a block of it; L2 %.0f MiB)", Double(gpu.prefetchAheadBytes) / 1_048_576, gpu.prefetchAheadKind.rawValue, perBlock, Double(gpu.context.device.l2CacheBytes) / 1_048_576))
        }
        print("staged      weights \(gpu.stagedWeights == .off ? "asked of L2 before a product's wait, not staged (INFERENCE_STAGED_WEIGHTS=products, gate-up or on stages them in shared memory)" : "staged in shared memory before a product's wait: \(gpu.stagedWeights.rawValue) (INFERENCE_STAGED_WEIGHTS)")")
        print("mlp         \(gpu.fusedMLP ? "a one-token step's MLP in one launch (mlp_fused_bf16, INFERENCE_FUSED_MLP=on)" : "a one-token step's MLP in two launches (INFERENCE_FUSED_MLP=on fuses them)")")
        print("output      \(gpu.fusedOutput ? "a one-token step's attention shares merged inside the output projection (attention_output_bf16, INFERENCE_FUSED_OUTPUT=on)" : "a one-token step's attention shares merged before the output projection (INFERENCE_FUSED_OUTPUT=on merges them inside it)")")
        print("graphs      \(gpu.context.graphStatistics.disabled.map { "off: \($0)" } ?? "on (repeated steps are captured and replayed)")")
        print("dependent   \(gpu.context.dependentLaunchProblem.map { "launches off: \($0)" } ?? "launches on (a kernel starts while the one before it drains)")")
        var failures = 0
        var figures: [String: Any] = ["device": device.name, "sm": device.architecture]

        if ops {
            var check = try GPUCheck(gpu: gpu)
            for result in try check.operations() {
                print(result.line)
                if !result.passed { failures += 1 }
            }
        }

        if golden != nil || compare || bench || decodeSweep || tune {
            let engine = try Engine.load(path: try options.resolvedPath(), exactActivations: true)
            let loadStart = Date()
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
            try gpu.synchronize()
            let c = engine.config
            print(String(format: "model       %@: %d layers, hidden %d, vocabulary %d; on the GPU in %.2f s", engine.path, c.layerCount, c.hiddenSize, c.vocabularySize, Date().timeIntervalSince(loadStart)))

            if tune {
                let report = try DecodeTuning.tune(model: model, knobs: DecodeTuning.Knob.open(environment: ProcessInfo.processInfo.environment))
                print("tuning      \(report.line)")
                figures["tuning"] = Dictionary(uniqueKeysWithValues: report.decisions.map { ($0.variable, $0.chosen) })
                figures["tuning_milliseconds"] = Dictionary(
                    uniqueKeysWithValues: report.decisions.flatMap { d in d.milliseconds.compactMap { m in m.median.map { ("\(d.variable)=\(m.value)", $0) } } })
                let wrong = report.decisions.flatMap(\.differing)
                if !wrong.isEmpty { failures += 1 }
            }

            if compare {
                let prompt = [2] + (0..<40).map { (1000 + ($0 * 7919) % 20_000) % c.vocabularySize }
                let result = try GPUCheck.compareModels(cpu: engine.model, gpu: model, prompt: prompt, steps: 8)
                let passed = result.error <= 2e-2
                print(String(format: "%@ model logits GPU vs CPU: worst relative error %.2e over %d steps, same greedy token at %d", passed ? "ok  " : "FAIL", result.error, result.steps, result.agreeing))
                if !passed { failures += 1 }
                figures["model_relative_error"] = result.error
                // Settings off by default, turned the other way: the same bar, on this GPU's own barriers
                // and memory order, which the emulator cannot show (skipped where nothing took them).
                func compareTurned(
                    _ setting: ReferenceWritableKeyPath<CUDABackend, Bool>, launches: KeyPath<CUDABackend, Int>,
                    _ label: (Bool) -> String, unused: String
                ) throws {
                    let was = gpu[keyPath: setting], before = gpu[keyPath: launches]
                    gpu[keyPath: setting] = !was
                    defer { gpu[keyPath: setting] = was }
                    let other = try GPUCheck.compareModels(cpu: engine.model, gpu: model, prompt: prompt, steps: 8)
                    guard was || gpu[keyPath: launches] > before else {
                        print("skip model logits GPU vs CPU, \(label(true)): \(unused)")
                        return
                    }
                    let passed = other.error <= 2e-2
                    print(String(format: "%@ model logits GPU vs CPU, %@: worst relative error %.2e over %d steps, same greedy token at %d", passed ? "ok  " : "FAIL", label(!was), other.error, other.steps, other.agreeing))
                    if !passed { failures += 1 }
                }
                try compareTurned(
                    \.fusedMLP, launches: \.fusedMLPLaunches, { $0 ? "the MLP fused (one launch)" : "the MLP in two launches" },
                    unused: "not fused here (it needs hidden size up to \(GemmaKernels.fusedMLPMaximumHidden), the norms fused and its whole grid resident at once)")
                try compareTurned(
                    \.fusedOutput, launches: \.fusedOutputLaunches,
                    { "attention's merge \($0 ? "inside" : "before") the output projection" }, unused: "not fused here")
            }

            if compare {
                // Weights staged in shared memory: the same sums in the same order, so the same bits.
                let staging = gpu.stagedWeights, launches = gpu.stagedLaunches
                let prompt = [2] + (0..<24).map { (500 + ($0 * 7919) % 20_000) % c.vocabularySize }
                gpu.stagedWeights = .off
                let plain = try GPUCheck.greedyLogits(model, prompt: prompt, steps: 8)
                gpu.stagedWeights = .on
                let staged = try GPUCheck.greedyLogits(model, prompt: prompt, steps: 8)
                gpu.stagedWeights = staging
                if gpu.stagedLaunches == launches {
                    print("skip model logits with the weights staged: no product staged here (each needs its whole grid resident at once)")
                } else {
                    let same = plain == staged
                    print("\(same ? "ok  " : "FAIL") model logits with the weights staged: \(same ? "the same bits as without" : "not the same bits as without") over 9 steps")
                    if !same { failures += 1 }
                }
            }

            if let golden {
                for item in try GPUCheck.goldenCases(file: golden) {
                    // bf16 weights on the device: the README's bar for a bf16 engine (0.25 margin, 0.15).
                    let result = try GPUCheck.golden(model, item, margin: 0.25, tolerance: 0.15)
                    print(String(format: "%@ golden %-22@ %2d steps, largest top-10 logit/logprob difference %.4f", result.passed ? "ok  " : "FAIL", item.name as NSString, result.steps, result.difference))
                    if !result.passed { failures += 1 }
                }
            }

            if bench {
                let timed = try benchmark(model: model, weights: engine.weights, gpu: gpu)
                failures += timed["pipeline_failures"] as? Int ?? 0
                figures.merge(timed) { $1 }
            }
            if decodeSweep {
                figures["decode_sweep"] = try sweep(model: model, gpu: gpu)
            }
        }

        if let json {
            let data = try JSONSerialization.data(withJSONObject: figures, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: json))
        }
        if failures > 0 {
            print("\(failures) check(s) failed")
            throw ExitCode(1)
        }
        print("all GPU checks passed")
    }

    /// Where a one-sequence decode step's time goes, inside the step's graph: the step with one
    /// setting changed, or one kernel (or launch shape of one) dropped, against the step as it is.
    /// Each timing starts from the same prompt (`--sweep-prompt`, 64 tokens by default), so every
    /// variant attends over the same keys; the variants are alternated ROUNDS times so that a drift
    /// of the card's clocks shows as a spread, not as a difference. A dropped kernel's figure is its
    /// cost in the step, launch gap and all (its results are then wrong; they are not checked here).
    private func sweep(model: Gemma3Model<CUDABackend>, gpu: CUDABackend) throws -> [String: Double] {
        let c = model.config
        let vocabulary = c.vocabularySize
        let runner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 512)
        let slot = runner.makeSlot(contextLength: 4096)
        let prompt = [2] + (1..<max(1, min(sweepPrompt, 4096 - 16 - steps))).map { (1000 + ($0 * 7919) % 20_000) % vocabulary }
        print("sweep       from a prompt of \(prompt.count) tokens, \(steps) steps timed")
        func grid(_ m: Int, _ k: Int) -> Int { (m * GemmaKernels.gemvSplits(rows: m, columns: k) + 7) / 8 }
        let queryWidth = c.headCount * c.headDimension
        var variants: [(name: String, set: (Bool) -> Void)] = [("as it is", { _ in })]
        variants.append(("steps not pipelined", { runner.pipelining = !$0 }))
        let fused = gpu.fusedNorms
        variants.append(("norms unfused", { gpu.fusedNorms = $0 ? false : fused }))
        if gpu.persistentProblem == nil {
            let mode = gpu.persistentLayers, perSM = gpu.persistentBlocksPerMultiprocessor
            for other in CUDABackend.PersistentLayers.allCases where other != mode {
                variants.append(("persistent layers: \(other.rawValue)", { gpu.persistentLayers = $0 ? other : mode }))
            }
            // Halves with fewer blocks of decode_mlp an SM.
            let mlpPerSM = gpu.persistentMLPBlocksPerMultiprocessor
            for blocks in [2, 3] where blocks < mlpPerSM {
                variants.append((
                    "persistent halves, decode_mlp \(blocks) blocks an SM",
                    { on in
                        gpu.persistentLayers = on ? .halves : mode
                        gpu.persistentMLPBlocksPerMultiprocessor = on ? blocks : mlpPerSM
                    }
                ))
            }
            // Whole layers with other block counts an SM (as many as one holds at most).
            for blocks in [1, 3, 4] where blocks != perSM && blocks <= gpu.persistentResidentBlocks {
                variants.append((
                    "persistent whole, \(blocks) blocks an SM",
                    { on in
                        gpu.persistentLayers = on ? .whole : mode
                        gpu.persistentBlocksPerMultiprocessor = on ? blocks : perSM
                    }
                ))
            }
        }
        let early = gpu.attentionEarlyLoads
        variants.append(("attention loads \(early ? "after" : "before") its wait", { gpu.attentionEarlyLoads = $0 ? !early : early }))
        let trims = gpu.attentionTrims
        variants.append(("attention \(trims ? "untrimmed" : "trimmed")", { gpu.attentionTrims = $0 ? !trims : trims }))
        let (shares, longShares) = (gpu.decodeShares, gpu.longDecodeShares)
        for other in [8, 32] where other != shares {
            variants.append(("attention in \(other) shares up to \(32 * other) keys", { gpu.decodeShares = $0 ? other : shares }))
        }
        for other in [16, 32] where other != longShares {
            variants.append(("attention in \(other) shares past \(32 * shares) keys", { gpu.longDecodeShares = $0 ? other : longShares }))
        }
        // The attention asking L2 for the output projection's, gate's and up's weights (prefetch_ahead:
        // 64 MiB is all of them for the 1B), each kind.
        let ahead = gpu.prefetchAheadBytes, aheadKind = gpu.prefetchAheadKind
        for (mib, kind) in [(16, CUDABackend.PrefetchKind.lines), (16, .bulk), (64, .bulk), (16, .evictLast), (64, .evictLast)]
        where mib << 20 != ahead || kind != aheadKind {
            variants.append((
                "L2 ahead \(mib) MiB, \(kind.rawValue)",
                { on in
                    gpu.prefetchAheadBytes = on ? mib << 20 : ahead
                    gpu.prefetchAheadKind = on ? kind : aheadKind
                }
            ))
        }
        let fusedMLP = gpu.fusedMLP
        variants.append(("MLP \(fusedMLP ? "in two launches" : "fused (one launch)")", { gpu.fusedMLP = $0 ? !fusedMLP : fusedMLP }))
        variants.append(("fused norms counting their blocks", { gpu.fusedNormsAlwaysCount = $0 }))
        let fusedOutput = gpu.fusedOutput
        variants.append((
            "attention merged \(fusedOutput ? "before" : "inside") the output product", { gpu.fusedOutput = $0 ? !fusedOutput : fusedOutput }
        ))
        let staging = gpu.stagedWeights
        for other in CUDABackend.StagedWeights.allCases where other != staging {
            variants.append(("weights staged: \(other.rawValue)", { gpu.stagedWeights = $0 ? other : staging }))
        }
        // The step handed to the GPU in other pieces: a runner of its own over the same weights.
        var pieced: [Int: (BatchRunner<CUDABackend>, BatchRunner<CUDABackend>.Slot)] = [:]
        for (each, first, label) in [(0, 0, "the step as one graph"), (4, 2, "pieces of 4 layers"), (8, 1, "a first piece of 1 layer")] {
            var other = model
            other.layersPerSubmission = each
            other.layersInFirstSubmission = first
            let otherRunner = BatchRunner(model: other, maximumSequences: 1, prefillChunk: 512)
            pieced[variants.count] = (otherRunner, otherRunner.makeSlot(contextLength: 4096))
            variants.append((label, { _ in }))
        }
        let kernels = [
            ("qkv product (gemv_norm_bf16)", "gemv_norm_bf16"), ("attention_rows", "attention_rows"),
            ("attention_combine", "attention_combine"),
            ("output product", "gemv_bf16@\(grid(c.hiddenSize, queryWidth))"),
            ("gate/up/GELU product", "gemv_gelu_norm_bf16"),
            ("down product", "gemv_bf16@\(grid(c.hiddenSize, c.intermediateSize))"),
            ("LM head", "gemv_bf16@\(grid(vocabulary, c.hiddenSize))"), ("argmax", "argmax_rows"),
            ("embedding", "embed_rows"),
        ]
        for (label, name) in kernels {
            // A pipelined step embeds with embed_drawn; a staged product runs its _staged twin.
            let names: Set<String> = name == "embed_rows" ? [name, "embed_drawn"] : [name, name.replacingOccurrences(of: "_bf16", with: "_staged_bf16")]
            variants.append(("without \(label)", { gpu.context.skippedKernels = $0 ? names : [] }))
        }
        let rounds = Int(ProcessInfo.processInfo.environment["ROUNDS"] ?? "") ?? 3
        var times = [[Double]](repeating: [], count: variants.count)
        // Launches each round of a variant dropped a timed step (a row dropping a kernel that drops
        // nothing would time the step as it is).
        var dropped = [[Int]](repeating: [], count: variants.count)
        for _ in 0..<rounds {
            for (i, variant) in variants.enumerated() {
                variant.set(true)
                defer { variant.set(false) }
                let (runner, slot) = pieced[i] ?? (runner, slot)
                slot.reset()
                var next = [Sampler.argmax(try runner.prefill(slot, prompt))]
                for _ in 0..<8 { next = try runner.decodeGreedy([slot], tokens: next) }
                let skipped = gpu.context.skippedLaunches
                let time = try seconds {
                    for _ in 0..<steps { next = try runner.decodeGreedy([slot], tokens: next) }
                }
                times[i].append(time / Double(steps) * 1000)
                dropped[i].append((gpu.context.skippedLaunches - skipped) / steps)
            }
        }
        // Where the step as it is spends its time: recording, its graph alone, each kernel alone.
        do {
            slot.reset()
            var next = [Sampler.argmax(try runner.prefill(slot, prompt))]
            for _ in 0..<8 { next = try runner.decodeGreedy([slot], tokens: next) }
            runner.pipelining = false  // as in the benchmark's profile
            next = try runner.decodeGreedy([slot], tokens: next)
            if let profile = try gpu.context.profileStep({ next = try runner.decodeGreedy([slot], tokens: next) }) {
                _ = report(profile, top: 14)
            }
            runner.pipelining = true
        }
        var figures: [String: Double] = [:]
        let base = times[0].sorted()[rounds / 2]
        for (i, variant) in variants.enumerated() {
            let median = times[i].sorted()[rounds / 2]
            let each = times[i].map { String(format: "%.3f", $0) }.joined(separator: " ")
            let drops = Set(dropped[i]) == [0] ? "" : " dropped " + dropped[i].map(String.init).joined(separator: "/") + " launches a step"
            print(String(format: "sweep       %-40@ %.3f ms/step (%+.3f)  [%@]%@", variant.name as NSString, median, median - base, each, drops as NSString))
            figures[variant.name] = median
        }
        // The settings the start-up tuning's rule would take over the step as it is (faster in every
        // round, by 1% at least): what to look at first. Rows dropping a kernel are not settings.
        let faster = variants.indices.dropFirst().filter {
            !variants[$0].name.hasPrefix("without ") && DecodeTuning.choose([times[0], times[$0]], current: 0) == 1
        }
        print("sweep       faster than as it is in every round, by 1% or more: \(faster.isEmpty ? "none" : faster.map { variants[$0].name }.joined(separator: "; "))")
        return figures
    }

    /// One decode step's work for `slots` (inputs `tokens`), each drawn as `draw` says with the next
    /// seed of its own generator, and the seed after that too (`Work.nextDraw`), as the server gives
    /// it, so that a sampled step is pipelined.
    private static func drawn(
        _ slots: [BatchRunner<CUDABackend>.Slot], _ tokens: [Int], _ draw: TokenDraw, seeds: inout [Xoshiro256StarStar]
    ) -> [BatchRunner<CUDABackend>.Work] {
        slots.indices.map { i in
            var item = BatchRunner<CUDABackend>.Work(slot: slots[i], tokens: [tokens[i]])
            item.draw = draw
            if !draw.isArgmax {
                item.draw!.seed = seeds[i].next()
                var peek = seeds[i]
                item.nextDraw = draw
                item.nextDraw!.seed = peek.next()
            }
            return item
        }
    }

    private static func token(_ output: BatchRunner<CUDABackend>.Output) -> GeneratedToken {
        guard case .token(let token) = output else { preconditionFailure("a drawn token was asked for") }
        return token
    }

    private static func tokenID(_ output: BatchRunner<CUDABackend>.Output) -> Int { token(output).id }

    /// The persistent launches' stamps (`CUDABackend.endPersistentStamps`) as the mean time of each
    /// phase and wait, from the last block to reach the point before to the last to reach the point
    /// after (the points `decode_layer`'s comment numbers), and of the seams between launches.
    static func phaseSummary(_ launches: [[[UInt64]]]) -> String {
        let spans: [(name: String, from: Int, to: Int)] = [
            ("q/k/v", 0, 1), ("wait", 1, 2), ("attention", 2, 3), ("wait", 3, 4), ("merge", 4, 5), ("wait", 5, 6),
            ("output", 6, 7), ("wait", 7, 8), ("gate/up", 8, 9), ("wait", 9, 10), ("down", 10, 11),
        ]
        var sums = [Double](repeating: 0, count: spans.count + 1), counts = [Int](repeating: 0, count: spans.count + 1)
        var previousEnd: UInt64?
        var previousEndedFirstHalf = false
        for blocks in launches {
            let latest = (0..<16).map { k in blocks.map { $0[k] }.filter { $0 > 0 }.max() }
            for (i, span) in spans.enumerated() {
                // Without a merge (one share) the output projection follows attention's wait.
                let from = span.name == "output" && latest[6] == nil ? 4 : span.from
                guard let start = latest[from], let end = latest[span.to], end >= start else { continue }
                sums[i] += Double(end - start)
                counts[i] += 1
            }
            // The seam: from the last block of the launch before to this launch's last block started;
            // none from a first half to the next layer's (`attention`: the MLP's own launches came
            // in between), only from a first half to decode_mlp and from a layer's end.
            let afterFirstHalf = previousEnd != nil && previousEndedFirstHalf
            if let end = previousEnd, let start = afterFirstHalf ? latest[8] : latest[0] ?? latest[8], start >= end {
                sums[spans.count] += Double(start - end)
                counts[spans.count] += 1
            }
            previousEnd = latest[11] ?? latest[7]
            previousEndedFirstHalf = latest[11] == nil
        }
        let names = spans.map(\.name) + ["seam before a launch"]
        return names.indices.filter { counts[$0] > 0 }.map { String(format: "%@ %.1f", names[$0], sums[$0] / Double(counts[$0]) / 1000) }
            .joined(separator: ", ")
    }

    private func seconds(_ body: () throws -> Void) rethrows -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
    }

    /// Prints where a step's time goes (its `top` costliest operations) and returns it for the JSON.
    private func report(_ profile: CUDAContext.StepProfile, top: Int) -> [String: Any] {
        let operations = profile.operations.reduce(0) { $0 + $1.count }
        let sum = profile.operations.reduce(0) { $0 + $1.seconds }
        print(String(format: "            profile: the host records the step in %.2f ms; its graph alone runs %.2f ms on the GPU (%.2f ms without its %d uploads); its %d operations one by one sum to %.2f ms", profile.recordSeconds * 1000, profile.graphSeconds * 1000, profile.graphWithoutUploadsSeconds * 1000, profile.uploads, operations, sum * 1000))
        for operation in profile.operations.prefix(top) {
            let what = operation.name.padding(toLength: 18, withPad: " ", startingAt: 0) + " " + operation.shape.padding(toLength: 18, withPad: " ", startingAt: 0)
            print(String(format: "              %7.3f ms  %3d x ", operation.seconds * 1000, operation.count) + what + String(format: " %6.1f us each", operation.seconds / Double(operation.count) * 1e6))
        }
        return [
            "record_ms": profile.recordSeconds * 1000, "graph_ms": profile.graphSeconds * 1000,
            "graph_without_uploads_ms": profile.graphWithoutUploadsSeconds * 1000, "uploads": profile.uploads,
            "operations": profile.operations.map { ["name": $0.name, "shape": $0.shape, "count": $0.count, "ms": $0.seconds * 1000] as [String: Any] },
        ]
    }

    private func benchmark(model: Gemma3Model<CUDABackend>, weights: Gemma3Weights, gpu: CUDABackend) throws -> [String: Any] {
        var figures: [String: Any] = [:]
        var pipelineFailures = 0
        let bandwidth = try GPUCheck.measuredBandwidth(gpu)
        let bytes = GPUCheck.weightBytesPerStep(weights)
        let limit = bandwidth / Double(bytes)
        print(String(format: "bandwidth   %.0f GB/s measured (device-to-device copy, read + write); %.1f MB of weights per decode step: at most %.0f tokens/s per sequence", bandwidth / 1e9, Double(bytes) / 1e6, limit))
        figures["bandwidth_gbs"] = bandwidth / 1e9
        figures["weight_bytes_per_step"] = bytes
        figures["bandwidth_limit_tokens_per_second"] = limit

        let runner = BatchRunner(model: model, maximumSequences: 16, prefillChunk: 512)
        let vocabulary = model.config.vocabularySize
        let prompt = [2] + (1..<512).map { (1000 + ($0 * 7919) % 20_000) % vocabulary }
        // Prefill: a 512-token prompt in one pass (best of 3 after a warm-up).
        let slot = runner.makeSlot(contextLength: 4096)
        _ = try runner.prefill(slot, prompt)
        var prefill = Double.infinity
        for _ in 0..<3 {
            slot.reset()
            prefill = min(prefill, try seconds { _ = try runner.prefill(slot, prompt) })
        }
        let used = gpu.cublas != nil ? "cuBLAS" : gpu.prefillWithTensorCores ? "tensor cores, no cuBLAS" : "tiled kernel, no cuBLAS"
        print(String(format: "prefill     512 tokens in %.2f ms: %.0f tokens/s (%@)", prefill * 1000, 512 / prefill, used))
        figures["prefill_tokens_per_second"] = 512 / prefill
        // The built-in kernels, timed alike: the tensor-core one, which a Cloud Run image (no cuBLAS)
        // runs, and the tiled one it replaced. Graphs off, as with cuBLAS (whose calls split a prefill
        // into pieces too short to capture) and as for prompts of new lengths.
        var builtIn: [(name: String, key: String, tensorCores: Bool)] = []
        if gpu.tensorCoreProblem == nil {
            builtIn.append(("built-in, tensor cores (no cuBLAS)", "prefill_tensor_cores_tokens_per_second", true))
        }
        builtIn.append(("built-in, tiled kernel (no cuBLAS)", "prefill_tiled_tokens_per_second", false))
        do {
            let before = (cublas: gpu.prefillWithCUBLAS, tensorCores: gpu.prefillWithTensorCores, graphs: gpu.context.graphsEnabled)
            defer {
                gpu.prefillWithCUBLAS = before.cublas
                gpu.prefillWithTensorCores = before.tensorCores
                gpu.context.graphsEnabled = before.graphs
            }
            gpu.prefillWithCUBLAS = false
            gpu.context.graphsEnabled = false
            for kernel in builtIn {
                gpu.prefillWithTensorCores = kernel.tensorCores
                var best = Double.infinity
                for _ in 0..<3 {
                    slot.reset()
                    best = min(best, try seconds { _ = try runner.prefill(slot, prompt) })
                }
                print(String(format: "            %@: %.2f ms, %.0f tokens/s", kernel.name, best * 1000, 512 / best))
                figures[kernel.key] = 512 / best
            }
        }

        for batch in [1, 16] {
            // Room for every timed variant below: at batch 1 some 35 runs of --steps and their warm-up
            // (a slot that runs out of room stops the check: 4096 did once the prefetch kinds came).
            let slots = (0..<batch).map { _ in runner.makeSlot(contextLength: max(4096, 40 * steps + 1024)) }
            var next = try slots.enumerated().map { i, slot in
                Sampler.argmax(try runner.prefill(slot, Array(prompt.prefix(64 + i))))
            }
            // Pipelined steps against steps one at a time from the same caches: the same tokens (on a
            // GPU, where a queued step runs while the host reads the one before), greedy and drawn
            // with seeds known a step ahead (as the server's samplers give them), and the same
            // logprobs where they are asked for.
            if gpu.pipelinesSteps {
                let twins = (0..<batch).map { _ in runner.makeSlot(contextLength: 1024) }
                func tokens(pipelined: Bool, parameters: SamplingParameters, logprobs: Int? = nil) throws -> [Int] {
                    runner.pipelining = pipelined
                    defer { runner.pipelining = true }
                    var chosen: [Int] = []
                    let prompts = (0..<batch).map { Array(prompt.prefix(64 + $0)) }
                    var last = try zip(twins, prompts).map { slot, prompt in
                        slot.reset()
                        return Sampler.argmax(try runner.prefill(slot, prompt))
                    }
                    // Each sequence's draws from a sampler of its own, as the server makes them.
                    var samplers = prompts.indices.map { i in
                        var seeded = parameters
                        seeded.seed = 40 + UInt64(i)
                        return Sampler(parameters: seeded, prompt: prompts[i])
                    }
                    for i in samplers.indices { samplers[i].accept(last[i]) }
                    let taken = runner.stepsTakenAhead
                    for _ in 0..<40 {
                        let work = twins.indices.map { i in
                            var item = BatchRunner<CUDABackend>.Work(slot: twins[i], tokens: [last[i]])
                            item.draw = samplers[i].nextDraw()
                            item.logprobs = logprobs
                            if !item.draw!.isPlainArgmax || logprobs != nil { item.nextDraw = samplers[i].upcomingDraw() }
                            return item
                        }
                        let drawn = try runner.outputs(work).map(Self.token)
                        last = drawn.map(\.id)
                        for i in samplers.indices { samplers[i].accept(last[i]) }
                        chosen += last
                        if logprobs != nil {
                            // The logprobs' bits and the alternatives' ids, which must come back alike too.
                            chosen += drawn.flatMap { token in
                                [Int(token.logprob.bitPattern)] + token.top.flatMap { [$0.id, Int($0.logprob.bitPattern)] }
                            }
                        }
                    }
                    if pipelined && runner.stepsTakenAhead - taken < 39 {
                        print("FAIL only \(runner.stepsTakenAhead - taken) of 40 steps were taken from a step queued ahead")
                        pipelineFailures += 1
                    }
                    return chosen
                }
                let variants: [(String, SamplingParameters, Int?)] = [
                    ("greedy", SamplingParameters(temperature: 0), nil),
                    ("sampled (T 1, top-p 0.95)", SamplingParameters(temperature: 1, topP: 0.95), nil),
                    (
                        "penalized (T 1, top-p 0.95, repetition 1.1, presence 0.5, frequency 0.5)",
                        SamplingParameters(temperature: 1, topP: 0.95, repetitionPenalty: 1.1, presencePenalty: 0.5, frequencyPenalty: 0.5),
                        nil
                    ),
                    ("sampled with 5 logprobs (T 1, top-p 0.95; the logprobs too)", SamplingParameters(temperature: 1, topP: 0.95), 5),
                ]
                for (label, parameters, logprobs) in variants {
                    let serialTokens = try tokens(pipelined: false, parameters: parameters, logprobs: logprobs)
                    let pipelinedTokens = try tokens(pipelined: true, parameters: parameters, logprobs: logprobs)
                    let same = pipelinedTokens == serialTokens
                    print("\(same ? "ok  " : "FAIL") pipelined \(label) steps at batch \(batch) choose the tokens of steps one at a time (40 steps)")
                    if !same { pipelineFailures += 1 }
                }
            }
            // Warm-up steps: the second captures the step's CUDA graph, and the rest bring the card's
            // clocks up (the 270M's first timing on an H100 read 0.90 ms a step against 0.71 ms for
            // every later one of the same steps).
            for _ in 0..<48 { next = try runner.decodeGreedy(slots, tokens: next) }
            // Greedy on the device: only token ids come back.
            let graphsBefore = gpu.context.graphStatistics
            let time = try seconds {
                for _ in 0..<steps { next = try runner.decodeGreedy(slots, tokens: next) }
            }
            let graphsAfter = gpu.context.graphStatistics
            let rate = Double(batch * steps) / time
            print(String(format: "decode b%-2d  %.2f ms/step, %.0f tokens/s in all (%.0f per sequence); %.0f%% of the bandwidth limit per sequence", batch, time / Double(steps) * 1000, rate, rate / Double(batch), 100 * rate / Double(batch) / limit))
            print("            CUDA graphs: \(graphsAfter.replayed - graphsBefore.replayed) replays, \(graphsAfter.captured - graphsBefore.captured) captures, \(graphsAfter.direct - graphsBefore.direct) direct runs\(graphsAfter.disabled.map { " (off: \($0))" } ?? "")")
            figures["decode_b\(batch)_tokens_per_second"] = rate
            figures["decode_b\(batch)_ms_per_step"] = time / Double(steps) * 1000
            figures["decode_b\(batch)_graph_replays"] = graphsAfter.replayed - graphsBefore.replayed
            if gpu.context.graphsEnabled {
                // The same steps launched kernel by kernel: what the graphs save.
                gpu.context.graphsEnabled = false
                let directTime = try seconds {
                    for _ in 0..<steps { next = try runner.decodeGreedy(slots, tokens: next) }
                }
                gpu.context.graphsEnabled = true
                print(String(format: "            without CUDA graphs: %.2f ms/step (graphs %.2fx faster)", directTime / Double(steps) * 1000, directTime / time))
                figures["decode_b\(batch)_no_graphs_ms_per_step"] = directTime / Double(steps) * 1000
            }
            // The same steps with a setting off (warmed up first: it changes the step's graph), then
            // on again: seconds for `steps` steps.
            func timedWithout(_ set: (Bool) -> Void) throws -> Double {
                set(false)
                for _ in 0..<2 { next = try runner.decodeGreedy(slots, tokens: next) }
                let without = try seconds {
                    for _ in 0..<steps { next = try runner.decodeGreedy(slots, tokens: next) }
                }
                set(true)
                for _ in 0..<2 { next = try runner.decodeGreedy(slots, tokens: next) }
                return without
            }
            if runner.pipelining && gpu.pipelinesSteps {
                // Each step read back before the next is queued: what pipelining saves.
                let serialTime = try timedWithout { runner.pipelining = $0 }
                print(String(format: "            without pipelined steps: %.2f ms/step (pipelined %.2fx faster)", serialTime / Double(steps) * 1000, serialTime / time))
                figures["decode_b\(batch)_unpipelined_ms_per_step"] = serialTime / Double(steps) * 1000
            }
            if gpu.context.dependentLaunchEnabled {
                // Each launch waiting for the one before to finish: what dependent launches save.
                let serialTime = try timedWithout { gpu.context.dependentLaunchEnabled = $0 }
                print(String(format: "            without dependent launches: %.2f ms/step (dependent launches %.2fx faster)", serialTime / Double(steps) * 1000, serialTime / time))
                figures["decode_b\(batch)_serial_launch_ms_per_step"] = serialTime / Double(steps) * 1000
            }
            if batch == 1 && gpu.fusedNorms {
                // Each residual norm in a launch of its own: what fusing them saves.
                let unfusedTime = try timedWithout { gpu.fusedNorms = $0 }
                print(String(format: "            without fused residual norms: %.2f ms/step (fused %.2fx faster)", unfusedTime / Double(steps) * 1000, unfusedTime / time))
                figures["decode_b1_unfused_norms_ms_per_step"] = unfusedTime / Double(steps) * 1000
            }
            if gpu.fusedHeadNorms {
                // The q/k norms and RoPE in norm_rope's launch: what applying them inside attention saves.
                let unfusedTime = try timedWithout { gpu.fusedHeadNorms = $0 }
                print(String(format: "            without q/k norms inside attention: %.2f ms/step (inside %.2fx faster)", unfusedTime / Double(steps) * 1000, unfusedTime / time))
                figures["decode_b\(batch)_unfused_head_norms_ms_per_step"] = unfusedTime / Double(steps) * 1000
            }
            if batch == 1 {
                // The MLP in one launch or two (`fusedMLP`, off by default): what fusing saves.
                let fusedMLP = gpu.fusedMLP
                let otherTime = try timedWithout { gpu.fusedMLP = $0 ? fusedMLP : !fusedMLP }
                print(String(format: "            %@ the fused MLP: %.2f ms/step (%.2fx)", fusedMLP ? "without" : "with", otherTime / Double(steps) * 1000, otherTime / time))
                figures["decode_b1_\(fusedMLP ? "unfused" : "fused")_mlp_ms_per_step"] = otherTime / Double(steps) * 1000
            }
            if batch == 1 && gpu.stagedWeights != .off {
                // The products' weights asked of L2 only, not staged in shared memory: what staging saves.
                let staging = gpu.stagedWeights
                let unstagedTime = try timedWithout { gpu.stagedWeights = $0 ? staging : .off }
                print(String(format: "            without staged weights: %.2f ms/step (staged, %@, %.2fx faster)", unstagedTime / Double(steps) * 1000, staging.rawValue, unstagedTime / time))
                figures["decode_b1_unstaged_ms_per_step"] = unstagedTime / Double(steps) * 1000
            }
            if gpu.attentionEarlyLoads {
                // The attention's first loads after its wait: what loading them before it saves.
                let lateTime = try timedWithout { gpu.attentionEarlyLoads = $0 }
                print(String(format: "            without early attention loads: %.2f ms/step (early %.2fx faster)", lateTime / Double(steps) * 1000, lateTime / time))
                figures["decode_b\(batch)_late_attention_loads_ms_per_step"] = lateTime / Double(steps) * 1000
            }
            if batch == 1 {
                // The same steps with the attention asking L2 for more or less of the next products'
                // weights (prefetch_ahead; 0: none), in each kind (lines from every thread, the copy
                // engine's bulk prefetch, bulk marked evict-last), to find what this card's L2 holds
                // best (`CUDABackend.prefetchBudget` caps a step's amount by its attention's blocks).
                // 8 to 32 MiB of each kind measured slower than none on two H100s; 16 stays timed.
                // Each run starts where the one before left the sequence, so later runs attend over
                // more keys: none goes between the kinds, not last (the sweep, which starts each
                // variant from the same prompt, is the tool for small differences).
                let chosen = gpu.prefetchAheadBytes, chosenKind = gpu.prefetchAheadKind
                var sweep: [(kind: Int, mib: Int, line: String)] = []
                let kinds = CUDABackend.PrefetchKind.allCases
                for (mib, k) in [(16, 0), (0, 0), (16, 1), (16, 2)] where k < kinds.count {
                    gpu.prefetchAheadBytes = mib << 20
                    gpu.prefetchAheadKind = kinds[k]
                    for _ in 0..<2 { next = try runner.decodeGreedy(slots, tokens: next) }
                    let aheadTime = try seconds {
                        for _ in 0..<steps { next = try runner.decodeGreedy(slots, tokens: next) }
                    }
                    sweep.append((k, mib, String(format: "%d MiB %.3f", mib, aheadTime / Double(steps) * 1000)))
                    let name = mib == 0 ? "" : "_\(kinds[k].rawValue.replacingOccurrences(of: "-", with: "_"))"
                    figures["decode_b1_prefetch_\(mib)mib\(name)_ms_per_step"] = aheadTime / Double(steps) * 1000
                }
                gpu.prefetchAheadBytes = chosen
                gpu.prefetchAheadKind = chosenKind
                for _ in 0..<2 { next = try runner.decodeGreedy(slots, tokens: next) }
                print("            prefetch ahead (ms/step; L2 \(gpu.context.device.l2CacheBytes >> 20) MiB, default \(chosen >> 20) MiB \(chosenKind.rawValue)): " + sweep.filter { $0.mib == 0 }.map(\.line).joined())
                for (k, kind) in kinds.enumerated() {
                    print("              \(kind.rawValue): " + sweep.filter { $0.kind == k && $0.mib > 0 }.sorted { $0.mib < $1.mib }.map(\.line).joined(separator: ", "))
                }
            }
            if batch == 1 && gpu.persistentProblem == nil {
                // Layers as launches of a persistent grid (`CUDABackend.persistentLayers`): first the
                // same logits, bit for bit, as launch by launch over 40 steps past 64 keys (on this
                // GPU's own grid barriers and memory order), then each mode timed, side by side.
                let chosen = gpu.persistentLayers, fusedMLP = gpu.fusedMLP
                // The persistent kernels' MLP sums as the two launches do, not as the fused MLP.
                gpu.fusedMLP = false
                defer {
                    gpu.persistentLayers = chosen
                    gpu.fusedMLP = fusedMLP
                }
                let twin = runner.makeSlot(contextLength: 1024)
                var logits: [CUDABackend.PersistentLayers: [[Float]]] = [:]
                for mode in CUDABackend.PersistentLayers.allCases {
                    gpu.persistentLayers = mode
                    twin.reset()
                    var last = [Sampler.argmax(try runner.prefill(twin, Array(prompt.prefix(64))))]
                    var rows: [[Float]] = []
                    for _ in 0..<40 {
                        let step = try runner.decode([twin], tokens: last)
                        rows += step
                        last = step.map(Sampler.argmax)
                    }
                    logits[mode] = rows
                }
                for mode in CUDABackend.PersistentLayers.allCases where mode != .off {
                    let same = logits[mode] == logits[.off]
                    print("\(same ? "ok  " : "FAIL") persistent layers (\(mode.rawValue)): the logits of 40 steps, bit for bit, as launch by launch")
                    if !same { pipelineFailures += 1 }
                }
                // Two rounds, the second in the reverse order (a drift of the card's clocks would
                // otherwise favour one end), each mode's best.
                var best: [CUDABackend.PersistentLayers: Double] = [:]
                for round in 0..<2 {
                    let modes = CUDABackend.PersistentLayers.allCases
                    for mode in round == 0 ? modes : modes.reversed() {
                        gpu.persistentLayers = mode
                        for _ in 0..<2 { next = try runner.decodeGreedy(slots, tokens: next) }
                        let modeTime = try seconds {
                            for _ in 0..<steps { next = try runner.decodeGreedy(slots, tokens: next) }
                        }
                        best[mode] = min(best[mode] ?? .infinity, modeTime / Double(steps) * 1000)
                    }
                }
                var lines: [String] = []
                for mode in CUDABackend.PersistentLayers.allCases {
                    lines.append(String(format: "%@ %.3f", mode.rawValue, best[mode]!))
                    figures["decode_b1_persistent_\(mode.rawValue)_ms_per_step"] = best[mode]!
                }
                print("            persistent layers (ms/step, \(gpu.persistentBlocksPerMultiprocessor) blocks an SM; default \(chosen.rawValue)): " + lines.joined(separator: ", "))
                // Where a persistent layer's time goes: each block's clock at each phase and barrier
                // of one step (not pipelined: the stamps are of that step's launches alone).
                runner.pipelining = false
                defer { runner.pipelining = true }
                for mode in CUDABackend.PersistentLayers.allCases where mode != .off {
                    gpu.persistentLayers = mode
                    for _ in 0..<2 { next = try runner.decodeGreedy(slots, tokens: next) }
                    try gpu.beginPersistentStamps(launches: 2 * model.config.layerCount)
                    next = try runner.decodeGreedy(slots, tokens: next)
                    let summary = Self.phaseSummary(try gpu.endPersistentStamps())
                    print("            persistent \(mode.rawValue), µs a layer (the last block at each point; launched one by one, not as the graph timed above): " + summary)
                }
                gpu.persistentLayers = chosen
                for _ in 0..<2 { next = try runner.decodeGreedy(slots, tokens: next) }
            }
            // Where a greedy step's time goes: the host recording it, its graph alone, each kernel alone.
            // Not pipelined: the replays of a queued step would embed the ids its own argmax left.
            runner.pipelining = false
            next = try runner.decodeGreedy(slots, tokens: next)  // waits for the queued step outside the profile
            if let profile = try gpu.context.profileStep({ next = try runner.decodeGreedy(slots, tokens: next) }) {
                figures["decode_b\(batch)_profile"] = report(profile, top: 14)
            }
            runner.pipelining = true
            // Sampling on the device (temperature 0.8, top-p 0.95, top-k 64): still only ids come back.
            // Each sequence's seeds from its own generator, the next one known a step ahead (as the
            // server's samplers give them), so the steps are pipelined as greedy ones are.
            var seeds = (0..<batch).map { Xoshiro256StarStar(seed: 7 + UInt64($0)) }
            func sampledStep(logprobs: Int? = nil, temperature: Float = 0.8, topK: Int = 64, topP: Float = 0.95) throws {
                var work = Self.drawn(
                    slots, next, TokenDraw(temperature: temperature, topK: topK, topP: topP, minP: 0, seed: 0), seeds: &seeds)
                for i in work.indices { work[i].logprobs = logprobs }
                next = try runner.outputs(work).map(Self.tokenID)
            }
            for _ in 0..<2 { try sampledStep() }
            let sampledTime = try seconds { for _ in 0..<steps { try sampledStep() } }
            print(String(format: "            sampled on the device (T 0.8, top-k 64, top-p 0.95): %.2f ms/step, %.0f tokens/s", sampledTime / Double(steps) * 1000, Double(batch * steps) / sampledTime))
            figures["decode_b\(batch)_sampled_tokens_per_second"] = Double(batch * steps) / sampledTime
            // Not pipelined from here to the profile: its replays of a queued step would embed the
            // ids its own draw left.
            runner.pipelining = false
            try sampledStep()  // waits for the queued step outside the profile
            if gpu.pipelinesSteps {
                try sampledStep()
                let serialTime = try seconds { for _ in 0..<steps { try sampledStep() } }
                print(String(format: "            without pipelined steps: %.2f ms/step (pipelined %.2fx faster)", serialTime / Double(steps) * 1000, serialTime / sampledTime))
                figures["decode_b\(batch)_sampled_unpipelined_ms_per_step"] = serialTime / Double(steps) * 1000
            }
            if let profile = try gpu.context.profileStep({ try sampledStep() }) {
                figures["decode_b\(batch)_sampled_profile"] = report(profile, top: 5)
            }
            runner.pipelining = true
            // Draws without a top-k cut, as a client that sets only the temperature (OpenAI's default,
            // 1) or only top_p sends: drawn on the slices (sample_maxima first), top-p from each
            // slice's top 256 unless the nucleus is wider (then one block reads the whole row). At
            // T 0.3 the nucleus is narrower, as a trained model's usually is.
            let uncut: [(String, String, Float, Float)] = [
                ("temperature only (T 1)", "temperature_only", 1, 1), ("top-p only (T 1, top-p 0.9)", "top_p_only", 1, 0.9),
                ("top-p only (T 0.3, top-p 0.9)", "top_p_only_cold", 0.3, 0.9),
            ]
            for (label, key, temperature, topP) in uncut {
                try sampledStep(temperature: temperature, topK: 0, topP: topP)
                let time = try seconds { for _ in 0..<steps { try sampledStep(temperature: temperature, topK: 0, topP: topP) } }
                print(String(format: "            sampled on the device, %@: %.2f ms/step, %.0f tokens/s", label, time / Double(steps) * 1000, Double(batch * steps) / time))
                figures["decode_b\(batch)_\(key)_tokens_per_second"] = Double(batch * steps) / time
            }
            // With penalties (repetition 1.1, presence and frequency 0.5), from samplers as the server
            // keeps them: each step's history goes with it, and a step queued ahead counts on the
            // device the token drawn before it.
            let penalizing = SamplingParameters(
                temperature: 0.8, topK: 64, topP: 0.95, repetitionPenalty: 1.1, presencePenalty: 0.5, frequencyPenalty: 0.5)
            var samplers = slots.indices.map { Sampler(parameters: penalizing, prompt: Array(prompt.prefix(64 + $0))) }
            func penalizedStep() throws {
                let work = slots.indices.map { i in
                    var item = BatchRunner<CUDABackend>.Work(slot: slots[i], tokens: [next[i]])
                    item.draw = samplers[i].nextDraw()
                    item.nextDraw = samplers[i].upcomingDraw()
                    return item
                }
                next = try runner.outputs(work).map(Self.tokenID)
                for i in samplers.indices { samplers[i].accept(next[i]) }
            }
            try penalizedStep()
            let takenBefore = runner.stepsTakenAhead
            let penalizedTime = try seconds { for _ in 0..<steps { try penalizedStep() } }
            print(String(format: "            sampled with penalties on the device (T 0.8, top-k 64, top-p 0.95, repetition 1.1, presence and frequency 0.5): %.2f ms/step, %.0f tokens/s; %d of %d steps taken from a step queued ahead", penalizedTime / Double(steps) * 1000, Double(batch * steps) / penalizedTime, runner.stepsTakenAhead - takenBefore, steps))
            figures["decode_b\(batch)_penalized_tokens_per_second"] = Double(batch * steps) / penalizedTime
            // With logprobs (the token's and 5 alternatives), computed beside the draw on the device,
            // and read back with the ids of the step queued ahead.
            try sampledStep(logprobs: 5)
            let takenBeforeLogprobs = runner.stepsTakenAhead
            let logprobTime = try seconds { for _ in 0..<steps { try sampledStep(logprobs: 5) } }
            print(String(format: "            sampled with logprobs (5 alternatives) on the device: %.2f ms/step, %.0f tokens/s; %d of %d steps taken from a step queued ahead", logprobTime / Double(steps) * 1000, Double(batch * steps) / logprobTime, runner.stepsTakenAhead - takenBeforeLogprobs, steps))
            figures["decode_b\(batch)_logprobs_tokens_per_second"] = Double(batch * steps) / logprobTime
            // The same steps with every logit brought to the host (what sampling on the CPU costs).
            let hostTime = try seconds {
                for _ in 0..<min(steps, 32) { next = try runner.decode(slots, tokens: next).map(Sampler.argmax) }
            }
            let hostRate = Double(batch * min(steps, 32)) / hostTime
            print(String(format: "            with the logits read back and argmax on the host: %.2f ms/step, %.0f tokens/s", hostTime / Double(min(steps, 32)) * 1000, hostRate))
            figures["decode_b\(batch)_host_logits_tokens_per_second"] = hostRate
        }
        figures["pipeline_failures"] = pipelineFailures
        return figures
    }
}
