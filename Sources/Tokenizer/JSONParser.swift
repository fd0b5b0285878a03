import Foundation

/// A strict RFC 8259 parser for the tokenizer files.
///
/// Foundation's `JSONSerialization` builds bridged objects and takes seconds on the 33 MB Gemma
/// `tokenizer.json`; this parser goes straight to `JSONValue` and reports line and column on error.
/// Like serde_json it rejects invalid UTF-8, lone surrogate escapes and trailing garbage.
struct JSONParser {
    /// Deep enough for any tokenizer file; bounded so hostile input cannot overflow the stack.
    static let maximumDepth = 512

    static func parse(_ bytes: [UInt8], file: String) throws -> JSONValue {
        try bytes.withUnsafeBufferPointer { try parse($0, file: file) }
    }

    /// The document in `data`, read in place (not copied into an array first: 33 MB for Gemma's tokenizer.json).
    static func parse(_ data: Data, file: String) throws -> JSONValue {
        try data.withUnsafeBytes { try parse($0.bindMemory(to: UInt8.self), file: file) }
    }

    static func parse(_ buffer: UnsafeBufferPointer<UInt8>, file: String) throws -> JSONValue {
        do {
            var parser = Cursor(bytes: buffer, file: file)
            let validLength = UTF8Bytes.validPrefixLength(buffer)
            if validLength != buffer.count {
                parser.index = validLength
                throw parser.error("invalid UTF-8")
            }
            // A UTF-8 byte order mark is tolerated, as most editors write one.
            if buffer.count >= 3 && buffer[0] == 0xEF && buffer[1] == 0xBB && buffer[2] == 0xBF {
                parser.index = 3
            }
            let value = try parser.parseValue(depth: 0)
            parser.skipWhitespace()
            if parser.index != buffer.count { throw parser.error("unexpected data after the top-level value") }
            return value
        }
    }

    private struct Cursor {
        let bytes: UnsafeBufferPointer<UInt8>
        let file: String
        /// Byte offset of the next unread byte; errors report it as line and column.
        var index = 0

        init(bytes: UnsafeBufferPointer<UInt8>, file: String) {
            self.bytes = bytes
            self.file = file
        }

        /// Line and column are computed only here, on failure, so parsing never tracks them.
        func error(_ reason: String) -> TokenizerError {
            var line = 1
            var lineStart = 0
            for i in 0..<min(index, bytes.count) where bytes[i] == UInt8(ascii: "\n") {
                line += 1
                lineStart = i + 1
            }
            return .malformedJSON(file: file, line: line, column: index - lineStart + 1, reason: reason)
        }

        /// The four whitespace bytes RFC 8259 allows between tokens; nothing else (no comments).
        mutating func skipWhitespace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x0A, 0x0D, 0x09: index += 1
                default: return
                }
            }
        }

        mutating func parseValue(depth: Int) throws -> JSONValue {
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of input") }
            // The first byte decides the value's kind; anything else is an error at that byte.
            switch bytes[index] {
            case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
            case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try parseString())
            case UInt8(ascii: "t"):
                try expectLiteral("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try expectLiteral("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try expectLiteral("null")
                return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
            default: throw error("unexpected character")
            }
        }

        mutating func expectLiteral(_ literal: StaticString) throws {
            let count = literal.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw error("unexpected end of input") }
            let base = literal.utf8Start
            for k in 0..<count where bytes[index + k] != base[k] {
                throw error("invalid literal")
            }
            index += count
        }

        /// Keys stay in document order; duplicates are kept and resolved by `JSONObject`'s lookup.
        mutating func parseObject(depth: Int) throws -> JSONValue {
            guard depth <= JSONParser.maximumDepth else {
                throw error("nesting deeper than \(JSONParser.maximumDepth)")
            }
            index += 1
            var entries: [(key: String, value: JSONValue)] = []
            skipWhitespace()
            if index < bytes.count && bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .object(JSONObject(entries: entries))
            }
            while true {
                skipWhitespace()
                guard index < bytes.count else { throw error("unexpected end of input in an object") }
                guard bytes[index] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                let key = try parseString()
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                let value = try parseValue(depth: depth)
                entries.append((key, value))
                skipWhitespace()
                guard index < bytes.count else { throw error("unexpected end of input in an object") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                } else if bytes[index] == UInt8(ascii: "}") {
                    index += 1
                    return .object(JSONObject(entries: entries))
                } else {
                    throw error("expected ',' or '}'")
                }
            }
        }

        mutating func parseArray(depth: Int) throws -> JSONValue {
            guard depth <= JSONParser.maximumDepth else {
                throw error("nesting deeper than \(JSONParser.maximumDepth)")
            }
            index += 1
            var elements: [JSONValue] = []
            skipWhitespace()
            if index < bytes.count && bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(elements)
            }
            // The first two values wait in locals: an array of exactly two strings (each of Gemma's
            // half million merges) becomes a `stringPair`, without an array of its own.
            var first: JSONValue?
            var second: JSONValue?
            while true {
                let value = try parseValue(depth: depth)
                if first == nil {
                    first = value
                } else if second == nil {
                    second = value
                } else {
                    if elements.isEmpty { elements = [first!, second!] }
                    elements.append(value)
                }
                skipWhitespace()
                guard index < bytes.count else { throw error("unexpected end of input in an array") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                } else if bytes[index] == UInt8(ascii: "]") {
                    index += 1
                    if !elements.isEmpty { return .array(elements) }
                    guard let second else { return .array([first!]) }
                    if case .string(let a) = first!, case .string(let b) = second { return .stringPair(a, b) }
                    return .array([first!, second])
                } else {
                    throw error("expected ',' or ']'")
                }
            }
        }

        mutating func parseString() throws -> String {
            index += 1
            let start = index
            // Fast path: no escapes, so the bytes (already validated as UTF-8) are the string.
            while index < bytes.count {
                let b = bytes[index]
                if b == UInt8(ascii: "\"") {
                    let s = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
                    index += 1
                    return s
                }
                if b == UInt8(ascii: "\\") { break }
                if b < 0x20 { throw error("unescaped control character in a string") }
                index += 1
            }
            // Slow path: copy what was scanned, then unescape the rest byte by byte.
            var out = Array(bytes[start..<index])
            while index < bytes.count {
                let b = bytes[index]
                if b == UInt8(ascii: "\"") {
                    index += 1
                    return String(decoding: out, as: UTF8.self)
                }
                if b < 0x20 { throw error("unescaped control character in a string") }
                if b != UInt8(ascii: "\\") {
                    out.append(b)
                    index += 1
                    continue
                }
                index += 1
                guard index < bytes.count else { break }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    // Scalars outside the BMP arrive as a UTF-16 surrogate pair of two escapes.
                    var scalar = try parseHex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
                            bytes[index + 1] == UInt8(ascii: "u")
                        else { throw error("lone leading surrogate in a \\u escape") }
                        index += 2
                        let low = try parseHex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw error("invalid trailing surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        throw error("lone trailing surrogate in a \\u escape")
                    }
                    out.append(contentsOf: Array(String(Unicode.Scalar(scalar)!).utf8))
                default:
                    index -= 1
                    throw error("invalid escape")
                }
            }
            throw error("unterminated string")
        }

        mutating func parseHex4() throws -> UInt32 {
            guard index + 4 <= bytes.count else { throw error("unexpected end of input in a \\u escape") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let b = bytes[index]
                let digit: UInt8
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
                default: throw error("invalid hex digit in a \\u escape")
                }
                value = value << 4 | UInt32(digit)
                index += 1
            }
            return value
        }

        /// Validates the RFC 8259 number grammar (no leading zeros, digits after `.` and `e`)
        /// before converting, since `Double(String)` accepts forms JSON does not.
        mutating func parseNumber() throws -> Double {
            let start = index
            var isInteger = true
            if bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count else { throw error("unexpected end of input in a number") }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
            } else if isDigit(bytes[index]) {
                while index < bytes.count && isDigit(bytes[index]) { index += 1 }
            } else {
                throw error("invalid number")
            }
            if index < bytes.count && bytes[index] == UInt8(ascii: ".") {
                isInteger = false
                index += 1
                guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
                while index < bytes.count && isDigit(bytes[index]) { index += 1 }
            }
            if index < bytes.count && (bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E")) {
                isInteger = false
                index += 1
                if index < bytes.count && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) {
                    index += 1
                }
                guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
                while index < bytes.count && isDigit(bytes[index]) { index += 1 }
            }
            // Ids dominate the file, so short integers skip the string round trip.
            if isInteger && index - start <= 15 {
                var value = 0
                var negative = false
                for i in start..<index {
                    if bytes[i] == UInt8(ascii: "-") {
                        negative = true
                    } else {
                        value = value * 10 + Int(bytes[i] - 48)
                    }
                }
                return Double(negative ? -value : value)
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
            guard let value = Double(text) else { throw error("invalid number") }
            return value
        }

        @inline(__always)
        func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
    }
}

/// Strict JSON validation for other modules (the server checks request bodies with it before
/// decoding them: Foundation's decoder accepts trailing commas and invalid UTF-8 in ignored fields).
public enum StrictJSON {
    /// nil when `bytes` is one valid JSON value (RFC 8259, UTF-8, nesting at most 512 deep);
    /// otherwise where and why it is not.
    public static func problem(in bytes: [UInt8]) -> String? {
        do {
            _ = try JSONParser.parse(bytes, file: "the request body")
            return nil
        } catch let TokenizerError.malformedJSON(_, line, column, reason) {
            return "line \(line), column \(column): \(reason)"
        } catch {
            return "\(error)"
        }
    }
}
