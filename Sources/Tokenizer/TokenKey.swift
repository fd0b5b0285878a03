/// A vocabulary key that compares and hashes by exact UTF-8 bytes.
///
/// Swift `String` equality and hashing use canonical equivalence, so as dictionary keys `";"`
/// (U+037E) and `";"`, or `"ख़"` precomposed and decomposed, collapse into one entry. Gemma's
/// vocabulary holds such pairs as distinct tokens, and the library compares bytes.
struct TokenKey: Hashable, Sendable {
    let text: String

    init(_ text: String) {
        self.text = text
    }

    /// From UTF-8 bytes already known to be valid (slices of validated input).
    init(_ bytes: some Collection<UInt8>) {
        self.text = String(decoding: bytes, as: UTF8.self)
    }

    static func == (lhs: TokenKey, rhs: TokenKey) -> Bool {
        var left = lhs.text
        var right = rhs.text
        return left.withUTF8 { l in right.withUTF8 { r in l.count == r.count && l.elementsEqual(r) } }
    }

    func hash(into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

extension String {
    /// Byte-exact equality, as Rust and Python compare strings.
    func isIdentical(to other: String) -> Bool { utf8.elementsEqual(other.utf8) }
}
