import Testing

@testable import Tokenizer

@Suite struct JSONParserTests {
    func parse(_ text: String) throws -> JSONValue { try JSONParser.parse(Array(text.utf8), file: "test.json") }

    @Test func scalarsAndContainers() throws {
        let value = try parse(#" {"a": [1, -2.5e3, true, false, null, "x"], "b": {}, "c": [], "a": 7} "#)
        let object = try #require(value.objectValue)
        #expect(object.entries.map(\.key) == ["a", "b", "c", "a"])
        #expect(object["a"]?.intValue == 7)  // the last duplicate wins
        let array = try #require(object.entries[0].value.arrayValue)
        #expect(array[0].intValue == 1)
        guard case .number(let d) = array[1] else {
            Issue.record("expected a number")
            return
        }
        #expect(d == -2500)
        #expect(array[2].boolValue == true && array[3].boolValue == false && array[4].isNull)
        #expect(array[5].stringValue == "x")
        #expect(try parse("1e400").intValue == nil)
        #expect(try parse("12345678901234567890").intValue == nil)
        #expect(try parse("-0").intValue == 0)
    }

    @Test func stringEscapes() throws {
        let value = try parse(#""q\" b\\ s\/ \b\f\n\r\t \u00e9 \ud83d\ude00 \u2581 raw é""#)
        #expect(utf8(value.stringValue ?? "") == utf8("q\" b\\ s/ \u{8}\u{C}\n\r\t é 😀 ▁ raw é"))
    }

    /// Arrays of every length up to four, of strings and not: exactly two strings are kept as a
    /// `stringPair`, and every array reads back its elements in order.
    @Test func arraysOfEveryShortLength() throws {
        let texts = ["[]", #"["a"]"#, #"["a", "b"]"#, #"["a", "b", "c"]"#, #"["a", 1]"#, #"[1, "b"]"#, #"[["a", "b"], "c"]"#,
            #"["a", "b", "c", "d"]"#, "[1, 2]"]
        let shapes: [[String]] = [[], ["a"], ["a", "b"], ["a", "b", "c"], ["a", "1"], ["1", "b"], ["[a, b]", "c"],
            ["a", "b", "c", "d"], ["1", "2"]]
        func shape(_ value: JSONValue) -> String {
            if let s = value.stringValue { return s }
            if let n = value.intValue { return String(n) }
            if let a = value.arrayValue { return "[" + a.map(shape).joined(separator: ", ") + "]" }
            return "?"
        }
        for (text, expected) in zip(texts, shapes) {
            let value = try parse(text)
            #expect(try #require(value.arrayValue).map(shape) == expected, "\(text)")
            if case .stringPair = value { #expect(text == #"["a", "b"]"#, "\(text)") }
        }
        guard case .stringPair("a", "b") = try parse(#"["a", "b"]"#) else {
            Issue.record("two strings are a stringPair")
            return
        }
    }

    @Test func byteOrderMarkIsTolerated() throws {
        #expect(try JSONParser.parse([0xEF, 0xBB, 0xBF] + Array("[1]".utf8), file: "x").arrayValue?.count == 1)
    }
}
