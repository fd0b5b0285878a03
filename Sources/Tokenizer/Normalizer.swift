/// The `normalizer` of tokenizer.json, applied to the text between added tokens.
///
/// Gemma 3 declares a single `Replace` of `" "` by `"▁"` (U+2581): the SentencePiece whitespace
/// marker, which makes every space part of the following (or trailing) token.
struct Normalizer: Sendable {
    /// One literal replacement, run over the whole text left to right without overlaps, as
    /// `NormalizedString::replace` does with a `String` pattern.
    struct Replacement: Sendable {
        let pattern: [UInt8]
        let content: [UInt8]
    }

    let replacements: [Replacement]

    static let supportedTypes = ["Replace", "Sequence"]

    init(replacements: [Replacement]) {
        self.replacements = replacements
    }

    /// Reads `normalizer`; `nil` (JSON `null`) is the identity.
    init(json: JSONFields?) throws {
        guard let json else {
            self.init(replacements: [])
            return
        }
        var steps: [Replacement] = []
        try Self.collect(json, into: &steps)
        self.init(replacements: steps)
    }

    private static func collect(_ json: JSONFields, into steps: inout [Replacement]) throws {
        let type = try json.string("type")
        switch type {
        case "Sequence":
            for (index, element) in try json.array("normalizers").enumerated() {
                try collect(try json.element(element, of: "normalizers", at: index), into: &steps)
            }
        case "Replace":
            let (pattern, content) = try StringPattern.replaceArguments(json, component: "normalizer")
            steps.append(Replacement(pattern: pattern, content: content))
        default:
            throw TokenizerError.unsupportedComponent(component: "normalizer", type: type, supported: supportedTypes)
        }
    }

    var isIdentity: Bool { replacements.isEmpty }

    /// Steps run in order over the whole piece, as `Sequence` does in the library.
    func normalize(_ text: ArraySlice<UInt8>) -> [UInt8] {
        var current = Array(text)
        for step in replacements {
            current = UTF8Bytes.replacing(step.pattern, with: step.content, in: current[...])
        }
        return current
    }
}
