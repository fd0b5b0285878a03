import Foundation
import Testing

@testable import Inference

/// `TokenDraw`, the draw a GPU makes where the logits are, keeps the tokens vLLM's filters keep and
/// draws them with the probabilities `Sampler` uses; its seed fixes the token.
@Suite struct TokenDrawTests {
    /// The tokens top-k, then top-p over what top-k kept (renormalized), then min-p keep, written out
    /// plainly from the definitions (sorted probabilities): the set a draw must stay in.
    func kept(_ logits: [Float], _ draw: TokenDraw) -> (ids: Set<Int>, probabilities: [Int: Double]) {
        let maximum = logits.max()!
        let weights = logits.map { exp(Double($0 - maximum) / Double(draw.temperature)) }
        var order = logits.indices.sorted { weights[$0] > weights[$1] }
        if draw.topK > 0 { order = Array(order.prefix(draw.topK)) }
        if draw.topP < 1 {
            let mass = order.reduce(0) { $0 + weights[$1] }
            var cumulative = 0.0
            var keep = 0
            for id in order {
                cumulative += weights[id]
                keep += 1
                if cumulative >= Double(draw.topP) * mass { break }
            }
            order = Array(order.prefix(keep))
        }
        if draw.minP > 0 { order = order.filter { weights[$0] >= Double(draw.minP) } }
        let total = order.reduce(0) { $0 + weights[$1] }
        return (Set(order), Dictionary(uniqueKeysWithValues: order.map { ($0, weights[$0] / total) }))
    }

    @Test func temperatureZeroAndBelowTheEpsilonTakeTheArgmax() {
        let logits: [Float] = [0.5, 3, -1, 3, 2.9]
        #expect(TokenDraw.argmax.choose(logits) == 1)  // the first of a tie, as torch.argmax
        #expect(TokenDraw(temperature: 1e-6, topK: 0, topP: 1, minP: 0, seed: 9).choose(logits) == 1)
        #expect(TokenDraw(temperature: 1e-6, topK: 0, topP: 1, minP: 0, seed: 9).isArgmax)
    }

    @Test func nanAndInfiniteLogitsNeverWin() {
        let draw = TokenDraw(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 3)
        #expect(draw.choose([.nan, 1, .nan]) == 1)
        #expect(draw.choose([-.infinity, -.infinity, 0.5]) == 2)
        #expect(draw.choose([.nan, .nan]) == 0)  // nothing to keep: token 0, as the argmax
        #expect(TokenDraw.argmax.choose([.nan, -2, 1]) == 2)
        // +inf takes all the probability, with or without top-p.
        for topP: Float in [1, 0.9] {
            #expect(TokenDraw(temperature: 1, topK: 0, topP: topP, minP: 0, seed: 4).choose([1, .infinity, 2]) == 1)
        }
    }

    @Test func aSeedFixesTheTokenAndSeedsVary() {
        var generator = Xoshiro256StarStar(seed: 5)
        let logits = (0..<1000).map { _ in Float.random(in: -2...2, using: &generator) }
        let draws = (0..<200).map { TokenDraw(temperature: 1, topK: 0, topP: 1, minP: 0, seed: UInt64($0)) }
        let first = draws.map { $0.choose(logits) }
        #expect(first == draws.map { $0.choose(logits) })
        #expect(Set(first).count > 100)  // nearly flat logits: 200 seeds give many tokens
    }

    @Test(arguments: [
        TokenDraw(temperature: 1, topK: 5, topP: 1, minP: 0, seed: 0),
        TokenDraw(temperature: 0.7, topK: 0, topP: 0.8, minP: 0, seed: 0),
        TokenDraw(temperature: 1.5, topK: 0, topP: 1, minP: 0.1, seed: 0),
        TokenDraw(temperature: 1.2, topK: 20, topP: 0.6, minP: 0.02, seed: 0),
    ])
    func everyTokenDrawnIsOneTheFiltersKeep(base: TokenDraw) {
        var generator = Xoshiro256StarStar(seed: 11)
        for trial in 0..<40 {
            let logits = (0..<300).map { _ in Float.random(in: -4...4, using: &generator) }
            let allowed = kept(logits, base).ids
            var seen = Set<Int>()
            for seed in 0..<50 {
                var draw = base
                draw.seed = UInt64(trial * 1000 + seed)
                let token = draw.choose(logits)
                #expect(allowed.contains(token), "trial \(trial), seed \(seed): token \(token) is filtered out")
                seen.insert(token)
            }
            #expect(seen.count > 1 || allowed.count == 1)
        }
    }

    /// 40,000 draws of a 6-token vocabulary follow the filtered, renormalized softmax: each token's
    /// share within 5 standard deviations (a fixed seed range, so the test cannot flake).
    @Test(arguments: [
        TokenDraw(temperature: 0.8, topK: 0, topP: 1, minP: 0, seed: 0),
        TokenDraw(temperature: 1, topK: 4, topP: 0.9, minP: 0, seed: 0),
        TokenDraw(temperature: 2, topK: 0, topP: 1, minP: 0.3, seed: 0),
    ])
    func drawsFollowTheFilteredDistribution(base: TokenDraw) {
        let logits: [Float] = [1.0, 2.5, 0.3, 2.0, -1.0, 1.7]
        let (_, probabilities) = kept(logits, base)
        let n = 40_000
        var counts = [Int](repeating: 0, count: logits.count)
        for seed in 0..<n {
            var draw = base
            draw.seed = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15
            counts[draw.choose(logits)] += 1
        }
        for id in logits.indices {
            let p = probabilities[id] ?? 0
            let share = Double(counts[id]) / Double(n)
            let sigma = (p * (1 - p) / Double(n)).squareRoot()
            #expect(abs(share - p) <= 5 * sigma + 1e-9, "token \(id): drawn \(share), expected \(p)")
        }
    }

    /// With penalties, the draw's argmax and the host `Sampler`'s greedy choice are the argmax of the
    /// penalized logits after the same history.
    @Test func penaltiesMatchTheSampler() {
        var generator = Xoshiro256StarStar(seed: 21)
        let parameters = SamplingParameters(temperature: 0, repetitionPenalty: 1.4, presencePenalty: 0.6, frequencyPenalty: 0.3)
        for trial in 0..<30 {
            let prompt = (0..<12).map { _ in Int(generator.next() % 64) }
            var sampler = Sampler(parameters: parameters, prompt: prompt)
            let history = (0..<Int(generator.next() % 20)).map { _ in Int(generator.next() % 64) }
            for token in history { sampler.accept(token) }
            // The tokens seen so far lead the logits, so that the penalties decide the winner.
            var logits = (0..<64).map { _ in Float.random(in: -1...1, using: &generator) }
            for id in prompt { logits[id] += 3 }
            let penalties = sampler.penalties()
            #expect(penalties != nil)
            // One entry per token of the prompt or output, each with its count.
            let ids = penalties?.entries.map(\.id) ?? []
            #expect(Set(ids).count == ids.count)
            #expect(Set(ids) == Set(prompt).union(history))
            for entry in penalties?.entries ?? [] {
                #expect(entry.count == history.filter { $0 == entry.id }.count)
                #expect(entry.seen)
            }
            let draw = TokenDraw(parameters, seed: 0, penalties: penalties)
            #expect(!draw.isPlainArgmax)
            // The penalties written out from their definitions (CTRL's repetition penalty on prompt and
            // output tokens, then OpenAI's presence and frequency on generated ones).
            var expected = logits
            for id in Set(prompt).union(history) {
                expected[id] = expected[id] > 0 ? expected[id] / 1.4 : expected[id] * 1.4
            }
            for id in Set(history) { expected[id] -= 0.6 + 0.3 * Float(history.filter { $0 == id }.count) }
            #expect(draw.choose(logits) == Sampler.argmax(expected), "trial \(trial)")
            #expect(sampler.sample(logits) == Sampler.argmax(expected), "trial \(trial)")
        }
        #expect(Sampler(parameters: SamplingParameters(temperature: 1)).penalties() == nil)
    }

    /// A step queued before its token is known draws with `upcomingPenalties`, and the token counted
    /// where the logits are (`accepting`): the same penalties as `penalties()` once the sampler
    /// accepts it, for tokens in the prompt, generated before, new, biased, and the ends min_tokens
    /// bars (until the token that makes it long enough); and `chooses(as:)` tells them apart from
    /// penalties that differ.
    @Test func upcomingPenaltiesAcceptingTheTokenAreTheSamplersNext() {
        var parameters = SamplingParameters(
            temperature: 0.7, repetitionPenalty: 1.3, presencePenalty: 0.5, frequencyPenalty: 0.25, seed: 3)
        parameters.logitBias = [40: 2, 41: -1]
        parameters.minTokens = 4
        parameters.minTokensStopIDs = [1, 41]
        var sampler = Sampler(parameters: parameters, prompt: [5, 6, 7, 6])
        for token in [8, 5, 41, 9, 8, 1, 1, 40, 77, 6] {
            // As the scheduler asks: this step's draw, then the next one's as far as it is known.
            _ = TokenDraw(parameters, seed: sampler.nextSeed(), penalties: sampler.penalties())
            let queued = TokenDraw(parameters, seed: sampler.upcomingSeed(), penalties: sampler.upcomingPenalties())
            sampler.accept(token)
            let next = TokenDraw(parameters, seed: sampler.upcomingSeed(), penalties: sampler.penalties())
            #expect(queued.accepting(token).chooses(as: next), "after \(token)")
            #expect(!queued.accepting(token == 8 ? 9 : 8).chooses(as: next), "another token counted after \(token)")
        }
        // An argmax does not use its seed (a greedy request's draws carry its sampler's seeds).
        var greedy = TokenDraw.argmax
        greedy.seed = 1
        #expect(greedy.accepting(5).chooses(as: .argmax) && TokenDraw.argmax.chooses(as: greedy))
        var sampled = TokenDraw(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1)
        #expect(sampled.chooses(as: sampled) && !sampled.chooses(as: greedy))
        sampled.seed = 2
        #expect(!sampled.chooses(as: TokenDraw(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1)))
    }

    @Test func theSoftCapIsAppliedBeforeTheCuts() {
        // Capped at 1, logits 10 and 3 become 0.9999 and 0.995: nearly equal, so with top-k 2 both
        // are drawn; uncapped, 10 would take almost every draw.
        let logits: [Float] = [10, 3, -5]
        var counts = [0, 0, 0]
        for seed in 0..<2000 {
            counts[TokenDraw(temperature: 1, topK: 2, topP: 1, minP: 0, seed: UInt64(seed)).choose(logits, softcap: 1)] += 1
        }
        #expect(counts[2] == 0)
        #expect(counts[0] > 800 && counts[1] > 800)
    }
}
