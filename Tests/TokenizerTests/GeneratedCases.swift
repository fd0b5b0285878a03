import Testing
import Tokenizer

/// `tokenizer-cases.json`, written by make-cases.py.
struct GeneratedCases: Decodable {
    struct Tokenization: Decodable, Sendable, CustomTestStringConvertible {
        let text: String
        let ids: [Int]
        let decoded: String
        let decodedSkippingSpecial: String?
        let idsNotParsingSpecial: [Int]?
        let idsWithSpecial: [Int]?
        var testDescription: String { String(text.debugDescription.prefix(60)) }
    }

    struct Decoding: Decodable, Sendable, CustomTestStringConvertible {
        let ids: [Int]
        let decoded: String
        let decodedSkippingSpecial: String
        var testDescription: String { "\(ids.prefix(8))…" }
    }

    struct Chat: Decodable, Sendable, CustomTestStringConvertible {
        let messages: [ChatMessage]
        let addGenerationPrompt: Bool
        let rendered: String?
        let ids: [Int]?
        let error: String?
        var testDescription: String {
            String(messages.map { "\($0.role)" }.joined(separator: ",").prefix(60)) + " gen=\(addGenerationPrompt)"
        }
    }

    struct Synthetic: Decodable, Sendable, CustomTestStringConvertible {
        let name: String
        let tokenizerJSON: String
        let cases: [Tokenization]
        var testDescription: String { name }
    }

    let tokenization: [Tokenization]
    let decoding: [Decoding]
    let chat: [Chat]
    let synthetic: [Synthetic]

    static let shared: Result<GeneratedCases, any Error> = Result {
        try Fixtures.decode(GeneratedCases.self, from: "tokenizer-cases.json")
    }

    static func load() throws -> GeneratedCases { try shared.get() }
}
