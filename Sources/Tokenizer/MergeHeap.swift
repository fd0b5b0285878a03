/// A binary min-heap of candidate merges ordered by (rank, position): the order the library's
/// `BinaryHeap<Merge>` pops them, lowest rank first and the leftmost position on ties.
struct MergeHeap {
    struct Entry {
        /// `rank << 32 | position`, so one integer comparison orders entries.
        let key: UInt64
        let merged: Int32

        var position: Int32 { Int32(truncatingIfNeeded: key & 0xFFFF_FFFF) }
    }

    /// Implicit binary tree: children of `i` are `2i + 1` and `2i + 2`; the minimum is at 0.
    private var entries: [Entry] = []

    mutating func reserve(_ capacity: Int) { entries.reserveCapacity(capacity) }

    mutating func push(rank: UInt32, position: Int32, merged: Int32) {
        entries.append(Entry(key: UInt64(rank) << 32 | UInt64(UInt32(bitPattern: position)), merged: merged))
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if entries[parent].key <= entries[child].key { break }
            entries.swapAt(parent, child)
            child = parent
        }
    }

    mutating func pop() -> Entry? {
        guard let last = entries.popLast() else { return nil }
        guard !entries.isEmpty else { return last }
        let top = entries[0]
        entries[0] = last
        var parent = 0
        let count = entries.count
        while true {
            let left = 2 * parent + 1
            if left >= count { break }
            let right = left + 1
            let smallest = right < count && entries[right].key < entries[left].key ? right : left
            if entries[parent].key <= entries[smallest].key { break }
            entries.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
