/// Runs many sequences on one model for a continuous-batching scheduler: each sequence has its own
/// `Slot` (KV cache and length), prompts are prefilled one slot at a time in chunks, and a decode step
/// advances every given slot by one token in a single forward pass, so the weights are read once
/// per step however many sequences are running (gemma3-and-serving.md §7: slots, no paging; the
/// sliding-window layers keep a small ring per slot).
///
/// Not `Sendable`: one engine thread owns the runner and its slots; the scratch buffers are shared
/// by every call.
public final class BatchRunner<Backend: ComputeBackend> {
    /// One sequence's place in the batch: its KV cache and how many tokens it holds.
    public final class Slot {
        let cache: KVCache<Backend>
        /// Prompt plus generated tokens may not exceed this.
        public let contextLength: Int
        /// Tokens in the cache: the position of the next token.
        public fileprivate(set) var tokenCount = 0

        init(cache: KVCache<Backend>, contextLength: Int) {
            self.cache = cache
            self.contextLength = contextLength
        }

        /// Forgets every token; the cache memory is kept for the next sequence.
        public func reset() { tokenCount = 0 }
    }

    public let model: Gemma3Model<Backend>
    /// Rows in one decode pass (more slots are decoded in several passes).
    public let maximumSequences: Int
    /// Prompt tokens per prefill pass.
    public let prefillChunk: Int
    private let prefillScratch: InferenceSession<Backend>.Scratch
    private let decodeScratch: InferenceSession<Backend>.Scratch

    /// Logit rows computed together when every prompt position's logits are wanted (prompt logprobs).
    private static var promptLogitRows: Int { 8 }

    public init(model: Gemma3Model<Backend>, maximumSequences: Int, prefillChunk: Int = 128) {
        self.model = model
        self.maximumSequences = max(1, maximumSequences)
        self.prefillChunk = max(1, prefillChunk)
        prefillScratch = .init(
            model.backend, model.config, batch: self.prefillChunk, logitRows: min(Self.promptLogitRows, self.prefillChunk))
        decodeScratch = .init(model.backend, model.config, batch: self.maximumSequences, logitRows: self.maximumSequences)
    }

    /// A new empty slot (allocates its KV cache: keep and `reset` slots rather than making one per request).
    public func makeSlot(contextLength: Int? = nil) -> Slot {
        let limit = min(contextLength ?? model.config.maxPositionEmbeddings, model.config.maxPositionEmbeddings)
        return Slot(
            cache: KVCache(backend: model.backend, config: model.config, contextLimit: limit, maximumBatch: prefillChunk),
            contextLength: limit)
    }

    /// Bytes of KV cache a slot holds once it has seen `positions` tokens: the sliding-window layers'
    /// fixed rings plus the global layers, which grow by doubling from 1024 positions.
    public func cacheBytes(positions: Int, contextLength: Int? = nil) -> Int {
        let c = model.config
        let limit = min(contextLength ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings)
        let row = 2 * c.kvHeadCount * c.headDimension * MemoryLayout<Float>.size  // keys and values
        var global = min(limit, max(1024, prefillChunk))
        while global < positions && global < limit { global = min(limit, global * 2) }
        return c.layerTypes.reduce(0) { total, type in
            let sliding = type == .sliding && c.slidingWindow < limit
            return total + row * (sliding ? min(limit, c.slidingWindow + prefillChunk - 1) : global)
        }
    }

    /// Appends `tokens` to the slot (in chunks of `prefillChunk`) and returns the logits (vocab) that
    /// predict the next token. `promptLogits`, when given, sees the logits after each token
    /// (index into `tokens`, logits), for prompt logprobs.
    public func prefill(
        _ slot: Slot, _ tokens: [Int], promptLogits: ((Int, [Float]) -> Void)? = nil
    ) throws -> [Float] {
        guard !tokens.isEmpty else { throw InferenceError.invalidArgument("no tokens to process: the prompt is empty") }
        try check(tokens)
        guard slot.tokenCount + tokens.count <= slot.contextLength else {
            throw InferenceError.contextOverflow(requested: slot.tokenCount + tokens.count, limit: slot.contextLength)
        }
        slot.cache.reserve(positions: slot.tokenCount + tokens.count, kept: slot.tokenCount)
        var start = 0
        var last: [Float] = []
        while start < tokens.count {
            let batch = Array(tokens[start..<min(tokens.count, start + prefillChunk)])
            model.forward(batch, firstPosition: slot.tokenCount, scratch: prefillScratch, cache: slot.cache)
            slot.tokenCount += batch.count
            if let promptLogits {
                var row = 0
                while row < batch.count {
                    let rows = row..<min(batch.count, row + prefillScratch.logitRows)
                    for (offset, logits) in model.logits(rows: rows, scratch: prefillScratch).enumerated() {
                        promptLogits(start + rows.lowerBound + offset, logits)
                        last = logits
                    }
                    row = rows.upperBound
                }
            } else if start + batch.count == tokens.count {
                last = model.logits(row: batch.count - 1, scratch: prefillScratch)
            }
            start += batch.count
        }
        return last
    }

    /// One token more for each slot (`tokens[i]` goes to `slots[i]`), decoded together; returns each
    /// slot's next-token logits in the same order.
    public func decode(_ slots: [Slot], tokens: [Int]) throws -> [[Float]] {
        precondition(slots.count == tokens.count, "one token per slot")
        try check(tokens)
        for slot in slots {
            guard slot.tokenCount < slot.contextLength else {
                throw InferenceError.contextOverflow(requested: slot.tokenCount + 1, limit: slot.contextLength)
            }
        }
        var result: [[Float]] = []
        result.reserveCapacity(slots.count)
        var start = 0
        while start < slots.count {
            let range = start..<min(slots.count, start + maximumSequences)
            let group = Array(slots[range])
            for slot in group { slot.cache.reserve(positions: slot.tokenCount + 1, kept: slot.tokenCount) }
            model.forwardDecode(
                Array(tokens[range]), positions: group.map(\.tokenCount), caches: group.map(\.cache),
                scratch: decodeScratch)
            for slot in group { slot.tokenCount += 1 }
            result += model.logits(rows: 0..<group.count, scratch: decodeScratch)
            start = range.upperBound
        }
        return result
    }

    private func check(_ tokens: [Int]) throws {
        let vocabulary = model.config.vocabularySize
        if let bad = tokens.first(where: { $0 < 0 || $0 >= vocabulary }) {
            throw InferenceError.invalidArgument("token id \(bad) is outside the vocabulary (0..<\(vocabulary))")
        }
    }
}
