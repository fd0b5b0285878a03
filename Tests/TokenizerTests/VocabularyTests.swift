import Foundation
import Testing

@testable import Tokenizer

/// `Vocabulary` against `Dictionary<TokenKey, Int32>`, the map it replaced: same ids for every key,
/// byte-exact keys, the last duplicate kept.
@Suite struct VocabularyTests {
    @Test func itAgreesWithADictionaryThroughGrowth() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("abé;\u{37E}ख़▁\u{1F600}".unicodeScalars)  // ";" and U+037E: distinct keys
        var reference: [TokenKey: Int32] = [:]
        var vocabulary = Vocabulary()  // starts at 16 slots: grows many times
        var texts: [String] = [""]
        for id in 0..<20_000 {
            let length = Int.random(in: 1...6, using: &generator)
            var text = String.UnicodeScalarView()
            for _ in 0..<length { text.append(alphabet.randomElement(using: &generator)!) }
            let token = Bool.random(using: &generator) ? String(text) : texts.randomElement(using: &generator)!
            reference[TokenKey(token)] = Int32(id)
            vocabulary.set(Int32(id), for: token)
            texts.append(token)
        }
        #expect(vocabulary.count == reference.count)
        for (key, id) in reference {
            #expect(vocabulary[key.text] == id)
            #expect(vocabulary[Array(key.text.utf8)[...]] == id)
        }
        // Every split of a key into two parts finds it as a concatenation; absent texts are nil.
        for key in reference.keys.prefix(2000) {
            let bytes = Array(key.text.utf8)
            for cut in 0...bytes.count where cut == bytes.count || bytes[cut] & 0xC0 != 0x80 {
                let left = String(decoding: bytes[..<cut], as: UTF8.self)
                let right = String(decoding: bytes[cut...], as: UTF8.self)
                #expect(vocabulary.id(concatenating: left, right) == reference[key])
            }
            #expect(vocabulary[key.text + "z"] == reference[TokenKey(key.text + "z")])
        }
        #expect(vocabulary["z"] == nil)
        #expect(vocabulary.id(concatenating: "", "") == reference[TokenKey("")])
        let entries = Dictionary(vocabulary.entries.map { (TokenKey($0), $1) }, uniquingKeysWith: { _, _ in -1 })
        #expect(entries == reference)
    }

    @Test func theFirstOrTheLastDuplicateWins() {
        var vocabulary = Vocabulary()
        vocabulary.set(1, for: ";")
        vocabulary.set(2, for: "\u{37E}")
        vocabulary.set(3, for: ";")
        vocabulary.setIfAbsent(4, for: "\u{37E}")
        vocabulary.setIfAbsent(5, for: "x")
        #expect(vocabulary[";"] == 3)
        #expect(vocabulary["\u{37E}"] == 2)
        #expect(vocabulary["x"] == 5)
        #expect(vocabulary.count == 3)
    }

    /// Merges resolved on several threads still take their ranks from the list, a pair listed twice
    /// its last: "ab" is listed first and last, "bc" between, so "abc" merges "bc" first.
    @Test func aPairListedTwiceKeepsItsLastRank() throws {
        let filler = Array(repeating: #"["x", "y"]"#, count: 40_000).joined(separator: ", ")
        let json = """
            {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "x": 5, "y": 6, "xy": 7},
             "merges": [["a", "b"], \(filler), ["b", "c"], ["a", "b"]]}}
            """
        let tokenizer = try Tokenizer(tokenizerJSON: Data(json.utf8))
        #expect(tokenizer.encode("abc", addSpecialTokens: false) == [0, 4])
        #expect(tokenizer.encode("xyab", addSpecialTokens: false) == [7, 3])
    }
}
