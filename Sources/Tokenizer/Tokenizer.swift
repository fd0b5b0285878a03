import Foundation

/// The Gemma 3 tokenizer: a Hugging Face `tokenizer.json` run the way the `tokenizers` library
/// runs it (added tokens -> normalizer -> pre-tokenizer -> BPE -> post-processor, and the decoder
/// back), plus the special-token settings and chat template from `tokenizer_config.json`.
///
/// Loading validates every component and throws `TokenizerError` for anything not implemented;
/// after that, encoding and decoding cannot fail. Copies share storage and are safe across threads.
public struct Tokenizer: Sendable {
    private let normalizer: Normalizer
    private let preTokenizer: PreTokenizer
    private let model: BPEModel
    private let addedVocabulary: AddedVocabulary
    private let postProcessor: PostProcessor
    private let decoder: DecoderPipeline
    private let tokens: TokenTable
    private let specialIDs: Set<Int>
    private let addedIDs: [TokenKey: Int]
    /// Kept as a result so a config with another template still loads; only chat use fails.
    private let template: Result<ChatTemplate, TokenizerError>

    /// Settings from tokenizer_config.json / special_tokens_map.json, when given.
    public let config: TokenizerConfig?
    public let specialTokens: SpecialTokens
    /// The `added_tokens` of tokenizer.json (special and not), with their resolved ids.
    public var addedTokens: [AddedToken] { addedVocabulary.tokens }

    /// Loads `tokenizer.json`, and `tokenizer_config.json` / `special_tokens_map.json` if present.
    public init(directory: URL) throws {
        try self.init(
            tokenizerJSON: try Self.readFile(directory.appendingPathComponent("tokenizer.json")),
            config: try TokenizerConfig.load(directory: directory))
    }

    /// Builds the tokenizer from the bytes of a `tokenizer.json`.
    public init(tokenizerJSON: Data, config: TokenizerConfig? = nil) throws {
        let file = "tokenizer.json"
        guard let object = try JSONParser.parse(tokenizerJSON, file: file).objectValue else {
            throw TokenizerError.invalidField(file: file, path: "(top level)", expected: "an object")
        }
        let json = JSONFields(object, file: file, path: "")
        // Both change what `encode` returns; neither is set for Gemma 3.
        for option in ["truncation", "padding"] where json.value(option) != nil {
            throw TokenizerError.unsupportedOption(component: "tokenizer", option: option, value: "non-null")
        }
        var declared: [AddedToken] = []
        if let list = json.value("added_tokens") {
            guard let entries = list.arrayValue else { throw json.invalid("added_tokens", "an array") }
            for (index, entry) in entries.enumerated() {
                declared.append(try AddedToken(json: try json.element(entry, of: "added_tokens", at: index)))
            }
        }
        try self.init(
            normalizer: try Normalizer(json: try json.optionalObject("normalizer")),
            preTokenizer: try PreTokenizer(json: try json.optionalObject("pre_tokenizer")),
            model: try BPEModel(json: try json.object("model")),
            decoder: try DecoderPipeline(json: try json.optionalObject("decoder")),
            addedTokens: declared,
            postProcessor: try PostProcessor(json: try json.optionalObject("post_processor")),
            config: config, source: file)
    }

    /// The tokenizer from its parts, whichever file they came from. `addedTokens` are as declared:
    /// each takes the model's id for its text when the model has one.
    init(
        normalizer: Normalizer, preTokenizer: PreTokenizer, model: BPEModel, decoder: DecoderPipeline,
        addedTokens declared: [AddedToken], postProcessor declaredPostProcessor: PostProcessor,
        config: TokenizerConfig?, source file: String, fallbackTemplate: ChatTemplate? = nil
    ) throws {
        self.normalizer = normalizer
        self.preTokenizer = preTokenizer
        self.model = model
        self.decoder = decoder

        // Added tokens take the model's id for their content when it has one, as `add_tokens` does.
        var added: [AddedToken] = []
        var addedIDs: [TokenKey: Int] = [:]
        for (index, token) in declared.enumerated() {
            let key = TokenKey(token.content)
            let id = model.vocab[token.content].map(Int.init) ?? addedIDs[key] ?? token.id
            guard id >= 0 && id < Int(Int32.max) else {
                throw TokenizerError.invalidField(file: file, path: "added_tokens[\(index)].id", expected: "a token id")
            }
            addedIDs[key] = id
            added.append(
                AddedToken(
                    id: id, content: token.content, singleWord: token.singleWord, lstrip: token.lstrip,
                    rstrip: token.rstrip, normalized: token.normalized, special: token.special))
        }
        self.addedVocabulary = AddedVocabulary(tokens: added, normalizer: normalizer)

        var table: [Int32: String] = [:]
        // Since tokenizers 0.22, decoding shows a `normalized: true` added token in its normalized
        // form (`normalized_cache`), so the decoder can undo the normalization.
        for token in added {
            if token.normalized {
                let normalized = normalizer.normalize(Array(token.content.utf8)[...])
                table[Int32(token.id)] = String(decoding: normalized, as: UTF8.self)
            } else {
                table[Int32(token.id)] = token.content
            }
        }
        self.tokens = TokenTable(model.vocab, replacing: table)
        self.specialIDs = Set(added.filter(\.special).map(\.id))
        self.addedIDs = addedIDs

        // Token names from the config must exist; the Gemma defaults are optional.
        let lookup: (String?, String) throws -> Int? = { name, usedBy in
            guard let name else { return nil }
            if let id = addedIDs[TokenKey(name)] ?? model.vocab[name].map(Int.init) { return id }
            throw TokenizerError.tokenNotInVocabulary(token: name, usedBy: usedBy)
        }
        let optionalLookup: (String) -> Int? = { name in
            addedIDs[TokenKey(name)] ?? model.vocab[name].map(Int.init)
        }
        let bos =
            try config?.bosToken.map { try lookup($0, "tokenizer_config.json bos_token") } ?? optionalLookup("<bos>")
        let eos =
            try config?.eosToken.map { try lookup($0, "tokenizer_config.json eos_token") } ?? optionalLookup("<eos>")
        let pad =
            try config?.padToken.map { try lookup($0, "tokenizer_config.json pad_token") } ?? optionalLookup("<pad>")
        let unk =
            try config?.unkToken.map { try lookup($0, "tokenizer_config.json unk_token") } ?? optionalLookup("<unk>")

        // transformers' GemmaTokenizerFast rebuilds the post-processor from add_bos_token /
        // add_eos_token (`update_post_processor`), so the config wins over tokenizer.json when set.
        var postProcessor = declaredPostProcessor
        if let config, config.addBosToken != nil || config.addEosToken != nil {
            // Unset flags take GemmaTokenizer's defaults: add bos, not eos.
            var prefix: [Int32] = []
            var suffix: [Int32] = []
            if config.addBosToken ?? true {
                guard let bos else {
                    throw TokenizerError.missingField(file: "tokenizer_config.json", path: "bos_token")
                }
                prefix = [Int32(bos)]
            }
            if config.addEosToken ?? false {
                guard let eos else {
                    throw TokenizerError.missingField(file: "tokenizer_config.json", path: "eos_token")
                }
                suffix = [Int32(eos)]
            }
            postProcessor = PostProcessor(prefix: prefix, suffix: suffix)
        }
        for id in postProcessor.prefix + postProcessor.suffix where !tokens.contains(Int(id)) {
            throw TokenizerError.tokenNotInVocabulary(token: "id \(id)", usedBy: "post_processor")
        }
        self.postProcessor = postProcessor
        self.config = config
        self.specialTokens = SpecialTokens(
            bos: bos, eos: eos, pad: pad, unk: unk, startOfTurn: optionalLookup("<start_of_turn>"),
            endOfTurn: optionalLookup("<end_of_turn>"),
            addsBos: bos.map { postProcessor.prefix.contains(Int32($0)) } ?? false,
            addsEos: eos.map { postProcessor.suffix.contains(Int32($0)) } ?? false)
        if let fallbackTemplate, config?.chatTemplate == nil {
            self.template = .success(fallbackTemplate)
        } else if let config {
            self.template = Result { () throws(TokenizerError) in try ChatTemplate(config: config) }
        } else {
            self.template = .success(ChatTemplate())
        }
    }

    /// File contents, with I/O errors wrapped as `unreadableFile` naming the path.
    static func readFile(_ url: URL) throws -> Data {
        do {
            return try Data(contentsOf: url)
        } catch {
            throw TokenizerError.unreadableFile(path: url.path, reason: error.localizedDescription)
        }
    }

    /// One past the largest token id: the size of the model's embedding table (262,144 for Gemma 3).
    public var vocabularySize: Int { tokens.count }

    /// The id of a token's exact text (`"<end_of_turn>"`, `"▁the"`), if it is in the vocabulary.
    public func id(forToken token: String) -> Int? {
        addedIDs[TokenKey(token)] ?? model.vocab[token].map(Int.init)
    }

    /// The text of a token id, as stored in the vocabulary (with `▁` for spaces).
    public func token(forID id: Int) -> String? { tokens.string(of: id) }

    /// Whether the id is an added token marked `special` (skipped by `skipSpecialTokens`).
    public func isSpecialToken(_ id: Int) -> Bool { specialIDs.contains(id) }

    /// Token ids of `text`.
    ///
    /// - Parameters:
    ///   - addSpecialTokens: apply the post-processor (for Gemma 3: prepend `<bos>`). Pass `false`
    ///     for text that already starts with `<bos>`, such as a rendered chat prompt.
    ///   - parseSpecialTokens: match special tokens like `<start_of_turn>` written in the text. With
    ///     `false` they are encoded as plain text (the library's `encode_special_tokens = true`),
    ///     which keeps user-supplied text from forging chat turns.
    public func encode(_ text: String, addSpecialTokens: Bool, parseSpecialTokens: Bool = true) -> [Int] {
        var ids: [Int32] = []
        let bytes = Array(text.utf8)
        ids.reserveCapacity(bytes.count / 3 + 4)
        if addSpecialTokens { ids += postProcessor.prefix }
        let segments = addedVocabulary.split(
            bytes, using: addedVocabulary.rawMatcher, parseSpecialTokens: parseSpecialTokens)
        for segment in segments {
            switch segment {
            case .token(let id):
                ids.append(id)
            case .text(let range):
                // Each piece between added tokens is normalized on its own, as `extract_and_normalize` does.
                let normalized = normalizer.normalize(bytes[range])
                guard addedVocabulary.hasNormalizedTokens else {
                    tokenizeWords(normalized, into: &ids)
                    continue
                }
                let inner = addedVocabulary.split(
                    normalized, using: addedVocabulary.normalizedMatcher, parseSpecialTokens: parseSpecialTokens)
                for piece in inner {
                    switch piece {
                    case .token(let id): ids.append(id)
                    case .text(let range): tokenizeWords(Array(normalized[range]), into: &ids)
                    }
                }
            }
        }
        if addSpecialTokens { ids += postProcessor.suffix }
        return ids.map(Int.init)
    }

    /// Pre-tokenizer then model, for normalized text known to hold no added token.
    private func tokenizeWords(_ text: [UInt8], into ids: inout [Int32]) {
        for word in preTokenizer.words(in: text) {
            model.tokenize(text[word], into: &ids)
        }
    }

    /// The text of `ids`, exactly as the library's `decode`. Unknown ids are ignored.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var decoder = streamingDecoder(skipSpecialTokens: skipSpecialTokens)
        var output: [UInt8] = []
        for id in ids { decoder.push(id, into: &output) }
        decoder.finish(into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    /// A decoder for ids arriving one at a time, consistent with `decode(_:skipSpecialTokens:)`.
    public func streamingDecoder(skipSpecialTokens: Bool = false) -> StreamingDecoder {
        StreamingDecoder(
            tokens: tokens, specialIDs: specialIDs, pipeline: decoder, skipSpecialTokens: skipSpecialTokens)
    }

    /// The chat template for this tokenizer; throws if tokenizer_config.json has none or another one.
    public func chatTemplate() throws -> ChatTemplate { try template.get() }

    /// Renders `messages` with the chat template and encodes the prompt. The template writes
    /// `<bos>` itself, so no second one is added.
    ///
    /// With `continueFinalMessage` the prompt ends inside the last message, right after its text, so
    /// the model goes on writing it (a prefilled answer): transformers' `apply_chat_template` cuts
    /// after the last occurrence of that text; the Gemma 3 template writes each turn's text and then
    /// `<end_of_turn>\n`, so leaving out that last trailer is the same cut, without a search that a
    /// text repeated earlier, or trimmed by the template, could mislead.
    public func encodeChat(_ messages: [ChatMessage], addGenerationPrompt: Bool, continueFinalMessage: Bool = false) throws
        -> [Int]
    {
        var prompt = try chatTemplate().render(messages, addGenerationPrompt: addGenerationPrompt && !continueFinalMessage)
        if continueFinalMessage {
            let trailer = "<end_of_turn>\n"
            guard prompt.hasSuffix(trailer) else {
                throw TokenizerError.invalidConversation("continue_final_message: the last turn does not end as Gemma 3's do")
            }
            prompt.removeLast(trailer.count)
        }
        return encode(prompt, addSpecialTokens: false)
    }
}
