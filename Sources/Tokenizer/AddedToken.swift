/// One entry of `added_tokens` in tokenizer.json: text matched verbatim before the model runs.
public struct AddedToken: Sendable, Equatable {
    /// The id in tokenizer.json, replaced by the model's id for the same text if it has one.
    public let id: Int
    /// The exact text matched in the input.
    public let content: String
    /// Only match when not inside a word (`\w` on neither side).
    public let singleWord: Bool
    /// Also swallow the whitespace to the left of the match.
    public let lstrip: Bool
    /// Also swallow the whitespace to the right of the match.
    public let rstrip: Bool
    /// Match against the normalized text (with a normalized pattern) instead of the raw input.
    public let normalized: Bool
    /// Special tokens are the ones `decode(skipSpecialTokens: true)` drops.
    public let special: Bool

    public init(
        id: Int, content: String, singleWord: Bool = false, lstrip: Bool = false, rstrip: Bool = false,
        normalized: Bool = false, special: Bool = true
    ) {
        self.id = id
        self.content = content
        self.singleWord = singleWord
        self.lstrip = lstrip
        self.rstrip = rstrip
        self.normalized = normalized
        self.special = special
    }

    init(json: JSONFields) throws {
        // `normalized` defaults to `!special`, as `AddedToken::from` in the library.
        let special = try json.bool("special", default: false)
        self.init(
            id: try json.int("id"), content: try json.string("content"),
            singleWord: try json.bool("single_word", default: false), lstrip: try json.bool("lstrip", default: false),
            rstrip: try json.bool("rstrip", default: false), normalized: try json.bool("normalized", default: !special),
            special: special)
    }
}
