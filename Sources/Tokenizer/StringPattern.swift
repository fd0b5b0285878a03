/// Reads the `pattern` field shared by `Replace` and `Split` components.
///
/// The library accepts `{"String": "..."}` (a literal) or `{"Regex": "..."}` (Oniguruma syntax).
/// Gemma 3 only uses literals; a regex is refused by name rather than approximated.
enum StringPattern {
    static func literal(_ json: JSONFields, component: String) throws -> [UInt8] {
        let pattern = try json.object("pattern")
        // An empty literal would match between every scalar in the library; nothing uses that.
        if let literal = pattern.value("String") {
            guard let s = literal.stringValue else { throw pattern.invalid("String", "a string") }
            guard !s.isEmpty else { throw pattern.invalid("String", "a non-empty string") }
            return Array(s.utf8)
        }
        if let regex = pattern.value("Regex") {
            let source = regex.stringValue ?? "?"
            throw TokenizerError.unsupportedOption(
                component: component, option: "pattern", value: "Regex \(source.debugDescription)")
        }
        throw TokenizerError.invalidField(
            file: json.file, path: pattern.path, expected: "{\"String\": ...} or {\"Regex\": ...}")
    }

    /// `pattern` and `content` of a `Replace` normalizer or decoder.
    static func replaceArguments(_ json: JSONFields, component: String) throws -> (pattern: [UInt8], content: [UInt8]) {
        let pattern = try literal(json, component: "\(component) Replace")
        guard let content = json.object["content"]?.stringValue else {
            throw json.invalid("content", "a string")
        }
        return (pattern, Array(content.utf8))
    }
}
