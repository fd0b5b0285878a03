import CUDA
import Foundation
import Inference

/// Settings of a one-sequence decode step whose best value depends on the card, timed on it at start.
///
/// Which one-token products should stage their weights, or whether attention should ask L2 for the
/// next weights, was measured on H100s only, where the answer moved with the prompt's length and
/// the card (README, Performance); Cloud Run's L4 (no dependent launches, a fifth of the bandwidth)
/// was never timed. So before the server takes requests it times a short greedy decode of the model
/// it serves under each value of those settings, alternated over rounds, and keeps the fastest.
/// Only settings that give the same bits are turned (a seeded request draws the same tokens whatever
/// was chosen), and each value's logits are checked bit for bit against the value the backend
/// started with before it may be chosen. A setting fixed in the environment is left as it is.
public enum DecodeTuning {
    /// One setting the tuning may turn.
    public struct Knob: Sendable {
        /// As the report names it.
        public let name: String
        /// The environment variable that fixes it (the tuning then leaves it alone).
        public let variable: String
        /// Its values, as that variable spells them.
        public let values: [String]
        let read: @Sendable (CUDABackend) -> String
        let write: @Sendable (CUDABackend, String) -> Void

        /// Which one-token products stage their weights in shared memory (`INFERENCE_STAGED_WEIGHTS`).
        public static let stagedWeights = Knob(
            name: "weights staged", variable: "INFERENCE_STAGED_WEIGHTS", values: CUDABackend.StagedWeights.allCases.map(\.rawValue),
            read: { $0.stagedWeights.rawValue },
            write: { gpu, value in gpu.stagedWeights = CUDABackend.StagedWeights(rawValue: value) ?? gpu.stagedWeights })
        /// Whether attention asks L2 for 16 MiB of the next products' weights (`INFERENCE_PREFETCH_AHEAD`).
        public static let prefetchAhead = Knob(
            name: "L2 asked ahead (MiB)", variable: "INFERENCE_PREFETCH_AHEAD", values: ["off", "16"],
            read: { $0.prefetchAheadBytes == 0 ? "off" : String($0.prefetchAheadBytes >> 20) },
            write: { gpu, value in gpu.prefetchAheadBytes = (Int(value) ?? 0) << 20 })

        /// The knobs the environment leaves open, in the order they are tuned.
        public static func open(environment: [String: String]) -> [Knob] {
            [stagedWeights, prefetchAhead].filter { environment[$0.variable] == nil }
        }
    }

    /// What to tune and how long: the knobs, rounds, budget (seconds) and prompt of `tune`.
    public struct Plan: Sendable {
        public var knobs: [Knob]
        public var rounds = 5, budget = 2.0, promptTokens = 64

        public init(knobs: [Knob], rounds: Int = 5, budget: Double = 2, promptTokens: Int = 64) {
            (self.knobs, self.rounds, self.budget, self.promptTokens) = (knobs, rounds, budget, promptTokens)
        }

        /// The server's: the knobs the environment leaves open, unless `INFERENCE_DECODE_TUNING=off`
        /// (nil then, or when none is open).
        public static func server(environment: [String: String]) throws -> Plan? {
            let knobs = try enabled(environment: environment) ? Knob.open(environment: environment) : []
            return knobs.isEmpty ? nil : Plan(knobs: knobs)
        }
    }

    /// `tune` as `plan` says.
    public static func tune(model: Gemma3Model<CUDABackend>, plan: Plan) throws -> Report {
        try tune(model: model, knobs: plan.knobs, rounds: plan.rounds, budget: plan.budget, promptTokens: plan.promptTokens)
    }

    /// What the tuning found for one knob.
    public struct Decision: Sendable {
        public let knob: String
        public let variable: String
        /// The value it started with, and the one it keeps.
        public let was: String, chosen: String
        /// Each value's median milliseconds a step, in the knob's order (nil: not timed: see
        /// `differing` and `sameWork`; or no other value was left to time against).
        public let milliseconds: [(value: String, median: Double?)]
        /// Values whose logits were not the starting value's bits (a kernel wrong on this GPU: never chosen).
        public let differing: [String]
        /// Values that issued the same work as an earlier one, word for word (say, staging that
        /// cannot take effect for this model on this card), by that one: timed once, as it.
        public let sameWork: [String: String]
    }

    public struct Report: Sendable {
        public let decisions: [Decision]
        public let seconds: Double
        public let rounds: Int, steps: Int, promptTokens: Int
        /// Milliseconds a step as the backend started.
        public let startingStep: Double

        /// One line for the server's log.
        public var line: String {
            let parts = decisions.map { d in
                let times = d.milliseconds.map { m in
                    "\(m.value) "
                        + (m.median.map { String(format: "%.3f", $0) } ?? d.sameWork[m.value].map { "= \($0) (the same launches)" }
                            ?? (d.differing.contains(m.value) ? "left out" : "not timed"))
                }
                let turned = d.chosen == d.was ? "\(d.chosen) kept" : "\(d.chosen) (was \(d.was))"
                let wrong = d.differing.isEmpty ? "" : "; NOT the same bits, so left out: \(d.differing.joined(separator: ", "))"
                return "\(d.knob) \(turned) [\(times.joined(separator: ", ")) ms\(wrong)]"
            }
            guard !parts.isEmpty else { return "decode tuning: nothing left to tune (each setting fixed in the environment)" }
            return String(format: "decode tuned in %.2f s (%d rounds of %d greedy steps from a %d-token prompt; %.3f ms a step before): ", seconds, rounds, steps, promptTokens, startingStep)
                + parts.joined(separator: "; ")
                + ". \(decisions.map(\.variable).joined(separator: ", ")) fix a setting; INFERENCE_DECODE_TUNING=off skips this in serve"
        }
    }

    /// Whether the server tunes at start: `INFERENCE_DECODE_TUNING`, on unless off.
    public static func enabled(environment: [String: String]) throws -> Bool {
        switch environment["INFERENCE_DECODE_TUNING"] {
        case nil, "on": return true
        case "off": return false
        case let other?: throw CUDAError.invalidSetting("INFERENCE_DECODE_TUNING is \(other); use on or off")
        }
    }

    /// Times `model`'s one-sequence greedy decode under each value of each knob in turn (the knobs
    /// tuned one after another, each from the values chosen before), alternated over `rounds`, and
    /// leaves the backend with the values chosen. About `budget` seconds in all where steps are
    /// short (the steps a timing takes are fitted to it, 4 to 32; each timing also takes 8 untimed
    /// steps, so a slow card or a large model takes longer). Throws what the GPU throws; the knobs
    /// are then as they started.
    public static func tune(
        model: Gemma3Model<CUDABackend>, knobs: [Knob], rounds: Int = 5, budget: Double = 2, promptTokens: Int = 64
    ) throws -> Report {
        precondition(rounds > 0, "at least one round")
        let gpu = model.backend
        let started = ContinuousClock.now
        let starting = knobs.map { $0.read(gpu) }
        var finished = false
        defer { if !finished { for (knob, value) in zip(knobs, starting) { knob.write(gpu, value) } } }

        let c = model.config
        let runner = BatchRunner(model: model, maximumSequences: 1, prefillChunk: 64)
        let length = max(2, min(promptTokens, c.maxPositionEmbeddings - 48))
        let slot = runner.makeSlot(contextLength: length + 48)  // the prompt, 8 untimed steps, 32 timed and a spare
        let prompt = [2] + (1..<length).map { (1000 + ($0 * 7919) % 20_000) % c.vocabularySize }
        /// Milliseconds a step over `steps` greedy steps, from the prompt, after 8 untimed (a step's
        /// work is captured as a graph on its second sighting, and pipelined steps rotate over
        /// `pipelinePlaces` staging regions, a graph each: by the 8th every one is captured, so the
        /// timed steps replay; 64 to 105 keys, one attention split throughout); and the
        /// milliseconds of the prompt and the untimed steps. Past the first, a timing keeps the
        /// prompt's keys but its last and computes that one again: every timing attends over the
        /// same keys, without a prefill each (which would be most of the time on a slow card).
        func timed(_ steps: Int) throws -> (step: Double, before: Double) {
            let start = ContinuousClock.now
            let logits: [Float]
            if slot.tokens.starts(with: prompt) {
                slot.keep(prefix: prompt.count - 1)
                logits = try runner.prefill(slot, [prompt[prompt.count - 1]])
            } else {
                slot.reset()
                logits = try runner.prefill(slot, prompt)
            }
            var next = [Sampler.argmax(logits)]
            for _ in 0..<8 { next = try runner.decodeGreedy([slot], tokens: next) }
            let ready = ContinuousClock.now
            for _ in 0..<steps { next = try runner.decodeGreedy([slot], tokens: next) }
            return ((ContinuousClock.now - ready) / .milliseconds(1) / Double(steps), (ready - start) / .milliseconds(1))
        }
        /// The logits of two steps after the prompt, as bits, and a digest of the work they issued.
        func bits() throws -> (logits: [UInt32], work: UInt64?) {
            slot.reset()
            gpu.context.beginWorkDigest()
            var logits: [Float]
            do {
                logits = try runner.decode([slot], tokens: [Sampler.argmax(try runner.prefill(slot, prompt))])[0]
                logits += try runner.decode([slot], tokens: [Sampler.argmax(logits)])[0]
            } catch {
                _ = gpu.context.endWorkDigest()
                throw error
            }
            return (logits.map(\.bitPattern), gpu.context.endWorkDigest())
        }

        defer { gpu.context.dropGraphs() }  // the tuning's runner and slot go with it
        let prefilled = try timed(4).before  // the prompt, and the step's graphs captured
        let (startingStep, before) = try timed(8)
        // Each value's logits (its prompt and two steps) and its timings, within the budget.
        let settings = knobs.reduce(0) { $0 + $1.values.count }
        let spare = budget * 1000 - Double(settings) * (prefilled + 2 * startingStep)
        let perRun = spare / Double(max(1, rounds * settings)) - before
        let steps = min(32, max(4, Int(perRun / max(startingStep, 1e-3))))  // 105 keys at most

        var decisions: [Decision] = []
        for knob in knobs {
            let was = knob.read(gpu)
            let values = knob.values.contains(was) ? knob.values : [was] + knob.values  // (one the knob does not offer)
            let reference = try bits()
            var differing: [String] = []
            var sameWork: [String: String] = [:]
            var works = reference.work.map { [(value: was, work: $0)] } ?? []
            for value in values where value != was {
                knob.write(gpu, value)
                let run = try bits()
                if run.logits != reference.logits {
                    differing.append(value)
                } else if let work = run.work {
                    if let twin = works.first(where: { $0.work == work }) { sameWork[value] = twin.value } else { works.append((value, work)) }
                }
            }
            let candidates = values.filter { !differing.contains($0) && sameWork[$0] == nil }
            var times = [[Double]](repeating: [], count: candidates.count)
            for _ in 0..<(candidates.count > 1 ? rounds : 0) {
                for (i, value) in candidates.enumerated() {
                    knob.write(gpu, value)
                    times[i].append(try timed(steps).step)
                }
            }
            let current = candidates.firstIndex(of: was)!  // (was: always the same bits and its own work)
            let chosen = candidates.count > 1 ? candidates[choose(times, current: current)] : was
            knob.write(gpu, chosen)
            decisions.append(
                Decision(
                    knob: knob.name, variable: knob.variable, was: was, chosen: chosen,
                    milliseconds: values.map { value in
                        (value, candidates.firstIndex(of: value).flatMap { times[$0].isEmpty ? nil : median(times[$0]) })
                    },
                    differing: differing, sameWork: sameWork))
        }
        finished = true
        return Report(
            decisions: decisions, seconds: (ContinuousClock.now - started) / .seconds(1), rounds: rounds, steps: steps,
            promptTokens: prompt.count, startingStep: startingStep)
    }

    /// Which of the values timed `times[value][round]` (milliseconds a step, the values alternated
    /// within each round) to keep, starting from `current`: another only where it was faster than
    /// `current` in every round and by `margin` of its median at least (a card's noise moves a
    /// step by a few percent between runs; a change within it is not worth a different setting),
    /// the fastest such by median.
    public static func choose(_ times: [[Double]], current: Int, margin: Double = 0.01) -> Int {
        let base = median(times[current])
        var best = current
        for (i, runs) in times.enumerated() where i != current {
            let everyRound = zip(runs, times[current]).allSatisfy { $0 < $1 }
            guard everyRound, median(runs) <= base * (1 - margin), median(runs) < median(times[best]) else { continue }
            best = i
        }
        return best
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
