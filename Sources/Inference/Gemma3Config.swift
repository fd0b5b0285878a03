import Foundation

/// The hyperparameters of a Gemma 3 text model, from a Hugging Face `config.json` or GGUF metadata.
///
/// Missing config.json fields take transformers' `Gemma3TextConfig` defaults (gemma3-and-serving.md
/// §1.1-1.2); fields that change the computation in ways this engine does not implement are refused.
public struct Gemma3Config: Sendable, Equatable {
    public enum LayerType: String, Sendable, Equatable {
        /// Local attention over the last `slidingWindow` positions, RoPE base `ropeLocalBase`.
        case sliding = "sliding_attention"
        /// Attention over every earlier position, RoPE base `ropeTheta` with `ropeScalingFactor`.
        case full = "full_attention"
    }

    public var vocabularySize = 262_208
    public var hiddenSize = 2304
    public var intermediateSize = 9216
    public var layerCount = 26
    public var headCount = 8
    public var kvHeadCount = 4
    public var headDimension = 256
    public var maxPositionEmbeddings = 131_072
    public var rmsNormEpsilon: Float = 1e-6
    /// Attention scores are scaled by queryPreAttentionScalar^-0.5 (not head_dim^-0.5) (§1.3).
    public var queryPreAttentionScalar: Float = 256
    public var slidingWindow = 4096
    /// RoPE base of the global (full-attention) layers.
    public var ropeTheta: Float = 1_000_000
    /// RoPE base of the local (sliding) layers; GGUF files do not store it (§1.4).
    public var ropeLocalBase: Float = 10_000
    /// Linear RoPE scaling of the global layers (`rope_scaling: {"rope_type": "linear", "factor": 8}`); 1 when none.
    public var ropeScalingFactor: Float = 1
    public var finalLogitSoftcapping: Float? = nil
    public var tieWordEmbeddings = true
    public var layerTypes: [LayerType] = []

    public init() {
        layerTypes = Self.layerTypes(count: layerCount, pattern: 6)
    }

    /// Layer i is global iff (i + 1) % pattern == 0 (transformers `Gemma3TextConfig.__post_init__`, §1.2).
    public static func layerTypes(count: Int, pattern: Int) -> [LayerType] {
        (0..<count).map { pattern > 0 && ($0 + 1) % pattern == 0 ? .full : .sliding }
    }

    /// The factor the embedding rows are multiplied by: sqrt(hidden_size) in the compute precision.
    ///
    /// HF casts `embed_scale` to the weight dtype (§1.3): a bf16 run multiplies by sqrt(640) rounded
    /// to bf16 (25.25), an f32 run by the f32 value (25.2982). This engine computes in f32, and the
    /// f32 reference (shared/golden) agrees to 1e-4 with the f32 value but only to 0.03 with 25.25,
    /// so the f32 value is the default; a backend computing in bf16 should use `bfloat16EmbeddingScale`.
    public var embeddingScale: Float { Float(Double(hiddenSize).squareRoot()) }

    /// Multiply-adds of the weight products for one decoded token: per layer the q, k, v and o
    /// projections and the gated MLP (gate, up, down), then the LM head over the whole vocabulary
    /// (attention over the cache is left out: it is small beside these at short contexts). Gemma 3
    /// 270M: 268 M, of which the head is 168 M.
    public var multiplyAddsPerToken: Int {
        let attention = hiddenSize * headDimension * (2 * headCount + 2 * kvHeadCount)
        let mlp = 3 * hiddenSize * intermediateSize
        return layerCount * (attention + mlp) + vocabularySize * hiddenSize
    }

    /// sqrt(hidden_size) rounded to bf16: 25.25 for the 270M, 34.0 for the 1B (§1.3, trap 5 of §8).
    public var bfloat16EmbeddingScale: Float { Self.roundedToBFloat16(embeddingScale) }

    /// Attention score scale: query_pre_attn_scalar^-0.5 (1/16 for Gemma 3 270M and 1B).
    public var attentionScale: Float { 1 / queryPreAttentionScalar.squareRoot() }

    /// Round-to-nearest-even of an f32 to bf16 precision, as torch's cast does.
    public static func roundedToBFloat16(_ value: Float) -> Float {
        let bits = value.bitPattern
        let rounded = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000
        return Float(bitPattern: rounded)
    }

    /// RoPE inverse frequencies of one layer type: 1 / base^(2j / headDim) for j < headDim / 2,
    /// divided by the linear scaling factor on global layers (HF `_compute_*_rope_parameters`).
    public func inverseFrequencies(for type: LayerType) -> [Float] {
        let base = type == .full ? ropeTheta : ropeLocalBase
        let factor = type == .full ? ropeScalingFactor : 1
        return (0..<headDimension / 2).map { j in
            let exponent = Float(2 * j) / Float(headDimension)
            return Float(1) / Float(Foundation.pow(Double(base), Double(exponent))) / factor
        }
    }

    /// Checks that the values describe a model this engine can run.
    public func validate(source: String) throws {
        func invalid(_ reason: String) -> InferenceError { .invalidConfig(path: source, reason: reason) }
        for (name, value) in [
            ("vocab_size", vocabularySize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
            ("num_hidden_layers", layerCount), ("num_attention_heads", headCount), ("num_key_value_heads", kvHeadCount),
            ("head_dim", headDimension), ("max_position_embeddings", maxPositionEmbeddings),
            ("sliding_window", slidingWindow),
        ] where value <= 0 || value > 1 << 24 {
            throw invalid("\(name) = \(value) is out of range")
        }
        guard headCount % kvHeadCount == 0 else {
            throw invalid("num_attention_heads \(headCount) is not a multiple of num_key_value_heads \(kvHeadCount)")
        }
        guard headDimension % 2 == 0 else { throw invalid("head_dim \(headDimension) must be even for RoPE") }
        guard layerTypes.count == layerCount else {
            throw invalid("layer_types has \(layerTypes.count) entries for \(layerCount) layers")
        }
        guard rmsNormEpsilon > 0, queryPreAttentionScalar > 0, ropeTheta > 0, ropeLocalBase > 0, ropeScalingFactor > 0
        else {
            throw invalid("rms_norm_eps, query_pre_attn_scalar, rope bases and rope scaling factor must be positive")
        }
    }
}
