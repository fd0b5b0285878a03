import Foundation

/// The vocabulary a GGUF file carries in its metadata (`tokenizer.ggml.*` with model `llama`): the
/// pieces of a SentencePiece BPE model, each with a score and a type. The GGUF loader (module
/// Inference) reads the metadata; this turns it into the same `Tokenizer` that the model's own
/// `tokenizer.json` gives, so a bare GGUF needs no other file.
///
/// How the pieces map onto tokenizer.json, as transformers' converter for Gemma lays it out (checked
/// on Gemma 3 by the tests, which encode text both ways):
/// - control pieces become special added tokens; user-defined pieces become non-special added tokens
///   matched on the raw text, except runs of spaces, which llama.cpp's converter spelled with real
///   spaces and which tokenizer.json keeps as ordinary `▁▁...` pieces;
/// - the merges are every split of a piece into two pieces, ranked by the piece they make:
///   user-defined pieces first, then by descending score (SentencePiece's own merge order);
/// - spaces become `▁` (no prefix space), words split after each space, byte fallback for
///   characters without a piece, and the decoder undoes both.
public struct SentencePieceVocabulary: Sendable {
    /// `tokenizer.ggml.token_type`, as llama.cpp numbers them.
    public enum PieceType: Int32, Sendable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public var pieces: [String]
    public var scores: [Float]
    public var types: [PieceType]
    public var bosID: Int?
    public var eosID: Int?
    public var unknownID: Int?
    public var paddingID: Int?
    public var addBOS = true
    public var addEOS = false
    public var addSpacePrefix = false
    /// `tokenizer.chat_template`; without one, the Gemma 3 template is used.
    public var chatTemplate: String?

    public init(pieces: [String], scores: [Float], types: [PieceType]) {
        self.pieces = pieces
        self.scores = scores
        self.types = types
    }
}

extension Tokenizer {
    /// The tokenizer of a GGUF's embedded vocabulary.
    public init(sentencePiece v: SentencePieceVocabulary) throws {
        let file = "the GGUF tokenizer metadata"
        guard !v.pieces.isEmpty, v.scores.count == v.pieces.count, v.types.count == v.pieces.count else {
            throw TokenizerError.invalidField(
                file: file, path: "tokenizer.ggml.tokens/scores/token_type", expected: "three arrays of the same, non-zero length")
        }
        guard !v.addSpacePrefix else {
            throw TokenizerError.unsupportedOption(component: "GGUF tokenizer", option: "add_space_prefix", value: "true")
        }
        let count = v.pieces.count
        // Pieces as tokenizer.json spells them.
        var texts = v.pieces
        var userDefinedSpaces = [Bool](repeating: false, count: count)
        for i in 0..<count where v.types[i] == .userDefined && texts[i].utf8.contains(UInt8(ascii: " ")) {
            texts[i] = texts[i].replacingOccurrences(of: " ", with: "\u{2581}")
            userDefinedSpaces[i] = true
        }
        var vocab = Vocabulary(minimumCapacity: count)
        for (i, text) in texts.enumerated() { vocab.setIfAbsent(Int32(i), for: text) }

        // Merge ranks: pieces in rank order, then each piece's splits into two known pieces.
        let mergeable = (0..<count).filter { v.types[$0] == .normal || v.types[$0] == .userDefined }
        let ordered = mergeable.sorted { a, b in
            let ua = v.types[a] == .userDefined, ub = v.types[b] == .userDefined
            if ua != ub { return ua }
            if v.scores[a] != v.scores[b] { return v.scores[a] > v.scores[b] }
            return a < b
        }
        var merges = MergeTable(minimumCapacity: count * 2)
        var rank: UInt32 = 0
        for id in ordered {
            let bytes = Array(texts[id].utf8)
            guard bytes.count > 1 else { continue }
            for cut in 1..<bytes.count where bytes[cut] & 0xC0 != 0x80 {
                guard let left = vocab[bytes[..<cut]], let right = vocab[bytes[cut...]] else { continue }
                merges.insert(left: left, right: right, rank: rank, merged: Int32(id))
                rank += 1
            }
        }

        let hasBytePieces = v.types.contains(.byte)
        let model = BPEModel(
            vocab: vocab, merges: merges, unknownID: v.unknownID.map(Int32.init), fuseUnknown: true,
            byteFallback: hasBytePieces, ignoreMerges: false)
        var added: [AddedToken] = []
        for i in 0..<count where !userDefinedSpaces[i] {
            switch v.types[i] {
            case .control, .unknown: added.append(AddedToken(id: i, content: texts[i], normalized: false, special: true))
            case .userDefined: added.append(AddedToken(id: i, content: texts[i], normalized: false, special: false))
            default: continue
            }
        }
        func component(_ json: String) throws -> JSONFields {
            guard let object = try JSONParser.parse(Array(json.utf8), file: file).objectValue else {
                throw TokenizerError.invalidField(file: file, path: "(built in)", expected: "an object")
            }
            return JSONFields(object, file: file, path: "")
        }
        let normalizer = try Normalizer(json: try component(#"{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}"#))
        let preTokenizer = try PreTokenizer(
            json: try component(#"{"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}"#))
        let decoder = try DecoderPipeline(json: try component(#"""
            {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
             {"type": "ByteFallback"}, {"type": "Fuse"}]}
            """#))
        func name(_ id: Int?, _ key: String) throws -> String? {
            guard let id else { return nil }
            guard texts.indices.contains(id) else {
                throw TokenizerError.tokenNotInVocabulary(token: "id \(id)", usedBy: "tokenizer.ggml.\(key)")
            }
            return texts[id]
        }
        let config = TokenizerConfig(
            addBosToken: v.addBOS, addEosToken: v.addEOS, bosToken: try name(v.bosID, "bos_token_id"),
            eosToken: try name(v.eosID, "eos_token_id"), padToken: try name(v.paddingID, "padding_token_id"),
            unkToken: try name(v.unknownID, "unknown_token_id"), chatTemplate: v.chatTemplate)
        try self.init(
            normalizer: normalizer, preTokenizer: preTokenizer, model: model, decoder: decoder, addedTokens: added,
            postProcessor: PostProcessor(prefix: [], suffix: []), config: config, source: file,
            fallbackTemplate: ChatTemplate(bosToken: try name(v.bosID, "bos_token_id") ?? "<bos>"))
    }
}
