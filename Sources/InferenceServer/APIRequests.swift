import Foundation
import Tokenizer

/// `prompt` of a completion request: a string, a list of strings, token ids, or lists of them.
enum PromptInput: Decodable, Sendable {
    case texts([String])
    case tokens([[Int]])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            self = .texts([text])
        } else if let texts = try? container.decode([String].self) {
            self = .texts(texts)
        } else if let ids = try? container.decode([Int].self) {
            self = .tokens([ids])
        } else if let lists = try? container.decode([[Int]].self) {
            self = .tokens(lists)
        } else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "must be a string, a list of strings, token ids, or lists of token ids")
        }
    }
}

/// `stop`: one string or a list of them.
struct StopInput: Decodable, Sendable {
    var strings: [String]

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let one = try? container.decode(String.self) {
            strings = [one]
        } else if let list = try? container.decode([String].self) {
            strings = list
        } else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "must be a string or a list of strings")
        }
    }
}

struct StreamOptions: Decodable, Sendable {
    var includeUsage: Bool?
    /// vLLM: usage (so far) in every chunk, not only in the last.
    var continuousUsageStats: Bool?
}

/// A field whose presence matters but whose value this server does not read (structured-output and
/// tool definitions it refuses): any JSON is accepted here.
struct PresentValue: Decodable, Sendable {
    init(from decoder: any Decoder) throws {}
}

/// `response_format`: only its `type` is read ("text" is the default; others need structured output).
struct ResponseFormat: Decodable, Sendable {
    var type: String
}

/// `tool_choice`: "none", "auto", "required", or an object naming a function.
enum ToolChoice: Decodable, Sendable {
    case named(String)
    case function

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let name = try? container.decode(String.self) { self = .named(name) } else { self = .function }
    }
}

/// The fields both endpoints take to control sampling and stopping (vLLM's SamplingParams extras included).
struct SamplingFields: Decodable, Sendable {
    var model: String?
    var temperature: Double?
    var topP: Double?
    var topK: Int?
    var minP: Double?
    var n: Int?
    var stop: StopInput?
    var stopTokenIds: [Int]?
    var seed: Int?
    var presencePenalty: Double?
    var frequencyPenalty: Double?
    var repetitionPenalty: Double?
    var ignoreEos: Bool?
    var stream: Bool?
    var streamOptions: StreamOptions?
    var promptLogprobs: Int?
    var skipSpecialTokens: Bool?
    var user: String?
    var includeStopStrInOutput: Bool?
    var truncatePromptTokens: Int?
    var returnTokensAsTokenIds: Bool?
    var minTokens: Int?
    var logitBias: [String: Double]?
    // vLLM fields this server refuses with a 400 rather than ignore: a client that sends them relies
    // on their effect (`Routes.refuseUnsupported`).
    var bestOf: Int?
    var badWords: [String]?
    var allowedTokenIds: [Int]?
    var responseFormat: ResponseFormat?
    var tools: [PresentValue]?
    var toolChoice: ToolChoice?
    var guidedJson: PresentValue?
    var guidedRegex: PresentValue?
    var guidedChoice: PresentValue?
    var guidedGrammar: PresentValue?
    var structuredOutputs: PresentValue?
    var structuralTag: PresentValue?
    var useBeamSearch: Bool?
}

/// `POST /v1/completions`.
struct CompletionRequest: Decodable, Sendable {
    var prompt: PromptInput
    var maxTokens: Int?
    /// `"max_tokens": null` given: as vLLM, the rest of the context (absent: 16).
    var maxTokensIsNull = false
    var logprobs: Int?
    var echo: Bool?
    var addSpecialTokens: Bool?
    var suffix: String?
    var sampling: SamplingFields

    private enum CodingKeys: String, CodingKey {
        case prompt, maxTokens, logprobs, echo, addSpecialTokens, suffix
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        prompt = try c.decode(PromptInput.self, forKey: .prompt)
        maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens)
        maxTokensIsNull = try c.contains(.maxTokens) && c.decodeNil(forKey: .maxTokens)
        logprobs = try c.decodeIfPresent(Int.self, forKey: .logprobs)
        echo = try c.decodeIfPresent(Bool.self, forKey: .echo)
        addSpecialTokens = try c.decodeIfPresent(Bool.self, forKey: .addSpecialTokens)
        suffix = try c.decodeIfPresent(String.self, forKey: .suffix)
        sampling = try SamplingFields(from: decoder)
    }
}

/// `POST /v1/chat/completions`.
struct ChatCompletionRequest: Decodable, Sendable {
    var messages: [ChatMessage]
    var maxTokens: Int?
    var maxCompletionTokens: Int?
    var logprobs: Bool?
    var topLogprobs: Int?
    var addGenerationPrompt: Bool?
    var continueFinalMessage: Bool?
    var echo: Bool?
    var chatTemplate: String?
    var sampling: SamplingFields

    private enum CodingKeys: String, CodingKey {
        case messages, maxTokens, maxCompletionTokens, logprobs, topLogprobs, addGenerationPrompt, continueFinalMessage, echo,
            chatTemplate
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        messages = try c.decode([ChatMessage].self, forKey: .messages)
        maxTokens = try c.decodeIfPresent(Int.self, forKey: .maxTokens)
        maxCompletionTokens = try c.decodeIfPresent(Int.self, forKey: .maxCompletionTokens)
        logprobs = try c.decodeIfPresent(Bool.self, forKey: .logprobs)
        topLogprobs = try c.decodeIfPresent(Int.self, forKey: .topLogprobs)
        addGenerationPrompt = try c.decodeIfPresent(Bool.self, forKey: .addGenerationPrompt)
        continueFinalMessage = try c.decodeIfPresent(Bool.self, forKey: .continueFinalMessage)
        echo = try c.decodeIfPresent(Bool.self, forKey: .echo)
        chatTemplate = try c.decodeIfPresent(String.self, forKey: .chatTemplate)
        sampling = try SamplingFields(from: decoder)
    }
}

/// `POST /tokenize`: a prompt, or messages rendered through the chat template.
struct TokenizeRequest: Decodable, Sendable {
    var model: String?
    var prompt: String?
    var messages: [ChatMessage]?
    var addSpecialTokens: Bool?
    var addGenerationPrompt: Bool?
    var continueFinalMessage: Bool?
    var returnTokenStrs: Bool?
}

/// `POST /detokenize`.
struct DetokenizeRequest: Decodable, Sendable {
    var model: String?
    var tokens: [Int]
}

enum RequestDecoding {
    /// Decodes a request body; any failure is a 400 naming the field.
    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        if let problem = StrictJSON.problem(in: [UInt8](data)) {
            throw OpenAIError.badRequest("the request body is not valid JSON (\(problem))")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(T.self, from: data)
        } catch {
            throw OpenAIError(decoding: error)
        }
    }
}
