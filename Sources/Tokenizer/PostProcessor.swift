/// The `post_processor` of tokenizer.json for a single sequence: what `add_special_tokens` adds.
///
/// Gemma 3 declares `TemplateProcessing` with `single = [<bos>, $A]`, so encoding with special
/// tokens prepends id 2. Only the single-sequence template is used; pair templates are not encoded.
struct PostProcessor: Sendable {
    /// Ids before and after the sequence.
    let prefix: [Int32]
    let suffix: [Int32]

    static let supportedTypes = ["TemplateProcessing"]

    init(prefix: [Int32], suffix: [Int32]) {
        self.prefix = prefix
        self.suffix = suffix
    }

    /// Reads `post_processor`; `nil` (JSON `null`) adds nothing.
    init(json: JSONFields?) throws {
        guard let json else {
            self.init(prefix: [], suffix: [])
            return
        }
        let type = try json.string("type")
        guard type == "TemplateProcessing" else {
            throw TokenizerError.unsupportedComponent(
                component: "post_processor", type: type, supported: Self.supportedTypes)
        }
        let specialTokens = try json.optionalObject("special_tokens")
        var prefix: [Int32] = []
        var suffix: [Int32] = []
        // Everything before `$A` is prepended and everything after it appended; type ids are
        // irrelevant because only ids are returned.
        var seenSequence = false
        for (index, element) in try json.array("single").enumerated() {
            let piece = try json.element(element, of: "single", at: index)
            if piece.value("Sequence") != nil {
                guard !seenSequence else { throw piece.invalid("Sequence", "present once in the single template") }
                seenSequence = true
                continue
            }
            let special = try piece.object("SpecialToken")
            let name = try special.string("id")
            guard let entry = try specialTokens?.optionalObject(name) else {
                throw TokenizerError.missingField(file: json.file, path: "\(json.pathTo("special_tokens")).\(name)")
            }
            var ids: [Int32] = []
            for (idIndex, id) in try entry.array("ids").enumerated() {
                guard let value = id.intValue, value >= 0, value < Int(Int32.max) else {
                    throw TokenizerError.invalidField(
                        file: json.file, path: "\(entry.pathTo("ids"))[\(idIndex)]", expected: "a token id")
                }
                ids.append(Int32(value))
            }
            if seenSequence { suffix += ids } else { prefix += ids }
        }
        guard seenSequence else { throw json.invalid("single", "a template containing the Sequence") }
        self.init(prefix: prefix, suffix: suffix)
    }
}
