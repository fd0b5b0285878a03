import CUDA
import Foundation
import TestSupport
import Testing

@testable import CUDABackend
@testable import Inference

/// How the tuning at start picks a value from its timings, and what the environment fixes (no GPU).
@Suite struct DecodeTuningChoiceTests {
    @Test func anotherValueOnlyWhenFasterInEveryRoundByTheMargin() {
        let base = [1.00, 1.02, 0.99, 1.01, 1.00]
        #expect(DecodeTuning.choose([base, [0.95, 0.97, 0.94, 0.96, 0.95]], current: 0) == 1)
        // Faster by its median, but not in the third round: noise, kept.
        #expect(DecodeTuning.choose([base, [0.95, 0.97, 1.00, 0.96, 0.95]], current: 0) == 0)
        // Faster in every round, by half a percent: within a card's noise, kept.
        #expect(DecodeTuning.choose([base, [0.995, 1.015, 0.985, 1.005, 0.995]], current: 0) == 0)
        // Two that qualify: the faster by median.
        #expect(DecodeTuning.choose([base, [0.95, 0.97, 0.94, 0.96, 0.95], [0.90, 0.93, 0.91, 0.92, 0.90]], current: 0) == 2)
        #expect(DecodeTuning.choose([base, [0.90, 0.93, 0.91, 0.92, 0.90], [0.95, 0.97, 0.94, 0.96, 0.95]], current: 0) == 1)
        // The starting value need not be the first; slower values never win.
        #expect(DecodeTuning.choose([[0.9, 0.9, 0.9], [1, 1, 1], [1.2, 1.1, 1.3]], current: 1) == 0)
        #expect(DecodeTuning.choose([[1.2, 1.1, 1.3], [1, 1, 1]], current: 1) == 1)
    }

    @Test func theEnvironmentFixesKnobsAndTurnsTheTuningOff() throws {
        #expect(DecodeTuning.Knob.open(environment: [:]).map(\.variable) == ["INFERENCE_STAGED_WEIGHTS", "INFERENCE_PREFETCH_AHEAD"])
        #expect(DecodeTuning.Knob.open(environment: ["INFERENCE_STAGED_WEIGHTS": "off"]).map(\.variable) == ["INFERENCE_PREFETCH_AHEAD"])
        #expect(try DecodeTuning.enabled(environment: [:]))
        #expect(try DecodeTuning.enabled(environment: ["INFERENCE_DECODE_TUNING": "on"]))
        #expect(try !DecodeTuning.enabled(environment: ["INFERENCE_DECODE_TUNING": "off"]))
        #expect(throws: CUDAError.self) { try DecodeTuning.enabled(environment: ["INFERENCE_DECODE_TUNING": "fast"]) }
        // The server's plan: the open knobs, none when turned off or when every one is fixed.
        #expect(try DecodeTuning.Plan.server(environment: [:])?.knobs.count == 2)
        #expect(try DecodeTuning.Plan.server(environment: ["INFERENCE_DECODE_TUNING": "off"]) == nil)
        #expect(try DecodeTuning.Plan.server(environment: ["INFERENCE_STAGED_WEIGHTS": "on", "INFERENCE_PREFETCH_AHEAD": "off"]) == nil)
        // Every value a knob offers is one its variable takes.
        #expect(DecodeTuning.Knob.stagedWeights.values.allSatisfy { CUDABackend.StagedWeights(rawValue: $0) != nil })
    }
}

extension EmulatedGPUTests {
    /// The tuning at start on the emulated GPU: every value of a knob is timed and checked bit for
    /// bit against the value the backend started with; a value that changes the logits (here the
    /// shares' merge dropped, as a kernel wrong on some GPU would) is left out and never chosen; the
    /// knobs end on the values chosen, and the model decodes as before (the same bits whichever
    /// staging was chosen; the tuning's runner and slot leave nothing behind).
    @Test func decodeTuningTimesEachValueAndLeavesOutOtherBits() throws {
        let directory = try TemporaryDirectory()
        let engine = try Engine.load(path: try Self.smallModel(in: directory, seed: 97), exactActivations: true)
        let gpu = try Self.backend.get()
        let staging = gpu.stagedWeights
        defer {
            gpu.stagedWeights = staging
            gpu.context.skippedKernels = []
        }
        let prompt = (0..<12).map { 300 + $0 * 41 }
        let before = try Self.decodedLogits(engine, on: gpu, prompt: prompt, steps: 3).logits
        let broken = DecodeTuning.Knob(
            name: "merge", variable: "TEST_MERGE", values: ["kept", "dropped"],
            read: { $0.context.skippedKernels.isEmpty ? "kept" : "dropped" },
            write: { gpu, value in gpu.context.skippedKernels = value == "dropped" ? ["attention_combine"] : [] })
        // A setting that changes nothing: the same work as the starting value, timed once.
        let idle = DecodeTuning.Knob(name: "idle", variable: "TEST_IDLE", values: ["one", "two"], read: { _ in "one" }, write: { _, _ in })
        let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
        // 100 keys: attention in shares, which attention_combine merges.
        let report = try DecodeTuning.tune(model: model, knobs: [.stagedWeights, broken, idle], rounds: 1, budget: 0, promptTokens: 100)
        #expect(report.steps == 4 && report.rounds == 1 && report.promptTokens == 100)
        #expect(report.decisions.map(\.variable) == ["INFERENCE_STAGED_WEIGHTS", "TEST_MERGE", "TEST_IDLE"])
        let staged = report.decisions[0]
        // Each staging launches other kernels here (the emulator holds every staged grid at once).
        #expect(staged.was == "products" && staged.differing.isEmpty && staged.sameWork.isEmpty)
        #expect(staged.milliseconds.map(\.value) == ["off", "products", "gate-up", "on"])
        #expect(staged.milliseconds.allSatisfy { $0.median.map { $0 > 0 } == true })
        #expect(gpu.stagedWeights.rawValue == staged.chosen)
        let merge = report.decisions[1]
        #expect(merge.differing == ["dropped"] && merge.chosen == "kept" && merge.was == "kept")
        #expect(merge.milliseconds.first { $0.value == "dropped" }?.median == nil)
        #expect(gpu.context.skippedKernels.isEmpty)
        #expect(report.line.contains("NOT the same bits, so left out: dropped"), "\(report.line)")
        let unchanged = report.decisions[2]
        #expect(unchanged.sameWork == ["two": "one"] && unchanged.chosen == "one" && unchanged.differing.isEmpty)
        #expect(unchanged.milliseconds.allSatisfy { $0.median == nil }, "one value left: nothing to time it against")
        #expect(report.line.contains("two = one (the same launches)"), "\(report.line)")
        let after = try Self.decodedLogits(engine, on: gpu, prompt: prompt, steps: 3).logits
        #expect(after == before, "the logits after the tuning are not the bits before it")
    }
}
