import Foundation
import Testing
import Tokenizer

/// Bad input gives a `TokenizerError` naming what is wrong, never a crash.
@Suite struct ErrorTests {
    /// The small model's tokenizer.json with one top-level field replaced.
    func replacing(_ key: String, with value: Any) throws -> Data {
        var object = try #require(try JSONSerialization.jsonObject(with: Fixtures.smallModelJSON()) as? [String: Any])
        object[key] = value
        return try JSONSerialization.data(withJSONObject: object)
    }

    /// The small model's tokenizer.json with one field of `model` replaced.
    func replacingInModel(_ key: String, with value: Any) throws -> Data {
        var object = try #require(try JSONSerialization.jsonObject(with: Fixtures.smallModelJSON()) as? [String: Any])
        var model = try #require(object["model"] as? [String: Any])
        model[key] = value
        object["model"] = model
        return try JSONSerialization.data(withJSONObject: object)
    }

    func error(loading data: Data) -> TokenizerError? {
        do {
            _ = try Tokenizer(tokenizerJSON: data)
            return nil
        } catch let error as TokenizerError {
            return error
        } catch {
            return nil
        }
    }

    @Test func smallModelLoads() throws {
        #expect(error(loading: Fixtures.smallModelJSON()) == nil)
    }

    @Test(arguments: ["Unigram", "WordPiece", "WordLevel"])
    func unsupportedModelType(_ type: String) throws {
        let failure = error(loading: try replacingInModel("type", with: type))
        #expect(failure == .unsupportedComponent(component: "model", type: type, supported: ["BPE"]))
        #expect(failure?.description.contains("model type \"\(type)\" is not supported") == true)
    }

    @Test func unsupportedComponentsAreNamed() throws {
        let cases: [(String, Any, String)] = [
            ("normalizer", ["type": "NFKC"], "NFKC"),
            ("normalizer", ["type": "Sequence", "normalizers": [["type": "Lowercase"]]], "Lowercase"),
            (
                "pre_tokenizer",
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true], "ByteLevel"
            ),
            (
                "pre_tokenizer", ["type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true],
                "Metaspace"
            ),
            ("decoder", ["type": "Strip", "content": " ", "start": 1, "stop": 0], "Strip"),
            ("decoder", ["type": "ByteLevel"], "ByteLevel"),
            ("post_processor", ["type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]], "BertProcessing"),
        ]
        for (key, value, type) in cases {
            let failure = error(loading: try replacing(key, with: value))
            guard case .unsupportedComponent(let component, let found, _)? = failure else {
                Issue.record("\(key) \(type): expected unsupportedComponent, got \(String(describing: failure))")
                continue
            }
            #expect(component == key)
            #expect(found == type)
            #expect(failure?.description.contains("\"\(type)\"") == true)
        }
    }

    @Test func unsupportedOptionsAreNamed() throws {
        let regexSplit: [String: Any] = [
            "type": "Split", "pattern": ["Regex": "\\s+"], "behavior": "Isolated", "invert": false,
        ]
        let afterFuse: [String: Any] = [
            "type": "Sequence",
            "decoders": [["type": "Fuse"], ["type": "Replace", "pattern": ["String": "▁"], "content": " "]],
        ]
        let failures = [
            error(loading: try replacing("pre_tokenizer", with: regexSplit)),
            error(loading: try replacing("decoder", with: afterFuse)),
            error(loading: try replacing("truncation", with: ["max_length": 10])),
            error(loading: try replacingInModel("dropout", with: 0.1)),
            error(loading: try replacingInModel("continuing_subword_prefix", with: "##")),
        ]
        for failure in failures {
            guard case .unsupportedOption? = failure else {
                Issue.record("expected unsupportedOption, got \(String(describing: failure))")
                continue
            }
        }
        #expect(failures[0]?.description.contains("Regex") == true)
    }

    /// A list long enough to be resolved on several threads reports its first bad entry, whichever
    /// thread met which, and keeps a pair listed twice at its last rank.
    @Test func aLongMergeListReportsItsFirstBadEntry() throws {
        var merges: [Any] = Array(repeating: ["a", "b"], count: 70_000)
        merges[60_000] = ["a", "c"]
        merges[50_000] = ["b", "a"]  // "ba" is not in the vocabulary
        merges[40_000] = ["a"]
        #expect(
            error(loading: try replacingInModel("merges", with: merges))
                == .invalidField(
                    file: "tokenizer.json", path: "model.merges[40000]",
                    expected: "a pair [\"left\", \"right\"] or a string \"left right\""))
        merges[40_000] = "a b"
        #expect(
            error(loading: try replacingInModel("merges", with: merges))
                == .tokenNotInVocabulary(token: "ba", usedBy: "model.merges[50000]"))
        merges[50_000] = ["a", "b"]
        #expect(
            error(loading: try replacingInModel("merges", with: merges))
                == .tokenNotInVocabulary(token: "c", usedBy: "model.merges[60000]"))
        merges[60_000] = ["a", "b"]
        #expect(error(loading: try replacingInModel("merges", with: merges)) == nil)
    }

    @Test func inconsistentModelsAreRejected() throws {
        #expect(
            error(loading: try replacingInModel("merges", with: [["a", "c"]]))
                == .tokenNotInVocabulary(token: "c", usedBy: "model.merges[0]"))
        #expect(
            error(loading: try replacingInModel("unk_token", with: "<unk>"))
                == .tokenNotInVocabulary(token: "<unk>", usedBy: "model.unk_token"))
        #expect(
            error(loading: try replacingInModel("vocab", with: ["a", "b"]))
                == .invalidField(file: "tokenizer.json", path: "model.vocab", expected: "an object of token -> id"))
        #expect(
            error(loading: try replacingInModel("vocab", with: ["a": -1]))
                == .invalidField(
                    file: "tokenizer.json", path: "model.vocab.\"a\"", expected: "a non-negative integer id"))
        #expect(
            error(loading: try replacing("added_tokens", with: [["id": 0]]))
                == .missingField(file: "tokenizer.json", path: "added_tokens[0].content"))
        #expect(
            error(loading: try replacing("model", with: NSNull()))
                == .missingField(file: "tokenizer.json", path: "model"))
        #expect(
            error(loading: Data("[]".utf8))
                == .invalidField(file: "tokenizer.json", path: "(top level)", expected: "an object"))
    }

    @Test(arguments: [
        "", "{", "{\"a\":}", "[1,2", "{\"a\":1} x", "tru", "01", "1.", "-", "1e", "\"\\ud800\"", "\"\\udc00x\"",
        "\"a\u{01}b\"", "\"\\q\"", "{\"a\" 1}", "{1: 2}", "[1,]", "\"unterminated",
    ])
    func malformedJSON(_ text: String) {
        guard case .malformedJSON(let file, _, _, let reason)? = error(loading: Data(text.utf8)) else {
            Issue.record("expected malformedJSON for \(text.debugDescription)")
            return
        }
        #expect(file == "tokenizer.json")
        #expect(!reason.isEmpty)
    }

    @Test func malformedJSONReportsLineAndColumn() {
        let failure = error(loading: Data("{\n  \"model\": tru\n}".utf8))
        guard case .malformedJSON(_, let line, let column, _)? = failure else {
            Issue.record("expected malformedJSON, got \(String(describing: failure))")
            return
        }
        #expect(line == 2)
        #expect(column == 12)
        #expect(failure?.description.contains("line 2, column 12") == true)
    }

    @Test func invalidUTF8AndDeepNestingAreErrors() {
        #expect(error(loading: Data([0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D])) != nil)
        #expect(error(loading: Data(String(repeating: "[", count: 100_000).utf8)) != nil)
        #expect(
            error(loading: Data((String(repeating: "[", count: 600) + String(repeating: "]", count: 600)).utf8)) != nil)
    }

    @Test func truncatedGemmaFileIsAnError() throws {
        let data = try Fixtures.gunzip("tokenizer.json.gz")
        guard case .malformedJSON? = error(loading: data.prefix(data.count / 50)) else {
            Issue.record("expected malformedJSON")
            return
        }
    }

    @Test func missingFilesAndBadConfigs() throws {
        let missing = URL(fileURLWithPath: "/nonexistent-\(UUID().uuidString)")
        #expect {
            try Tokenizer(directory: missing)
        } throws: { error in
            guard case TokenizerError.unreadableFile(let path, _) = error else { return false }
            return path.hasSuffix("tokenizer.json")
        }
        #expect {
            try TokenizerConfig(tokenizerConfig: Data("{\"add_bos_token\": ".utf8))
        } throws: { error in
            guard case TokenizerError.malformedJSON(let file, _, _, _) = error else { return false }
            return file == "tokenizer_config.json"
        }
        #expect(
            throws: TokenizerError.invalidField(
                file: "tokenizer_config.json", path: "add_bos_token", expected: "true, false or null")
        ) {
            try TokenizerConfig(tokenizerConfig: Data("{\"add_bos_token\": 1}".utf8))
        }
        #expect(throws: TokenizerError.tokenNotInVocabulary(token: "<s>", usedBy: "tokenizer_config.json bos_token")) {
            try Tokenizer(tokenizerJSON: Fixtures.smallModelJSON(), config: TokenizerConfig(bosToken: "<s>"))
        }
    }
}
