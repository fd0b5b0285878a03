import Foundation
import Testing
import Tokenizer

/// Shared access to Tests/TokenizerTests/Fixtures: the Gemma 3 tokenizer (loaded once per test
/// process) and the expected outputs recorded from the Hugging Face `tokenizers` library.
enum Fixtures {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func url(_ name: String) throws -> URL {
        guard let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures") else {
            throw Failure(description: "test resources are missing")
        }
        return base.appendingPathComponent(name)
    }

    static func data(_ name: String) throws -> Data { try Data(contentsOf: try url(name)) }

    /// `gzip -dc tokenizer.json.gz` into a temporary file, then its bytes.
    static func gunzip(_ name: String) throws -> Data {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tokenizer-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: output) }
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["gzip", "-dc", try url(name).path]
        process.standardOutput = handle
        try process.run()
        process.waitUntilExit()
        try handle.close()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "gzip -dc \(name) exited with \(process.terminationStatus)")
        }
        return try Data(contentsOf: output)
    }

    static func config() throws -> TokenizerConfig {
        try TokenizerConfig(
            tokenizerConfig: try data("tokenizer_config.json"), specialTokensMap: try data("special_tokens_map.json"))
    }

    /// Loading parses a 33 MB file, so every test shares one instance.
    private static let loaded: Result<Tokenizer, any Error> = Result {
        try Tokenizer(tokenizerJSON: try gunzip("tokenizer.json.gz"), config: try config())
    }

    static func gemma() throws -> Tokenizer { try loaded.get() }

    /// tokenizer.json of a six-token model (`<pad> <eos> <bos> a b ab`, one merge) with the Gemma 3
    /// post-processor: small enough to edit field by field in error tests.
    static func smallModelJSON() -> Data {
        let addedTokens = ["<pad>", "<eos>", "<bos>"].enumerated().map { id, content in
            """
            {"id": \(id), "content": "\(content)", "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": true}
            """
        }
        let json = """
            {"version": "1.0", "truncation": null, "padding": null,
             "added_tokens": [\(addedTokens.joined(separator: ", "))],
             "normalizer": null, "pre_tokenizer": null,
             "post_processor": {"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [], "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
             "decoder": null,
             "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
               "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
               "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "a": 3, "b": 4, "ab": 5}, "merges": [["a", "b"]]}}
            """
        return Data(json.utf8)
    }

    static func decode<T: Decodable>(_ type: T.Type, from name: String) throws -> T {
        try JSONDecoder().decode(type, from: try data(name))
    }
}

/// Strings compared byte for byte: Swift's `==` on String uses canonical equivalence, which
/// would hide NFC/NFD differences the tokenizer must not introduce.
func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Runs ids through a fresh streaming decoder and returns every emitted piece.
func streamedPieces(_ tokenizer: Tokenizer, _ ids: [Int], skipSpecialTokens: Bool) -> [String] {
    var decoder = tokenizer.streamingDecoder(skipSpecialTokens: skipSpecialTokens)
    var pieces = ids.map { decoder.push($0) }
    pieces.append(decoder.finish())
    return pieces
}
