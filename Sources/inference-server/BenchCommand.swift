import ArgumentParser
import Foundation
import Inference

/// `bench-batch` (hidden): the cost of one batched decode step against the batch size, the number
/// continuous batching lives on. Prints per size: seconds per step and tokens/s over all sequences.
struct BenchBatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-batch", abstract: "Time batched decode steps (for benchmarks).", shouldDisplay: false)

    @OptionGroup var options: ModelOptions

    @Option(help: "Folder with tokenizer.json.")
    var tokenizer: String?

    @Option(help: "Comma-separated batch sizes.")
    var sizes = "1,2,4,8,16"

    @Option(help: "Decode steps per size.")
    var steps = 16

    @Option(help: "Prompt tokens each sequence holds before the timed steps.")
    var context = 4

    @Flag(name: .customLong("exact-activations"))
    var exactActivations = false

    func run() throws {
        CPUCheck.requireEngineFeatures()
        let engine = try Engine.load(path: try options.resolvedPath(), tokenizerDirectory: tokenizer, exactActivations: exactActivations)
        for size in sizes.split(separator: ",").compactMap({ Int($0) }) {
            let runner = BatchRunner(model: engine.model, maximumSequences: size)
            let slots = (0..<size).map { _ in runner.makeSlot(contextLength: 1024) }
            var next = try slots.enumerated().map { i, slot in Sampler.argmax(try runner.prefill(slot, [2] + (1..<max(2, context)).map { 818 + (i + $0) % 4000 })) }
            let clock = ContinuousClock()
            let start = clock.now
            for _ in 0..<steps { next = try runner.decode(slots, tokens: next).map(Sampler.argmax) }
            let seconds = Double((clock.now - start).components.attoseconds) * 1e-18 + Double((clock.now - start).components.seconds)
            print(String(format: "batch %3d: %.1f ms/step, %.1f tok/s", size, seconds / Double(steps) * 1000, Double(size * steps) / seconds))
        }
    }
}
