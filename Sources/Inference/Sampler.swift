import Foundation

/// Chooses tokens from logits: penalties, then greedy argmax or temperature with top-k, top-p and
/// min-p filtering, then a draw from a seeded generator, so a seed reproduces a generation exactly.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var generator: Xoshiro256StarStar
    /// The history the penalties need, one entry per token id: how often it was generated (presence
    /// and frequency) and whether it is in the prompt or output (repetition). Kept up to date by
    /// `accept`, so a draw on the GPU takes it as it is every step. nil without penalties.
    private var penaltyEntries: [TokenPenalties.Entry]?
    private var entryIndex: [Int: Int] = [:]
    /// Tokens accepted so far (for `minTokens`).
    private var generated = 0

    public init(parameters: SamplingParameters, prompt: [Int] = []) {
        self.parameters = parameters
        var system = SystemRandomNumberGenerator()
        generator = Xoshiro256StarStar(seed: parameters.seed ?? system.next())
        let p = parameters
        if p.hasPenalties {
            let ids = p.repetitionPenalty != 1 ? Set(prompt).sorted() : []
            penaltyEntries = ids.map { .init(id: $0, count: 0, seen: true) }
            for (index, id) in ids.enumerated() { entryIndex[id] = index }
            for (id, bias) in p.logitBias.sorted(by: { $0.key < $1.key }) {
                if let index = entryIndex[id] {
                    penaltyEntries![index].bias = bias
                } else {
                    entryIndex[id] = penaltyEntries!.count
                    penaltyEntries!.append(.init(id: id, count: 0, seen: false, bias: bias))
                }
            }
        }
    }

    /// The penalties to apply before a draw made elsewhere (`TokenDraw`), from what this sampler has
    /// recorded; nil when the parameters have none.
    public func penalties() -> TokenPenalties? { penalties(generated: generated) }

    /// The penalties of the draw after the next one, before the next token is recorded: what a step
    /// queued ahead applies, adding that token itself where it is drawn (`TokenPenalties.accepting`
    /// gives what `penalties()` will say once it is recorded).
    public func upcomingPenalties() -> TokenPenalties? { penalties(generated: generated + 1) }

    private func penalties(generated: Int) -> TokenPenalties? {
        guard var entries = penaltyEntries else { return nil }
        let p = parameters
        if generated < p.minTokens {
            // Too short yet to end: the end tokens are barred (their own bias, if any, is replaced).
            for id in p.minTokensStopIDs {
                if let index = entryIndex[id] {
                    entries[index].bias = -.infinity
                } else {
                    entries.append(.init(id: id, count: 0, seen: false, bias: -.infinity))
                }
            }
        }
        return TokenPenalties(
            presence: p.presencePenalty, frequency: p.frequencyPenalty, repetition: p.repetitionPenalty, entries: entries)
    }

    /// A fresh seed from this sampler's generator, for a draw made elsewhere (`TokenDraw`): a seeded
    /// request so gets the same seeds, and tokens, every time.
    public mutating func nextSeed() -> UInt64 { generator.next() }

    /// The seed `nextSeed` will give next, without taking it: what a step queued ahead draws with.
    public func upcomingSeed() -> UInt64 {
        var copy = generator
        return copy.next()
    }

    /// The next token's draw made elsewhere: this sampler's parameters, its next seed (taken) and
    /// penalties.
    public mutating func nextDraw() -> TokenDraw { TokenDraw(parameters, seed: nextSeed(), penalties: penalties()) }

    /// The draw after `nextDraw`'s, as far as it is known before that token is: for a step queued
    /// ahead (`upcomingSeed`, not taken; `upcomingPenalties`).
    public func upcomingDraw() -> TokenDraw { TokenDraw(parameters, seed: upcomingSeed(), penalties: upcomingPenalties()) }

    /// Records a token that became part of the output (whether sampled here or forced).
    public mutating func accept(_ token: Int) {
        generated += 1
        if penaltyEntries != nil {
            let seen = parameters.repetitionPenalty != 1
            if let index = entryIndex[token] {
                penaltyEntries![index].count += 1
                penaltyEntries![index].seen = penaltyEntries![index].seen || seen
            } else {
                entryIndex[token] = penaltyEntries!.count
                penaltyEntries!.append(.init(id: token, count: 1, seen: seen))
            }
        }
    }

    /// The next token for `logits` (vocab), not yet recorded: call `accept` with it.
    public mutating func sample(_ logits: [Float]) -> Int {
        var logits = logits
        penalties()?.apply(to: &logits)
        if parameters.isGreedy { return Self.argmax(logits) }

        // Weights at this temperature, max-subtracted (the largest is 1).
        let inverseTemperature = 1 / parameters.temperature
        let maximum = Self.largest(logits)
        let (weights, total) = Self.exponentials(logits, maximum: maximum, scale: inverseTemperature)

        let filtered = parameters.topK > 0 || parameters.topP < 1 || parameters.minP > 0
        // Every token: from the weights as they are, a block of them at a time.
        guard filtered else { return drawAll(weights, logits: logits) }
        // An infinite logit, a NaN or only -inf: no distribution to filter; the argmax, as drawAll.
        guard total > 0, total.isFinite else { return Self.argmax(logits) }
        var probabilities = weights
        probabilities.withUnsafeMutableBufferPointer { p in
            for i in p.indices { p[i] /= total }
        }

        var candidates = candidates(probabilities)
        // top-k, then top-p over what top-k kept (renormalized, as vLLM and HF do), then min-p;
        // each keeps a prefix of the sorted candidates.
        var mass: Float = 1
        if parameters.topK > 0 && parameters.topK < candidates.count {
            candidates = Array(candidates.prefix(parameters.topK))
            mass = candidates.reduce(Float(0)) { $0 + probabilities[$1] }
        }
        if parameters.topP < 1 {
            var cumulative: Float = 0
            var keep = 0
            for id in candidates {
                cumulative += probabilities[id]
                keep += 1
                if cumulative >= parameters.topP * mass { break }
            }
            candidates = Array(candidates.prefix(keep))
        }
        if parameters.minP > 0, let top = candidates.first {
            let threshold = parameters.minP * probabilities[top]
            candidates = candidates.filter { probabilities[$0] >= threshold }
        }
        return draw(from: candidates, probabilities)
    }

    /// A draw from `candidates` in proportion to their probabilities.
    private mutating func draw(from candidates: [Int], _ probabilities: [Float]) -> Int {
        // Nothing survives when every logit is -inf (min_tokens barring every id, say): the argmax
        // then, as the greedy path and the GPU answer, rather than no token.
        guard !candidates.isEmpty else { return Self.argmax(probabilities) }
        let mass = candidates.reduce(Double(0)) { $0 + Double(probabilities[$1]) }
        var remaining = Double(generator.next() >> 11) / Double(1 << 53) * mass
        for id in candidates {
            remaining -= Double(probabilities[id])
            if remaining < 0 { return id }
        }
        return candidates.last(where: { probabilities[$0] > 0 }) ?? candidates.first!
    }

    /// A draw over every token in proportion to `weights` (not normalized), as `draw` walks them,
    /// but by blocks of 256 whose sums come first: the walk skips whole blocks, where one subtraction
    /// a token (each waiting on the last) was a pass over all 262,144 for a token near the end. The
    /// sums are in Double, four of them at once, as the walk subtracts; what rounding leaves over at
    /// a block's end walks on into the next. Weights that are all 0 or hold a NaN (an infinite
    /// logit, a NaN or only -inf): the argmax of the logits.
    private mutating func drawAll(_ weights: [Float], logits: [Float]) -> Int {
        let block = 256
        let n = weights.count
        var sums = [Double](repeating: 0, count: (n + block - 1) / block)
        weights.withUnsafeBufferPointer { w in
            for b in sums.indices {
                let start = b * block, end = min(n, start + block)
                var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
                var i = start
                while i + 4 <= end {
                    s0 += Double(w[i])
                    s1 += Double(w[i + 1])
                    s2 += Double(w[i + 2])
                    s3 += Double(w[i + 3])
                    i += 4
                }
                while i < end {
                    s0 += Double(w[i])
                    i += 1
                }
                sums[b] = (s0 + s1) + (s2 + s3)
            }
        }
        let mass = sums.reduce(0, +)
        guard mass > 0, mass.isFinite else { return Self.argmax(logits) }
        var remaining = Double(generator.next() >> 11) / Double(1 << 53) * mass
        for b in sums.indices {
            guard remaining < sums[b] || b == sums.count - 1 else {
                remaining -= sums[b]
                continue
            }
            for id in (b * block)..<n {
                remaining -= Double(weights[id])
                if remaining < 0 { return id }
            }
            break
        }
        // Rounding left a little over at the end: the last token with any weight.
        return weights.indices.last(where: { weights[$0] > 0 }) ?? Self.argmax(logits)
    }

    /// e^((x - maximum) * scale) for each x of `logits`, and their sum: eight lanes at a time
    /// (`exponential8`), where `Foundation.exp` one value at a time and a sum whose adds each waited
    /// on the last were most of a draw's time (16% of a sampling server's samples in expf alone).
    static func exponentials(_ logits: [Float], maximum: Float, scale: Float) -> (values: [Float], total: Float) {
        let n = logits.count
        var lanes = SIMD8<Float>()
        var tail: Float = 0
        let values = [Float](unsafeUninitializedCapacity: n) { out, initialized in
            logits.withUnsafeBufferPointer { source in
                guard let from = source.baseAddress, let to = out.baseAddress else { return }
                let m = SIMD8<Float>(repeating: maximum), s = SIMD8<Float>(repeating: scale)
                var i = 0
                while i + 8 <= n {
                    let x = UnsafeRawPointer(from).loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                    let e = exponential8((x - m) * s)
                    UnsafeMutableRawPointer(to).storeBytes(of: e, toByteOffset: 4 * i, as: SIMD8<Float>.self)
                    lanes += e
                    i += 8
                }
                while i < n {
                    let e = exponential8(SIMD8(repeating: (from[i] - maximum) * scale))[0]
                    to[i] = e
                    tail += e
                    i += 1
                }
            }
            initialized = n
        }
        return (values, lanes.sum() + tail)
    }

    /// e^x in eight lanes (Cephes' expf: x = n ln 2 + r, a degree-7 polynomial in r, times 2^n), within
    /// 2 ulp of `Foundation.exp` for x up to 88; 0 below -87.33 (e^-inf is 0; subnormals are not
    /// made), infinity above 88, NaN for NaN. e^0 is exactly 1.
    @inline(__always) static func exponential8(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let nan = x .!= x
        let low = x .< -87.336_54
        let high = x .> 88
        let t = x.replacing(with: 0, where: nan .| low .| high)
        // n = t / ln 2 rounded to the nearest integer by adding 1.5 * 2^23 (whose last place is 1), so
        // that its bits also give n as an integer: the SIMD types' own rounding and conversion go a
        // lane at a time (they made this slower than `Foundation.exp`).
        let shifted = t * 1.442_695_04 + 12_582_912
        let n = shifted - 12_582_912
        var r = t - n * 0.693_359_375
        r = r - n * -2.121_944_4e-4
        var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
        p = p * r + 1.398_199_950_7e-3
        p = p * r + 8.333_451_907_3e-3
        p = p * r + 4.166_579_589_4e-2
        p = p * r + 1.666_666_545_9e-1
        p = p * r + 5.000_000_120_1e-1
        p = p * (r * r) + r + 1
        let exponent = (unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        var e = p * unsafeBitCast(exponent, to: SIMD8<Float>.self)
        e.replace(with: 0, where: low)
        e.replace(with: Float.infinity, where: high)
        e.replace(with: Float.nan, where: nan)
        return e
    }

    /// The tokens that can survive the filters, sorted by probability (descending, ties by id).
    /// With top-k only the k best are sorted; with top-p a probability cut is lowered until the tokens
    /// above it carry at least top_p of the mass, which contains the top-p set, instead of sorting the
    /// whole vocabulary.
    private func candidates(_ probabilities: [Float]) -> [Int] {
        func sorted(_ ids: [Int]) -> [Int] {
            ids.sorted { probabilities[$0] > probabilities[$1] || (probabilities[$0] == probabilities[$1] && $0 < $1) }
        }
        let maximum = Self.largest(probabilities)
        var cut = parameters.minP > 0 ? parameters.minP * maximum : maximum * 1e-4
        while true {
            var ids: [Int] = []
            var mass: Float = 0
            for (id, p) in probabilities.enumerated() where p >= cut {
                ids.append(id)
                mass += p
            }
            let enoughForTopK = parameters.topK > 0 && ids.count >= parameters.topK
            let enoughForTopP = parameters.topP < 1 && mass >= parameters.topP
            if cut == 0 || parameters.minP > 0 || enoughForTopK || enoughForTopP {
                return sorted(ids)
            }
            cut = cut > 1e-12 ? cut / 100 : 0
        }
    }

    /// `values.max() ?? 0`, the same element (both keep the first of the largest, and a NaN only at
    /// index 0), found eight lanes at a time: the generic `max()` took 6% of a server's time when
    /// 16 sequences sampled.
    static func largest(_ values: [Float]) -> Float { values.isEmpty ? 0 : values[argmax(values)] }

    /// The index of the largest logit; the first one on ties, as torch.argmax.
    public static func argmax(_ logits: [Float]) -> Int {
        logits.withUnsafeBufferPointer { argmax($0.baseAddress, count: $0.count) }
    }

    /// `argmax` of `count` floats from `values`: the index that `best = 0; for i where values[i] >
    /// values[best] { best = i }` gives, the first of the largest (a NaN never wins, save at index 0,
    /// which nothing then beats). Eight lanes at a time, each starting from values[0] at index 0 and
    /// taking a value only when it is greater, so that each lane holds its first largest; then the
    /// largest of the lanes, the lowest index on ties, and the tail one by one. A greedy step of 16
    /// sequences scans 16 rows of 262,144.
    public static func argmax(_ values: UnsafePointer<Float>?, count: Int) -> Int {
        guard let values, count > 1, !values[0].isNaN else { return 0 }
        var best = SIMD8<Float>(repeating: values[0])
        var index = SIMD8<Int32>(repeating: 0)
        var lanes = SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7)
        var i = 0
        if count < Int(Int32.max) - 8 {
            let raw = UnsafeRawPointer(values)
            while i + 8 <= count {
                let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                let greater = v .> best
                best.replace(with: v, where: greater)
                index.replace(with: lanes, where: greater)
                lanes &+= 8
                i += 8
            }
        }
        var top = best[0], at = Int(index[0])
        for l in 1..<8 where best[l] > top || (best[l] == top && Int(index[l]) < at) {
            top = best[l]
            at = Int(index[l])
        }
        while i < count {
            if values[i] > top {
                top = values[i]
                at = i
            }
            i += 1
        }
        return at
    }
}

/// xoshiro256** (Blackman and Vigna), seeded through SplitMix64: small, fast and reproducible.
/// Public for the GPU checks' random inputs and weights.
public struct Xoshiro256StarStar: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var x = seed
        func splitMix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitMix(), splitMix(), splitMix(), splitMix())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }
}
