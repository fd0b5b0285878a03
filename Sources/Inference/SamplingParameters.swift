/// How the next token is chosen from the logits; vLLM's names and meanings (gemma3-and-serving.md §4.1).
public struct SamplingParameters: Sendable, Equatable {
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it before sampling.
    public var temperature: Float = 0
    /// Keep only the k most likely tokens; 0 (or -1, as vLLM spells it) keeps all.
    public var topK: Int = 0
    /// Keep the smallest set of most likely tokens whose probabilities add up to at least topP.
    public var topP: Float = 1
    /// Drop tokens less likely than minP times the most likely one.
    public var minP: Float = 0
    /// Tokens already in the prompt or output: positive logits divided by it, negative multiplied (CTRL / HF).
    public var repetitionPenalty: Float = 1
    /// Subtracted once from the logit of every token already generated.
    public var presencePenalty: Float = 0
    /// Subtracted from a token's logit once per time it was generated.
    public var frequencyPenalty: Float = 0
    /// The same seed with the same prompt and parameters gives the same tokens; nil draws a fresh seed.
    public var seed: UInt64? = nil
    /// Added to the logits of these token ids before the penalties (OpenAI's `logit_bias`, within ±100).
    public var logitBias: [Int: Float] = [:]
    /// Until this many tokens are generated, `minTokensStopIDs` cannot be drawn (vLLM's `min_tokens`).
    public var minTokens: Int = 0
    /// The tokens that would end the sequence (end of turn, `stop_token_ids`), barred before `minTokens`.
    public var minTokensStopIDs: [Int] = []

    public init(
        temperature: Float = 0, topK: Int = 0, topP: Float = 1, minP: Float = 0, repetitionPenalty: Float = 1,
        presencePenalty: Float = 0, frequencyPenalty: Float = 0, seed: UInt64? = nil
    ) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.seed = seed
    }

    public var isGreedy: Bool { temperature == 0 }

    /// Greedy with no penalty: the token is the plain argmax of the logits, which a GPU backend
    /// picks where the logits are (`BatchRunner.Work.greedy`).
    public var isPlainArgmax: Bool {
        isGreedy && !hasPenalties
    }

    /// Anything that changes the logits before the draw: penalties, biases, a minimum length.
    public var hasPenalties: Bool {
        presencePenalty != 0 || frequencyPenalty != 0 || repetitionPenalty != 1 || !logitBias.isEmpty
            || (minTokens > 0 && !minTokensStopIDs.isEmpty)
    }

    /// The first value out of its range (vLLM's bounds): the request field it came from, and a
    /// message that starts with that name. Nil when every value is in range.
    public var firstValueOutOfRange: (field: String, message: String)? {
        if !(temperature >= 0 && temperature.isFinite) {
            return ("temperature", "temperature must be a number >= 0, got \(temperature)")
        }
        if topK < -1 { return ("top_k", "top_k must be -1 (off), 0 (off) or positive, got \(topK)") }
        if !(topP > 0 && topP <= 1) { return ("top_p", "top_p must be in (0, 1], got \(topP)") }
        if !(minP >= 0 && minP <= 1) { return ("min_p", "min_p must be in [0, 1], got \(minP)") }
        if !(repetitionPenalty > 0 && repetitionPenalty.isFinite) {
            return ("repetition_penalty", "repetition_penalty must be > 0, got \(repetitionPenalty)")
        }
        if !(-2...2).contains(presencePenalty) {
            return ("presence_penalty", "presence_penalty must be in [-2, 2], got \(presencePenalty)")
        }
        if !(-2...2).contains(frequencyPenalty) {
            return ("frequency_penalty", "frequency_penalty must be in [-2, 2], got \(frequencyPenalty)")
        }
        if let (id, value) = logitBias.first(where: { !(-100...100).contains($0.value) || $0.key < 0 }) {
            return ("logit_bias", "logit_bias must map token ids to values in [-100, 100], got \(id): \(value)")
        }
        if minTokens < 0 { return ("min_tokens", "min_tokens must be at least 0, got \(minTokens)") }
        return nil
    }

    /// Throws `invalidArgument` with `firstValueOutOfRange`'s message.
    public func validate() throws {
        if let bad = firstValueOutOfRange { throw InferenceError.invalidArgument(bad.message) }
    }
}
