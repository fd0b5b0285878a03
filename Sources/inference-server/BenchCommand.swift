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

    @Flag(help: """
        Also measure this machine's f32 multiply-add peak, its int8 and bf16 peaks (where the CPU \
        has AVX-512 VNNI and BF16) and its memory read bandwidth, and print the floor of a step at each size: the \
        longer of the size times the model's multiply-adds per token at the peak of the instructions \
        that do them, and one read of the weights as loaded at that bandwidth (a bound no \
        implementation using these instructions on these cores can beat). With --steps 0 only these \
        lines are printed.
        """)
    var peak = false

    func run() throws {
        CPUCheck.requireEngineFeatures()
        let engine = try Engine.load(path: try options.resolvedPath(), tokenizerDirectory: tokenizer, exactActivations: exactActivations)
        let sizes = self.sizes.split(separator: ",").compactMap { Int($0) }
        engine.model.packTiles()
        if peak {
            printPeak(engine.model.productCost, sizes: sizes)
        }
        for size in sizes where steps > 0 {
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

    /// Lines a script can parse: `peak fma G/s <v>`, `peak int8 G/s <v>` and `peak bf16 G/s <v>`
    /// (where the model has tiles of that kind), `peak read GB/s <v>`, `peak macs/token <v>` (of
    /// which `peak int8 macs/token <v>` and `peak bf16 macs/token <v>` are in tiles), `peak weight
    /// MB/step <v>`, and per size `floor batch <N>: <ms> ms/step, <tok/s> tok/s`: the longer of the
    /// step's multiply-adds at their peaks and its weight reads at the read bandwidth.
    private func printPeak(_ cost: ProductCost, sizes: [Int]) {
        let rate = MachinePeak.fusedMultiplyAddsPerSecond()
        // The tiles' peaks where the model has tiles of the kind (nil otherwise: nothing runs on them).
        let int8 = cost.int8MultiplyAdds > 0 ? MachinePeak.int8MultiplyAddsPerSecond() : nil
        let bf16 = cost.bf16MultiplyAdds > 0 ? MachinePeak.bf16MultiplyAddsPerSecond() : nil
        let bandwidth = MachinePeak.readBytesPerSecond()
        let threads = MachinePeak.threads
        print(String(format: "peak fma G/s %.2f (f32 multiply-adds per second over %d threads)", rate / 1e9, threads))
        if let int8 {
            print(String(format: "peak int8 G/s %.2f (vpdpbusd byte multiply-adds per second over %d threads)", int8 / 1e9, threads))
        }
        if let bf16 {
            print(String(format: "peak bf16 G/s %.2f (vdpbf16ps multiply-adds per second over %d threads)", bf16 / 1e9, threads))
        }
        print(String(format: "peak read GB/s %.2f (memory read over %d threads)", bandwidth / 1e9, threads))
        let total = cost.f32MultiplyAdds + cost.int8MultiplyAdds + cost.bf16MultiplyAdds
        print(String(format: "peak macs/token %.1f M (weight products of one decoded token)", Double(total) / 1e6))
        if int8 != nil {
            print(String(format: "peak int8 macs/token %.1f M (of those, in int8 tiles)", Double(cost.int8MultiplyAdds) / 1e6))
        }
        if bf16 != nil {
            print(String(format: "peak bf16 macs/token %.1f M (of those, in bf16 tiles: two vdpbf16ps products each)", Double(cost.bf16MultiplyAdds) / 1e6))
        }
        print(String(format: "peak weight MB/step %.1f (weights one decode step reads, as loaded)", Double(cost.bytes) / 1e6))
        for size in sizes {
            let seconds = cost.floorSeconds(size: size, fma: rate, int8: int8, bf16: bf16, bandwidth: bandwidth)
            print(String(format: "floor batch %d: %.1f ms/step, %.1f tok/s", size, seconds * 1000, Double(size) / seconds))
        }
    }
}
