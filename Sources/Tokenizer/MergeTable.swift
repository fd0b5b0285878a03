/// The BPE merge map `(left id, right id) -> (rank, merged id)` as an open-addressing hash table.
///
/// Gemma 3 has 514,906 merges and encoding does one or two lookups per merge; a flat table of
/// `UInt64` keys with a multiplicative hash avoids `Dictionary`'s per-lookup SipHash cost.
struct MergeTable: Sendable {
    /// No real key has both halves all ones: ids are below `Int32.max`.
    private static let empty = UInt64.max
    private var keys: [UInt64]
    private var values: [UInt64]
    private let mask: Int
    private(set) var count = 0

    init(minimumCapacity: Int) {
        var capacity = 16
        while capacity < minimumCapacity * 2 { capacity <<= 1 }
        keys = [UInt64](repeating: Self.empty, count: capacity)
        values = [UInt64](repeating: 0, count: capacity)
        mask = capacity - 1
    }

    @inline(__always)
    private static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    /// Fibonacci hashing: the multiply mixes both ids into the high bits, which pick the slot.
    @inline(__always)
    private func slot(for key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 40) & mask
    }

    /// Inserts or overwrites: a pair listed twice keeps its last rank, like collecting into a `HashMap`.
    mutating func insert(left: Int32, right: Int32, rank: UInt32, merged: Int32) {
        let key = Self.key(left, right)
        var i = slot(for: key)
        while keys[i] != Self.empty && keys[i] != key { i = (i + 1) & mask }
        if keys[i] == Self.empty { count += 1 }
        keys[i] = key
        values[i] = UInt64(rank) << 32 | UInt64(UInt32(bitPattern: merged))
    }

    /// `(rank, merged id)` for the pair, or nil when the pair never merges.
    @inline(__always)
    func lookup(_ left: Int32, _ right: Int32) -> (rank: UInt32, merged: Int32)? {
        let key = Self.key(left, right)
        var i = slot(for: key)
        while true {
            let found = keys[i]
            if found == key {
                let value = values[i]
                return (UInt32(truncatingIfNeeded: value >> 32), Int32(bitPattern: UInt32(truncatingIfNeeded: value)))
            }
            if found == Self.empty { return nil }
            i = (i + 1) & mask
        }
    }
}
