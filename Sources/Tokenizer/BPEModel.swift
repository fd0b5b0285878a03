import Foundation

/// The `model` of tokenizer.json: byte-pair encoding as the library's `BPE` model does it.
///
/// A word starts as one symbol per Unicode scalar (vocabulary id, else `<0xNN>` byte tokens with
/// `byte_fallback`, else the unk token); then the adjacent pair with the lowest merge rank is merged,
/// leftmost first on ties, until no pair merges. This mirrors `Word::merge_all`: a binary heap of
/// candidate merges over a linked list of symbols, O(n log n) in the word length.
struct BPEModel: Sendable {
    let vocab: Vocabulary
    let merges: MergeTable
    let unknownID: Int32?
    let fuseUnknown: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool
    /// Ids of single-scalar tokens below U+10000, -1 when absent: most lookups are one array load.
    private let basicScalarIDs: [Int32]
    private let otherScalarIDs: [UInt32: Int32]
    /// `<0xNN>` ids by byte value, -1 when absent.
    private let byteIDs: [Int32]
    private let cache = BPECache()

    static let supportedTypes = ["BPE"]

    init(json: JSONFields) throws {
        // Files from older library versions may omit `type`; they are read as BPE, the only model here.
        let type = try json.optionalString("type") ?? "BPE"
        guard type == "BPE" else {
            throw TokenizerError.unsupportedComponent(component: "model", type: type, supported: Self.supportedTypes)
        }
        // Dropout makes encoding random and the prefix/suffix options change merge semantics;
        // Gemma 3 uses none of them, so they are refused rather than half-implemented.
        if let dropout = json.value("dropout"), case .number(let p) = dropout, p != 0 {
            throw TokenizerError.unsupportedOption(component: "model BPE", option: "dropout", value: "\(p)")
        }
        for option in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let value = try json.optionalString(option), !value.isEmpty {
                throw TokenizerError.unsupportedOption(
                    component: "model BPE", option: option, value: value.debugDescription)
            }
        }

        guard let vocabObject = try json.require("vocab").objectValue else {
            throw json.invalid("vocab", "an object of token -> id")
        }
        var vocab = Vocabulary(minimumCapacity: vocabObject.entries.count)
        for (token, value) in vocabObject.entries {
            guard let id = value.intValue, id >= 0, id < Int(Int32.max) else {
                throw TokenizerError.invalidField(
                    file: json.file, path: "\(json.pathTo("vocab")).\(token.debugDescription)",
                    expected: "a non-negative integer id")
            }
            vocab.set(Int32(id), for: token)
        }

        var merges = MergeTable(minimumCapacity: 0)
        if let mergeList = json.value("merges") {
            guard let list = mergeList.arrayValue else { throw json.invalid("merges", "an array") }
            merges = try Self.mergeTable(list, vocab: vocab, path: { "\(json.pathTo("merges"))[\($0)]" }, file: json.file)
        }

        var unknownID: Int32?
        if let unk = try json.optionalString("unk_token") {
            guard let id = vocab[unk] else {
                throw TokenizerError.tokenNotInVocabulary(token: unk, usedBy: json.pathTo("unk_token"))
            }
            unknownID = id
        }

        self.init(
            vocab: vocab, merges: merges, unknownID: unknownID, fuseUnknown: try json.bool("fuse_unk", default: false),
            byteFallback: try json.bool("byte_fallback", default: false),
            ignoreMerges: try json.bool("ignore_merges", default: false))
    }

    /// The merge list as a table: the rank is the position in the list, as in `BpeBuilder::build`.
    /// The list's ids are looked up on every core (each lookup waits on memory: the vocabulary's
    /// table is megabytes), then placed in rank order, so a pair listed twice keeps its last rank.
    /// A bad entry throws the error the first one in the list would; paths for error messages are
    /// only formatted on failure (there are half a million merges).
    static func mergeTable(_ list: [JSONValue], vocab: Vocabulary, path: (Int) -> String, file: String) throws -> MergeTable {
        let count = list.count
        var resolved = [Int32](repeating: 0, count: count * 3)
        let chunks = max(1, min(ProcessInfo.processInfo.activeProcessorCount, count / 16384, 16))
        var firstBad = [Int](repeating: Int.max, count: chunks)
        resolved.withUnsafeMutableBufferPointer { ids in
            firstBad.withUnsafeMutableBufferPointer { bad in
                let out = UncheckedSendable(ids), failures = UncheckedSendable(bad)
                DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
                    for rank in (count * chunk / chunks)..<(count * (chunk + 1) / chunks) {
                        guard let (left, right) = mergePair(list[rank]), let l = vocab[left], let r = vocab[right],
                            let merged = vocab.id(concatenating: left, right)
                        else {
                            failures.value[chunk] = rank
                            return
                        }
                        out.value[3 * rank] = l
                        out.value[3 * rank + 1] = r
                        out.value[3 * rank + 2] = merged
                    }
                }
            }
        }
        if let rank = firstBad.min(), rank != Int.max {
            guard let (left, right) = mergePair(list[rank]) else {
                throw TokenizerError.invalidField(
                    file: file, path: path(rank), expected: "a pair [\"left\", \"right\"] or a string \"left right\"")
            }
            // No continuing_subword_prefix is allowed, so the merged token is the plain concatenation.
            let missing = vocab[left] == nil ? left : vocab[right] == nil ? right : left + right
            throw TokenizerError.tokenNotInVocabulary(token: missing, usedBy: path(rank))
        }
        var merges = MergeTable(minimumCapacity: count)
        for rank in 0..<count {
            merges.insert(
                left: resolved[3 * rank], right: resolved[3 * rank + 1], rank: UInt32(rank), merged: resolved[3 * rank + 2])
        }
        return merges
    }

    init(vocab: Vocabulary, merges: MergeTable, unknownID: Int32?, fuseUnknown: Bool, byteFallback: Bool, ignoreMerges: Bool) {
        // `merge_word` looks each scalar up as a one-scalar string; precomputing those ids turns
        // the lookup into an array load for the BMP.
        var basic = [Int32](repeating: -1, count: 0x10000)
        var other: [UInt32: Int32] = [:]
        var bytes = [Int32](repeating: -1, count: 256)
        for (token, id) in vocab.entries {
            var scalars = token.unicodeScalars.makeIterator()
            if let first = scalars.next(), scalars.next() == nil {
                if first.value < 0x10000 { basic[Int(first.value)] = id } else { other[first.value] = id }
            }
        }
        for byte in 0..<256 {
            bytes[byte] = vocab[Self.byteTokenName(UInt8(byte))] ?? -1
        }

        self.vocab = vocab
        self.merges = merges
        self.unknownID = unknownID
        self.fuseUnknown = fuseUnknown
        self.byteFallback = byteFallback
        self.ignoreMerges = ignoreMerges
        self.basicScalarIDs = basic
        self.otherScalarIDs = other
        self.byteIDs = bytes
    }

    /// `<0xNN>` with upper-case hex, the spelling `format!("<{b:#04X}>")` produces in the library.
    static func byteTokenName(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF")
        return "<0x\(digits[Int(byte >> 4)])\(digits[Int(byte & 0xF)])>"
    }

    /// A merge is `["a", "b"]` in current files and `"a b"` in older ones (split at the one space).
    private static func mergePair(_ entry: JSONValue) -> (String, String)? {
        if case .stringPair(let left, let right) = entry { return (left, right) }
        if let pair = entry.arrayValue, pair.count == 2, let left = pair[0].stringValue, let right = pair[1].stringValue
        {
            return (left, right)
        }
        if let legacy = entry.stringValue, let space = legacy.utf8.firstIndex(of: UInt8(ascii: " ")) {
            let left = String(legacy[..<space])
            let right = String(legacy[legacy.utf8.index(after: space)...])
            if !right.utf8.contains(UInt8(ascii: " ")) { return (left, right) }
        }
        return nil
    }

    @inline(__always)
    private func scalarID(_ value: UInt32) -> Int32 {
        value < 0x10000 ? basicScalarIDs[Int(value)] : (otherScalarIDs[value] ?? -1)
    }

    /// Appends the ids of one pre-tokenized word (valid UTF-8) to `output`.
    func tokenize(_ word: ArraySlice<UInt8>, into output: inout [Int32]) {
        guard !word.isEmpty else { return }
        // `ignore_merges` (Llama 3 style): a word that is itself a token skips BPE entirely.
        if ignoreMerges, let id = vocab[word] {
            output.append(id)
            return
        }
        if let cached = cache.get(word) {
            output.append(contentsOf: cached)
            return
        }
        let ids = merge(word)
        cache.set(word, ids)
        output.append(contentsOf: ids)
    }

    private struct Symbol {
        var id: Int32
        var previous: Int32
        var next: Int32
        /// Byte length; 0 marks a symbol merged into its left neighbour.
        var length: Int32
    }

    /// `BPE::merge_word` followed by `Word::merge_all`.
    private func merge(_ word: ArraySlice<UInt8>) -> [Int32] {
        var symbols: [Symbol] = []
        symbols.reserveCapacity(word.count)
        func add(_ id: Int32, _ length: Int) {
            let count = Int32(symbols.count)
            if count > 0 { symbols[Int(count) - 1].next = count }
            symbols.append(Symbol(id: id, previous: count - 1, next: -1, length: Int32(length)))
        }
        // An unk waits here so that, with `fuse_unk`, a run of unknown scalars becomes one unk.
        var pendingUnknown: (id: Int32, length: Int)?
        word.withUnsafeBufferPointer { bytes in
            var i = 0
            while i < bytes.count {
                let (value, width) = UTF8Bytes.scalar(at: i, in: bytes)
                defer { i += width }
                let id = scalarID(value)
                if id >= 0 {
                    if let unk = pendingUnknown {
                        add(unk.id, unk.length)
                        pendingUnknown = nil
                    }
                    add(id, width)
                    continue
                }
                if byteFallback && (0..<width).allSatisfy({ byteIDs[Int(bytes[i + $0])] >= 0 }) {
                    // The library adds byte tokens without first flushing a pending unk; kept as is.
                    for k in 0..<width { add(byteIDs[Int(bytes[i + k])], 1) }
                    continue
                }
                // Without an unk token the library silently drops the scalar.
                guard let unk = unknownID else { continue }
                if let pending = pendingUnknown {
                    if fuseUnknown {
                        pendingUnknown = (pending.id, pending.length + width)
                        continue
                    }
                    add(pending.id, pending.length)
                }
                pendingUnknown = (unk, width)
            }
        }
        if let unk = pendingUnknown { add(unk.id, unk.length) }
        // Seed the queue with every adjacent pair that has a merge; later merges only create pairs
        // next to the merged symbol, so each step pushes at most two entries.
        guard symbols.count > 1 else { return symbols.map(\.id) }

        var heap = MergeHeap()
        heap.reserve(symbols.count)
        for i in 0..<(symbols.count - 1) {
            if let merge = merges.lookup(symbols[i].id, symbols[i + 1].id) {
                heap.push(rank: merge.rank, position: Int32(i), merged: merge.merged)
            }
        }
        while let top = heap.pop() {
            let position = Int(top.position)
            let current = symbols[position]
            if current.length == 0 || current.next == -1 { continue }
            let nextPosition = Int(current.next)
            let right = symbols[nextPosition]
            // A stale entry: the pair at this position changed since it was queued.
            guard let check = merges.lookup(current.id, right.id), check.merged == top.merged else { continue }
            // Merge right into left, unlink right, and queue the two pairs the new symbol forms.
            symbols[position].id = top.merged
            symbols[position].length += right.length
            symbols[position].next = right.next
            symbols[nextPosition].length = 0
            if right.next >= 0 { symbols[Int(right.next)].previous = top.position }
            let merged = symbols[position]
            if merged.previous >= 0, let left = merges.lookup(symbols[Int(merged.previous)].id, merged.id) {
                heap.push(rank: left.rank, position: merged.previous, merged: left.merged)
            }
            if merged.next >= 0, let next = merges.lookup(merged.id, symbols[Int(merged.next)].id) {
                heap.push(rank: next.rank, position: top.position, merged: next.merged)
            }
        }
        // Symbol 0 is never merged away (it has no left neighbour), so the list starts there.
        var ids: [Int32] = []
        ids.reserveCapacity(symbols.count)
        var cursor: Int32 = 0
        while cursor >= 0 {
            ids.append(symbols[Int(cursor)].id)
            cursor = symbols[Int(cursor)].next
        }
        return ids
    }
}

/// A value handed to the threads of `DispatchQueue.concurrentPerform`, which write disjoint parts of it.
private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
