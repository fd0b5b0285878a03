/// Incremental detokenization for generated ids: feed ids one at a time, emit the returned text.
///
/// The concatenation of everything `push` and `finish` return equals `Tokenizer.decode` of all
/// the ids with the same `skipSpecialTokens`, because both run the same fold
/// (`DecoderPipeline.State`). Text is never cut inside a UTF-8 character: a run of byte-fallback
/// tokens (`<0xE2><0x82><0xAC>` for "€") is held back until a non-byte token or `finish()` ends
/// it, since the library decides between its UTF-8 text and U+FFFD replacements over the whole run.
public struct StreamingDecoder: Sendable {
    private let tokens: TokenTable
    private let specialIDs: Set<Int>
    private let pipeline: DecoderPipeline
    public let skipSpecialTokens: Bool
    /// The pending byte run lives here; everything else is shared, read-only tokenizer data.
    private var state = DecoderPipeline.State()

    init(tokens: TokenTable, specialIDs: Set<Int>, pipeline: DecoderPipeline, skipSpecialTokens: Bool) {
        self.tokens = tokens
        self.specialIDs = specialIDs
        self.pipeline = pipeline
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Whether byte-fallback tokens are waiting for the end of their run.
    public var hasPendingBytes: Bool { state.pendingTokens > 0 }

    /// Feeds one id and returns the text that became final (often the token's text, possibly "").
    /// Ids outside the vocabulary are ignored, as the library's `decode` ignores them.
    public mutating func push(_ id: Int) -> String {
        var output: [UInt8] = []
        push(id, into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    /// Ends the stream: returns the text of a pending byte run, if any.
    public mutating func finish() -> String {
        var output: [UInt8] = []
        state.flush(pipeline, into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    /// Byte-level entry point shared with `Tokenizer.decode`, which avoids a String per id.
    mutating func push(_ id: Int, into output: inout [UInt8]) {
        guard let token = tokens.bytes(of: id) else { return }
        // Skipped special tokens vanish before decoding, so they do not end a byte run.
        if skipSpecialTokens && specialIDs.contains(id) { return }
        state.push(token, pipeline, into: &output)
    }

    mutating func finish(into output: inout [UInt8]) {
        state.flush(pipeline, into: &output)
    }
}
