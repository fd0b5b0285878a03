/// Finds added tokens in text before the model runs, as the library's `AddedVocabulary` does.
///
/// Two matchers, like the library's two Aho-Corasick automata: tokens with `normalized: false` are
/// found in the raw input first; tokens with `normalized: true` are then found, as normalized
/// patterns, in the normalized text between those matches. Both use leftmost-longest semantics.
struct AddedVocabulary: Sendable {
    /// A piece of the input: plain text still to be tokenized, or an added token's id.
    enum Segment: Equatable {
        case text(Range<Int>)
        case token(Int32)
    }

    /// The added tokens in file order; matchers refer to them by index.
    let tokens: [AddedToken]
    let rawMatcher: TokenMatcher
    let normalizedMatcher: TokenMatcher

    /// `tokens` must already carry their final ids; `normalizer` normalizes `normalized: true` patterns.
    init(tokens: [AddedToken], normalizer: Normalizer) {
        // Empty contents never match, as `add_tokens` ignores them.
        let usable = tokens.filter { !$0.content.isEmpty }
        self.tokens = usable
        var raw: [(pattern: [UInt8], token: Int)] = []
        var normalized: [(pattern: [UInt8], token: Int)] = []
        for (index, token) in usable.enumerated() {
            if token.normalized {
                normalized.append((normalizer.normalize(Array(token.content.utf8)[...]), index))
            } else {
                raw.append((Array(token.content.utf8), index))
            }
        }
        rawMatcher = TokenMatcher(patterns: raw)
        normalizedMatcher = TokenMatcher(patterns: normalized)
    }

    var hasNormalizedTokens: Bool { !normalizedMatcher.isEmpty }

    /// The library's `find_matches`: matched tokens (widened by `lstrip`/`rstrip`, filtered by
    /// `single_word`) interleaved with the text between them. With `parseSpecialTokens` false,
    /// matches of special tokens are skipped and stay text (`encode_special_tokens` in the library).
    func split(_ text: [UInt8], using matcher: TokenMatcher, parseSpecialTokens: Bool) -> [Segment] {
        guard !matcher.isEmpty else { return [.text(0..<text.count)] }
        return text.withUnsafeBufferPointer { bytes in
            // `startOffset` is where unmatched text resumes; rstrip can push it past the next
            // match's start, in which case that match's text is not emitted twice (as upstream).
            var segments: [Segment] = []
            var startOffset = 0
            for match in matcher.matches(in: bytes) {
                let token = tokens[match.token]
                var start = match.range.lowerBound
                var stop = match.range.upperBound
                // A skipped special token leaves its text to BPE; the automaton is not re-run, so
                // a shorter token inside it is not found either (same as upstream).
                if !parseSpecialTokens && token.special { continue }
                if token.singleWord {
                    let startSpace =
                        start == 0 || !Self.isWordScalar(UTF8Bytes.scalar(endingAt: start, in: bytes).value)
                    let stopSpace =
                        stop == bytes.count || !Self.isWordScalar(UTF8Bytes.scalar(at: stop, in: bytes).value)
                    if !startSpace || !stopSpace { continue }
                }
                if token.lstrip {
                    // `\s*$` on the text before the match; never reach back into the previous match.
                    var newStart = start
                    while newStart > 0 {
                        let previous = UTF8Bytes.scalar(endingAt: newStart, in: bytes)
                        guard Self.isWhitespaceScalar(previous.value) else { break }
                        newStart -= previous.width
                    }
                    start = max(newStart, startOffset)
                }
                if token.rstrip {
                    // `^\s*` on the text after the match.
                    while stop < bytes.count {
                        let next = UTF8Bytes.scalar(at: stop, in: bytes)
                        guard Self.isWhitespaceScalar(next.value) else { break }
                        stop += next.width
                    }
                }
                if startOffset < start { segments.append(.text(startOffset..<start)) }
                segments.append(.token(Int32(token.id)))
                startOffset = stop
            }
            if startOffset < bytes.count { segments.append(.text(startOffset..<bytes.count)) }
            return segments
        }
    }

    /// Rust regex `\w` (Unicode): Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
    static func isWordScalar(_ value: UInt32) -> Bool {
        guard let scalar = Unicode.Scalar(value) else { return false }
        let properties = scalar.properties
        if properties.isAlphabetic || properties.isJoinControl { return true }
        switch properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    /// Rust regex `\s` (Unicode): the White_Space property.
    static func isWhitespaceScalar(_ value: UInt32) -> Bool {
        Unicode.Scalar(value)?.properties.isWhitespace ?? false
    }
}
