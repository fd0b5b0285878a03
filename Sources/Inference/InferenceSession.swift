/// One conversation's state on a model: the KV cache, scratch buffers and how many tokens it holds.
///
/// Not `Sendable`: a session belongs to the task that runs it (its buffers are mutated by every call).
public final class InferenceSession<Backend: ComputeBackend> {
    /// Activation buffers for one forward pass of up to `maximumBatch` tokens.
    final class Scratch {
        let hidden: Backend.Buffer  // (batch, hidden): the residual stream h
        // (batch, hidden): h between a layer's two residual adds (each add reads one of hidden and
        // residual and writes the other, so that a norm fused into the product after it writes
        // nothing that the product's other blocks still read)
        let residual: Backend.Buffer
        let normed: Backend.Buffer  // (batch, hidden): a norm's output, which the products read
        let projected: Backend.Buffer  // (batch, hidden): the output and down projections' rows
        let query: Backend.Buffer  // (batch, heads * headDim)
        let key: Backend.Buffer  // (batch, kvHeads * headDim)
        let value: Backend.Buffer  // (batch, kvHeads * headDim)
        let attention: Backend.Buffer  // (batch, heads * headDim)
        let gate: Backend.Buffer  // (batch, intermediate)
        let up: Backend.Buffer  // (batch, intermediate)
        let localRope: Backend.Buffer  // (batch, 2, headDim / 2)
        let globalRope: Backend.Buffer  // (batch, 2, headDim / 2)
        let last: Backend.Buffer  // (logitRows, hidden)
        let logits: Backend.Buffer  // (logitRows, vocab)
        let logitRows: Int
        let segmentQuery: Backend.Buffer  // (batch, heads * headDim): one sequence's queries in a mixed pass
        let segmentAttention: Backend.Buffer  // (batch, heads * headDim)

        init(_ b: Backend, _ c: Gemma3Config, batch: Int, logitRows: Int = 1) {
            hidden = b.makeBuffer(count: batch * c.hiddenSize)
            residual = b.makeBuffer(count: batch * c.hiddenSize)
            normed = b.makeBuffer(count: batch * c.hiddenSize)
            projected = b.makeBuffer(count: batch * c.hiddenSize)
            query = b.makeBuffer(count: batch * c.headCount * c.headDimension)
            key = b.makeBuffer(count: batch * c.kvHeadCount * c.headDimension)
            value = b.makeBuffer(count: batch * c.kvHeadCount * c.headDimension)
            attention = b.makeBuffer(count: batch * c.headCount * c.headDimension)
            gate = b.makeBuffer(count: batch * c.intermediateSize)
            up = b.makeBuffer(count: batch * c.intermediateSize)
            localRope = b.makeBuffer(count: batch * c.headDimension)
            globalRope = b.makeBuffer(count: batch * c.headDimension)
            self.logitRows = logitRows
            last = b.makeBuffer(count: logitRows * c.hiddenSize)
            logits = b.makeBuffer(count: logitRows * c.vocabularySize)
            segmentQuery = b.makeBuffer(count: batch * c.headCount * c.headDimension)
            segmentAttention = b.makeBuffer(count: batch * c.headCount * c.headDimension)
        }
    }

    public let model: Gemma3Model<Backend>
    /// Prompt plus generated tokens may not exceed this.
    public let contextLength: Int
    /// Tokens per forward pass during prefill.
    public let maximumBatch: Int
    /// Tokens in the cache: the position of the next token.
    public private(set) var tokenCount = 0
    private let scratch: Scratch
    private let cache: KVCache<Backend>

    init(model: Gemma3Model<Backend>, contextLength: Int, maximumBatch: Int) {
        self.model = model
        self.contextLength = contextLength
        self.maximumBatch = maximumBatch
        scratch = Scratch(model.backend, model.config, batch: maximumBatch)
        cache = KVCache(
            backend: model.backend, config: model.config, contextLimit: contextLength, maximumBatch: maximumBatch)
    }

    /// Forgets every token; the buffers are kept for the next prompt.
    public func reset() { tokenCount = 0 }

    /// Runs `tokens` through the model after those already seen (in batches of `maximumBatch`, as
    /// matrix-matrix products) and returns the logits (vocab) that predict the token after the last.
    @discardableResult
    public func append(_ tokens: [Int]) throws -> [Float] {
        guard !tokens.isEmpty else { throw InferenceError.invalidArgument("no tokens to process: the prompt is empty") }
        let vocabulary = model.config.vocabularySize
        if let bad = tokens.first(where: { $0 < 0 || $0 >= vocabulary }) {
            throw InferenceError.invalidArgument("token id \(bad) is outside the vocabulary (0..<\(vocabulary))")
        }
        guard tokenCount + tokens.count <= contextLength else {
            throw InferenceError.contextOverflow(requested: tokenCount + tokens.count, limit: contextLength)
        }
        cache.reserve(positions: tokenCount + tokens.count, kept: tokenCount)
        var start = 0
        var lastBatch = 0
        while start < tokens.count {
            let batch = Array(tokens[start..<min(tokens.count, start + maximumBatch)])
            model.forward(batch, firstPosition: tokenCount, scratch: scratch, cache: cache)
            tokenCount += batch.count
            lastBatch = batch.count
            start += batch.count
        }
        return model.logits(row: lastBatch - 1, scratch: scratch)
    }
}
