import Foundation

/// Everything that can go wrong in the engine: loading weights and configs, checking the machine,
/// and generating. Messages name the file and the field so a user can fix the input.
public enum InferenceError: Error, Equatable, Sendable {
    /// A file could not be opened, read or mapped.
    case unreadableFile(path: String, reason: String)
    /// A safetensors file (or its shard index) breaks the format; `reason` says where.
    case invalidSafetensors(path: String, reason: String)
    /// A GGUF file breaks the format; `reason` says where.
    case invalidGGUF(path: String, reason: String)
    /// A JSON file (config.json, generation_config.json, an index) is malformed or has a bad field.
    case invalidConfig(path: String, reason: String)
    /// The checkpoint lacks a tensor the model needs.
    case missingTensor(name: String, source: String)
    /// A tensor exists but its shape or element type is not what the model needs.
    case invalidTensor(name: String, reason: String)
    /// A valid input that this engine does not implement (an architecture, a quantization, a RoPE type).
    case unsupported(String)
    /// The CPU lacks instructions the engine was compiled for.
    case unsupportedCPU(missing: [String])
    /// The prompt plus the generated tokens would exceed the context the model or session allows.
    case contextOverflow(requested: Int, limit: Int)
    /// A caller passed a bad argument (an out-of-range token id, an empty prompt, a bad sampling value).
    case invalidArgument(String)
    /// No tokenizer could be found for a model whose prompt is text.
    case tokenizerUnavailable(String)
}

extension InferenceError: CustomStringConvertible, LocalizedError {
    public var description: String {
        switch self {
        case .unreadableFile(let path, let reason):
            return "cannot read \(path): \(reason)"
        case .invalidSafetensors(let path, let reason):
            return "\(path) is not a valid safetensors file: \(reason)"
        case .invalidGGUF(let path, let reason):
            return "\(path) is not a valid GGUF file: \(reason)"
        case .invalidConfig(let path, let reason):
            return "\(path): \(reason)"
        case .missingTensor(let name, let source):
            return "tensor \(name) is missing from \(source): is this a Gemma 3 text checkpoint?"
        case .invalidTensor(let name, let reason):
            return "tensor \(name): \(reason)"
        case .unsupported(let what):
            return "not supported: \(what)"
        case .unsupportedCPU(let missing):
            return
                "this CPU lacks \(missing.joined(separator: ", ")): the engine is compiled for x86-64 with AVX2, FMA "
                + "and F16C (Intel Haswell, AMD Zen or newer); run it on such a machine"
        case .contextOverflow(let requested, let limit):
            return
                "\(requested) tokens do not fit the context of \(limit) tokens: shorten the prompt or lower max tokens"
        case .invalidArgument(let reason):
            return reason
        case .tokenizerUnavailable(let reason):
            return "no tokenizer: \(reason)"
        }
    }

    public var errorDescription: String? { description }
}
