import Foundation

/// Everything that can go wrong while loading a tokenizer or rendering a chat prompt.
///
/// Encoding and decoding never throw: loading validates up front everything they rely on.
public enum TokenizerError: Error, Equatable, Sendable {
    /// A file could not be read at all.
    case unreadableFile(path: String, reason: String)
    /// The bytes are not JSON; `line` and `column` are 1-based and point at the offending byte.
    case malformedJSON(file: String, line: Int, column: Int, reason: String)
    /// A field the format requires is absent.
    case missingField(file: String, path: String)
    /// A field is present but has the wrong shape or an out-of-range value.
    case invalidField(file: String, path: String, expected: String)
    /// A pipeline component (`normalizer`, `pre_tokenizer`, `model`, `post_processor`, `decoder`) whose
    /// `type` this implementation does not handle.
    case unsupportedComponent(component: String, type: String, supported: [String])
    /// A supported component with an option value this implementation does not handle.
    case unsupportedOption(component: String, option: String, value: String)
    /// A token named by a merge, the unk token, a post-processor or the config is not in the vocabulary.
    case tokenNotInVocabulary(token: String, usedBy: String)
    /// The chat template's own `raise_exception` (or a Jinja error) for these messages.
    case invalidConversation(String)
    /// Message content this hand-written template does not render yet (images).
    case unsupportedContent(String)
    /// `tokenizer_config.json` carries a chat template other than the Gemma 3 one implemented here.
    case unsupportedChatTemplate(reason: String)
}

extension TokenizerError: CustomStringConvertible, LocalizedError {
    public var description: String {
        switch self {
        case .unreadableFile(let path, let reason):
            return "cannot read \(path): \(reason)"
        case .malformedJSON(let file, let line, let column, let reason):
            return "\(file) is not valid JSON (line \(line), column \(column)): \(reason)"
        case .missingField(let file, let path):
            return "\(file): required field `\(path)` is missing"
        case .invalidField(let file, let path, let expected):
            return "\(file): field `\(path)` must be \(expected)"
        case .unsupportedComponent(let component, let type, let supported):
            let list = supported.isEmpty ? "none" : supported.joined(separator: ", ")
            return "tokenizer.json: \(component) type \"\(type)\" is not supported (supported: \(list))"
        case .unsupportedOption(let component, let option, let value):
            return "tokenizer.json: \(component) option \(option) = \(value) is not supported"
        case .tokenNotInVocabulary(let token, let usedBy):
            return "token \(token.debugDescription) used by \(usedBy) is not in the vocabulary"
        case .invalidConversation(let reason):
            return "invalid conversation: \(reason)"
        case .unsupportedContent(let reason):
            return "unsupported message content: \(reason)"
        case .unsupportedChatTemplate(let reason):
            return "unsupported chat template: \(reason)"
        }
    }

    public var errorDescription: String? { description }
}
