import Testing
import Tokenizer

/// Streaming detokenization: pieces never split a UTF-8 character and always add up to `decode`.
@Suite struct StreamingDecoderTests {
    /// `<0xNN>` ids in the Gemma 3 vocabulary start at 238.
    static func byteToken(_ byte: UInt8) -> Int { 238 + Int(byte) }

    @Test func plainTokensAreEmittedImmediatelyWithSpaces() throws {
        let tokenizer = try Fixtures.gemma()
        var decoder = tokenizer.streamingDecoder()
        // "▁Hello" carries the SentencePiece space marker.
        #expect(tokenizer.token(forID: 26352) == "▁Hello")
        #expect(decoder.push(26352) == " Hello")
        #expect(decoder.push(138) == "  ")
        #expect(decoder.push(12392) == "world")
        #expect(decoder.finish() == "")
    }

    @Test func byteFallbackRunIsHeldUntilItEnds() throws {
        let tokenizer = try Fixtures.gemma()
        var decoder = tokenizer.streamingDecoder()
        let euro = [0xE2, 0x82, 0xAC].map { Self.byteToken($0) }
        for id in euro {
            #expect(decoder.push(id) == "")
            #expect(decoder.hasPendingBytes)
        }
        #expect(utf8(decoder.push(9259)) == utf8("€Hello"))
        #expect(!decoder.hasPendingBytes)
        #expect(tokenizer.decode(euro + [9259]) == "€Hello")
    }

    @Test func finishFlushesAnIncompleteRunAsReplacementCharacters() throws {
        let tokenizer = try Fixtures.gemma()
        var decoder = tokenizer.streamingDecoder()
        let partial = [Self.byteToken(0xF0), Self.byteToken(0x9F)]
        #expect(partial.map { decoder.push($0) } == ["", ""])
        // The library emits one U+FFFD per byte token of an invalid run.
        #expect(utf8(decoder.finish()) == utf8("\u{FFFD}\u{FFFD}"))
        #expect(utf8(tokenizer.decode(partial)) == utf8("\u{FFFD}\u{FFFD}"))
    }

    @Test func aValidPrefixFollowedByAnInvalidByteBecomesReplacements() throws {
        let tokenizer = try Fixtures.gemma()
        let ids = [0xE2, 0x82, 0xAC, 0xFF].map { Self.byteToken($0) } + [9259]
        let expected = String(repeating: "\u{FFFD}", count: 4) + "Hello"
        #expect(utf8(tokenizer.decode(ids)) == utf8(expected))
        #expect(utf8(streamedPieces(tokenizer, ids, skipSpecialTokens: false).joined()) == utf8(expected))
    }

    @Test func skippedSpecialTokensDoNotSplitAByteRun() throws {
        let tokenizer = try Fixtures.gemma()
        let ids = [Self.byteToken(0xC3), 1, Self.byteToken(0xA9)]
        #expect(utf8(tokenizer.decode(ids, skipSpecialTokens: true)) == utf8("é"))
        #expect(utf8(streamedPieces(tokenizer, ids, skipSpecialTokens: true).joined()) == utf8("é"))
        #expect(utf8(tokenizer.decode(ids)) == utf8("\u{FFFD}<eos>\u{FFFD}"))
        #expect(
            utf8(streamedPieces(tokenizer, ids, skipSpecialTokens: false).joined()) == utf8("\u{FFFD}<eos>\u{FFFD}"))
    }

    @Test func unknownIdsAreIgnored() throws {
        let tokenizer = try Fixtures.gemma()
        var decoder = tokenizer.streamingDecoder()
        #expect(decoder.push(-1) == "")
        #expect(decoder.push(tokenizer.vocabularySize) == "")
        #expect(tokenizer.decode([9259, 1_000_000, 9259]) == "HelloHello")
    }

    /// Text whose characters need byte fallback streams without any U+FFFD, one id at a time.
    @Test(arguments: [
        "emoji 🚀🔥👍🏽 done", "ǅǆǇ ẞ ß", "日本語 €100 \u{10FFFD}\u{E0041}",
        "a\u{0301}\u{0323} \u{1F9D1}\u{200D}\u{1F91D}\u{200D}\u{1F9D1}",
    ])
    func encodedTextStreamsBackExactly(_ text: String) throws {
        let tokenizer = try Fixtures.gemma()
        let ids = tokenizer.encode(text, addSpecialTokens: true)
        let pieces = streamedPieces(tokenizer, ids, skipSpecialTokens: true)
        #expect(utf8(pieces.joined()) == utf8(text))
        #expect(!pieces.joined().unicodeScalars.contains("\u{FFFD}"))
    }
}
