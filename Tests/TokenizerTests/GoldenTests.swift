import Testing
import Tokenizer

/// The cases of golden-tokenization.json, produced by the Hugging Face `tokenizers` library and
/// transformers' chat template rendering: every one must match exactly.
@Suite struct GoldenTests {
    @Test(arguments: try GoldenCases.load().tokenization)
    func encodeAndDecode(_ golden: GoldenCases.Tokenization) throws {
        let tokenizer = try Fixtures.gemma()
        #expect(tokenizer.encode(golden.text, addSpecialTokens: false) == golden.ids)
        #expect(utf8(tokenizer.decode(golden.ids)) == utf8(golden.decoded))
        #expect(utf8(streamedPieces(tokenizer, golden.ids, skipSpecialTokens: false).joined()) == utf8(golden.decoded))
    }

    @Test(arguments: try GoldenCases.load().chat)
    func chatPrompt(_ golden: GoldenCases.Chat) throws {
        let tokenizer = try Fixtures.gemma()
        let rendered = try tokenizer.chatTemplate().render(golden.messages, addGenerationPrompt: true)
        #expect(utf8(rendered) == utf8(golden.rendered))
        #expect(try tokenizer.encodeChat(golden.messages, addGenerationPrompt: true) == golden.ids)
        #expect(
            utf8(try ChatTemplate.render(messages: golden.messages, addGenerationPrompt: true)) == utf8(golden.rendered)
        )
    }
}
