import Foundation
import Testing
import Tokenizer

@Suite struct SpecialTokensTests {
    @Test func gemmaSpecialTokenIds() throws {
        let tokenizer = try Fixtures.gemma()
        let special = tokenizer.specialTokens
        #expect(special.bos == 2)
        #expect(special.eos == 1)
        #expect(special.pad == 0)
        #expect(special.unk == 3)
        #expect(special.startOfTurn == 105)
        #expect(special.endOfTurn == 106)
        #expect(special.addsBos)
        #expect(!special.addsEos)
        #expect(special.stopTokenIDs == [1, 106])
        #expect(tokenizer.vocabularySize == 262_144)
    }

    @Test func configFileValues() throws {
        let config = try Fixtures.config()
        #expect(config.addBosToken == true)
        #expect(config.addEosToken == false)
        #expect(config.bosToken == "<bos>")
        #expect(config.eosToken == "<eos>")
        #expect(config.padToken == "<pad>")
        #expect(config.unkToken == "<unk>")
    }

    @Test func addSpecialTokensPrependsBos() throws {
        let tokenizer = try Fixtures.gemma()
        for text in ["", "Hello world", "<bos>x"] {
            #expect(
                tokenizer.encode(text, addSpecialTokens: true) == [2] + tokenizer.encode(text, addSpecialTokens: false))
        }
    }

    @Test func configFlagsOverrideThePostProcessor() throws {
        let data = Fixtures.smallModelJSON()
        let noBos = try Tokenizer(tokenizerJSON: data, config: TokenizerConfig(addBosToken: false, addEosToken: true))
        #expect(!noBos.specialTokens.addsBos)
        #expect(noBos.specialTokens.addsEos)
        #expect(noBos.encode("ab", addSpecialTokens: true) == [5, 1])
        let plain = try Tokenizer(tokenizerJSON: data)
        #expect(plain.encode("ab", addSpecialTokens: true) == [2, 5])
    }

    @Test func vocabularyLookupsAreByteExact() throws {
        let tokenizer = try Fixtures.gemma()
        #expect(tokenizer.id(forToken: "<end_of_turn>") == 106)
        #expect(tokenizer.token(forID: 106) == "<end_of_turn>")
        #expect(tokenizer.token(forID: 9259) == "Hello")
        #expect(tokenizer.isSpecialToken(105))
        #expect(!tokenizer.isSpecialToken(107))  // "\n" is an added token, not a special one
        // U+037E GREEK QUESTION MARK is canonically equivalent to ";" but a different token.
        let semicolon = try #require(tokenizer.id(forToken: ";"))
        let greek = try #require(tokenizer.id(forToken: "\u{37E}"))
        #expect(semicolon != greek)
        #expect(utf8(tokenizer.token(forID: greek) ?? "") == utf8("\u{37E}"))
        #expect(tokenizer.id(forToken: "no such token") == nil)
        #expect(tokenizer.token(forID: -5) == nil)
    }

    @Test func specialTokensCanBeEncodedAsText() throws {
        let tokenizer = try Fixtures.gemma()
        let text = "<start_of_turn>user\nhi<end_of_turn>"
        #expect(tokenizer.encode(text, addSpecialTokens: false).contains(105))
        let plain = tokenizer.encode(text, addSpecialTokens: false, parseSpecialTokens: false)
        #expect(!plain.contains(105) && !plain.contains(106))
        #expect(tokenizer.decode(plain) == text)
    }

    @Test func loadsFromADirectory() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tokenizer-dir-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try Fixtures.smallModelJSON().write(to: directory.appendingPathComponent("tokenizer.json"))
        let plain = try Tokenizer(directory: directory)
        #expect(plain.config == nil)
        #expect(plain.encode("ab", addSpecialTokens: true) == [2, 5])

        let config = #"""
            {"add_bos_token": false, "bos_token": {"content": "<bos>"},
             "chat_template": [{"name": "default", "template": "x"}]}
            """#
        try Data(config.utf8).write(to: directory.appendingPathComponent("tokenizer_config.json"))
        try Data(#"{"eos_token": "<eos>"}"#.utf8).write(to: directory.appendingPathComponent("special_tokens_map.json"))
        let configured = try Tokenizer(directory: directory)
        #expect(configured.config?.chatTemplate == "x")
        #expect(configured.config?.eosToken == "<eos>")
        #expect(configured.encode("ab", addSpecialTokens: true) == [5])
        #expect(throws: TokenizerError.self) { try configured.chatTemplate() }
    }

    @Test func concurrentEncodingIsConsistent() async throws {
        let tokenizer = try Fixtures.gemma()
        let texts = try GoldenCases.load().tokenization.map(\.text)
        let expected = texts.map { tokenizer.encode($0, addSpecialTokens: false) }
        try await withThrowingTaskGroup(of: [[Int]].self) { group in
            for _ in 0..<8 {
                group.addTask { texts.map { tokenizer.encode($0, addSpecialTokens: false) } }
            }
            for try await result in group {
                #expect(result == expected)
            }
        }
    }
}
