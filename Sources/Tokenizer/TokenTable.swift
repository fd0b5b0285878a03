/// Id -> token text as UTF-8, stored flat: one byte buffer plus offsets, instead of 262k Strings.
struct TokenTable: Sendable {
    private let bytes: [UInt8]
    /// `offsets[id] ..< offsets[id + 1]` is the token; equal offsets with `present[id] == false` is a hole.
    private let offsets: [Int32]
    private let present: [Bool]

    /// The vocabulary's tokens by id, with `overrides`' texts for their ids instead (a text set
    /// twice for one id: the later). Ids need not be contiguous; gaps become holes so any id
    /// indexes directly.
    init(_ vocabulary: Vocabulary, replacing overrides: [Int32: String]) {
        let count = Int(max(vocabulary.ids.max() ?? -1, overrides.keys.max() ?? -1)) + 1
        var texts = [String?](repeating: nil, count: count)
        for (token, id) in vocabulary.entries { texts[Int(id)] = token }
        for (id, token) in overrides { texts[Int(id)] = token }
        var bytes: [UInt8] = []
        var offsets: [Int32] = [0]
        offsets.reserveCapacity(count + 1)
        var present: [Bool] = []
        present.reserveCapacity(count)
        for text in texts {
            if let text { bytes.append(contentsOf: text.utf8) }
            offsets.append(Int32(bytes.count))
            present.append(text != nil)
        }
        self.bytes = bytes
        self.offsets = offsets
        self.present = present
    }

    /// One past the largest id.
    var count: Int { present.count }

    func contains(_ id: Int) -> Bool { id >= 0 && id < present.count && present[id] }

    func bytes(of id: Int) -> ArraySlice<UInt8>? {
        guard contains(id) else { return nil }
        return bytes[Int(offsets[id])..<Int(offsets[id + 1])]
    }

    func string(of id: Int) -> String? {
        bytes(of: id).map { String(decoding: $0, as: UTF8.self) }
    }
}
