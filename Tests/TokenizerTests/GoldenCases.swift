import Testing
import Tokenizer

/// `golden-tokenization.json`, recorded from the real library for this task.
struct GoldenCases: Decodable {
    struct Tokenization: Decodable, Sendable, CustomTestStringConvertible {
        let text: String
        let ids: [Int]
        let decoded: String
        var testDescription: String { text.debugDescription }
    }

    struct Chat: Decodable, Sendable, CustomTestStringConvertible {
        let messages: [ChatMessage]
        let rendered: String
        let ids: [Int]
        var testDescription: String { messages.map(\.role).joined(separator: ",") }
    }

    let tokenization: [Tokenization]
    let chat: [Chat]

    static func load() throws -> GoldenCases {
        try Fixtures.decode(GoldenCases.self, from: "golden-tokenization.json")
    }
}
