import Foundation

/// What transformers reads from `tokenizer_config.json` and `special_tokens_map.json`.
public struct TokenizerConfig: Sendable, Equatable {
    /// Whether `encode(_:addSpecialTokens: true)` prepends the bos token; `nil` when unset.
    public var addBosToken: Bool?
    /// Whether `encode(_:addSpecialTokens: true)` appends the eos token; `nil` when unset.
    public var addEosToken: Bool?
    /// Token texts (`"<bos>"`), resolved to ids by `Tokenizer` into `SpecialTokens`.
    public var bosToken: String?
    public var eosToken: String?
    public var padToken: String?
    public var unkToken: String?
    /// The Jinja chat template source (the `default` one when the file lists several).
    public var chatTemplate: String?

    /// A config built in code, for tests or for models without the files.
    public init(
        addBosToken: Bool? = nil, addEosToken: Bool? = nil, bosToken: String? = nil, eosToken: String? = nil,
        padToken: String? = nil, unkToken: String? = nil, chatTemplate: String? = nil
    ) {
        self.addBosToken = addBosToken
        self.addEosToken = addEosToken
        self.bosToken = bosToken
        self.eosToken = eosToken
        self.padToken = padToken
        self.unkToken = unkToken
        self.chatTemplate = chatTemplate
    }

    /// Parses `tokenizer_config.json` and, when given, `special_tokens_map.json`, whose token names
    /// take precedence as they do in transformers' `from_pretrained`.
    public init(tokenizerConfig: Data, specialTokensMap: Data? = nil) throws {
        let file = "tokenizer_config.json"
        guard let object = try JSONParser.parse(tokenizerConfig, file: file).objectValue else {
            throw TokenizerError.invalidField(file: file, path: "(top level)", expected: "an object")
        }
        let json = JSONFields(object, file: file, path: "")
        self.init(
            addBosToken: try json.optionalBool("add_bos_token"), addEosToken: try json.optionalBool("add_eos_token"),
            bosToken: try Self.tokenName(json, "bos_token"), eosToken: try Self.tokenName(json, "eos_token"),
            padToken: try Self.tokenName(json, "pad_token"), unkToken: try Self.tokenName(json, "unk_token"),
            chatTemplate: try Self.chatTemplate(json))
        // transformers reads special_tokens_map.json after the config and lets it override.
        guard let specialTokensMap else { return }
        let mapFile = "special_tokens_map.json"
        guard let mapObject = try JSONParser.parse(specialTokensMap, file: mapFile).objectValue else {
            throw TokenizerError.invalidField(file: mapFile, path: "(top level)", expected: "an object")
        }
        let map = JSONFields(mapObject, file: mapFile, path: "")
        bosToken = try Self.tokenName(map, "bos_token") ?? bosToken
        eosToken = try Self.tokenName(map, "eos_token") ?? eosToken
        padToken = try Self.tokenName(map, "pad_token") ?? padToken
        unkToken = try Self.tokenName(map, "unk_token") ?? unkToken
    }

    /// Reads `tokenizer_config.json` and `special_tokens_map.json` from a model directory;
    /// either may be missing (`nil` when both are).
    public static func load(directory: URL) throws -> TokenizerConfig? {
        let configURL = directory.appendingPathComponent("tokenizer_config.json")
        let mapURL = directory.appendingPathComponent("special_tokens_map.json")
        let fileManager = FileManager.default
        let config = fileManager.fileExists(atPath: configURL.path) ? try Tokenizer.readFile(configURL) : nil
        let map = fileManager.fileExists(atPath: mapURL.path) ? try Tokenizer.readFile(mapURL) : nil
        if config == nil && map == nil { return nil }
        return try TokenizerConfig(tokenizerConfig: config ?? Data("{}".utf8), specialTokensMap: map)
    }

    /// A token is written either as its text or as an AddedToken object with `content`.
    private static func tokenName(_ json: JSONFields, _ key: String) throws -> String? {
        guard let value = json.value(key) else { return nil }
        if let name = value.stringValue { return name }
        if let object = value.objectValue, let content = object["content"]?.stringValue { return content }
        throw json.invalid(key, "a string or an object with a string `content`")
    }

    /// `chat_template` is a string, or a list of `{name, template}` of which transformers uses `default`.
    private static func chatTemplate(_ json: JSONFields) throws -> String? {
        guard let value = json.value("chat_template") else { return nil }
        if let source = value.stringValue { return source }
        if let list = value.arrayValue {
            for entry in list {
                if let object = entry.objectValue, object["name"]?.stringValue == "default",
                    let source = object["template"]?.stringValue
                {
                    return source
                }
            }
            return nil
        }
        throw json.invalid("chat_template", "a string or a list of {name, template}")
    }
}
