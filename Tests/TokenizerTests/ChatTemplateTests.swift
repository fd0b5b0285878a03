import Foundation
import Testing

@testable import Tokenizer

@Suite struct ChatTemplateTests {
    @Test func sourceMatchesTheFixtureConfig() throws {
        let config = try Fixtures.config()
        #expect(utf8(config.chatTemplate ?? "") == utf8(ChatTemplate.gemma3Source))
        #expect(try ChatTemplate(config: config).bosToken == "<bos>")
    }

    @Test func rendersTurnsAndGenerationPrompt() throws {
        let messages = [
            ChatMessage(role: "system", content: " Be brief. "),
            ChatMessage(role: "user", content: "\n Hi \t"),
            ChatMessage(role: "assistant", content: " Hello! "),
            ChatMessage(role: "user", parts: [.text(" One "), .text("two ")]),
        ]
        let expected =
            "<bos><start_of_turn>user\n Be brief. \n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            + "<start_of_turn>user\nOnetwo<end_of_turn>\n"
        #expect(try ChatTemplate.render(messages: messages, addGenerationPrompt: false) == expected)
        #expect(
            try ChatTemplate.render(messages: messages, addGenerationPrompt: true) == expected
                + "<start_of_turn>model\n")
    }

    @Test func rolesMustAlternate() throws {
        let messages = [ChatMessage(role: "user", content: "a"), ChatMessage(role: "user", content: "b")]
        #expect {
            try ChatTemplate.render(messages: messages, addGenerationPrompt: true)
        } throws: { error in
            guard case TokenizerError.invalidConversation(let reason) = error else { return false }
            return reason.contains("Conversation roles must alternate user/assistant/user/assistant/...")
        }
        #expect(throws: TokenizerError.self) {
            try ChatTemplate.render(messages: [ChatMessage(role: "assistant", content: "x")], addGenerationPrompt: true)
        }
        #expect(throws: TokenizerError.self) { try ChatTemplate.render(messages: [], addGenerationPrompt: true) }
    }

    @Test func imagePartsAreRefusedForNow() throws {
        let messages = [ChatMessage(role: "user", parts: [.image, .text("What is this?")])]
        #expect(throws: TokenizerError.unsupportedContent("image parts are not supported yet")) {
            try ChatTemplate.render(messages: messages, addGenerationPrompt: true)
        }
        let system = [ChatMessage(role: "system", parts: [.image]), ChatMessage(role: "user", content: "x")]
        #expect(throws: TokenizerError.self) { try ChatTemplate.render(messages: system, addGenerationPrompt: true) }
    }

    @Test func trimIsPythonStrip() {
        #expect(ChatTemplate.trim("\u{1C}\u{3000} x \u{85}\u{1F}") == "x")
        // U+200B is not whitespace to Python; a combining mark after a space stays once the space goes.
        #expect(utf8(ChatTemplate.trim("\u{200B}x\u{200B}")) == utf8("\u{200B}x\u{200B}"))
        #expect(utf8(ChatTemplate.trim(" \u{301}x")) == utf8("\u{301}x"))
        #expect(ChatTemplate.trim(" \t\n ") == "")
    }

    @Test func customBosToken() throws {
        let rendered = try ChatTemplate(bosToken: "<s>").render(
            [ChatMessage(role: "user", content: "x")], addGenerationPrompt: false)
        #expect(rendered == "<s><start_of_turn>user\nx<end_of_turn>\n")
    }

    @Test func messagesDecodeFromOpenAIStyleJSON() throws {
        let json = """
            [{"role": "system", "content": "s"},
             {"role": "user", "content": [
                {"type": "text", "text": "t"}, {"type": "image"}, {"type": "audio"}, {"type": "text"}]}]
            """
        let messages = try JSONDecoder().decode([ChatMessage].self, from: Data(json.utf8))
        #expect(messages[0] == ChatMessage(role: "system", content: "s"))
        #expect(
            messages[1] == ChatMessage(role: "user", parts: [.text("t"), .image, .other(type: "audio"), .text("")]))
        let roundTrip = try JSONDecoder().decode([ChatMessage].self, from: JSONEncoder().encode(messages))
        #expect(roundTrip == messages)
    }

    @Test func encodedPromptHasExactlyOneBos() throws {
        let tokenizer = try Fixtures.gemma()
        let ids = try tokenizer.encodeChat([ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
        #expect(ids == [2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107])
        #expect(ids.filter { $0 == 2 }.count == 1)
    }

    @Test func otherTemplatesAreRefused() throws {
        var config = try Fixtures.config()
        config.chatTemplate = "{{ messages }}"
        #expect(throws: TokenizerError.self) { try ChatTemplate(config: config) }
        config.chatTemplate = nil
        #expect(throws: TokenizerError.self) { try ChatTemplate(config: config) }
    }
}
