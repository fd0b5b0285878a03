import Foundation

/// The Gemma 3 text model: weights in a backend's memory plus the forward pass, written to be read
/// top to bottom against transformers' `modeling_gemma3.py` (gemma3-and-serving.md §1.3) and
/// llama.cpp's `src/models/gemma3.cpp` (§1.4).
///
/// Immutable and `Sendable`: one model serves any number of `InferenceSession`s, each with its own
/// KV cache and scratch buffers.
public struct Gemma3Model<Backend: ComputeBackend>: Sendable {
    struct Layer: Sendable {
        let type: Gemma3Config.LayerType
        let inputNorm: Backend.Matrix  // (hidden) f32, 1 + w
        let query: Backend.Matrix  // (heads * headDim, hidden)
        let key: Backend.Matrix  // (kvHeads * headDim, hidden)
        let value: Backend.Matrix  // (kvHeads * headDim, hidden)
        let queryNorm: Backend.Matrix  // (headDim)
        let keyNorm: Backend.Matrix  // (headDim)
        let output: Backend.Matrix  // (hidden, heads * headDim)
        let postAttentionNorm: Backend.Matrix  // (hidden)
        let preFeedforwardNorm: Backend.Matrix  // (hidden)
        let gate: Backend.Matrix  // (intermediate, hidden)
        let up: Backend.Matrix  // (intermediate, hidden)
        let down: Backend.Matrix  // (hidden, intermediate)
        let postFeedforwardNorm: Backend.Matrix  // (hidden)
    }

    public let config: Gemma3Config
    public let backend: Backend
    let embedding: Backend.Matrix  // (vocab, hidden)
    let lmHead: Backend.Matrix  // (vocab, hidden), the embedding when tied
    let finalNorm: Backend.Matrix  // (hidden)
    let layers: [Layer]
    /// RoPE inverse frequencies (headDim / 2) of the local and global layers.
    let localFrequencies: [Float]
    let globalFrequencies: [Float]
    /// A forward pass hands its work to the backend every this many layers (`ComputeBackend.submit`):
    /// a GPU then runs the first layers while the host records the next. 8 (and a first piece of
    /// `layersInFirstSubmission`): a 26-layer step goes in five pieces (2, 6, 8, 8, 2 layers), each
    /// long enough to be replayed as a CUDA graph. 0: the step in one piece.
    public var layersPerSubmission = 8
    /// The first piece is shorter: the GPU, idle since the last step's tokens came back, waits for
    /// the host to record it (8 layers: about 0.06-0.12 ms on an H100 host, 4-7% of a 1B step).
    public var layersInFirstSubmission = 2

    public init(config: Gemma3Config, weights: Gemma3Weights, backend: Backend) throws {
        self.config = config
        self.backend = backend
        embedding = try backend.matrix(weights.embedding)
        lmHead = config.tieWordEmbeddings ? embedding : try backend.matrix(weights.lmHead)
        finalNorm = try backend.matrix(weights.finalNorm)
        layers = try zip(weights.layers, config.layerTypes).map { w, type in
            Layer(
                type: type, inputNorm: try backend.matrix(w.inputNorm), query: try backend.matrix(w.query),
                key: try backend.matrix(w.key), value: try backend.matrix(w.value),
                queryNorm: try backend.matrix(w.queryNorm),
                keyNorm: try backend.matrix(w.keyNorm), output: try backend.matrix(w.output),
                postAttentionNorm: try backend.matrix(w.postAttentionNorm),
                preFeedforwardNorm: try backend.matrix(w.preFeedforwardNorm), gate: try backend.matrix(w.gate),
                up: try backend.matrix(w.up), down: try backend.matrix(w.down),
                postFeedforwardNorm: try backend.matrix(w.postFeedforwardNorm))
        }
        localFrequencies = config.inverseFrequencies(for: .sliding)
        globalFrequencies = config.inverseFrequencies(for: .full)
    }

    /// A fresh session. `contextLength` caps prompt plus output (default: the model's maximum);
    /// `maximumBatch` is how many prompt tokens one forward pass takes (scratch memory grows with it).
    public func makeSession(contextLength: Int? = nil, maximumBatch: Int = 128) -> InferenceSession<Backend> {
        InferenceSession(
            model: self,
            contextLength: min(contextLength ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings),
            maximumBatch: max(1, maximumBatch))
    }

    /// One forward pass over `tokens` at positions firstPosition..<firstPosition + n of one sequence,
    /// given its cache and the scratch buffers; leaves the final hidden states in `s.hidden`.
    func forward(
        _ tokens: [Int], firstPosition p0: Int, scratch s: InferenceSession<Backend>.Scratch, cache: KVCache<Backend>
    ) {
        let c = config
        let n = tokens.count
        func segment(_ index: Int) -> AttentionSegment<Backend.Buffer> {
            let entry = cache.layers[index]
            return AttentionSegment(
                keys: entry.keys, values: entry.values, capacity: entry.capacity, window: entry.window, firstPosition: p0,
                firstRow: 0, rows: n)
        }
        forward(tokens, positions: Array(p0..<p0 + n), scratch: s, decodeSegment: n == 1 ? segment : nil) { index, norms in
            let entry = cache.layers[index]
            // A backend with batched attention (a GPU, whose cache may be bf16) stores and attends in one go.
            let one = segment(index)
            let reach = backend.attentionBatch(
                queries: s.query, keys: s.key, values: s.value, segments: [one], heads: c.headCount, kvHeads: c.kvHeadCount,
                headDimension: c.headDimension, scale: c.attentionScale, norms: norms, into: s.attention,
                projection: layers[index].output, into: s.projected, prefetching: weightsAfterAttention(index))
            if reach != .none { return reach == .projected }
            normRope(norms, rows: n, scratch: s)
            cache.store(layer: index, keys: s.key, values: s.value, rows: n, firstPosition: p0)
            backend.attention(
                queries: s.query, keys: entry.keys, values: entry.values, rows: n, firstPosition: p0,
                heads: c.headCount, kvHeads: c.kvHeadCount, headDimension: c.headDimension, capacity: entry.capacity,
                window: entry.window, scale: c.attentionScale, into: s.attention)  // (n, heads * headDim)
            return false
        }
    }

    /// q_norm, k_norm and RoPE over the step's rows of `s.query` and `s.key`, where attention did not take them.
    private func normRope(_ norms: HeadNorms<Backend.Buffer, Backend.Matrix>, rows: Int, scratch s: InferenceSession<Backend>.Scratch) {
        backend.normRope(
            queries: s.query, keys: s.key, rows: rows, heads: config.headCount, kvHeads: config.kvHeadCount,
            headDimension: config.headDimension, queryNorm: norms.queryNorm, keyNorm: norms.keyNorm,
            epsilon: norms.epsilon, table: norms.table)
    }

    /// The weights a layer's products read after its attention, in order.
    private func weightsAfterAttention(_ index: Int) -> [Backend.Matrix] {
        [layers[index].output, layers[index].gate, layers[index].up]
    }

    /// Where one sequence's rows sit in a mixed forward pass: `count` consecutive rows from `firstRow`,
    /// at positions firstPosition..<firstPosition + count of the sequence whose cache is `cache`.
    struct Segment {
        let cache: KVCache<Backend>
        let firstRow: Int
        let count: Int
        let firstPosition: Int
    }

    /// One forward pass over several sequences at once: decode rows (one token each) and prompt
    /// chunks side by side. The projections, MLP and LM head read each weight once for all rows (the
    /// point of continuous batching: decode is bound by weight reads); only attention, which reads
    /// each sequence's own cache, runs segment by segment. `tokens` holds the segments' rows in order.
    /// `drawn`: the tokens are not known on the host yet: row i's token is row drawn[i] of the last
    /// `queueDraws` (a pipelined step; `tokens` then only counts the rows).
    func forward(
        _ tokens: [Int], segments: [Segment], scratch s: InferenceSession<Backend>.Scratch, drawn: [Int]? = nil
    ) {
        let c = config
        let queryRow = c.headCount * c.headDimension
        var positions: [Int] = []
        positions.reserveCapacity(tokens.count)
        for segment in segments { positions += segment.firstPosition..<segment.firstPosition + segment.count }
        precondition(positions.count == tokens.count, "the segments must cover the tokens")
        func attentionSegment(_ segment: Segment, _ index: Int) -> AttentionSegment<Backend.Buffer> {
            let entry = segment.cache.layers[index]
            return AttentionSegment(
                keys: entry.keys, values: entry.values, capacity: entry.capacity, window: entry.window,
                firstPosition: segment.firstPosition, firstRow: segment.firstRow, rows: segment.count)
        }
        let one = tokens.count == 1 && segments.count == 1 ? segments[0] : nil
        forward(
            tokens, positions: positions, scratch: s, drawn: drawn,
            decodeSegment: one.map { only in { attentionSegment(only, $0) } }
        ) { index, norms in
            let batch = segments.map { attentionSegment($0, index) }
            let reach = backend.attentionBatch(
                queries: s.query, keys: s.key, values: s.value, segments: batch, heads: c.headCount, kvHeads: c.kvHeadCount,
                headDimension: c.headDimension, scale: c.attentionScale, norms: norms, into: s.attention,
                projection: layers[index].output, into: s.projected, prefetching: weightsAfterAttention(index))
            if reach != .none { return reach == .projected }
            normRope(norms, rows: tokens.count, scratch: s)
            for segment in segments {
                segment.cache.store(
                    layer: index, keys: s.key, values: s.value, sourceRow: segment.firstRow, rows: segment.count,
                    firstPosition: segment.firstPosition)
                let entry = segment.cache.layers[index]
                // Attention reads its queries from row 0 of a buffer: move the segment there and back.
                backend.copy(
                    s.query, offset: segment.firstRow * queryRow, to: s.segmentQuery, offset: 0,
                    count: segment.count * queryRow)
                backend.attention(
                    queries: s.segmentQuery, keys: entry.keys, values: entry.values, rows: segment.count,
                    firstPosition: segment.firstPosition, heads: c.headCount, kvHeads: c.kvHeadCount,
                    headDimension: c.headDimension, capacity: entry.capacity, window: entry.window,
                    scale: c.attentionScale, into: s.segmentAttention)
                backend.copy(
                    s.segmentAttention, offset: 0, to: s.attention, offset: segment.firstRow * queryRow,
                    count: segment.count * queryRow)
            }
            return false
        }
    }

    /// The layers over `tokens` (row i at `positions[i]`); `attend(layer, norms)` applies the layer's
    /// q/k norms and RoPE (`norms`) to `s.query` and `s.key` as the projections left them, stores the
    /// rows' keys and values (`s.key`, `s.value`) and writes `s.attention`, or (returning true) its
    /// output projection into `s.projected` too. `decodeSegment` (a step of one token): the layer's
    /// attention segment, for the backend's `decodeLayer`.
    private func forward(
        _ tokens: [Int], positions: [Int], scratch s: InferenceSession<Backend>.Scratch, drawn: [Int]? = nil,
        decodeSegment: ((Int) -> AttentionSegment<Backend.Buffer>)? = nil,
        attend: (Int, HeadNorms<Backend.Buffer, Backend.Matrix>) -> Bool
    ) {
        let c = config
        let b = backend
        let n = tokens.count
        let hidden = c.hiddenSize

        // h = embed(tokens) * sqrt(hidden) (in the compute precision: see Gemma3Config.embeddingScale).
        if let drawn {
            precondition(drawn.count == n, "one drawn row per token")
            b.embedDrawn(rows: drawn, table: embedding, scale: c.embeddingScale, into: s.hidden)
        } else {
            b.embed(tokens, table: embedding, scale: c.embeddingScale, into: s.hidden)  // (n, hidden)
        }
        // cos/sin tables (n, 2, headDim/2), shared by all layers of a kind.
        b.ropeTable(positions: positions, inverseFrequencies: localFrequencies, into: s.localRope)
        b.ropeTable(positions: positions, inverseFrequencies: globalFrequencies, into: s.globalRope)

        // The first layer's input norm; each later one comes with the residual add before it.
        if let first = layers.first {
            b.rmsNorm(s.hidden, rows: n, dimension: hidden, weight: first.inputNorm, epsilon: c.rmsNormEpsilon, into: s.normed)
        }
        // The last layer's post-feedforward norm with its residual add and this layer's input norm,
        // handed to this layer's first product.
        var pending: ResidualNorm<Backend.Buffer, Backend.Matrix>?
        for (index, layer) in layers.enumerated() {
            // Attention block: x = input_layernorm(h) (in s.normed); q, k, v projections; q_norm,
            // k_norm before RoPE. (The post norms below are fused with their residual add, h += norm(x),
            // with the next block's input norm and with the product that reads it. The projections
            // write s.projected; h goes from s.hidden to s.residual at the post-attention add and back
            // at the post-feedforward one.)
            // q: (n, heads * headDim); k, v: (n, kvHeads * headDim)
            let norms = HeadNorms(
                queryNorm: layer.queryNorm, keyNorm: layer.keyNorm, epsilon: c.rmsNormEpsilon,
                table: layer.type == .full ? s.globalRope : s.localRope)
            let postAttention = ResidualNorm(
                s.projected, rows: n, dimension: hidden, weight: layer.postAttentionNorm, next: layer.preFeedforwardNorm,
                epsilon: c.rmsNormEpsilon, from: s.hidden, into: s.residual, normed: s.normed)
            // A one-token step: the backend may take the calls below in fewer launches.
            let reach =
                decodeSegment.map { segment in
                    b.decodeLayer(
                        DecodeLayer(
                            input: pending, normed: s.normed, projected: s.projected, query: layer.query, key: layer.key,
                            value: layer.value, queries: s.query, keys: s.key, values: s.value, segment: segment(index), heads: c.headCount,
                            kvHeads: c.kvHeadCount, headDimension: c.headDimension, scale: c.attentionScale, norms: norms,
                            attention: s.attention, output: layer.output, postAttention: postAttention, gate: layer.gate,
                            up: layer.up, gated: s.gate, down: layer.down))
                } ?? .none
            if reach == .none {
                let qkv = [layer.query, layer.key, layer.value]
                if let norm = pending {
                    b.matmul(after: norm, weights: qkv, into: [s.query, s.key, s.value])
                } else {
                    b.matmul(s.normed, rows: n, weights: qkv, into: [s.query, s.key, s.value])
                }
                // (n, heads * headDim) in s.attention, then (n, hidden) in s.projected
                if !attend(index, norms) { b.matmul(s.attention, rows: n, weight: layer.output, into: s.projected) }
            }
            // MLP block: down(gelu_tanh(gate(x)) * up(x)) between pre- and post-feedforward norms.
            if reach != .whole
                && !b.mlp(after: postAttention, gate: layer.gate, up: layer.up, down: layer.down, gated: s.gate, into: s.projected)
            {
                b.gatedMatmul(
                    after: postAttention, gate: layer.gate, up: layer.up, width: c.intermediateSize, into: s.gate,
                    scratch: s.up)  // (n, intermediate)
                b.matmul(s.gate, rows: n, weight: layer.down, into: s.projected)  // (n, hidden)
            }
            if index + 1 < layers.count {
                pending = ResidualNorm(
                    s.projected, rows: n, dimension: hidden, weight: layer.postFeedforwardNorm, next: layers[index + 1].inputNorm,
                    epsilon: c.rmsNormEpsilon, from: s.residual, into: s.hidden, normed: s.normed)
            } else {
                b.rmsNormAdd(
                    s.projected, rows: n, dimension: hidden, weight: layer.postFeedforwardNorm, epsilon: c.rmsNormEpsilon,
                    from: s.residual, into: s.hidden)
            }
            if layersPerSubmission > 0 && index + 1 < layers.count
                && ((index + 1) % layersPerSubmission == 0 || index + 1 == layersInFirstSubmission)
            {
                b.submit()
            }
        }
    }

    /// Logits of the token whose final hidden state is row `row` of `s.hidden`.  → (vocab)
    func logits(row: Int, scratch s: InferenceSession<Backend>.Scratch) -> [Float] {
        logits(rows: row..<row + 1, scratch: s)[0]
    }

    /// Logits of the tokens whose final hidden states are `rows` of `s.hidden` (at most the scratch's
    /// logit rows), the LM head read once for all of them.  → rows × (vocab)
    func logits(rows: Range<Int>, scratch s: InferenceSession<Backend>.Scratch) -> [[Float]] {
        logits(rows: Array(rows), scratch: s)
    }

    /// The final norm and LM head over any rows of `s.hidden` (at most the scratch's logit rows),
    /// into `s.logits` in the order given.
    private func lmHead(rows: [Int], scratch s: InferenceSession<Backend>.Scratch) {
        let c = config
        let b = backend
        let n = rows.count
        precondition(n <= s.logitRows, "more logit rows than the scratch holds")
        if rows.elementsEqual(0..<n) {
            // The rows are already in place (every row of a decode step): normed straight from s.hidden,
            // without a copy each (on a GPU, a copy node each in the step's graph).
            b.rmsNorm(s.hidden, rows: n, dimension: c.hiddenSize, weight: finalNorm, epsilon: c.rmsNormEpsilon, into: s.last)
        } else {
            for (i, row) in rows.enumerated() {
                b.copy(s.hidden, offset: row * c.hiddenSize, to: s.last, offset: i * c.hiddenSize, count: c.hiddenSize)
            }
            b.rmsNorm(s.last, rows: n, dimension: c.hiddenSize, weight: finalNorm, epsilon: c.rmsNormEpsilon, into: s.last)
        }
        b.matmul(s.last, rows: n, weight: lmHead, into: s.logits)  // (n, vocab): the tied embedding, unscaled
    }

    /// One LM head pass over any rows of `s.hidden` (at most the scratch's logit rows): a token for
    /// each of the first `draws.count` rows, chosen by the backend where the logits are, then the
    /// logprob of `targets[i]` (and `top` alternatives) for each of the next `targets.count` rows,
    /// also computed there, and the logits of the others. When no logprobs are wanted and every draw
    /// is a plain argmax (no penalties), the argmax kernel chooses (the soft cap, tanh, keeps the
    /// order, so it is not applied).
    func head(
        rows: [Int], draws: [TokenDraw], logprobs: [Int?], targets: [Int] = [], top: Int = 0,
        scratch s: InferenceSession<Backend>.Scratch
    ) -> (tokens: [GeneratedToken], scores: [GeneratedToken], logits: [[Float]]) {
        precondition(draws.count + targets.count <= rows.count && logprobs.count == draws.count)
        lmHead(rows: rows, scratch: s)
        let n = draws.count, vocabulary = config.vocabularySize
        let softcap = config.finalLogitSoftcapping
        let plain = draws.allSatisfy(\.isPlainArgmax) && logprobs.allSatisfy { $0 == nil }
        let tokens: [GeneratedToken] =
            n == 0 ? []
            : plain ? backend.argmax(s.logits, rows: n, columns: vocabulary).map { GeneratedToken(id: $0, logprob: .nan, top: []) }
            : backend.sample(s.logits, rows: n, columns: vocabulary, softcap: softcap, draws: draws, logprobs: logprobs)
        let scores =
            targets.isEmpty ? []
            : backend.logprobs(
                s.logits, firstRow: n, rows: targets.count, columns: vocabulary, softcap: softcap, tokens: targets, top: top)
        return (tokens, scores, (n + targets.count..<rows.count).map { readLogits(row: $0, scratch: s) })
    }

    /// The LM head over the first `draws.count` rows of `s.hidden` and a token for each as `draws`
    /// says, with the logprobs `logprobs` asks for, queued with its readback to `place`
    /// (`ComputeBackend.queueDraws`, whose `pending` this passes on): a pipelined step's end. The
    /// same kernels choose as in `head`.
    func queueDraws(
        _ draws: [TokenDraw], logprobs: [Int?], pending: [Int]?, place: Int, scratch s: InferenceSession<Backend>.Scratch
    ) {
        lmHead(rows: Array(0..<draws.count), scratch: s)
        backend.queueDraws(
            s.logits, rows: draws.count, columns: config.vocabularySize, softcap: config.finalLogitSoftcapping, draws: draws,
            logprobs: logprobs, pending: pending, place: place)
    }

    /// Logits of any rows of `s.hidden` (at most the scratch's logit rows), in the order given.
    func logits(rows: [Int], scratch s: InferenceSession<Backend>.Scratch) -> [[Float]] {
        lmHead(rows: rows, scratch: s)
        return rows.indices.map { readLogits(row: $0, scratch: s) }
    }

    /// Row `r` of `s.logits`, soft-capped when the model has a cap.
    private func readLogits(row r: Int, scratch s: InferenceSession<Backend>.Scratch) -> [Float] {
        let c = config
        var logits = backend.read(s.logits, offset: r * c.vocabularySize, count: c.vocabularySize)
        if let cap = c.finalLogitSoftcapping {
            for i in logits.indices { logits[i] = Foundation.tanh(logits[i] / cap) * cap }
        }
        return logits
    }
}
