/// The defaults a checkpoint ships in `generation_config.json`: stop tokens and sampling settings
/// (gemma3-and-serving.md §1.1: `{"eos_token_id": [1, 106], "top_k": 64, "top_p": 0.95, ...}`).
public struct GenerationConfig: Sendable, Equatable {
    public var bosTokenID: Int?
    public var eosTokenIDs: [Int]
    public var doSample: Bool
    public var temperature: Float?
    public var topK: Int?
    public var topP: Float?

    public init(
        bosTokenID: Int? = nil, eosTokenIDs: [Int] = [], doSample: Bool = false, temperature: Float? = nil,
        topK: Int? = nil, topP: Float? = nil
    ) {
        self.bosTokenID = bosTokenID
        self.eosTokenIDs = eosTokenIDs
        self.doSample = doSample
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
    }

    public init(file path: String) throws {
        let json = try JSONValue.parseConfigFile(path)
        guard json.objectValue != nil else {
            throw InferenceError.invalidConfig(path: path, reason: "the top level is not an object")
        }
        self.init()
        bosTokenID = json["bos_token_id"]?.intValue
        if let eos = json["eos_token_id"] {
            if let single = eos.intValue {
                eosTokenIDs = [single]
            } else if let list = eos.arrayValue {
                eosTokenIDs = try list.map {
                    guard let id = $0.intValue else {
                        throw InferenceError.invalidConfig(path: path, reason: "eos_token_id must hold integers")
                    }
                    return id
                }
            } else if !eos.isNull {
                throw InferenceError.invalidConfig(
                    path: path, reason: "eos_token_id must be an integer or a list of integers")
            }
        }
        doSample = json["do_sample"]?.boolValue ?? false
        temperature = json["temperature"]?.doubleValue.map(Float.init)
        topK = json["top_k"]?.intValue
        topP = json["top_p"]?.doubleValue.map(Float.init)
    }
}
