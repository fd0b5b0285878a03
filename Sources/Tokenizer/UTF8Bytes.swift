/// Byte-level string helpers.
///
/// The tokenizers library works on UTF-8 bytes and Unicode scalars (Rust `char`), never on grapheme
/// clusters. Swift's `String` APIs compare by `Character` with canonical equivalence, so `" \u{301}"`
/// would not contain `" "`; every matching step here therefore runs on `[UInt8]`.
enum UTF8Bytes {
    /// The UTF-8 encoding of U+FFFD, which the ByteFallback decoder emits per invalid byte token.
    static let replacementCharacter: [UInt8] = [0xEF, 0xBF, 0xBD]

    /// Length of the valid UTF-8 prefix: equal to `bytes.count` when everything is valid.
    ///
    /// Mirrors Rust's `str::from_utf8` (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
    static func validPrefixLength(_ bytes: UnsafeBufferPointer<UInt8>) -> Int {
        var i = 0
        let n = bytes.count
        let raw = UnsafeRawPointer(bytes.baseAddress)
        while i < n {
            let b0 = bytes[i]
            if b0 < 0x80 {
                // Runs of ASCII (most of a JSON file) eight bytes at a time.
                i += 1
                while i + 8 <= n, raw!.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                    i += 8
                }
                continue
            }
            // Table 3-7 of the Unicode standard: the second byte's range depends on the lead byte.
            let width: Int
            var lower: UInt8 = 0x80
            var upper: UInt8 = 0xBF
            switch b0 {
            case 0xC2...0xDF: width = 2
            case 0xE0:
                width = 3
                lower = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: width = 3
            case 0xED:
                width = 3
                upper = 0x9F
            case 0xF0:
                width = 4
                lower = 0x90
            case 0xF1...0xF3: width = 4
            case 0xF4:
                width = 4
                upper = 0x8F
            default: return i
            }
            guard i + width <= n else { return i }
            let b1 = bytes[i + 1]
            guard b1 >= lower && b1 <= upper else { return i }
            for k in 2..<width where bytes[i + k] & 0xC0 != 0x80 {
                return i
            }
            i += width
        }
        return n
    }

    /// Whether all of `bytes` is valid UTF-8, which decides ByteFallback's output for a run.
    static func isValid(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBufferPointer { validPrefixLength($0) == $0.count }
    }

    /// Decodes the scalar starting at `i` of already-validated UTF-8, returning it and its width.
    @inline(__always)
    static func scalar(at i: Int, in bytes: UnsafeBufferPointer<UInt8>) -> (value: UInt32, width: Int) {
        let b0 = UInt32(bytes[i])
        if b0 < 0x80 { return (b0, 1) }
        if b0 < 0xE0 { return ((b0 & 0x1F) << 6 | UInt32(bytes[i + 1] & 0x3F), 2) }
        if b0 < 0xF0 {
            return ((b0 & 0x0F) << 12 | UInt32(bytes[i + 1] & 0x3F) << 6 | UInt32(bytes[i + 2] & 0x3F), 3)
        }
        let value =
            (b0 & 0x07) << 18 | UInt32(bytes[i + 1] & 0x3F) << 12 | UInt32(bytes[i + 2] & 0x3F) << 6
            | UInt32(bytes[i + 3] & 0x3F)
        return (value, 4)
    }

    /// The scalar that ends right before byte offset `end` of valid UTF-8.
    static func scalar(endingAt end: Int, in bytes: UnsafeBufferPointer<UInt8>) -> (value: UInt32, width: Int) {
        var start = end - 1
        while start > 0 && bytes[start] & 0xC0 == 0x80 { start -= 1 }
        return scalar(at: start, in: bytes)
    }

    /// Non-overlapping occurrences of `pattern`, left to right, as the library's literal-string
    /// `Pattern::find_matches` reports them. An empty pattern matches nowhere.
    static func occurrences(of pattern: [UInt8], in text: ArraySlice<UInt8>) -> [Range<Int>] {
        guard let first = pattern.first, pattern.count <= text.count else { return [] }
        var result: [Range<Int>] = []
        var i = text.startIndex
        let lastStart = text.endIndex - pattern.count
        while i <= lastStart {
            if text[i] == first && text[i..<(i + pattern.count)].elementsEqual(pattern) {
                result.append(i..<(i + pattern.count))
                i += pattern.count
            } else {
                i += 1
            }
        }
        return result
    }

    /// Replaces every non-overlapping occurrence of `pattern` (left to right) by `content`.
    static func replacing(_ pattern: [UInt8], with content: [UInt8], in text: ArraySlice<UInt8>) -> [UInt8] {
        let matches = occurrences(of: pattern, in: text)
        if matches.isEmpty { return Array(text) }
        var out: [UInt8] = []
        out.reserveCapacity(text.count + matches.count * max(0, content.count - pattern.count))
        var cursor = text.startIndex
        for match in matches {
            out.append(contentsOf: text[cursor..<match.lowerBound])
            out.append(contentsOf: content)
            cursor = match.upperBound
        }
        out.append(contentsOf: text[cursor...])
        return out
    }
}
