import Foundation
import Testing
import Tokenizer

/// The cases of tokenizer-cases.json (see make-cases.py): hundreds of texts in many scripts, random
/// id sequences, chat conversations and small synthetic tokenizers exercising options Gemma 3
/// does not use, each with the library's exact output.
@Suite struct GeneratedCaseTests {
    @Test(arguments: try GeneratedCases.load().tokenization)
    func gemmaTokenization(_ c: GeneratedCases.Tokenization) throws {
        try check(c, with: try Fixtures.gemma())
    }

    @Test(arguments: try GeneratedCases.load().decoding)
    func gemmaDecoding(_ c: GeneratedCases.Decoding) throws {
        let tokenizer = try Fixtures.gemma()
        #expect(utf8(tokenizer.decode(c.ids)) == utf8(c.decoded))
        #expect(utf8(tokenizer.decode(c.ids, skipSpecialTokens: true)) == utf8(c.decodedSkippingSpecial))
        #expect(utf8(streamedPieces(tokenizer, c.ids, skipSpecialTokens: false).joined()) == utf8(c.decoded))
        #expect(
            utf8(streamedPieces(tokenizer, c.ids, skipSpecialTokens: true).joined()) == utf8(c.decodedSkippingSpecial))
    }

    @Test(arguments: try GeneratedCases.load().chat)
    func gemmaChat(_ c: GeneratedCases.Chat) throws {
        let tokenizer = try Fixtures.gemma()
        let template = try tokenizer.chatTemplate()
        if let expectedError = c.error {
            #expect {
                try template.render(c.messages, addGenerationPrompt: c.addGenerationPrompt)
            } throws: { error in
                guard case TokenizerError.invalidConversation(let reason) = error else { return false }
                // The template's own message is kept; Jinja's undefined-value errors are reworded.
                return !expectedError.hasPrefix("Conversation roles") || reason.contains(expectedError)
            }
            return
        }
        let rendered = try template.render(c.messages, addGenerationPrompt: c.addGenerationPrompt)
        #expect(utf8(rendered) == utf8(c.rendered ?? ""))
        #expect(try tokenizer.encodeChat(c.messages, addGenerationPrompt: c.addGenerationPrompt) == c.ids)
    }

    @Test(arguments: try GeneratedCases.load().synthetic)
    func syntheticTokenizer(_ synthetic: GeneratedCases.Synthetic) throws {
        let tokenizer = try Tokenizer(tokenizerJSON: Data(synthetic.tokenizerJSON.utf8))
        for c in synthetic.cases {
            try check(c, with: tokenizer)
        }
    }

    private func check(_ c: GeneratedCases.Tokenization, with tokenizer: Tokenizer) throws {
        let context = Comment(rawValue: "text \(c.text.debugDescription)")
        #expect(tokenizer.encode(c.text, addSpecialTokens: false) == c.ids, context)
        #expect(
            tokenizer.encode(c.text, addSpecialTokens: false, parseSpecialTokens: false)
                == (c.idsNotParsingSpecial ?? c.ids), context)
        if let withSpecial = c.idsWithSpecial {
            #expect(tokenizer.encode(c.text, addSpecialTokens: true) == withSpecial, context)
        }
        #expect(utf8(tokenizer.decode(c.ids)) == utf8(c.decoded), context)
        #expect(utf8(streamedPieces(tokenizer, c.ids, skipSpecialTokens: false).joined()) == utf8(c.decoded), context)
        if let skipped = c.decodedSkippingSpecial {
            #expect(utf8(tokenizer.decode(c.ids, skipSpecialTokens: true)) == utf8(skipped), context)
            #expect(utf8(streamedPieces(tokenizer, c.ids, skipSpecialTokens: true).joined()) == utf8(skipped), context)
        }
    }
}
