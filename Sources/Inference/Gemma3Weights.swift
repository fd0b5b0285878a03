/// The tensors of a Gemma 3 text model, as views into the checkpoint (no copies), checked against
/// the config's shapes. Norm weights are the exception: each is a few hundred floats, stored here as
/// f32 already holding the factor the model multiplies by (1 + w from safetensors, w from GGUF,
/// whose converter added the 1: gemma3-and-serving.md §3.3 and trap 1 of §8).
public struct Gemma3Weights: Sendable {
    public struct Layer: Sendable {
        public var inputNorm: WeightTensor  // (hidden)
        public var query: WeightTensor  // (heads * headDim, hidden)
        public var key: WeightTensor  // (kvHeads * headDim, hidden)
        public var value: WeightTensor  // (kvHeads * headDim, hidden)
        public var queryNorm: WeightTensor  // (headDim)
        public var keyNorm: WeightTensor  // (headDim)
        public var output: WeightTensor  // (hidden, heads * headDim)
        public var postAttentionNorm: WeightTensor  // (hidden)
        public var preFeedforwardNorm: WeightTensor  // (hidden)
        public var gate: WeightTensor  // (intermediate, hidden)
        public var up: WeightTensor  // (intermediate, hidden)
        public var down: WeightTensor  // (hidden, intermediate)
        public var postFeedforwardNorm: WeightTensor  // (hidden)
    }

    public var embedding: WeightTensor  // (vocab, hidden)
    /// The LM head: the embedding itself when tied (no lm_head tensor, §1.1).
    public var lmHead: WeightTensor  // (vocab, hidden)
    public var finalNorm: WeightTensor  // (hidden)
    public var layers: [Layer]

    /// Names of one layer's tensors in each file format (§3.3).
    enum Role: CaseIterable {
        case inputNorm, query, key, value, queryNorm, keyNorm, output, postAttentionNorm, preFeedforwardNorm, gate, up,
            down,
            postFeedforwardNorm

        var huggingFace: String {
            switch self {
            case .inputNorm: return "input_layernorm"
            case .query: return "self_attn.q_proj"
            case .key: return "self_attn.k_proj"
            case .value: return "self_attn.v_proj"
            case .queryNorm: return "self_attn.q_norm"
            case .keyNorm: return "self_attn.k_norm"
            case .output: return "self_attn.o_proj"
            case .postAttentionNorm: return "post_attention_layernorm"
            case .preFeedforwardNorm: return "pre_feedforward_layernorm"
            case .gate: return "mlp.gate_proj"
            case .up: return "mlp.up_proj"
            case .down: return "mlp.down_proj"
            case .postFeedforwardNorm: return "post_feedforward_layernorm"
            }
        }

        var gguf: String {
            switch self {
            case .inputNorm: return "attn_norm"
            case .query: return "attn_q"
            case .key: return "attn_k"
            case .value: return "attn_v"
            case .queryNorm: return "attn_q_norm"
            case .keyNorm: return "attn_k_norm"
            case .output: return "attn_output"
            case .postAttentionNorm: return "post_attention_norm"
            case .preFeedforwardNorm: return "ffn_norm"
            case .gate: return "ffn_gate"
            case .up: return "ffn_up"
            case .down: return "ffn_down"
            case .postFeedforwardNorm: return "post_ffw_norm"
            }
        }

        var isNorm: Bool {
            switch self {
            case .inputNorm, .queryNorm, .keyNorm, .postAttentionNorm, .preFeedforwardNorm, .postFeedforwardNorm:
                return true
            default: return false
            }
        }

        func shape(_ c: Gemma3Config) -> [Int] {
            switch self {
            case .inputNorm, .postAttentionNorm, .preFeedforwardNorm, .postFeedforwardNorm: return [c.hiddenSize]
            case .queryNorm, .keyNorm: return [c.headDimension]
            case .query: return [c.headCount * c.headDimension, c.hiddenSize]
            case .key, .value: return [c.kvHeadCount * c.headDimension, c.hiddenSize]
            case .output: return [c.hiddenSize, c.headCount * c.headDimension]
            case .gate, .up: return [c.intermediateSize, c.hiddenSize]
            case .down: return [c.hiddenSize, c.intermediateSize]
            }
        }
    }

    /// Loads from a Hugging Face checkpoint, whose norm weights are stored zero-centred (the model uses 1 + w).
    public init(safetensors checkpoint: SafetensorsCheckpoint, config: Gemma3Config) throws {
        // transformers names: "model.*" for Gemma3ForCausalLM; multimodal checkpoints nest the text model.
        let prefixes = ["model.", "language_model.model.", "model.language_model."]
        guard let prefix = prefixes.first(where: { checkpoint.contains($0 + "embed_tokens.weight") }) else {
            throw InferenceError.missingTensor(name: "model.embed_tokens.weight", source: checkpoint.directory)
        }
        let lmHeadName = prefix == "language_model.model." ? "language_model.lm_head.weight" : "lm_head.weight"
        try self.init(config: config, normsAddOne: true) { role, layer in
            switch (role, layer) {
            case (nil, -1): return try checkpoint.tensor(prefix + "embed_tokens.weight")
            case (nil, -2): return try checkpoint.tensor(prefix + "norm.weight")
            case (nil, _): return try checkpoint.tensor(lmHeadName)
            case (let role?, _): return try checkpoint.tensor("\(prefix)layers.\(layer).\(role.huggingFace).weight")
            }
        }
    }

    /// Loads from a GGUF file, whose norm weights already hold 1 + w.
    public init(gguf: GGUFFile, config: Gemma3Config) throws {
        try self.init(config: config, normsAddOne: false) { role, layer in
            switch (role, layer) {
            case (nil, -1): return try gguf.tensor("token_embd.weight")
            case (nil, -2): return try gguf.tensor("output_norm.weight")
            case (nil, _): return try gguf.tensor("output.weight")
            case (let role?, _): return try gguf.tensor("blk.\(layer).\(role.gguf).weight")
            }
        }
    }

    /// `lookup(role, layer)` returns a layer tensor, or for a nil role: the embedding (layer -1), the
    /// final norm (-2) or the untied LM head (-3).
    init(config c: Gemma3Config, normsAddOne: Bool, lookup: (Role?, Int) throws -> WeightTensor) throws {
        func norm(_ tensor: WeightTensor, _ shape: [Int]) throws -> WeightTensor {
            try tensor.expectShape(shape)
            let values = tensor.floats().map { normsAddOne ? 1 + $0 : $0 }
            return try WeightTensor(
                name: tensor.name, format: .f32, shape: shape, bytes: values.withUnsafeBytes { Array($0) })
        }
        func matrix(_ tensor: WeightTensor, _ shape: [Int]) throws -> WeightTensor {
            try tensor.expectShape(shape)
            return tensor
        }
        embedding = try matrix(try lookup(nil, -1), [c.vocabularySize, c.hiddenSize])
        lmHead = c.tieWordEmbeddings ? embedding : try matrix(try lookup(nil, -3), [c.vocabularySize, c.hiddenSize])
        finalNorm = try norm(try lookup(nil, -2), [c.hiddenSize])
        layers = try (0..<c.layerCount).map { i in
            func get(_ role: Role) throws -> WeightTensor {
                let tensor = try lookup(role, i)
                return role.isNorm ? try norm(tensor, role.shape(c)) : try matrix(tensor, role.shape(c))
            }
            return Layer(
                inputNorm: try get(.inputNorm), query: try get(.query), key: try get(.key), value: try get(.value),
                queryNorm: try get(.queryNorm), keyNorm: try get(.keyNorm), output: try get(.output),
                postAttentionNorm: try get(.postAttentionNorm), preFeedforwardNorm: try get(.preFeedforwardNorm),
                gate: try get(.gate), up: try get(.up), down: try get(.down),
                postFeedforwardNorm: try get(.postFeedforwardNorm))
        }
    }
}

extension Gemma3Weights {
    /// The same weights with every Q5_0 matrix rewritten as Q8_0 (each value q − 16 as an int8 beside
    /// the same scale: exact, the widened values are identical). Q5_0's fifth bits cost the CPU more
    /// to unpack than the bytes saved: on the 270M Q4_K_M (43.5 MB of Q5_0, 67 MB as Q8_0) a decode
    /// step of one sequence spent about a fifth of its time unpacking them at 8 GB/s, where Q8_0 rows
    /// stream at 17. The CPU engine loads this; a GPU backend takes the stored weights.
    public func withQ5AsQ8() -> Gemma3Weights {
        var copy = self
        func convert(_ t: WeightTensor) -> WeightTensor { t.format == .q5_0 ? t.q5AsQ8() : t }
        copy.layers = layers.map { l in
            var l = l
            l.query = convert(l.query)
            l.key = convert(l.key)
            l.value = convert(l.value)
            l.output = convert(l.output)
            l.gate = convert(l.gate)
            l.up = convert(l.up)
            l.down = convert(l.down)
            return l
        }
        copy.embedding = convert(embedding)
        copy.lmHead = convert(lmHead)
        return copy
    }
}

extension WeightTensor {
    /// A Q5_0 tensor as Q8_0: per 32-value block { f16 d; u32 qh; u8 qs[16] } → { f16 d; i8 q[32] }.
    func q5AsQ8() -> WeightTensor {
        precondition(format == .q5_0)
        let blocks = elementCount / 32
        let storage = OwnedBytes(count: blocks * 34)
        for b in 0..<blocks {
            let source = data + 22 * b
            let target = storage.pointer + 34 * b
            target.copyMemory(from: source, byteCount: 2)
            let qh = source.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
            for j in 0..<16 {
                let byte = source.load(fromByteOffset: 6 + j, as: UInt8.self)
                let low = Int(byte & 0x0F) | Int((qh >> UInt32(j)) & 1) << 4
                let high = Int(byte >> 4) | Int((qh >> UInt32(j + 16)) & 1) << 4
                target.storeBytes(of: Int8(low - 16), toByteOffset: 2 + j, as: Int8.self)
                target.storeBytes(of: Int8(high - 16), toByteOffset: 2 + 16 + j, as: Int8.self)
            }
        }
        return WeightTensor(
            name: name, format: .q8_0, shape: shape, data: storage.pointer, byteCount: blocks * 34, owner: storage)
    }
}
