import Foundation

/// What to generate: how many tokens, how to choose them, when to stop, which logprobs to report.
public struct GenerationParameters: Sendable {
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// Generation ends after producing one of these (it is part of the output).
    public var stopTokenIDs: Set<Int>
    /// How many most likely alternatives to report per step (0: none).
    public var topLogprobs: Int
    /// Whether each token's logprob is wanted (a pass over the whole vocabulary per token); when
    /// false, `GeneratedToken.logprob` is NaN.
    public var computeLogprobs = true

    public init(
        maxTokens: Int = 16, sampling: SamplingParameters = SamplingParameters(), stopTokenIDs: Set<Int> = [],
        topLogprobs: Int = 0
    ) {
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopTokenIDs = stopTokenIDs
        self.topLogprobs = topLogprobs
    }
}

/// A token and its log-probability under the model (log-softmax of the raw logits).
public struct TokenLogprob: Sendable, Equatable {
    public var id: Int
    public var logprob: Float
    public init(id: Int, logprob: Float) {
        self.id = id
        self.logprob = logprob
    }
}

public struct GeneratedToken: Sendable, Equatable {
    public var id: Int
    public var logprob: Float
    /// The most likely tokens at this step, most likely first (as many as `topLogprobs` asked).
    public var top: [TokenLogprob]
    /// How many tokens score at least as high as this one (1: the most likely), as vLLM ranks the
    /// token itself in prompt_logprobs; nil where logprobs were not computed.
    public var rank: Int?

    public init(id: Int, logprob: Float, top: [TokenLogprob], rank: Int? = nil) {
        self.id = id
        self.logprob = logprob
        self.top = top
        self.rank = rank
    }
}

public enum FinishReason: String, Sendable {
    /// A stop token was generated, or the caller stopped generation (a stop string).
    case stop
    /// `maxTokens` (or the context) ran out.
    case length
}

public struct GenerationTimings: Sendable, Equatable {
    public var promptTokens: Int
    /// Prompt processing up to the first token's logits.
    public var prefillSeconds: Double
    /// Forward passes after the first token.
    public var decodeSteps: Int
    public var decodeSeconds: Double

    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(decodeSteps) / decodeSeconds : 0 }
}

public struct GenerationResult: Sendable {
    public var promptIDs: [Int]
    public var tokens: [GeneratedToken]
    public var finishReason: FinishReason
    public var timings: GenerationTimings

    public var outputIDs: [Int] { tokens.map(\.id) }
}

/// The log-softmax pieces of one step: logsumexp over the whole vocabulary and the top entries.
public enum Logprobs {
    /// log Σ exp(logits), accumulated in f32 lanes flushed to Double.
    public static func logSumExp(_ logits: [Float]) -> Float {
        guard !logits.isEmpty else { return -.infinity }
        return logits.withUnsafeBufferPointer { VectorMath.logSumExp($0.baseAddress!, count: $0.count) }
    }

    /// Token `id` with its logprob and the `top` most likely tokens' under `logits` (log-softmax).
    public static func token(_ id: Int, of logits: [Float], top: Int) -> GeneratedToken {
        let logSumExp = logSumExp(logits)
        let value = logits[id]
        return GeneratedToken(
            id: id, logprob: value - logSumExp,
            top: self.top(logits, top).map { TokenLogprob(id: $0.id, logprob: $0.logit - logSumExp) },
            rank: logits.reduce(0) { $1 >= value ? $0 + 1 : $0 })
    }

    /// The `k` largest logits as (id, logit), largest first, lower id first on ties.
    public static func top(_ logits: [Float], _ k: Int) -> [(id: Int, logit: Float)] {
        guard k > 0 else { return [] }
        var best: [(id: Int, logit: Float)] = []
        best.reserveCapacity(k + 1)
        for (id, value) in logits.enumerated() {
            if best.count == k, let last = best.last, value <= last.logit { continue }
            var index = best.count
            while index > 0 && best[index - 1].logit < value { index -= 1 }
            best.insert((id, value), at: index)
            if best.count > k { best.removeLast() }
        }
        return best
    }
}

extension Sampler {
    /// Samples the next token from `logits`, records it, and reports its logprob and the
    /// `topLogprobs` most likely alternatives (log-softmax of the raw logits, as vLLM reports them).
    public mutating func next(_ logits: [Float], topLogprobs: Int, computeLogprobs: Bool = true) -> GeneratedToken {
        let id = sample(logits)
        accept(id)
        guard computeLogprobs || topLogprobs > 0 else { return GeneratedToken(id: id, logprob: .nan, top: []) }
        return Logprobs.token(id, of: logits, top: topLogprobs)
    }

    /// `next` for several samplers at once, sampler i on `logits[i]` (a server step's sequences that
    /// sample on the host), spread over the cores: a row of 262,144 logits takes about 1.5 ms here,
    /// which 16 sequences otherwise spent one after another while the cores that ran the step
    /// waited. Each sampler draws and records exactly what `next` alone would.
    public static func next(
        _ samplers: inout [Sampler], logits: [[Float]], topLogprobs: [Int], computeLogprobs: [Bool]
    ) -> [GeneratedToken] {
        let count = samplers.count
        precondition(logits.count == count && topLogprobs.count == count && computeLogprobs.count == count)
        var tokens = [GeneratedToken](repeating: GeneratedToken(id: 0, logprob: .nan, top: []), count: count)
        samplers.withUnsafeMutableBufferPointer { samplers in
            tokens.withUnsafeMutableBufferPointer { tokens in
                // Each index is written by one chunk only.
                Parallel.forRanges(count) { range in
                    for i in range {
                        tokens[i] = samplers[i].next(logits[i], topLogprobs: topLogprobs[i], computeLogprobs: computeLogprobs[i])
                    }
                }
            }
        }
        return tokens
    }
}

extension InferenceSession {
    /// Generates after `prompt` (which replaces whatever the session held). `onToken` sees each token
    /// as it is chosen and returns false to stop there (a stop string, a cancelled request): the
    /// finish reason is then `stop`.
    public func generate(
        prompt: [Int], parameters: GenerationParameters, onToken: (GeneratedToken) -> Bool = { _ in true }
    ) throws -> GenerationResult {
        try parameters.sampling.validate()
        guard parameters.maxTokens >= 0 else { throw InferenceError.invalidArgument("max tokens must be >= 0") }
        guard parameters.topLogprobs >= 0 else { throw InferenceError.invalidArgument("top logprobs must be >= 0") }
        reset()
        var sampler = Sampler(parameters: parameters.sampling, prompt: prompt)
        let clock = ContinuousClock()
        let start = clock.now
        var logits = try append(prompt)
        let prefill = clock.now - start
        var timings = GenerationTimings(
            promptTokens: prompt.count, prefillSeconds: prefill.seconds, decodeSteps: 0, decodeSeconds: 0)
        var tokens: [GeneratedToken] = []
        var finish = FinishReason.length
        let decodeStart = clock.now
        while tokens.count < parameters.maxTokens {
            let token = sampler.next(logits, topLogprobs: parameters.topLogprobs, computeLogprobs: parameters.computeLogprobs)
            let id = token.id
            tokens.append(token)
            if !onToken(token) {
                finish = .stop
                break
            }
            if parameters.stopTokenIDs.contains(id) {
                finish = .stop
                break
            }
            guard tokens.count < parameters.maxTokens, tokenCount < contextLength else { break }
            logits = try append([id])
            timings.decodeSteps += 1
        }
        timings.decodeSeconds = (clock.now - decodeStart).seconds
        return GenerationResult(promptIDs: prompt, tokens: tokens, finishReason: finish, timings: timings)
    }
}

extension Duration {
    var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) * 1e-18
    }
}
