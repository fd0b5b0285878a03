import Foundation

/// Token text -> id, compared and hashed by exact UTF-8 bytes as the library compares tokens (why not
/// by `String` equality: see `TokenKey`). An open-addressing table over one byte arena with an FNV-1a
/// hash: loading Gemma 3's tokenizer resolves 514,906 merges by three lookups each (left, right and
/// their concatenation), which took a third of a second through `Dictionary<TokenKey, Int32>`'s
/// SipHash and the concatenated `String`s.
struct Vocabulary: Sendable {
    /// Entry i is `texts[i]` with id `ids[i]`, in the order texts were first set.
    private(set) var texts: [String] = []
    private(set) var ids: [Int32] = []
    /// Every entry's bytes, one after another.
    private var arena: [UInt8] = []
    private var slots: [Slot]
    private var mask: Int

    /// What a lookup needs of an entry in its slot itself, so that a probe reads one cache line and
    /// a hit one more (the bytes): a table of indices into arrays took four misses a lookup.
    private struct Slot {
        /// The hash's low 32 bits; meaningless in an empty slot.
        var tag: UInt32 = 0
        /// Entry index + 1; 0: empty.
        var entry: Int32 = 0
        var start: UInt32 = 0
        var length: UInt32 = 0
    }

    init(minimumCapacity: Int = 0) {
        var capacity = 16
        while capacity < minimumCapacity * 2 { capacity <<= 1 }
        slots = [Slot](repeating: Slot(), count: capacity)
        mask = capacity - 1
        texts.reserveCapacity(minimumCapacity)
        ids.reserveCapacity(minimumCapacity)
    }

    var count: Int { texts.count }

    /// The tokens and their ids, in the order they were first set.
    var entries: Zip2Sequence<[String], [Int32]> { zip(texts, ids) }

    /// Sets the id of `text`; a text set twice keeps its last id, as a JSON object's duplicate key
    /// does when collected into a map.
    mutating func set(_ id: Int32, for text: String) {
        var utf8 = text
        utf8.withUTF8 { bytes in
            let hash = Self.hash(bytes, Self.offsetBasis)
            if let slot = find(hash, bytes, UnsafeBufferPointer(start: nil, count: 0)) {
                ids[Int(slots[slot].entry) - 1] = id
                return
            }
            insert(hash: hash, text: text, bytes: bytes, id: id)
        }
    }

    /// Adds `text` with `id` unless it is already present (the first id wins).
    mutating func setIfAbsent(_ id: Int32, for text: String) {
        if self[text] == nil { set(id, for: text) }
    }

    subscript(text: String) -> Int32? {
        var text = text
        return text.withUTF8 { self[$0] }
    }

    subscript(bytes: UnsafeBufferPointer<UInt8>) -> Int32? {
        id(find(Self.hash(bytes, Self.offsetBasis), bytes, UnsafeBufferPointer(start: nil, count: 0)))
    }

    subscript(bytes: ArraySlice<UInt8>) -> Int32? {
        bytes.withUnsafeBufferPointer { self[$0] }
    }

    /// The id of the token spelled `left` then `right`, without building that string.
    func id(concatenating left: String, _ right: String) -> Int32? {
        var left = left
        var right = right
        return left.withUTF8 { l in
            right.withUTF8 { r in id(find(Self.hash(r, Self.hash(l, Self.offsetBasis)), l, r)) }
        }
    }

    // MARK: - Table

    private static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325

    /// FNV-1a over the bytes, continuing from `state` (so a concatenation hashes in two parts).
    @inline(__always)
    private static func hash(_ bytes: UnsafeBufferPointer<UInt8>, _ state: UInt64) -> UInt64 {
        var h = state
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// The slot a hash starts probing at: the multiply spreads FNV's weak low bits into the high
    /// ones, which pick the slot (as `MergeTable`).
    @inline(__always)
    private func home(_ hash: UInt64) -> Int {
        Int(truncatingIfNeeded: (hash &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }

    private func id(_ slot: Int?) -> Int32? {
        slot.map { ids[Int(slots[$0].entry) - 1] }
    }

    /// The slot holding the text `first` then `second`, or nil.
    @inline(__always)
    private func find(_ hash: UInt64, _ first: UnsafeBufferPointer<UInt8>, _ second: UnsafeBufferPointer<UInt8>) -> Int? {
        let tag = UInt32(truncatingIfNeeded: hash)
        let length = first.count + second.count
        return slots.withUnsafeBufferPointer { table in
            arena.withUnsafeBufferPointer { a in
                var i = home(hash)
                while true {
                    let slot = table[i]
                    if slot.entry == 0 { return nil }
                    if slot.tag == tag && Int(slot.length) == length {
                        let at = a.baseAddress! + Int(slot.start)
                        if Self.same(at, first) && Self.same(at + first.count, second) { return i }
                    }
                    i = (i + 1) & mask
                }
            }
        }
    }

    @inline(__always)
    private static func same(_ at: UnsafePointer<UInt8>, _ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        bytes.isEmpty || memcmp(at, bytes.baseAddress!, bytes.count) == 0
    }

    private mutating func insert(hash: UInt64, text: String, bytes: UnsafeBufferPointer<UInt8>, id: Int32) {
        precondition(arena.count + bytes.count <= Int(UInt32.max) && texts.count < Int(Int32.max) - 1, "vocabulary too large")
        if (texts.count + 1) * 2 > slots.count { grow() }
        let slot = Slot(
            tag: UInt32(truncatingIfNeeded: hash), entry: Int32(texts.count + 1), start: UInt32(arena.count),
            length: UInt32(bytes.count))
        texts.append(text)
        ids.append(id)
        arena.append(contentsOf: bytes)
        place(slot, hash: hash)
    }

    private mutating func place(_ slot: Slot, hash: UInt64) {
        var i = home(hash)
        while slots[i].entry != 0 { i = (i + 1) & mask }
        slots[i] = slot
    }

    /// Doubles the table and places every entry again (their hashes from their bytes).
    private mutating func grow() {
        let old = slots
        slots = [Slot](repeating: Slot(), count: old.count * 2)
        mask = slots.count - 1
        for slot in old where slot.entry != 0 {
            let hash = arena.withUnsafeBufferPointer {
                Self.hash(UnsafeBufferPointer(rebasing: $0[Int(slot.start)..<Int(slot.start + slot.length)]), Self.offsetBasis)
            }
            place(slot, hash: hash)
        }
    }
}
