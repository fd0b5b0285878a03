import Foundation
import TestSupport
import Testing

@testable import Inference

/// The batched decode that continuous batching relies on gives every sequence the logits it would
/// get alone: different lengths, positions past the sliding window, more slots than one pass holds.
@Suite struct BatchRunnerTests {
    let tokens = [2, 7, 11, 3, 19, 23, 5, 31, 17, 13, 29, 37, 1, 8, 4, 9, 21]

    func tinyModel(_ dir: TemporaryDirectory) throws -> (TinyModel, Gemma3Model<CPUBackend>) {
        let tiny = TinyModel(seed: 42)
        let path = try tiny.writeFolder(dir)
        let config = try Gemma3Config(configFile: path + "/config.json")
        let weights = try Gemma3Weights(safetensors: try SafetensorsCheckpoint(directory: path), config: config)
        return (tiny, try Gemma3Model(config: config, weights: weights, backend: try CPUBackend(exact: true)))
    }

    func worst(_ logits: [Float], _ expected: [Double]) -> Double {
        zip(logits, expected).map { abs(Double($0) - $1) }.max()!
    }

    @Test(arguments: [1, 2, 8])
    func batchedDecodeMatchesEachSequenceAlone(maximumSequences: Int) throws {
        let dir = try TemporaryDirectory()
        let (tiny, model) = try tinyModel(dir)
        let runner = BatchRunner(model: model, maximumSequences: maximumSequences, prefillChunk: 3)
        // Three sequences: prompts of 2, 5 and 9 tokens, then 6 shared decode steps each (the window is 4).
        let prompts = [Array(tokens[0..<2]), Array(tokens[3..<8]), Array(tokens[1..<10])]
        let continuations = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16], [17, 18, 19, 20, 21, 22]]
        let slots = prompts.map { _ in runner.makeSlot() }
        for (slot, prompt) in zip(slots, prompts) {
            let last = try runner.prefill(slot, prompt)
            #expect(worst(last, tiny.referenceLogits(prompt).last!) < 1e-3)
        }
        for step in 0..<6 {
            let logits = try runner.decode(slots, tokens: continuations.map { $0[step] })
            for i in 0..<3 {
                let sequence = prompts[i] + continuations[i][...step]
                let error = worst(logits[i], tiny.referenceLogits(sequence).last!)
                #expect(error < 1e-3, "sequence \(i), step \(step): \(error)")
                #expect(slots[i].tokenCount == sequence.count)
            }
        }
        // A slot that is reset starts over, whatever its cache held.
        slots[0].reset()
        let again = try runner.prefill(slots[0], prompts[1])
        #expect(worst(again, tiny.referenceLogits(prompts[1]).last!) < 1e-3)
    }

    /// Steps that mix greedy items (argmax only) with items that want logits in one LM head pass:
    /// each greedy item gets the argmax of the logits the same step would have given it, and the
    /// others their logits, as a step of logits alone.
    @Test func greedyItemsGetTheArgmaxOfTheirLogits() throws {
        let dir = try TemporaryDirectory()
        let (_, model) = try tinyModel(dir)
        let prompts = [Array(tokens[0..<2]), Array(tokens[3..<8]), Array(tokens[1..<10]), Array(tokens[4..<7]), [9]]
        func runner() throws -> (BatchRunner<CPUBackend>, [BatchRunner<CPUBackend>.Slot]) {
            let runner = BatchRunner(model: model, maximumSequences: 2, prefillChunk: 4)  // 2 logit rows per pass
            let slots = prompts.map { _ in runner.makeSlot() }
            for (slot, prompt) in zip(slots, prompts) { _ = try runner.prefill(slot, prompt) }
            return (runner, slots)
        }
        let greedy = [true, false, true, true, false]
        for step in 0..<3 {
            let next = prompts.indices.map { (step * 5 + $0 * 3) % 40 }
            let (plainRunner, plainSlots) = try runner()
            let (mixedRunner, mixedSlots) = try runner()
            for _ in 0..<step {
                _ = try plainRunner.decode(plainSlots, tokens: next)
                _ = try mixedRunner.decode(mixedSlots, tokens: next)
            }
            // Two slots per step at most (the runner's size): the five go in three steps.
            for range in [0..<2, 2..<4, 4..<5] {
                let plain = try plainRunner.step(range.map { .init(slot: plainSlots[$0], tokens: [next[$0]]) })
                let mixed = try mixedRunner.outputs(range.map {
                    var item = BatchRunner<CPUBackend>.Work(slot: mixedSlots[$0], tokens: [next[$0]])
                    item.greedy = greedy[$0]
                    return item
                })
                for (i, (logits, output)) in zip(range, zip(plain, mixed)) {
                    switch output {
                    case .token(let token):
                        #expect(greedy[i] && token.id == Sampler.argmax(logits), "sequence \(i)")
                    case .logits(let row):
                        #expect(!greedy[i] && row == logits, "sequence \(i)")
                    }
                }
            }
        }
    }

    /// Prefix caching: a slot keeps the beginning its last sequence shares with the next prompt, and
    /// the rest of the prompt then gives the logits a fresh prefill gives. The sliding-window rings
    /// (capacity window + chunk - 1 = 6 here) must not have overwritten a kept position's neighbours.
    @Test func aKeptPrefixGivesTheLogitsOfAFreshPrefill() throws {
        let dir = try TemporaryDirectory()
        let (tiny, model) = try tinyModel(dir)
        let runner = BatchRunner(model: model, maximumSequences: 2, prefillChunk: 3)
        let slot = runner.makeSlot()
        _ = try runner.prefill(slot, Array(tokens[0..<5]))
        let second = Array(tokens[0..<3]) + [38, 39, 30]
        #expect(slot.reusablePrefix(of: second) == 3)
        slot.keep(prefix: 3)
        #expect(worst(try runner.prefill(slot, Array(second[3...])), tiny.referenceLogits(second).last!) < 1e-3)
        let next = try runner.decode([slot], tokens: [12])[0]
        #expect(worst(next, tiny.referenceLogits(second + [12]).last!) < 1e-3)
        // The same prompt again: all but its last token are reused (its logits are needed).
        #expect(slot.reusablePrefix(of: second) == second.count - 1)

        // A sequence of 12 ran past the ring: early positions were overwritten, so a short shared
        // beginning is not reusable, but one that reaches late enough is (12 <= max(0, 10 - 4 + 1) + 6).
        let long = runner.makeSlot()
        _ = try runner.prefill(long, Array(tokens[0..<12]))
        #expect(long.reusablePrefix(of: Array(tokens[0..<3]) + [38]) == 0)
        let late = Array(tokens[0..<10]) + [38, 39]
        #expect(long.reusablePrefix(of: late) == 10)
        long.keep(prefix: 10)
        #expect(worst(try runner.prefill(long, [38, 39]), tiny.referenceLogits(late).last!) < 1e-3)
        #expect(runner.makeSlot().reusablePrefix(of: late) == 0)
    }

    /// Prompt chunks and decode tokens of different sequences in one pass (continuous batching's
    /// mixed steps), a prompt split over several steps, and a chunk's prompt scores (`Work.scores`).
    @Test func mixedStepsMatchTheReference() throws {
        let dir = try TemporaryDirectory()
        let (tiny, model) = try tinyModel(dir)
        let runner = BatchRunner(model: model, maximumSequences: 5, prefillChunk: 4)  // steps of up to 9 rows
        let a = runner.makeSlot()
        let b = runner.makeSlot()
        let c = runner.makeSlot()
        let promptA = Array(tokens[0..<6])
        let promptB = Array(tokens[2..<11])  // 9 tokens: chunks of 4, 4, 1
        let promptC = Array(tokens[5..<8])
        // Step 1: A's first chunk alone. Step 2: A's rest, B's first chunk, C whole with every row.
        _ = try runner.step([.init(slot: a, tokens: Array(promptA[0..<4]))])
        var scoresC: [GeneratedToken] = []
        var itemC = BatchRunner<CPUBackend>.Work(slot: c, tokens: promptC)
        itemC.scores = .init(targets: Array(promptC.dropFirst()), top: 2) { scoresC.append($0) }
        var logits = try runner.step([
            .init(slot: a, tokens: Array(promptA[4...])), .init(slot: b, tokens: Array(promptB[0..<4])), itemC,
        ])
        #expect(worst(logits[0], tiny.referenceLogits(promptA).last!) < 1e-3)
        #expect(worst(logits[1], tiny.referenceLogits(Array(promptB[0..<4])).last!) < 1e-3)
        let referenceC = tiny.referenceLogits(promptC)
        #expect(worst(logits[2], referenceC.last!) < 1e-3)
        #expect(scoresC.map(\.id) == Array(promptC.dropFirst()))
        for (i, score) in scoresC.enumerated() {
            #expect(abs(score.logprob - Logprobs.token(score.id, of: referenceC[i].map(Float.init), top: 2).logprob) < 1e-3, "C row \(i)")
        }
        // Step 3: A and C decode while B prefills its next chunk; step 4: B's last token beside them.
        logits = try runner.step([
            .init(slot: a, tokens: [3]), .init(slot: b, tokens: Array(promptB[4..<8])), .init(slot: c, tokens: [9]),
        ])
        #expect(worst(logits[0], tiny.referenceLogits(promptA + [3]).last!) < 1e-3)
        #expect(worst(logits[1], tiny.referenceLogits(Array(promptB[0..<8])).last!) < 1e-3)
        #expect(worst(logits[2], tiny.referenceLogits(promptC + [9]).last!) < 1e-3)
        logits = try runner.step([.init(slot: b, tokens: [promptB[8]]), .init(slot: a, tokens: [4])])
        #expect(worst(logits[0], tiny.referenceLogits(promptB).last!) < 1e-3)
        #expect(worst(logits[1], tiny.referenceLogits(promptA + [3, 4]).last!) < 1e-3)
        #expect(a.tokenCount == 8 && b.tokenCount == 9 && c.tokenCount == 4)
    }

    /// Prompt logprobs computed beside the step's other rows (`Work.scores`): each chunk row scores
    /// the prompt token after it as `Logprobs.token` does on the reference logits, in row order,
    /// while a drawn row and a plain row of the same pass get their token and logits.
    @Test func promptScoresMatchTheReference() throws {
        let dir = try TemporaryDirectory()
        let (tiny, model) = try tinyModel(dir)
        let runner = BatchRunner(model: model, maximumSequences: 4, prefillChunk: 10)  // steps of up to 14 rows
        let a = runner.makeSlot()
        let b = runner.makeSlot()
        let c = runner.makeSlot()
        _ = try runner.prefill(a, Array(tokens[0..<5]))
        let promptB = Array(tokens[2..<9])
        var scored: [GeneratedToken] = []
        var itemA = BatchRunner<CPUBackend>.Work(slot: a, tokens: [3])
        itemA.greedy = true
        var itemB = BatchRunner<CPUBackend>.Work(slot: b, tokens: promptB)
        itemB.scores = .init(targets: Array(promptB.dropFirst()), top: 4) { scored.append($0) }
        // D: a chunk before its prompt's last, every row scored: nothing else is computed for it.
        let d = runner.makeSlot()
        var scoredD: [GeneratedToken] = []
        var itemD = BatchRunner<CPUBackend>.Work(slot: d, tokens: Array(tokens[3..<6]))
        itemD.greedy = true
        itemD.scores = .init(targets: Array(tokens[4..<7]), top: 1) { scoredD.append($0) }
        let outputs = try runner.outputs([itemA, itemB, .init(slot: c, tokens: Array(tokens[1..<4])), itemD])
        #expect(scoredD.map(\.id) == Array(tokens[4..<7]) && scoredD.allSatisfy { $0.top.count == 1 })
        if case .logits(let none) = outputs[3] { #expect(none.isEmpty) } else { Issue.record("D: \(outputs[3])") }
        let reference = tiny.referenceLogits(promptB)
        #expect(scored.count == promptB.count - 1)
        for (i, token) in scored.enumerated() {
            let expected = Logprobs.token(promptB[i + 1], of: reference[i].map(Float.init), top: 4)
            #expect(token.id == expected.id && token.top.map(\.id) == expected.top.map(\.id), "row \(i)")
            #expect(abs(token.logprob - expected.logprob) < 1e-3, "row \(i): \(token.logprob) vs \(expected.logprob)")
        }
        guard outputs.count == 4, case .token = outputs[0], case .logits(let lastB) = outputs[1], case .logits(let lastC) = outputs[2]
        else {
            Issue.record("outputs: \(outputs.map { "\($0)".prefix(20) })")
            return
        }
        #expect(worst(lastB, reference.last!) < 1e-3)
        #expect(worst(lastC, tiny.referenceLogits(Array(tokens[1..<4])).last!) < 1e-3)
    }

    @Test func decodeRefusesBadInput() throws {
        let dir = try TemporaryDirectory()
        let (_, model) = try tinyModel(dir)
        let runner = BatchRunner(model: model, maximumSequences: 2)
        let slot = runner.makeSlot(contextLength: 4)
        try runner.prefill(slot, [2, 3, 4])
        #expect(throws: InferenceError.self) { try runner.decode([slot], tokens: [40]) }
        _ = try runner.decode([slot], tokens: [5])
        #expect(throws: InferenceError.contextOverflow(requested: 5, limit: 4)) {
            try runner.decode([slot], tokens: [6])
        }
    }

    /// Real Gemma 3 270M: greedy continuations decoded together equal `generate` run alone.
    @Test func realWeightsGreedyBatchEqualsSequentialGeneration() throws {
        try RealWeights.require()
        let model = try RealWeights.huggingFace.get()
        let tokenizer = try RealWeights.tokenizer.get()
        let prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):\n", "1, 2, 3, 4,"].map {
            tokenizer.encode($0, addSpecialTokens: true)
        }
        let steps = 12
        let expected = try prompts.map { prompt in
            try model.makeSession(contextLength: 256).generate(
                prompt: prompt, parameters: GenerationParameters(maxTokens: steps)
            ).outputIDs
        }
        let runner = BatchRunner(model: model, maximumSequences: 3)  // 4 sequences: two passes per step
        let slots = prompts.map { _ in runner.makeSlot(contextLength: 256) }
        var next = try zip(slots, prompts).map { try Sampler.argmax(runner.prefill($0, $1)) }
        var outputs = next.map { [$0] }
        for _ in 1..<steps {
            next = try runner.decode(slots, tokens: next).map(Sampler.argmax)
            for i in outputs.indices { outputs[i].append(next[i]) }
        }
        #expect(outputs == expected)
    }
}
