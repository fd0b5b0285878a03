import Foundation
/// The operations the Gemma 3 forward pass needs, in the shapes it needs them. The model code
/// (`Gemma3Model`, `InferenceSession`) only talks to this protocol, so a GPU backend only has to
/// provide buffers in its own memory and these kernels; `CPUBackend` is the reference.
///
/// Conventions: activations are f32, row-major, one row per token; `rows` counts tokens (or
/// token-heads for per-head ops). Ops may run in place where documented (out === x).
public protocol ComputeBackend: Sendable {
    /// Activation storage (f32) in the backend's memory.
    associatedtype Buffer
    /// A weight matrix in the backend's memory, in whatever format it reads directly.
    associatedtype Matrix: Sendable

    var name: String { get }

    /// A zero-filled buffer of `count` floats.
    func makeBuffer(count: Int) -> Buffer
    /// A zero-filled KV cache buffer of `count` elements, in the backend's cache type (f32, or bf16
    /// on a GPU): written only by `attentionBatch` (or by `copy` from another cache buffer).
    func makeCacheBuffer(count: Int) -> Buffer
    /// Bytes of one KV cache element (4 for f32, 2 for bf16), for sizing the cache.
    var cacheElementBytes: Int { get }
    /// `count` floats of `buffer` from `offset`, copied to the host.
    func read(_ buffer: Buffer, offset: Int, count: Int) -> [Float]
    /// Host floats copied into `buffer` at `offset`.
    func write(_ values: [Float], to buffer: Buffer, offset: Int)
    /// `count` floats from `source[sourceOffset...]` to `destination[destinationOffset...]`.
    func copy(
        _ source: Buffer, offset sourceOffset: Int, to destination: Buffer, offset destinationOffset: Int, count: Int)
    /// Makes a weight usable by the kernels (on the CPU: the mapped tensor itself, no copy).
    func matrix(_ tensor: WeightTensor) throws -> Matrix

    /// out[i, :] = table[tokens[i], :] * scale.  out: (n, dim)
    func embed(_ tokens: [Int], table: Matrix, scale: Float, into out: Buffer)
    /// out = x · weightᵀ.  x: (rows, in), weight: (outDim, in), out: (rows, outDim). Accumulates in f32.
    func matmul(_ x: Buffer, rows: Int, weight: Matrix, into out: Buffer)
    /// outs[i] = x · weights[i]ᵀ for matrices of the same input (a layer's query, key and value
    /// projections): a GPU reads x once and launches once.
    func matmul(_ x: Buffer, rows: Int, weights: [Matrix], into outs: [Buffer])
    /// out = gelu_tanh(x · gateᵀ) * (x · upᵀ), the MLP's first half; `width` is the matrices' rows,
    /// `scratch` (rows, width) may be overwritten. A GPU does it in one pass.
    func gatedMatmul(_ x: Buffer, rows: Int, gate: Matrix, up: Matrix, width: Int, into out: Buffer, scratch: Buffer)
    /// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight (weight already holds Gemma's 1 + w). In place allowed.
    /// x, out: (rows, dimension); weight: (dimension) f32.
    func rmsNorm(_ x: Buffer, rows: Int, dimension: Int, weight: Matrix, epsilon: Float, into out: Buffer)
    /// cos and sin of position · inverseFrequencies[j] for each position (consecutive in a prefill,
    /// one per sequence in a batched decode).  table: (positions, 2, headDim / 2)
    func ropeTable(positions: [Int], inverseFrequencies: [Float], into table: Buffer)
    /// Rotates each head's pairs (j, j + headDim/2) by the table's angles (the NeoX / HF rotate_half layout).
    /// x: (rows, heads, headDim), in place; table: (rows, 2, headDim / 2).
    func rope(_ x: Buffer, rows: Int, heads: Int, headDimension: Int, table: Buffer)
    /// Causal attention of `rows` new queries at positions firstPosition..< against a ring-buffer cache.
    /// queries: (rows, heads, headDim); keys, values: (capacity, kvHeads, headDim) where position p
    /// lives in slot p % capacity; each query at p sees positions max(0, p - window + 1)...p
    /// (all of 0...p when window is nil). out: (rows, heads, headDim).
    func attention(
        queries: Buffer, keys: Buffer, values: Buffer, rows: Int, firstPosition: Int, heads: Int, kvHeads: Int,
        headDimension: Int, capacity: Int, window: Int?, scale: Float, into out: Buffer)
    /// gate = gelu_tanh(gate) * up, elementwise over `count` floats.
    func geluMultiply(_ gate: Buffer, _ up: Buffer, count: Int)
    /// accumulator += x, elementwise over `count` floats.
    func add(_ x: Buffer, into accumulator: Buffer, count: Int)
    /// Softmax of each row in place.  x: (rows, columns)
    func softmax(_ x: Buffer, rows: Int, columns: Int)
    /// accumulator += rmsNorm(x) · weight over `rows` rows: Gemma's post-attention and post-feedforward
    /// norms, which feed the residual stream. x may be overwritten.
    func rmsNormAdd(_ x: Buffer, rows: Int, dimension: Int, weight: Matrix, epsilon: Float, into accumulator: Buffer)
    /// accumulator = source + rmsNorm(x) · weight: `rmsNormAdd` with the residual before the add in
    /// another buffer (a GPU: one launch, where a copy and `rmsNormAdd` would be two). x may be overwritten.
    func rmsNormAdd(
        _ x: Buffer, rows: Int, dimension: Int, weight: Matrix, epsilon: Float, from source: Buffer, into accumulator: Buffer)
    /// `rmsNormAdd`, then out = rmsNorm(accumulator) with `next`: a block's post norm and residual add
    /// with the next block's input norm (a GPU: one launch). out may be x.
    func rmsNormAddNorm(
        _ x: Buffer, rows: Int, dimension: Int, weight: Matrix, next: Matrix, epsilon: Float, into accumulator: Buffer,
        normed out: Buffer)
    /// `rmsNormAddNorm(norm)`, then `matmul` of its normed rows: a block's post norm and residual add,
    /// the next block's input norm and the product that reads it (a GPU: one launch for one token).
    func matmul(after norm: ResidualNorm<Buffer, Matrix>, weights: [Matrix], into outs: [Buffer])
    /// `rmsNormAddNorm(norm)`, then `gatedMatmul` of its normed rows, as `matmul(after:weights:into:)`.
    func gatedMatmul(
        after norm: ResidualNorm<Buffer, Matrix>, gate: Matrix, up: Matrix, width: Int, into out: Buffer, scratch: Buffer)
    /// The whole MLP of one row after its norm: `gatedMatmul(after:)` into `gated`, then `down` of it
    /// into `out`, in fewer launches; false (nothing done) where the backend does not, and the caller
    /// makes those two calls.
    func mlp(
        after norm: ResidualNorm<Buffer, Matrix>, gate: Matrix, up: Matrix, down: Matrix, gated: Buffer, into out: Buffer
    ) -> Bool
    /// The per-head RMS norms of queries and keys (q_norm, k_norm), then RoPE on both, in place.
    /// queries: (rows, heads, headDim); keys: (rows, kvHeads, headDim); table as for `rope`.
    func normRope(
        queries: Buffer, keys: Buffer, rows: Int, heads: Int, kvHeads: Int, headDimension: Int, queryNorm: Matrix,
        keyNorm: Matrix, epsilon: Float, table: Buffer)
    /// Stores the new keys and values of every segment's rows in its ring and runs their attention,
    /// all segments in one go, when the backend can (a GPU: two launches instead of several per
    /// sequence). Returns false when it cannot; the model then does it segment by segment.
    /// queries, out: (rows, heads, headDim); keys, values: (rows, kvHeads, headDim), rows in segment order.
    /// `norms`: when given, the queries and keys are as the projections left them, and the backend
    /// applies `normRope` with these first, or as attention reads them (a GPU, in a decode step: one
    /// launch a layer fewer); the stored keys get them too. When it returns false it has changed
    /// nothing, and the caller applies them.
    /// `next`: the weights the products after it read (the output projection's, then the MLP's), which
    /// a GPU may ask its cache for while attention, bound by latency, leaves memory idle.
    func attentionBatch(
        queries: Buffer, keys: Buffer, values: Buffer, segments: [AttentionSegment<Buffer>], heads: Int, kvHeads: Int,
        headDimension: Int, scale: Float, norms: HeadNorms<Buffer, Matrix>?, into out: Buffer, prefetching next: [Matrix]
    ) -> Bool
    /// `attentionBatch`, then its rows times `projection` (the output projection: `matmul(out, weight:
    /// projection, into: projected)`), where the backend can fold the two (a GPU, in a one-token step
    /// whose attention takes shares: their merge and the projection in one launch). `.projected`:
    /// both done (`out` then holds nothing of use); `.attended`: the attention only, the caller
    /// projects; `.none`: neither (as `attentionBatch` returning false).
    func attentionBatch(
        queries: Buffer, keys: Buffer, values: Buffer, segments: [AttentionSegment<Buffer>], heads: Int, kvHeads: Int,
        headDimension: Int, scale: Float, norms: HeadNorms<Buffer, Matrix>?, into out: Buffer, projection: Matrix,
        into projected: Buffer, prefetching next: [Matrix]
    ) -> AttentionReach
    /// A decode step's layer for one sequence (one token), or its first half, as the calls
    /// `Gemma3Model` would make one by one (`layer` holds their arguments), in fewer launches where
    /// the backend can (a GPU: one persistent launch). Returns how far it went; `.none`: nothing
    /// done, and the model makes the calls.
    func decodeLayer(_ layer: DecodeLayer<Buffer, Matrix>) -> DecodeLayerReach
    /// The index of each row's largest value, the lowest on ties (greedy decoding). A GPU backend
    /// computes it where the logits are and returns only the indices.  x: (rows, columns)
    func argmax(_ x: Buffer, rows: Int, columns: Int) -> [Int]
    /// A token for each row, chosen as `draws[row]` says (`TokenDraw.choose`), where the logits are:
    /// a GPU backend returns only the ids. x: (rows, columns) raw logits; `softcap` is the model's
    /// final logit cap, applied first. The rows may be overwritten (a GPU applies penalties in place).
    func sample(_ x: Buffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw]) -> [Int]
    /// `sample`, and for each row whose `logprobs[row]` is set, the drawn token's logprob and that many
    /// most likely tokens (largest first, the lower id first on ties): the log-softmax of the
    /// soft-capped logits before any penalty or temperature, as `Sampler.next` reports them. Other
    /// rows get a NaN logprob and no alternatives. A GPU backend computes them where the logits are
    /// and returns only those numbers.
    func sample(_ x: Buffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?]) -> [GeneratedToken]
    /// For rows firstRow..<firstRow + rows of x (.., columns): the logprob of `tokens[r]` and the `top`
    /// most likely tokens, as `sample` reports them (prompt logprobs: each prompt token scored under
    /// the logits before it). A GPU backend computes them where the logits are.
    func logprobs(_ x: Buffer, firstRow: Int, rows: Int, columns: Int, softcap: Float?, tokens: [Int], top: Int) -> [GeneratedToken]
    /// Hands the work queued so far to the device, so that it runs while the host prepares the
    /// rest of a step (a GPU that records a step as a graph would otherwise start only at its end).
    func submit()
    /// Whether `sample` runs where the logits are. When it does not (the CPU), a sampled request's
    /// logits are as cheap to read, and the server keeps its host `Sampler`.
    var drawsOnDevice: Bool { get }

    // Pipelined decode (`BatchRunner`): a step is queued with its inputs still on the device, the
    // tokens the step before chose (greedy or drawn with a seed known ahead), before the host has
    // read them, so the device never waits for the host between steps. Each queued step has a place
    // (0..<pipelinePlaces) whose staged inputs and readback it keeps until it is read back; a place
    // is reused only after a step queued later than its last one was read back.

    /// Whether this backend pipelines decode steps (a GPU; the CPU does not).
    var pipelinesSteps: Bool { get }
    /// Where the steps queued from now keep their inputs (the staging for their tables and ids):
    /// place `place`, or (nil) anywhere again once no pipelined step is waiting to be read back.
    func beginPipelinedStep(place: Int?)
    /// `embed` of the tokens the last `queueDraws` chose: out[i, :] = table[chosen[rows[i]], :] * scale.
    func embedDrawn(rows: [Int], table: Matrix, scale: Float, into out: Buffer)
    /// A token for each row, queued, with its readback to place `place`: the argmax (as `argmax`)
    /// when every draw is a plain argmax and no logprobs are wanted, else as `sample` draws them,
    /// with the logprobs `logprobs[r]` asks for (as `sample(_:...:logprobs:)` reports them).
    /// `pending` (a step queued before the host knew the tokens it takes): row r's penalties do not
    /// count the token it generated last, row pending[r] of the last draws, which this counts where
    /// the logits are (as `TokenPenalties.accepting`). The ids stay on the device for `embedDrawn` too.
    func queueDraws(
        _ x: Buffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?], pending: [Int]?,
        place: Int)
    /// Whether `queueDraws` takes these draws and logprobs (their penalties and numbers fit what a
    /// queued step can hold).
    func queuesDraws(_ draws: [TokenDraw], logprobs: [Int?]) -> Bool
    /// Waits for place `place`'s queued draws only (not for steps queued after it) and returns them:
    /// each row's token, with the logprobs its queueing asked for (else a NaN logprob, none on top).
    func queuedTokens(rows: Int, place: Int) -> [GeneratedToken]
    /// Changes with every argmax or draw queued (pipelined or not), whose ids `embedDrawn` then
    /// reads: a step queued ahead is taken only if no other argmax or draw came after it.
    var pipelineStamp: Int { get }
}

/// How many places pipelined steps rotate through (see `ComputeBackend.pipelinesSteps`):
/// the step being read back, the one queued after it, and one dropped (queued, never read back)
/// whose place must not be reused before a later step's readback.
public let pipelinePlaces = 3

/// What `normRope` takes besides the rows: a layer's q_norm and k_norm and the step's RoPE table (a
/// row per row), handed to `attentionBatch` so that a backend may apply them where attention reads
/// the queries and keys.
public struct HeadNorms<Buffer, Matrix> {
    public var queryNorm: Matrix
    public var keyNorm: Matrix
    public var epsilon: Float
    public var table: Buffer

    public init(queryNorm: Matrix, keyNorm: Matrix, epsilon: Float, table: Buffer) {
        self.queryNorm = queryNorm
        self.keyNorm = keyNorm
        self.epsilon = epsilon
        self.table = table
    }
}

/// What `rmsNormAddNorm` takes, handed to the product that reads its normed rows (`matmul(after:)`,
/// `gatedMatmul(after:)`), so that a backend may do both in one pass.
public struct ResidualNorm<Buffer, Matrix> {
    public var x: Buffer
    public var rows: Int
    public var dimension: Int
    public var weight: Matrix
    public var next: Matrix
    public var epsilon: Float
    public var accumulator: Buffer
    public var normed: Buffer
    /// The residual before the add, where it is not `accumulator` (nil: added in place). A GPU fusing
    /// the norm into the product after it then writes nothing that another of its blocks reads
    /// (with `normed` apart from `x` too), so that none waits on a count of who has read.
    public var source: Buffer?

    public init(
        _ x: Buffer, rows: Int, dimension: Int, weight: Matrix, next: Matrix, epsilon: Float, from source: Buffer? = nil,
        into accumulator: Buffer, normed: Buffer
    ) {
        self.x = x
        self.rows = rows
        self.dimension = dimension
        self.weight = weight
        self.next = next
        self.epsilon = epsilon
        self.source = source
        self.accumulator = accumulator
        self.normed = normed
    }
}

/// How much `attentionBatch(..., projection:...)` did.
public enum AttentionReach: Sendable, Equatable {
    /// Nothing: the model attends segment by segment.
    case none
    /// The attention; the model projects its output.
    case attended
    /// The attention and its output projection.
    case projected
}

/// How much of a layer `decodeLayer` did.
public enum DecodeLayerReach: Sendable, Equatable {
    /// Nothing: the model makes the calls.
    case none
    /// q, k, v, attention and the output projection (into `DecodeLayer.normed`).
    case attention
    /// The whole layer, through the down projection (into `DecodeLayer.normed`), with the
    /// post-attention norm's residual add; the post-feedforward norm is left to the next layer.
    case whole
}

/// A one-token decode layer's arguments for `ComputeBackend.decodeLayer`, as `Gemma3Model.forward`
/// hands them to the calls it replaces.
public struct DecodeLayer<Buffer, Matrix> {
    /// The residual norm before q, k and v (`matmul(after:)`); nil: `normed` holds the normed row.
    public var input: ResidualNorm<Buffer, Matrix>?
    /// The normed row q, k and v read.
    public var normed: Buffer
    /// Where the output and down projections write theirs (the x of the norms after them).
    public var projected: Buffer
    public var query: Matrix
    public var key: Matrix
    public var value: Matrix
    /// Where q, k and v go (then `attentionBatch` of `segment`).
    public var queries: Buffer
    public var keys: Buffer
    public var values: Buffer
    public var segment: AttentionSegment<Buffer>
    public var heads: Int
    public var kvHeads: Int
    public var headDimension: Int
    public var scale: Float
    public var norms: HeadNorms<Buffer, Matrix>
    /// Attention's output, which the output projection reads.
    public var attention: Buffer
    public var output: Matrix
    /// The post-attention norm (its x is `projected`), handed to `gatedMatmul(after:)`.
    public var postAttention: ResidualNorm<Buffer, Matrix>
    public var gate: Matrix
    public var up: Matrix
    /// Where gate, up and GELU go, which down reads.
    public var gated: Buffer
    public var down: Matrix

    public init(
        input: ResidualNorm<Buffer, Matrix>?, normed: Buffer, projected: Buffer, query: Matrix, key: Matrix, value: Matrix, queries: Buffer,
        keys: Buffer, values: Buffer, segment: AttentionSegment<Buffer>, heads: Int, kvHeads: Int, headDimension: Int,
        scale: Float, norms: HeadNorms<Buffer, Matrix>, attention: Buffer, output: Matrix,
        postAttention: ResidualNorm<Buffer, Matrix>, gate: Matrix, up: Matrix, gated: Buffer, down: Matrix
    ) {
        self.input = input
        self.normed = normed
        self.projected = projected
        self.query = query
        self.key = key
        self.value = value
        self.queries = queries
        self.keys = keys
        self.values = values
        self.segment = segment
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDimension = headDimension
        self.scale = scale
        self.norms = norms
        self.attention = attention
        self.output = output
        self.postAttention = postAttention
        self.gate = gate
        self.up = up
        self.gated = gated
        self.down = down
    }
}

/// One sequence's share of a batched step for `attentionBatch`: its layer's cache ring and where its
/// rows sit (`rows` rows from `firstRow`, at positions firstPosition...).
public struct AttentionSegment<Buffer> {
    public var keys: Buffer
    public var values: Buffer
    public var capacity: Int
    public var window: Int?
    public var firstPosition: Int
    public var firstRow: Int
    public var rows: Int

    public init(keys: Buffer, values: Buffer, capacity: Int, window: Int?, firstPosition: Int, firstRow: Int, rows: Int) {
        self.keys = keys
        self.values = values
        self.capacity = capacity
        self.window = window
        self.firstPosition = firstPosition
        self.firstRow = firstRow
        self.rows = rows
    }
}

extension ComputeBackend {
    public func makeCacheBuffer(count: Int) -> Buffer { makeBuffer(count: count) }

    public func matmul(_ x: Buffer, rows: Int, weights: [Matrix], into outs: [Buffer]) {
        matmulEach(x, rows: rows, weights: weights, into: outs)
    }

    /// `matmul(_:rows:weights:into:)` one matrix at a time (what a backend does when it cannot fuse).
    public func matmulEach(_ x: Buffer, rows: Int, weights: [Matrix], into outs: [Buffer]) {
        precondition(weights.count == outs.count, "one output per matrix")
        for (weight, out) in zip(weights, outs) { matmul(x, rows: rows, weight: weight, into: out) }
    }

    public func gatedMatmul(_ x: Buffer, rows: Int, gate: Matrix, up: Matrix, width: Int, into out: Buffer, scratch: Buffer) {
        gatedMatmulInSteps(x, rows: rows, gate: gate, up: up, width: width, into: out, scratch: scratch)
    }

    /// `gatedMatmul` as two products and `geluMultiply` (what a backend does when it cannot fuse).
    public func gatedMatmulInSteps(
        _ x: Buffer, rows: Int, gate: Matrix, up: Matrix, width: Int, into out: Buffer, scratch: Buffer
    ) {
        matmul(x, rows: rows, weight: gate, into: out)
        matmul(x, rows: rows, weight: up, into: scratch)
        geluMultiply(out, scratch, count: rows * width)
    }

    public var cacheElementBytes: Int { MemoryLayout<Float>.size }

    public func rmsNormAdd(_ x: Buffer, rows: Int, dimension: Int, weight: Matrix, epsilon: Float, into accumulator: Buffer) {
        rmsNorm(x, rows: rows, dimension: dimension, weight: weight, epsilon: epsilon, into: x)
        add(x, into: accumulator, count: rows * dimension)
    }

    public func rmsNormAddNorm(
        _ x: Buffer, rows: Int, dimension: Int, weight: Matrix, next: Matrix, epsilon: Float, into accumulator: Buffer,
        normed out: Buffer
    ) {
        rmsNormAdd(x, rows: rows, dimension: dimension, weight: weight, epsilon: epsilon, into: accumulator)
        rmsNorm(accumulator, rows: rows, dimension: dimension, weight: next, epsilon: epsilon, into: out)
    }

    public func rmsNormAdd(
        _ x: Buffer, rows: Int, dimension: Int, weight: Matrix, epsilon: Float, from source: Buffer, into accumulator: Buffer
    ) {
        copy(source, offset: 0, to: accumulator, offset: 0, count: rows * dimension)
        rmsNormAdd(x, rows: rows, dimension: dimension, weight: weight, epsilon: epsilon, into: accumulator)
    }

    /// `rmsNormAddNorm` of what `norm` holds (its residual copied first where it has a `source`).
    public func rmsNormAddNorm(_ norm: ResidualNorm<Buffer, Matrix>) {
        if let source = norm.source {
            copy(source, offset: 0, to: norm.accumulator, offset: 0, count: norm.rows * norm.dimension)
        }
        rmsNormAddNorm(
            norm.x, rows: norm.rows, dimension: norm.dimension, weight: norm.weight, next: norm.next, epsilon: norm.epsilon,
            into: norm.accumulator, normed: norm.normed)
    }

    public func matmul(after norm: ResidualNorm<Buffer, Matrix>, weights: [Matrix], into outs: [Buffer]) {
        rmsNormAddNorm(norm)
        matmul(norm.normed, rows: norm.rows, weights: weights, into: outs)
    }

    public func gatedMatmul(
        after norm: ResidualNorm<Buffer, Matrix>, gate: Matrix, up: Matrix, width: Int, into out: Buffer, scratch: Buffer
    ) {
        rmsNormAddNorm(norm)
        gatedMatmul(norm.normed, rows: norm.rows, gate: gate, up: up, width: width, into: out, scratch: scratch)
    }

    public func mlp(
        after norm: ResidualNorm<Buffer, Matrix>, gate: Matrix, up: Matrix, down: Matrix, gated: Buffer, into out: Buffer
    ) -> Bool { false }

    public func normRope(
        queries: Buffer, keys: Buffer, rows: Int, heads: Int, kvHeads: Int, headDimension: Int, queryNorm: Matrix,
        keyNorm: Matrix, epsilon: Float, table: Buffer
    ) {
        rmsNorm(queries, rows: rows * heads, dimension: headDimension, weight: queryNorm, epsilon: epsilon, into: queries)
        rmsNorm(keys, rows: rows * kvHeads, dimension: headDimension, weight: keyNorm, epsilon: epsilon, into: keys)
        rope(queries, rows: rows, heads: heads, headDimension: headDimension, table: table)
        rope(keys, rows: rows, heads: kvHeads, headDimension: headDimension, table: table)
    }

    public func attentionBatch(
        queries: Buffer, keys: Buffer, values: Buffer, segments: [AttentionSegment<Buffer>], heads: Int, kvHeads: Int,
        headDimension: Int, scale: Float, norms: HeadNorms<Buffer, Matrix>?, into out: Buffer, prefetching next: [Matrix]
    ) -> Bool { false }

    public func attentionBatch(
        queries: Buffer, keys: Buffer, values: Buffer, segments: [AttentionSegment<Buffer>], heads: Int, kvHeads: Int,
        headDimension: Int, scale: Float, norms: HeadNorms<Buffer, Matrix>?, into out: Buffer, projection: Matrix,
        into projected: Buffer, prefetching next: [Matrix]
    ) -> AttentionReach {
        let attended = attentionBatch(
            queries: queries, keys: keys, values: values, segments: segments, heads: heads, kvHeads: kvHeads,
            headDimension: headDimension, scale: scale, norms: norms, into: out, prefetching: next)
        return attended ? .attended : .none
    }

    public func decodeLayer(_ layer: DecodeLayer<Buffer, Matrix>) -> DecodeLayerReach { .none }

    public func argmax(_ x: Buffer, rows: Int, columns: Int) -> [Int] {
        (0..<rows).map { Sampler.argmax(read(x, offset: $0 * columns, count: columns)) }
    }

    public func sample(_ x: Buffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw]) -> [Int] {
        precondition(draws.count == rows, "one draw per row")
        return (0..<rows).map { draws[$0].choose(read(x, offset: $0 * columns, count: columns), softcap: softcap) }
    }

    public func sample(
        _ x: Buffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?]
    ) -> [GeneratedToken] {
        sampleWithHostLogprobs(x, rows: rows, columns: columns, softcap: softcap, draws: draws, logprobs: logprobs)
    }

    /// `sample` with logprobs computed on the host: the rows that want them are read (and capped)
    /// before the draw, which may change them.
    public func sampleWithHostLogprobs(
        _ x: Buffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?]
    ) -> [GeneratedToken] {
        precondition(logprobs.count == rows, "one logprobs entry per row")
        let wanted: [[Float]?] = logprobs.indices.map { r in
            logprobs[r] == nil ? nil : cappedRow(x, r, columns: columns, softcap: softcap)
        }
        let ids = sample(x, rows: rows, columns: columns, softcap: softcap, draws: draws)
        return ids.indices.map { r in
            guard let top = logprobs[r], let row = wanted[r] else { return GeneratedToken(id: ids[r], logprob: .nan, top: []) }
            return Logprobs.token(ids[r], of: row, top: top)
        }
    }

    public func logprobs(
        _ x: Buffer, firstRow: Int, rows: Int, columns: Int, softcap: Float?, tokens: [Int], top: Int
    ) -> [GeneratedToken] {
        hostLogprobs(x, firstRow: firstRow, rows: rows, columns: columns, softcap: softcap, tokens: tokens, top: top)
    }

    /// `logprobs` on the host: each row read, capped and scored by `Logprobs.token`.
    public func hostLogprobs(
        _ x: Buffer, firstRow: Int, rows: Int, columns: Int, softcap: Float?, tokens: [Int], top: Int
    ) -> [GeneratedToken] {
        precondition(tokens.count == rows, "one token per row")
        return (0..<rows).map { r in
            Logprobs.token(tokens[r], of: cappedRow(x, firstRow + r, columns: columns, softcap: softcap), top: top)
        }
    }

    /// Row `r` of x read to the host, soft-capped as the model's logits are reported.
    private func cappedRow(_ x: Buffer, _ r: Int, columns: Int, softcap: Float?) -> [Float] {
        var row = read(x, offset: r * columns, count: columns)
        if let cap = softcap { for i in row.indices { row[i] = Foundation.tanh(row[i] / cap) * cap } }
        return row
    }

    public var drawsOnDevice: Bool { false }

    public func submit() {}

    public var pipelinesSteps: Bool { false }
    public func beginPipelinedStep(place: Int?) { preconditionFailure("this backend does not pipeline steps") }
    public func embedDrawn(rows: [Int], table: Matrix, scale: Float, into out: Buffer) {
        preconditionFailure("this backend does not pipeline steps")
    }
    public func queueDraws(
        _ x: Buffer, rows: Int, columns: Int, softcap: Float?, draws: [TokenDraw], logprobs: [Int?], pending: [Int]?,
        place: Int
    ) {
        preconditionFailure("this backend does not pipeline steps")
    }
    public func queuesDraws(_ draws: [TokenDraw], logprobs: [Int?]) -> Bool { false }
    public func queuedTokens(rows: Int, place: Int) -> [GeneratedToken] {
        preconditionFailure("this backend does not pipeline steps")
    }
    public var pipelineStamp: Int { 0 }
}
