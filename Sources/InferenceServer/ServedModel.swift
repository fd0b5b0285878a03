import CUDABackend
import Foundation
import Inference
import Tokenizer

/// A loaded model as the API serves it: the engine, its tokenizer, the scheduler that runs it, the
/// names clients may ask for, and the defaults requests inherit.
public final class ServedModel: Sendable {
    public let engine: Engine
    public let tokenizer: Tokenizer
    public let scheduler: any RequestScheduler
    /// Where the model runs ("cpu", or the GPU's name).
    public let deviceName: String
    /// The first is the id `/v1/models` lists; requests may name any of them.
    public let names: [String]
    /// Prompt plus output tokens may not exceed this (vLLM's max_model_len).
    public let contextLength: Int
    public let created = Int(Date().timeIntervalSince1970)
    /// On the CPU, the bytes of tiles packed at start for AVX-512 VNNI or BF16 (`Gemma3Model.packTiles`) and the seconds it took.
    public let packedTiles: (bytes: Int, seconds: Double)

    /// On a GPU the weights are copied to the device here, and the KV cache budget is what
    /// `gpuMemoryUtilization` of the card leaves (at most `limits.cacheBytes`); too little for one
    /// full-length sequence is an error now, not an out-of-memory mid-request. With `tuning`, the
    /// settings of a one-sequence decode step it names are first timed on the card and the fastest
    /// kept (`DecodeTuning`; its report goes to the log).
    public init(
        engine: Engine, names: [String], contextLength: Int?, limits: SchedulerLimits, metrics: ServerMetrics,
        device: ComputeDevice = .cpu, gpuMemoryUtilization: Double = 0.9, tuning: DecodeTuning.Plan? = nil
    ) throws {
        self.engine = engine
        tokenizer = try engine.requireTokenizer()
        self.names = names
        let length = min(contextLength ?? engine.config.maxPositionEmbeddings, engine.config.maxPositionEmbeddings)
        self.contextLength = length
        deviceName = device.name
        switch device {
        case .cpu:
            // Before the server says it is ready: the first requests should not pay for it.
            let start = ContinuousClock.now
            let bytes = engine.model.packTiles()
            packedTiles = (bytes, (ContinuousClock.now - start) / .seconds(1))
            scheduler = Scheduler(model: engine.model, contextLength: length, limits: limits, metrics: metrics)
        case .cuda(let gpu):
            packedTiles = (0, 0)
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
            if let tuning {
                // Before the budget is measured: the tuning's runner and slot are gone by then. Only
                // a speed-up: a failure leaves the settings as they were (a GPU fault, though, leaves
                // the context unusable, and then the checks below fail too).
                // Said first: should a kernel fault on this GPU and end the process, the last line
                // says what to turn off.
                OpenAIServer.log(
                    "timing \(tuning.knobs.map(\.variable).joined(separator: " and "))'s values on this GPU (INFERENCE_DECODE_TUNING=off skips it)")
                do {
                    OpenAIServer.log(try DecodeTuning.tune(model: model, plan: tuning).line)
                } catch {
                    OpenAIServer.log("decode tuning failed, the settings left as they were: \(error) (INFERENCE_DECODE_TUNING=off skips it)")
                }
            }
            var limits = limits
            // Measured while a runner like the scheduler's holds its scratch (activations, logits),
            // so the budget is what is left beside it; the probe's memory then goes to the scheduler's.
            limits.cacheBytes = try {
                let probe = BatchRunner(model: model, maximumSequences: limits.maximumRunning, prefillChunk: 128)
                return try gpu.kvCacheBudget(
                    utilization: gpuMemoryUtilization, requested: limits.cacheBytes,
                    minimum: probe.cacheBytes(positions: length, contextLength: length))
            }()
            scheduler = Scheduler(model: model, contextLength: length, limits: limits, metrics: metrics)
        }
    }

    /// Checks a request's `model` field (absent means this model, as vLLM allows).
    func requireName(_ requested: String?) throws {
        guard let requested, !names.contains(requested) else { return }
        throw OpenAIError(.notFound, "The model `\(requested)` does not exist.", param: "model")
    }

    /// Sampling settings of a request: its own values, else generation_config.json's, else vLLM's defaults.
    /// `stopTokens` (the request's end tokens) are what `min_tokens` holds back.
    func sampling(_ f: SamplingFields, choice: Int, stopTokens: Set<Int> = []) throws -> SamplingParameters {
        let g = engine.generationConfig
        func float(_ value: Double?, _ name: String) throws -> Float? {
            guard let value else { return nil }
            guard value.isFinite, abs(value) < 1e6 else { throw OpenAIError.badRequest("\(name) is out of range", param: name) }
            return Float(value)
        }
        var p = SamplingParameters()
        p.temperature = try float(f.temperature, "temperature") ?? g.temperature ?? 1
        p.topK = f.topK ?? g.topK ?? 0
        p.topP = try float(f.topP, "top_p") ?? g.topP ?? 1
        p.minP = try float(f.minP, "min_p") ?? 0
        p.presencePenalty = try float(f.presencePenalty, "presence_penalty") ?? 0
        p.frequencyPenalty = try float(f.frequencyPenalty, "frequency_penalty") ?? 0
        p.repetitionPenalty = try float(f.repetitionPenalty, "repetition_penalty") ?? 1
        if p.topK == -1 { p.topK = 0 }
        for (key, value) in f.logitBias ?? [:] {
            guard let id = Int(key), id >= 0, id < engine.config.vocabularySize else {
                throw OpenAIError.badRequest("logit_bias: \(key.debugDescription) is not a token id of this model", param: "logit_bias")
            }
            guard value.isFinite else { throw OpenAIError.badRequest("logit_bias values must be numbers", param: "logit_bias") }
            // OpenAI's range; vLLM clamps to it rather than refusing.
            p.logitBias[id] = Float(min(100, max(-100, value)))
        }
        p.minTokens = f.minTokens ?? 0
        p.minTokensStopIDs = p.minTokens > 0 ? stopTokens.sorted() : []
        // n choices with one seed: each its own stream, all reproducible.
        p.seed = f.seed.map { UInt64(bitPattern: Int64($0)) &+ UInt64(choice) }
        if let bad = p.firstValueOutOfRange { throw OpenAIError.badRequest(bad.message, param: bad.field) }
        return p
    }

    /// Stop tokens for a request: the model's end-of-turn tokens (unless ignore_eos) plus its stop_token_ids.
    func stopTokens(_ f: SamplingFields) throws -> Set<Int> {
        var ids = f.ignoreEos == true ? Set<Int>() : engine.stopTokenIDs
        for id in f.stopTokenIds ?? [] {
            guard id >= 0 && id < engine.config.vocabularySize else {
                throw OpenAIError.badRequest("stop_token_ids: \(id) is not a token id of this model", param: "stop_token_ids")
            }
            ids.insert(id)
        }
        return ids
    }

    /// The completion budget of a prompt: `maxTokens`, or with none given (chat, or completions'
    /// `"max_tokens": null`) the rest of the context, as vLLM. A prompt that leaves no room for
    /// one token is refused then; with a budget, prompt plus budget must fit.
    func completionBudget(promptTokens: Int, maxTokens: Int?, param: String) throws -> Int {
        if let maxTokens {
            try checkContext(promptTokens: promptTokens, maxTokens: maxTokens, param: param)
            return maxTokens
        }
        guard promptTokens < contextLength else { throw promptTooLong(promptTokens, param: param) }
        return contextLength - promptTokens
    }

    private func promptTooLong(_ promptTokens: Int, param: String) -> OpenAIError {
        OpenAIError.badRequest(
            "This model's maximum context length is \(contextLength) tokens. However, the prompt has \(promptTokens) "
                + "tokens, which leaves no room for the completion. Please reduce the length of the \(param).",
            param: param)
    }

    /// vLLM's message when prompt plus completion do not fit the context.
    func checkContext(promptTokens: Int, maxTokens: Int, param: String = "prompt") throws {
        // Compared without adding: max_tokens may be anything up to Int.max.
        guard maxTokens > contextLength - promptTokens else { return }
        if promptTokens > contextLength { throw promptTooLong(promptTokens, param: param) }
        let (total, overflow) = promptTokens.addingReportingOverflow(maxTokens)
        throw OpenAIError.badRequest(
            "This model's maximum context length is \(contextLength) tokens. However, you requested "
                + "\(overflow ? "more than \(Int.max)" : String(total)) tokens (\(promptTokens) in the messages, "
                + "\(maxTokens) in the completion). Please reduce the length of the messages or completion.",
            param: "max_tokens")
    }

    /// The text of one token, as logprobs report it.
    func tokenText(_ id: Int) -> String { tokenizer.decode([id]) }
}
