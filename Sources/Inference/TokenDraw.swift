import Foundation

/// How one row's next token is chosen where its logits are (`ComputeBackend.sample`), so that a GPU
/// sends back a token id instead of a vocabulary of logits: the argmax (temperature 0), or a draw
/// from softmax(logits / T) kept to the top-k tokens, then to the smallest most likely set holding
/// top-p of their mass, then to tokens at least min-p as likely as the best (vLLM's order, as
/// `Sampler`). The draw is the Gumbel-max trick: the argmax over kept tokens of
/// (logit − max) / T − log(−log u), u hashed from (seed, token id), so a seed gives one token.
///
/// `choose` is the host version of the CUDA kernel `sample_rows`, step for step (the same cuts,
/// hash and float operations), which is how the checks hold the kernel to it. It differs from
/// `Sampler` in how it draws (one uniform per token instead of one per step) and in keeping every
/// token tied with a cut; the distribution is the same. Penalties are applied first, as
/// `TokenPenalties.apply`; logprobs, when wanted, come from the logits before them
/// (`ComputeBackend.sample(_:...:logprobs:)`).
public struct TokenDraw: Sendable, Equatable {
    /// 0: the argmax.
    public var temperature: Float
    /// 0: off.
    public var topK: Int
    /// 1: off.
    public var topP: Float
    /// 0: off.
    public var minP: Float
    /// The noise's seed; a request's sampler gives a fresh one per step from its own seeded generator.
    public var seed: UInt64
    /// Logit biases (logit_bias, min_tokens) and the repetition, presence and frequency penalties,
    /// applied to the (capped) logits first.
    public var penalties: TokenPenalties?

    /// Temperatures below this are the argmax, as vLLM's sampling epsilon: 1 / T would overflow.
    public static let greedyTemperature: Float = 1e-5

    /// Most alternatives a backend reports beside a drawn token (`ComputeBackend.sample` with
    /// logprobs); the OpenAI API's own limit. Requests for more take their logits to the host.
    public static let maximumLogprobs = 20

    public static let argmax = TokenDraw(temperature: 0, topK: 0, topP: 1, minP: 0, seed: 0)

    public init(temperature: Float, topK: Int, topP: Float, minP: Float, seed: UInt64) {
        self.temperature = temperature < Self.greedyTemperature ? 0 : temperature
        self.topK = max(0, topK)
        self.topP = topP
        self.minP = minP
        self.seed = seed
    }

    public init(_ parameters: SamplingParameters, seed: UInt64, penalties: TokenPenalties? = nil) {
        self.init(
            temperature: parameters.temperature, topK: parameters.topK, topP: parameters.topP, minP: parameters.minP,
            seed: seed)
        self.penalties = penalties
    }

    public var isArgmax: Bool { temperature == 0 }

    /// The plain argmax of the logits: no temperature and nothing that changes them.
    public var isPlainArgmax: Bool { isArgmax && penalties == nil }

    /// This draw once `token` is generated, for a step queued before it was known: its penalties count
    /// it (`TokenPenalties.accepting`); the rest stays.
    public func accepting(_ token: Int) -> TokenDraw {
        var draw = self
        draw.penalties = penalties?.accepting(token)
        return draw
    }

    /// Whether this draw chooses as `other` does: the same temperature, and for a draw (not an
    /// argmax, which uses none of them) the same cuts and seed; and penalties that apply alike
    /// (`TokenPenalties.applies(as:)`) or none.
    public func chooses(as other: TokenDraw) -> Bool {
        guard temperature == other.temperature,
            isArgmax || (topK == other.topK && topP == other.topP && minP == other.minP && seed == other.seed)
        else { return false }
        switch (penalties, other.penalties) {
        case (nil, nil): return true
        case (let a?, let b?): return a.applies(as: b)
        default: return false
        }
    }

    /// Bytes of one row's parameters as the kernel reads them (`struct SampleRow`: temperature,
    /// top_p, min_p as f32, top_k as i32, seed as u64; little-endian).
    public static let rowBytes = 24

    public func write(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: temperature, toByteOffset: 0, as: Float.self)
        p.storeBytes(of: topP, toByteOffset: 4, as: Float.self)
        p.storeBytes(of: minP, toByteOffset: 8, as: Float.self)
        p.storeBytes(of: Int32(clamping: topK), toByteOffset: 12, as: Int32.self)
        p.storeBytes(of: seed, toByteOffset: 16, as: UInt64.self)
    }

    /// The token for one row of raw (uncapped) logits; `softcap` is the model's final logit cap.
    public func choose(_ logits: [Float], softcap: Float? = nil) -> Int {
        let n = logits.count
        guard n > 0 else { return 0 }
        let cap = softcap ?? 0
        var values = logits.map { Self.capped($0, cap) }
        penalties?.apply(to: &values)
        if isArgmax { return Sampler.argmax(values) }
        let maximum = values.max()!
        let inverse = 1 / temperature
        let keys = values.map(Self.orderKey)
        var floor: UInt32 = 0
        if topK > 0 && topK < n {
            // The k-th largest key: the largest K with at least k keys >= K.
            floor = keys.sorted(by: >)[topK - 1]
        }
        if topP < 1 {
            let weights = values.map { Self.mass($0, maximum, inverse) }
            var kept: UInt64 = 0
            for i in 0..<n where keys[i] >= floor { kept &+= weights[i] }
            // Nothing measurable kept (an infinite logit): top-p leaves the cut as it is.
            let target = kept == 0 ? UInt64.max : max(1, UInt64((Double(topP) * Double(kept)).rounded(.up)))
            // The largest key K whose keys >= K (among those >= floor) weigh at least target.
            var above: UInt64 = 0
            let order = (0..<n).filter { keys[$0] >= floor && weights[$0] > 0 }.sorted { keys[$0] > keys[$1] }
            for i in order {
                above &+= weights[i]
                if above >= target {
                    floor = keys[i]
                    break
                }
            }
        }
        let noise = Self.mix64(seed)
        var best = -Float.infinity
        var chosen: Int? = nil
        for i in 0..<n {
            let v = values[i]
            guard keys[i] >= floor, v != -.infinity else { continue }
            let e = Self.scaled(v, maximum, inverse)
            if minP > 0 && Foundation.expf(e) < minP { continue }
            let u = (Float(Self.mix64(noise &+ UInt64(i)) >> 41) + 0.5) * (1 / 8_388_608)
            let g = e - Foundation.logf(-Foundation.logf(u))
            if g > best || chosen == nil {
                best = g
                chosen = i
            }
        }
        return chosen ?? 0
    }

    /// Larger floats give larger keys; NaN counts as −∞ (the kernel's `order_key`).
    static func orderKey(_ f: Float) -> UInt32 {
        var u = f.bitPattern
        if u & 0x7fff_ffff > 0x7f80_0000 { u = 0xff80_0000 }
        return u & 0x8000_0000 != 0 ? ~u : u | 0x8000_0000
    }

    static func capped(_ v: Float, _ softcap: Float) -> Float {
        if v.isNaN { return -.infinity }
        return softcap > 0 ? Foundation.tanhf(v / softcap) * softcap : v
    }

    /// (logit − max) / T, with the best exactly 0 even when it is +∞ (∞ − ∞ would be NaN).
    static func scaled(_ v: Float, _ maximum: Float, _ inverse: Float) -> Float {
        v == maximum ? 0 : (v - maximum) * inverse
    }

    /// A token's probability (unnormalized, the best is 1) in units of 2^-40, as the kernel sums it.
    static func mass(_ v: Float, _ maximum: Float, _ inverse: Float) -> UInt64 {
        let scaled = Foundation.expf(Self.scaled(v, maximum, inverse)) * 1_099_511_627_776
        return scaled.isFinite && scaled >= 0 ? UInt64(scaled) : 0
    }

    static func mix64(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// The penalties of one draw, as `Sampler` applies them: a token's bias is added first, then the
/// repetition penalty divides positive logits and multiplies negative ones of every token in the
/// prompt or output, then each generated token loses presence + frequency × its count. The CUDA
/// kernel `apply_penalties` is the same.
public struct TokenPenalties: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var id: Int
        /// Times generated so far.
        public var count: Int
        /// In the prompt or output: the repetition penalty applies.
        public var seen: Bool
        /// Added to the logit before the penalties (`logit_bias`; -inf bars the token, `min_tokens`).
        public var bias: Float

        public init(id: Int, count: Int, seen: Bool, bias: Float = 0) {
            self.id = id
            self.count = count
            self.seen = seen
            self.bias = bias
        }
    }

    public var presence: Float
    public var frequency: Float
    public var repetition: Float
    /// One entry per token id (the prompt's in increasing id order, then the output's new ones).
    public var entries: [Entry]

    public init(presence: Float, frequency: Float, repetition: Float, entries: [Entry]) {
        self.presence = presence
        self.frequency = frequency
        self.repetition = repetition
        self.entries = entries
    }

    /// These penalties once `token` is generated, as `Sampler.accept` records it: its count one more
    /// and, with a repetition penalty, seen (a new entry if it had none).
    public func accepting(_ token: Int) -> TokenPenalties {
        var result = self
        if let index = entries.firstIndex(where: { $0.id == token }) {
            result.entries[index].count += 1
            result.entries[index].seen = result.entries[index].seen || repetition != 1
        } else {
            result.entries.append(.init(id: token, count: 1, seen: repetition != 1))
        }
        return result
    }

    /// Whether these change logits as `other` does: the same penalties, and the same entry for each
    /// token id whatever their order (`apply` touches each id once). A step's history is compared
    /// every step: in the same order (the usual case) it is one pass, without sorting.
    public func applies(as other: TokenPenalties) -> Bool {
        guard presence == other.presence, frequency == other.frequency, repetition == other.repetition,
            entries.count == other.entries.count
        else { return false }
        return entries == other.entries || entries.sorted { $0.id < $1.id } == other.entries.sorted { $0.id < $1.id }
    }

    public func apply(to logits: inout [Float]) {
        for entry in entries where entry.id >= 0 && entry.id < logits.count {
            var v = logits[entry.id]
            // As vLLM: logit processors (bias, min_tokens) first, then the penalties.
            if entry.bias != 0 { v += entry.bias }
            if repetition != 1 && entry.seen { v = v > 0 ? v / repetition : v * repetition }
            if (presence != 0 || frequency != 0) && entry.count > 0 { v -= presence + frequency * Float(entry.count) }
            logits[entry.id] = v
        }
    }
}
