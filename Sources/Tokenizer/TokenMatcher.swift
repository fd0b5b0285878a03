/// A byte trie over added-token contents with leftmost-longest, non-overlapping matching: the
/// `MatchKind::LeftmostLongest` Aho-Corasick search the library uses, done by walking the trie
/// from each position (added tokens are short, so this stays linear in practice).
struct TokenMatcher: Sendable {
    /// Node reached from the root by each first byte, or -1: rejects most positions in one load.
    private var root = [Int32](repeating: -1, count: 256)
    /// Children of non-root nodes, keyed by `node << 8 | byte`.
    private var edges: [UInt64: Int32] = [:]
    /// Per node: the index of the token whose pattern ends there, or -1. Index 0 is the root.
    private var terminal: [Int32] = [-1]

    private(set) var isEmpty = true

    init(patterns: [(pattern: [UInt8], token: Int)]) {
        for (pattern, token) in patterns where !pattern.isEmpty {
            isEmpty = false
            var node: Int32 = 0
            for (depth, byte) in pattern.enumerated() {
                let existing = depth == 0 ? root[Int(byte)] : edges[UInt64(node) << 8 | UInt64(byte), default: -1]
                if existing >= 0 {
                    node = existing
                    continue
                }
                let created = Int32(terminal.count)
                terminal.append(-1)
                if depth == 0 { root[Int(byte)] = created } else { edges[UInt64(node) << 8 | UInt64(byte)] = created }
                node = created
            }
            // The first token declared with a given content wins, as duplicates are ignored on add.
            if terminal[Int(node)] < 0 { terminal[Int(node)] = Int32(token) }
        }
    }

    struct Match {
        let range: Range<Int>
        let token: Int
    }

    /// Non-overlapping matches, left to right. Patterns are valid UTF-8, so a match can only
    /// start on a scalar boundary and every range is a valid slice.
    func matches(in bytes: UnsafeBufferPointer<UInt8>) -> [Match] {
        var result: [Match] = []
        var i = 0
        while i < bytes.count {
            var node = root[Int(bytes[i])]
            if node < 0 {
                i += 1
                continue
            }
            var best: Match?
            var j = i + 1
            while true {
                let token = terminal[Int(node)]
                if token >= 0 { best = Match(range: i..<j, token: Int(token)) }
                guard j < bytes.count, let child = edges[UInt64(node) << 8 | UInt64(bytes[j])] else { break }
                node = child
                j += 1
            }
            if let best {
                result.append(best)
                i = best.range.upperBound
            } else {
                i += 1
            }
        }
        return result
    }
}
