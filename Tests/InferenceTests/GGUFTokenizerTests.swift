import Foundation
import TestSupport
import Testing
import Tokenizer

@testable import Inference

/// The tokenizer built from the GGUF's own metadata must be the one tokenizer.json gives: same ids
/// for the golden texts, chat prompts, this repository's sources and random mixes of awkward
/// pieces (runs of spaces and newlines, bytes without a piece, special-token text), same decoding.
@Suite(.serialized) struct GGUFTokenizerTests {
    @Test func theEmbeddedVocabularyTokenizesAsTokenizerJSON() throws {
        try RealWeights.require()
        let reference = try RealWeights.tokenizer.get()
        let vocabulary = try #require(try Engine.sentencePieceVocabulary(try GGUFFile(path: RealWeights.gguf)))
        let embedded = try Tokenizer(sentencePiece: vocabulary)
        #expect(embedded.vocabularySize == reference.vocabularySize)
        #expect(embedded.specialTokens == reference.specialTokens)

        let golden = try GoldenFile.load(GoldenTests.safetensorsFile)
        for item in golden.tokenization {
            #expect(embedded.encode(item.text, addSpecialTokens: false) == item.ids, "\(item.text.debugDescription)")
            #expect(embedded.decode(item.ids) == item.decoded)
        }
        for item in golden.chat {
            let messages = item.messages.map { ChatMessage(role: $0.role, content: $0.content) }
            #expect(try embedded.encodeChat(messages, addGenerationPrompt: true) == item.ids)
        }
        for item in golden.generation where !item.promptText.contains("<start_of_turn>") {
            #expect(embedded.encode(item.promptText, addSpecialTokens: true) == item.inputIDs, "\(item.name)")
        }

        var texts: [String] = []
        for directory in ["Sources/Tokenizer", "Sources/InferenceServer", "README.md"] {
            let path = repositoryRoot + "/" + directory
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)).map { $0.map { path + "/" + $0 } } ?? [path]
            texts += names.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }
        }
        var random = TestRandom(seed: 7)
        let pieces = [" ", "  ", "    ", "\n", "\n\n", "\t", "\t\t", "<start_of_turn>", "<eos>", "é", "漢字", "😀", "\u{0301}", "ab", "▁", "x"]
        for _ in 0..<200 {
            texts.append((0..<60).map { _ in pieces[Int(random.next() % UInt64(pieces.count))] }.joined())
        }
        #expect(texts.count > 220)
        var differing = 0
        for text in texts {
            for special in [true, false] {
                let got = embedded.encode(text, addSpecialTokens: special, parseSpecialTokens: special)
                let want = reference.encode(text, addSpecialTokens: special, parseSpecialTokens: special)
                if got != want { differing += 1 }
            }
        }
        #expect(differing == 0, "\(differing) encodings differ from tokenizer.json's")
        for _ in 0..<200 {
            let ids = (0..<40).map { _ in Int(random.next() % UInt64(reference.vocabularySize)) }
            #expect(embedded.decode(ids) == reference.decode(ids))
            #expect(embedded.decode(ids, skipSpecialTokens: true) == reference.decode(ids, skipSpecialTokens: true))
        }
    }

    @Test func aBareGGUFLoadsWithItsOwnTokenizer() throws {
        try RealWeights.require()
        let dir = try TemporaryDirectory()
        let bare = dir.path + "/model.gguf"
        try FileManager.default.createSymbolicLink(atPath: bare, withDestinationPath: RealWeights.gguf)
        let engine = try Engine.load(path: bare)
        #expect(engine.tokenizerSource?.contains("embedded") == true)
        let tokenizer = try engine.requireTokenizer()
        let text = "The capital of France is"
        #expect(tokenizer.encode(text, addSpecialTokens: true) == (try RealWeights.tokenizer.get()).encode(text, addSpecialTokens: true))
    }

    @Test func damagedTokenizerMetadataIsAClearError() throws {
        var v = SentencePieceVocabulary(pieces: ["<unk>", "a"], scores: [0], types: [.unknown, .normal])
        #expect(throws: TokenizerError.self) { try Tokenizer(sentencePiece: v) }
        v.scores = [0, -1]
        v.bosID = 7
        #expect { try Tokenizer(sentencePiece: v) } throws: { "\($0)".contains("id 7") }
        v.bosID = nil
        v.addBOS = false
        let tiny = try Tokenizer(sentencePiece: v)
        #expect(tiny.encode("aa", addSpecialTokens: true) == [1, 1])
    }
}
