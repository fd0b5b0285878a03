import Foundation
import TestSupport
import Testing
import Tokenizer

@testable import Inference

/// The engine on the real Gemma 3 270M against HF transformers (float32 compute), by the rule of
/// shared/golden/README.md: until the first step whose reference top-2 margin is under 0.05, the
/// greedy ids are equal and each of the reference's 10 top logits (and its logprob) is within 0.02.
@Suite(.serialized) struct GoldenTests {
    static let safetensorsFile = "gemma-3-270m-transformers.json"
    static let ggufFile = "gemma-3-270m-gguf-transformers.json"
    static let caseNames = ["cloud-run", "capital", "code", "story", "chat-mountain", "long-sliding-window"]

    struct Comparison {
        var steps = 0
        var logitDifference = 0.0
        var logprobDifference = 0.0
    }

    func compare(_ model: Gemma3Model<CPUBackend>, _ golden: GoldenFile.Case, tolerance: Double) throws -> Comparison {
        let session = model.makeSession(maximumBatch: 128)
        var logits = try session.append(golden.inputIDs)
        var result = Comparison()
        for (index, step) in golden.steps.enumerated() {
            // Past a near-tie, rounding may pick either token and the texts part: stop comparing.
            if step.top[0][1] - step.top[1][1] < 0.05 { break }
            let chosen = Sampler.argmax(logits)
            #expect(
                chosen == golden.greedyIDs[index],
                "\(golden.name) step \(index): \(chosen) instead of \(golden.greedyIDs[index])")
            guard chosen == golden.greedyIDs[index] else { break }
            let logSumExp = Double(Logprobs.logSumExp(logits))
            for pair in step.top {
                let id = Int(pair[0])
                let logit = pair[1]
                result.logitDifference = max(result.logitDifference, abs(Double(logits[id]) - logit))
                result.logprobDifference = max(
                    result.logprobDifference, abs((Double(logits[id]) - logSumExp) - (logit - step.logsumexp)))
            }
            result.steps += 1
            if index + 1 < golden.steps.count { logits = try session.append([chosen]) }
        }
        #expect(result.steps > 0, "\(golden.name): nothing compared")
        #expect(
            result.logitDifference <= tolerance,
            "\(golden.name): largest top-10 logit difference \(result.logitDifference)")
        #expect(
            result.logprobDifference <= tolerance,
            "\(golden.name): largest logprob difference \(result.logprobDifference)")
        print(
            "golden \(golden.name): \(result.steps) steps compared, largest logit difference \(result.logitDifference), logprob \(result.logprobDifference)"
        )
        return result
    }

    /// The default activations (`CPUBackend()`): on a CPU with AVX-512 BF16 this is the bf16 tiles'
    /// path (`WeightTiles`), held to the same bar.
    @Test(arguments: caseNames)
    func safetensorsMatchesTransformers(name: String) throws {
        try RealWeights.require()
        let golden = try GoldenFile.load(Self.safetensorsFile)
        let model = try RealWeights.huggingFace.get()
        let goldenCase = try #require(golden.generation.first { $0.name == name })
        _ = try compare(model, goldenCase, tolerance: 0.02)
    }

    /// The GGUF's quantized weights are dequantized exactly and the activations stay f32, so the f32 bar holds.
    @Test(arguments: caseNames)
    func ggufMatchesTransformersOnTheDequantizedWeights(name: String) throws {
        try RealWeights.require()
        let golden = try GoldenFile.load(Self.ggufFile)
        let model = try RealWeights.ggufModel.get()
        let goldenCase = try #require(golden.generation.first { $0.name == name })
        _ = try compare(model, goldenCase, tolerance: 0.02)
    }

    @Test func theLongPromptCrossesTheSlidingWindow() throws {
        let golden = try GoldenFile.load(Self.safetensorsFile)
        let long = try #require(golden.generation.first { $0.name == "long-sliding-window" })
        #expect(long.inputIDs.count > 512 + 128, "it must cross the 512-token window by more than one prefill batch")
    }

    @Test func tokenizationAndChatMatchTheReference() throws {
        try RealWeights.require()
        let tokenizer = try RealWeights.tokenizer.get()
        let golden = try GoldenFile.load(Self.safetensorsFile)
        for item in golden.tokenization {
            #expect(tokenizer.encode(item.text, addSpecialTokens: false) == item.ids, "\(item.text.debugDescription)")
            #expect(tokenizer.decode(item.ids) == item.decoded)
        }
        for item in golden.chat {
            let messages = item.messages.map { ChatMessage(role: $0.role, content: $0.content) }
            #expect(try tokenizer.encodeChat(messages, addGenerationPrompt: true) == item.ids)
        }
        // Completion prompts get <bos> from the tokenizer config; the chat prompt carries its own.
        for item in golden.generation {
            let isChat = item.promptText.hasPrefix("<bos>")
            #expect(tokenizer.encode(item.promptText, addSpecialTokens: !isChat) == item.inputIDs, "\(item.name)")
        }
    }

    /// `inference-server generate --json` end to end: prompt text in, golden greedy ids out.
    @Test func theGenerateCommandPrintsTheGoldenTokens() throws {
        try RealWeights.require()
        let binary = try #require(
            Bundle.main.executableURL.map {
                $0.deletingLastPathComponent().appendingPathComponent("inference-server").path
            },
            "cannot locate the build folder")
        try #require(
            FileManager.default.isExecutableFile(atPath: binary),
            "no inference-server next to the test binary at \(binary)")
        let golden = try GoldenFile.load(Self.safetensorsFile)
        let capital = try #require(golden.generation.first { $0.name == "capital" })
        let result = try run([
            binary, "generate", "--model", RealWeights.folder, "--prompt", "The capital of France is", "--max-tokens",
            "6",
            "--ignore-eos", "--top-logprobs", "2", "--json",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(object["prompt_ids"] as? [Int] == capital.inputIDs)
        #expect(object["output_ids"] as? [Int] == Array(capital.greedyIDs.prefix(6)))
        let top = try #require(object["top_logprobs"] as? [[[Double]]])
        #expect(top.count == 6 && top.allSatisfy { $0.count == 2 })
        let timings = try #require(object["timings"] as? [String: Double])
        for key in ["load_seconds", "prefill_tokens_per_second", "decode_tokens_per_second"] {
            #expect((timings[key] ?? 0) > 0, "\(key)")
        }
        #expect((object["text"] as? String)?.isEmpty == false)

        let refused = try run([binary, "generate", "--model", RealWeights.folder, "--prompt", "x", "--prompt-ids", "2"])
        #expect(refused.status != 0 && refused.stderr.contains("exactly one of --prompt and --prompt-ids"))
    }
}
