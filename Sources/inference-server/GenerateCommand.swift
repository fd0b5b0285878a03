import ArgumentParser
import CUDABackend
import Foundation
import Inference
import Tokenizer

/// `generate`: one prompt through the engine, printed as text (streamed) or as one JSON object.
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a completion with the engine (on the GPU when one is usable, else the CPU).",
        discussion: """
            --prompt adds <bos> as the tokenizer config says; --chat renders the prompt as one user turn \
            through the chat template; --prompt-ids is taken as given. Greedy unless --temperature > 0.
            """)

    @OptionGroup var options: ModelOptions

    @Option(help: "Prompt text.")
    var prompt: String?

    @Option(
        name: .customLong("prompt-ids"), help: "Prompt as comma-separated token ids, used as given (e.g. 2,105,2364).")
    var promptIDs: String?

    @Flag(help: "Render --prompt as one user turn through the chat template.")
    var chat = false

    @Option(help: "Folder with tokenizer.json (default: the model folder, or the GGUF file's folder).")
    var tokenizer: String?

    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.")
    var maxTokens = 64

    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0

    @Option(name: .customLong("top-k"), help: "Keep the k most likely tokens (0: all).")
    var topK = 0

    @Option(name: .customLong("top-p"), help: "Nucleus sampling mass.")
    var topP: Float = 1

    @Option(name: .customLong("min-p"), help: "Drop tokens below min-p times the most likely one.")
    var minP: Float = 0

    @Option(name: .customLong("repetition-penalty"))
    var repetitionPenalty: Float = 1

    @Option(name: .customLong("presence-penalty"))
    var presencePenalty: Float = 0

    @Option(name: .customLong("frequency-penalty"))
    var frequencyPenalty: Float = 0

    @Option(help: "Random seed; the same seed reproduces the same output.")
    var seed: UInt64?

    @Option(name: .customLong("top-logprobs"), help: "Report the K most likely tokens with logprobs at every step.")
    var topLogprobs = 0

    @Flag(help: "With --json: each generated token's logprob (a pass over the whole vocabulary per token).")
    var logprobs = false

    @Option(
        name: .customLong("stop"),
        help: "Stop when the output contains this text (repeatable); it is left out of the text.")
    var stop: [String] = []

    @Option(name: .customLong("context"), help: "Context length for this run (default: the model's).")
    var context: Int?

    @Flag(name: .customLong("ignore-eos"), help: "Do not stop at stop tokens (benchmarks, reference comparisons).")
    var ignoreEOS = false

    @Flag(
        name: .customLong("exact-activations"),
        help: "Keep activations in f32 in every product (slower on Q8_0/Q5_0/Q4_K/Q6_K weights, and on bf16 weights on CPUs with AVX-512 BF16; for numeric comparisons).")
    var exactActivations = false

    @Flag(help: "Print one JSON object instead of the text.")
    var json = false

    @Option(help: "Where the model runs: auto (the NVIDIA GPU when one is usable, else the CPU), cpu or cuda.")
    var device = DeviceChoice.auto

    func validate() throws {
        guard (prompt == nil) != (promptIDs == nil) else {
            throw ValidationError("give exactly one of --prompt and --prompt-ids")
        }
        if chat && prompt == nil {
            throw ValidationError("--chat renders --prompt; it cannot be used with --prompt-ids")
        }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be >= 0") }
        guard topLogprobs >= 0 && topLogprobs <= 100 else { throw ValidationError("--top-logprobs must be in 0...100") }
        if let context, context <= 0 { throw ValidationError("--context must be positive") }
    }

    func run() throws {
        CPUCheck.requireEngineFeatures()
        let path = try options.resolvedPath()
        let engine = try Engine.load(path: path, tokenizerDirectory: tokenizer, exactActivations: exactActivations)

        let promptTokens: [Int]
        if let promptIDs {
            promptTokens = try promptIDs.split(separator: ",").map {
                guard let id = Int($0.trimmingCharacters(in: .whitespaces)) else {
                    throw ValidationError("--prompt-ids: \"\($0)\" is not a token id")
                }
                return id
            }
        } else if chat {
            promptTokens = try engine.requireTokenizer().encodeChat(
                [ChatMessage(role: "user", content: prompt ?? "")], addGenerationPrompt: true)
        } else {
            promptTokens = try engine.requireTokenizer().encode(prompt ?? "", addSpecialTokens: true)
        }

        let sampling = SamplingParameters(
            temperature: temperature, topK: topK, topP: topP, minP: minP, repetitionPenalty: repetitionPenalty,
            presencePenalty: presencePenalty, frequencyPenalty: frequencyPenalty, seed: seed)
        var parameters = GenerationParameters(
            maxTokens: maxTokens, sampling: sampling, stopTokenIDs: ignoreEOS ? [] : engine.stopTokenIDs,
            topLogprobs: topLogprobs)
        parameters.computeLogprobs = logprobs
        if !stop.isEmpty && engine.tokenizer == nil { throw ValidationError("--stop needs a tokenizer") }
        var stream = engine.tokenizer.map { TextStream(tokenizer: $0, stopStrings: stop) }
        let streaming = !json && stream != nil
        func generate<Backend>(_ session: InferenceSession<Backend>) throws -> GenerationResult {
            try session.generate(prompt: promptTokens, parameters: parameters) { token in
                guard stream != nil else { return true }
                let piece = stream!.push(token.id)
                if streaming && !piece.isEmpty { FileHandle.standardOutput.write(Data(piece.utf8)) }
                return !stream!.stopped
            }
        }
        let result: GenerationResult
        switch try ComputeDevice.open(device, note: { FileHandle.standardError.write(Data("inference-server: \($0)\n".utf8)) }) {
        case .cpu:
            engine.model.packTiles()  // not in the prefill's time
            result = try generate(engine.makeSession(contextLength: context))
        case .cuda(let gpu):
            let model = try Gemma3Model(config: engine.config, weights: engine.weights, backend: gpu)
            result = try generate(model.makeSession(contextLength: context))
        }
        let rest = stream?.finish() ?? ""
        if streaming && !rest.isEmpty { FileHandle.standardOutput.write(Data(rest.utf8)) }
        let text = stream?.text
        let t = result.timings

        if json {
            var object: [String: Any] = [
                "prompt_ids": result.promptIDs,
                "output_ids": result.outputIDs,
                "text": text.map { $0 as Any } ?? NSNull(),
                "finish_reason": result.finishReason.rawValue,
                "timings": [
                    "load_seconds": engine.loadSeconds,
                    "prompt_tokens": t.promptTokens,
                    "prefill_seconds": t.prefillSeconds,
                    "prefill_tokens_per_second": t.prefillTokensPerSecond,
                    "generated_tokens": result.tokens.count,
                    "decode_seconds": t.decodeSeconds,
                    "decode_tokens_per_second": t.decodeTokensPerSecond,
                ],
            ]
            if logprobs { object["logprobs"] = result.tokens.map { Double($0.logprob) } }
            if topLogprobs > 0 {
                object["top_logprobs"] = result.tokens.map { step in
                    step.top.map { [$0.id, Double($0.logprob)] as [Any] }
                }
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            FileHandle.standardOutput.write(data + Data("\n".utf8))
        } else {
            if !streaming { print(result.outputIDs.map(String.init).joined(separator: ",")) } else { print() }
            func f(_ value: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", value) }
            let summary =
                "\(t.promptTokens) prompt tokens, \(result.tokens.count) generated (\(result.finishReason.rawValue)); "
                + "load \(f(engine.loadSeconds, 2)) s, prefill \(f(t.prefillTokensPerSecond, 1)) tok/s, "
                + "decode \(f(t.decodeTokensPerSecond, 1)) tok/s\n"
            FileHandle.standardError.write(Data(summary.utf8))
        }
    }
}
