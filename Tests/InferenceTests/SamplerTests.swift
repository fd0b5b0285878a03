import Foundation
import Testing

@testable import Inference

@Suite struct SamplerTests {
    let logits: [Float] = [0.1, 2.0, 1.9, -1, 0.5, 1.0, 3.0, 2.9]

    @Test func greedyPicksTheFirstMaximum() {
        var sampler = Sampler(parameters: SamplingParameters())
        #expect(sampler.sample(logits) == 6)
        #expect(Sampler.argmax([1, 5, 5, 2]) == 1)
    }

    /// The vector argmax against the loop that defines it: rows of every length up to 40 and of
    /// 262,144, with ties (values from a few), NaNs (also first), infinities and signed zeros.
    @Test func argmaxIsTheFirstOfTheLargest() {
        func reference(_ v: [Float]) -> Int {
            var best = 0
            for i in v.indices where v[i] > v[best] { best = i }
            return best
        }
        var random = Xoshiro256StarStar(seed: 99)
        let specials: [Float] = [.nan, .infinity, -.infinity, 0, -0.0, 3, 3, -3]
        for length in Array(0...40) + [262_144] {
            for trial in 0..<12 {
                var v = (0..<length).map { _ in Float(Int(random.next() % 5)) - 2 }
                if trial % 3 == 1 { v = v.map { $0 * 1.5 + Float(random.next() % 1000) / 997 } }
                for _ in 0..<(trial % 4) where length > 0 {
                    v[Int(random.next() % UInt64(length))] = specials[Int(random.next() % UInt64(specials.count))]
                }
                if trial == 5 && length > 0 { v[0] = .nan }
                if trial == 6 && length > 0 { v[length - 1] = .infinity }
                #expect(Sampler.argmax(v) == reference(v), "length \(length) trial \(trial)")
                let maximum = v.max() ?? 0
                #expect(Sampler.largest(v).bitPattern == maximum.bitPattern, "length \(length) trial \(trial)")
            }
        }
    }

    /// The eight-lane e^x against Foundation's: within 2 ulp (relative 2.5e-7) over the range a draw
    /// uses, exactly 1 at 0, 0 for -inf and below the smallest normal result, NaN for NaN.
    @Test func theVectorExponentialMatchesFoundation() {
        var random = Xoshiro256StarStar(seed: 5)
        var worst: Float = 0
        for _ in 0..<20_000 {
            let x = SIMD8<Float>((0..<8).map { _ in Float(random.next() % 1_000_000) / 1_000_000 * -87.3 + (random.next() % 4 == 0 ? 5 : 0) })
            let e = Sampler.exponential8(x)
            for l in 0..<8 {
                let want = Foundation.exp(x[l])
                #expect(!e[l].isNaN, "e^\(x[l])")
                worst = max(worst, abs(e[l] - want) / want)
            }
        }
        #expect(worst < 2.5e-7, "worst relative error \(worst)")
        // At the cutoffs, and where x / ln 2 is a half-integer (the rounding's ties).
        let cut: Float = -87.336_54
        let ln2: Float = 0.693_147_18
        let ties: [Float] = [-0.5 * ln2, 2.5 * ln2, -100.5 * ln2, 1]
        let edges = Sampler.exponential8(SIMD8(cut, cut.nextDown, 88, Float(88).nextUp, ties[0], ties[1], ties[2], ties[3]))
        #expect(edges[0] >= .leastNormalMagnitude && edges[1] == 0)
        #expect(edges[2].isFinite && edges[3] == .infinity)
        for (l, x) in zip(4..<8, ties) { #expect(abs(edges[l] - Foundation.exp(x)) <= 2.5e-7 * edges[l], "e^\(x)") }
        let special = Sampler.exponential8(SIMD8(0, -.infinity, .nan, -87.4, -100, 88.5, .infinity, -0.0))
        #expect(special[0] == 1 && special[7] == 1)
        #expect(special[1] == 0 && special[3] == 0 && special[4] == 0)
        #expect(special[2].isNaN && special[5] == .infinity && special[6] == .infinity)
        // The sum and the tail past the last full eight.
        let logits: [Float] = (0..<21).map { Float($0) * -0.37 }
        let (values, total) = Sampler.exponentials(logits, maximum: 0, scale: 1.5)
        let want = logits.map { Foundation.exp($0 * 1.5) }
        #expect(zip(values, want).allSatisfy { abs($0 - $1) <= 2.5e-7 * $1 })
        #expect(abs(total - want.reduce(0, +)) < 1e-5)
        // A maximum that is not 0, and -inf logits (in the lanes and in the tail).
        let shifted: [Float] = (0..<11).map { $0 % 4 == 1 ? -.infinity : 3 - Float($0) * 0.5 }
        let (weights, sum) = Sampler.exponentials(shifted, maximum: 3, scale: 0.8)
        #expect(weights[0] == 1)
        #expect(zip(weights, shifted).allSatisfy { w, x in x == -.infinity ? w == 0 : abs(w - Foundation.exp((x - 3) * 0.8)) <= 2.5e-7 * w })
        #expect(abs(sum - weights.reduce(0, +)) < 1e-6)
    }

    /// A draw over every token (no filter) follows the softmax: over a row of 3,000 (blocks of 256,
    /// the last partial) with heavy tokens on both sides of block edges, each token's share of
    /// 200,000 draws is within 4 standard deviations of its probability, and a token at -inf is never
    /// drawn.
    @Test func aDrawOverEveryTokenFollowsTheSoftmax() {
        var logits = (0..<3_000).map { Float($0 % 7) * 0.1 }
        for id in [255, 256, 700, 1_999, 2_816, 2_999] { logits[id] = 6 }
        logits[2_998] = -.infinity
        var sampler = Sampler(parameters: SamplingParameters(temperature: 1, seed: 21))
        var counts = [Int](repeating: 0, count: logits.count)
        let draws = 200_000
        for _ in 0..<draws { counts[sampler.sample(logits)] += 1 }
        let weights = logits.map { Foundation.exp(Double($0) - 6) }
        let total = weights.reduce(0, +)
        for id in [0, 6, 255, 256, 700, 1_999, 2_816, 2_999, 1_500] {
            let p = weights[id] / total
            let sigma = (p * (1 - p) * Double(draws)).squareRoot()
            #expect(abs(Double(counts[id]) - p * Double(draws)) < 4 * sigma + 1, "token \(id): \(counts[id]) of \(draws), p \(p)")
        }
        #expect(counts[2_998] == 0)
        // Only -inf, an infinite logit or a NaN: the argmax, as the greedy path, with or without a
        // filter; an empty row: 0. A last block of only -inf is never reached.
        for topP: Float in [1, 0.9] {
            var edge = Sampler(parameters: SamplingParameters(temperature: 1, topP: topP, seed: 3))
            #expect(edge.sample([-.infinity, -.infinity, -.infinity]) == 0)
            #expect(edge.sample([1, .infinity, 2]) == 1)
            #expect(edge.sample([-.infinity, 2, .nan, 5, 1]) == 3)
            #expect(edge.sample([]) == 0)
        }
        var tail = (0..<600).map { Float($0 % 5) * 0.2 }
        for id in 512..<600 { tail[id] = -.infinity }
        var tailSampler = Sampler(parameters: SamplingParameters(temperature: 1, seed: 8))
        #expect((0..<2_000).allSatisfy { _ in tailSampler.sample(tail) < 512 })
    }

    @Test func aSeedReproducesTheDraws() {
        let parameters = SamplingParameters(temperature: 1, seed: 1234)
        func draws() -> [Int] {
            var sampler = Sampler(parameters: parameters)
            return (0..<50).map { _ in sampler.sample(logits) }
        }
        let first = draws()
        #expect(first == draws())
        #expect(Set(first).count > 2, "temperature 1 should spread over several tokens")
        var other = Sampler(parameters: SamplingParameters(temperature: 1, seed: 99))
        #expect((0..<50).map { _ in other.sample(logits) } != first)
    }

    @Test func filtersKeepOnlyTheirTokens() {
        for seed in 0..<40 as Range<UInt64> {
            var topK = Sampler(parameters: SamplingParameters(temperature: 5, topK: 2, seed: seed))
            #expect([6, 7].contains(topK.sample(logits)))
            var topP = Sampler(parameters: SamplingParameters(temperature: 1, topP: 0.3, seed: seed))
            #expect(topP.sample(logits) == 6, "top-p 0.3 keeps only the most likely token here")
            var minP = Sampler(parameters: SamplingParameters(temperature: 1, minP: 0.5, seed: seed))
            // p(1.9)/p(3.0) = e^-1.1 < 0.5; p(2.9)/p(3.0) = e^-0.1 and p(2.0)/p(3.0) = e^-1 ≈ 0.37 < 0.5.
            #expect([6, 7].contains(minP.sample(logits)))
        }
        var topKOne = Sampler(parameters: SamplingParameters(temperature: 10, topK: 1, seed: 3))
        #expect((0..<20).allSatisfy { _ in topKOne.sample(logits) == 6 })
    }

    @Test func penaltiesDiscourageRepeats() {
        var presence = Sampler(parameters: SamplingParameters(presencePenalty: 0.5))
        presence.accept(6)
        #expect(presence.sample(logits) == 7)  // 3.0 - 0.5 < 2.9
        var frequency = Sampler(parameters: SamplingParameters(frequencyPenalty: 0.06))
        frequency.accept(6)
        #expect(frequency.sample(logits) == 6)  // 3.0 - 0.06 > 2.9
        frequency.accept(6)
        #expect(frequency.sample(logits) == 7)  // 3.0 - 0.12 < 2.9
        var repetition = Sampler(parameters: SamplingParameters(repetitionPenalty: 1.5), prompt: [6, 7])
        #expect(repetition.sample(logits) == 1)  // 3.0/1.5 and 2.9/1.5 fall below 2.0
        var negative = Sampler(parameters: SamplingParameters(repetitionPenalty: 2), prompt: [0])
        #expect(negative.sample([-1, -1.5]) == 1)  // a negative logit is multiplied: -2 < -1.5
    }

    @Test func biasesAndMinimumLengthChangeTheDraw() {
        var biased = SamplingParameters()
        biased.logitBias = [1: 1.5, 6: -100]
        #expect(!biased.isPlainArgmax)
        var sampler = Sampler(parameters: biased)
        #expect(sampler.sample(logits) == 1)  // 2.0 + 1.5 beats 2.9; 3.0 - 100 is out
        // Bias first, then the penalties: 2.0 + 1.5 = 3.5, then minus presence 0.7 = 2.8 < 2.9.
        biased.presencePenalty = 0.7
        var both = Sampler(parameters: biased)
        both.accept(1)
        #expect(both.sample(logits) == 7)
        // Token 6 ends the sequence: barred for the first two tokens, then free again.
        var minimum = SamplingParameters()
        minimum.minTokens = 2
        minimum.minTokensStopIDs = [6]
        var short = Sampler(parameters: minimum)
        #expect(short.sample(logits) == 7)
        short.accept(7)
        #expect(short.sample(logits) == 7)
        short.accept(7)
        #expect(short.sample(logits) == 6)
        #expect(short.penalties() == nil || short.penalties()!.entries.allSatisfy { $0.bias == 0 })
        // Every id barred (stop_token_ids covering the vocabulary): a token all the same, no trap
        // on an empty candidate list.
        var everything = SamplingParameters(temperature: 1, topP: 0.9, seed: 1)
        everything.minTokens = 1
        everything.minTokensStopIDs = Array(0..<logits.count)
        var barred = Sampler(parameters: everything)
        #expect(logits.indices.contains(barred.sample(logits)))
    }

    /// Each value out of range is refused, named by its request field (the server's `param`), the
    /// message starting with that name.
    @Test func invalidParametersAreRejected() {
        var biased = SamplingParameters()
        biased.logitBias = [5: 200]
        var negativeMinimum = SamplingParameters()
        negativeMinimum.minTokens = -1
        for (bad, field) in [
            (SamplingParameters(temperature: -1), "temperature"), (SamplingParameters(temperature: .nan), "temperature"),
            (SamplingParameters(topK: -2), "top_k"), (SamplingParameters(topP: 0), "top_p"),
            (SamplingParameters(minP: 1.5), "min_p"), (SamplingParameters(repetitionPenalty: 0), "repetition_penalty"),
            (SamplingParameters(presencePenalty: 3), "presence_penalty"),
            (SamplingParameters(frequencyPenalty: -2.5), "frequency_penalty"), (biased, "logit_bias"),
            (negativeMinimum, "min_tokens"),
        ] {
            #expect(throws: InferenceError.self) { try bad.validate() }
            #expect(bad.firstValueOutOfRange?.field == field)
            #expect(bad.firstValueOutOfRange?.message.hasPrefix(field + " ") == true)
        }
        #expect(SamplingParameters().firstValueOutOfRange == nil)
    }

    @Test func logprobHelpers() {
        let lse = Logprobs.logSumExp([0, 0, 0, 0])
        #expect(abs(Double(lse) - Foundation.log(4.0)) < 1e-6)
        let top = Logprobs.top([1, 5, 3, 5, 2], 3)
        #expect(top.map(\.id) == [1, 3, 2])
    }
}
