/// Errors of the build pipeline that are about the user's input, with what to do about them.
public enum BuilderError: Error, CustomStringConvertible, Equatable {
    case modelNotFound(String)
    case modelEmpty(String)
    case unreadable(path: String, reason: String)
    case outputNotEmpty(String)
    case outputNotAFile(String)
    case invalidOption(String)
    case io(operation: String, path: String, reason: String)

    public var description: String {
        switch self {
        case .modelNotFound(let path):
            return "model \(path) does not exist: give a model folder (config.json, tokenizer, *.safetensors) or a .gguf file"
        case .modelEmpty(let path):
            return "model folder \(path) holds no files to package"
        case .unreadable(let path, let reason):
            return "cannot read \(path): \(reason); check its permissions"
        case .outputNotEmpty(let path):
            return "output folder \(path) already exists and holds files that are not an OCI image; choose a new or empty folder"
        case .outputNotAFile(let path):
            return "output \(path) exists and is not a regular file; choose another path for the archive"
        case .invalidOption(let message):
            return message
        case .io(let operation, let path, let reason):
            return "could not \(operation) \(path): \(reason)"
        }
    }
}
