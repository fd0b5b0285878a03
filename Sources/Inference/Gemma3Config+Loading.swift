import Foundation

extension Gemma3Config {
    /// Reads `config.json` of a Hugging Face folder (`Gemma3ForCausalLM` / `gemma3_text`, or the text
    /// part of a multimodal `gemma3` config).
    public init(configFile path: String) throws {
        let json = try JSONValue.parseConfigFile(path)
        try self.init(json: json, source: path)
    }

    public init(json root: JSONValue, source: String) throws {
        func invalid(_ reason: String) -> InferenceError { .invalidConfig(path: source, reason: reason) }
        guard root.objectValue != nil else { throw invalid("the top level is not a JSON object") }
        var json = root
        let modelType = root["model_type"]?.stringValue
        if modelType == "gemma3", let text = root["text_config"], text.objectValue != nil {
            json = text
        } else if let modelType, modelType != "gemma3_text" {
            throw InferenceError.unsupported(
                "model_type \"\(modelType)\" in \(source); this engine runs Gemma 3 text models (gemma3_text)")
        }
        self.init()

        func int(_ key: String, _ value: inout Int) throws {
            guard let field = json[key], !field.isNull else { return }
            guard let number = field.intValue else { throw invalid("\(key) must be an integer") }
            value = number
        }
        func float(_ key: String, _ value: inout Float) throws {
            guard let field = json[key], !field.isNull else { return }
            guard let number = field.doubleValue else { throw invalid("\(key) must be a number") }
            value = Float(number)
        }
        try int("vocab_size", &vocabularySize)
        try int("hidden_size", &hiddenSize)
        try int("intermediate_size", &intermediateSize)
        try int("num_hidden_layers", &layerCount)
        try int("num_attention_heads", &headCount)
        try int("num_key_value_heads", &kvHeadCount)
        try int("head_dim", &headDimension)
        try int("max_position_embeddings", &maxPositionEmbeddings)
        try int("sliding_window", &slidingWindow)
        try float("rms_norm_eps", &rmsNormEpsilon)
        try float("query_pre_attn_scalar", &queryPreAttentionScalar)
        try float("rope_theta", &ropeTheta)
        try float("rope_local_base_freq", &ropeLocalBase)
        if let cap = json["final_logit_softcapping"], !cap.isNull {
            guard let value = cap.doubleValue else { throw invalid("final_logit_softcapping must be a number or null") }
            finalLogitSoftcapping = Float(value)
        }
        if let cap = json["attn_logit_softcapping"], !cap.isNull {
            throw InferenceError.unsupported(
                "attn_logit_softcapping in \(source) (Gemma 3 has none; this engine does not implement it)")
        }
        if let tie = json["tie_word_embeddings"] ?? root["tie_word_embeddings"], !tie.isNull {
            guard let value = tie.boolValue else { throw invalid("tie_word_embeddings must be true or false") }
            tieWordEmbeddings = value
        }
        if let activation = (json["hidden_activation"] ?? json["hidden_act"])?.stringValue,
            activation != "gelu_pytorch_tanh"
        {
            throw InferenceError.unsupported(
                "hidden_activation \"\(activation)\" in \(source); Gemma 3 uses gelu_pytorch_tanh")
        }
        if json["use_bidirectional_attention"]?.boolValue == true {
            throw InferenceError.unsupported(
                "use_bidirectional_attention in \(source) (an embedding model, not a generator)")
        }

        // RoPE: the legacy `rope_scaling` applies to global layers only; the newer `rope_parameters`
        // gives one entry per layer type (§1.3).
        if let scaling = json["rope_scaling"], !scaling.isNull {
            ropeScalingFactor = try Self.linearFactor(scaling, key: "rope_scaling", source: source)
        }
        if let parameters = json["rope_parameters"], !parameters.isNull {
            guard parameters.objectValue != nil else { throw invalid("rope_parameters must be an object") }
            if let full = parameters["full_attention"] {
                if let theta = full["rope_theta"]?.doubleValue { ropeTheta = Float(theta) }
                ropeScalingFactor = try Self.linearFactor(full, key: "rope_parameters.full_attention", source: source)
            }
            if let sliding = parameters["sliding_attention"] {
                if let theta = sliding["rope_theta"]?.doubleValue { ropeLocalBase = Float(theta) }
                guard try Self.linearFactor(sliding, key: "rope_parameters.sliding_attention", source: source) == 1
                else {
                    throw InferenceError.unsupported("RoPE scaling on sliding-attention layers in \(source)")
                }
            }
        }

        if let types = json["layer_types"], !types.isNull {
            guard let items = types.arrayValue else { throw invalid("layer_types must be an array") }
            layerTypes = try items.enumerated().map { index, item in
                guard let name = item.stringValue, let type = LayerType(rawValue: name) else {
                    throw invalid("layer_types[\(index)] must be \"sliding_attention\" or \"full_attention\"")
                }
                return type
            }
        } else {
            var pattern = 6
            if let value = json["sliding_window_pattern"] ?? json["_sliding_window_pattern"], !value.isNull {
                guard let number = value.intValue, number >= 0 else {
                    throw invalid("sliding_window_pattern must be an integer")
                }
                pattern = number
            }
            layerTypes = Self.layerTypes(count: layerCount, pattern: pattern)
        }
        try validate(source: source)
    }

    /// The factor of a linear RoPE scaling entry; 1 for "default"; unsupported for the other types.
    static func linearFactor(_ entry: JSONValue, key: String, source: String) throws -> Float {
        guard entry.objectValue != nil else {
            throw InferenceError.invalidConfig(path: source, reason: "\(key) must be an object or null")
        }
        let type = entry["rope_type"]?.stringValue ?? entry["type"]?.stringValue ?? "default"
        switch type {
        case "default": return 1
        case "linear":
            guard let factor = entry["factor"]?.doubleValue, factor > 0 else {
                throw InferenceError.invalidConfig(path: source, reason: "\(key).factor must be a positive number")
            }
            return Float(factor)
        default:
            throw InferenceError.unsupported(
                "\(key) type \"\(type)\" in \(source) (the engine implements default and linear RoPE)")
        }
    }

    /// Reads the `gemma3.*` metadata of a GGUF file (§3.2). The layer pattern (6) and the local RoPE base
    /// (1e4) are not stored in GGUF files and are hard-coded, as llama.cpp does (§1.4).
    public init(gguf: GGUFFile) throws {
        let source = gguf.path
        func invalid(_ reason: String) -> InferenceError { .invalidGGUF(path: source, reason: reason) }
        guard let architecture = gguf.metadata["general.architecture"]?.stringValue else {
            throw invalid("general.architecture is missing")
        }
        guard architecture == "gemma3" else {
            throw InferenceError.unsupported(
                "GGUF architecture \"\(architecture)\" in \(source); this engine runs gemma3")
        }
        func int(_ key: String) throws -> Int {
            guard let value = gguf.metadata["gemma3." + key]?.intValue else {
                throw invalid("gemma3.\(key) is missing or not an integer")
            }
            return value
        }
        func optionalFloat(_ key: String) -> Float? { gguf.metadata["gemma3." + key]?.doubleValue.map(Float.init) }

        self.init()
        hiddenSize = try int("embedding_length")
        intermediateSize = try int("feed_forward_length")
        layerCount = try int("block_count")
        headCount = try int("attention.head_count")
        kvHeadCount = try int("attention.head_count_kv")
        headDimension = (try? int("attention.key_length")) ?? hiddenSize / headCount
        if let valueLength = try? int("attention.value_length"), valueLength != headDimension {
            throw InferenceError.unsupported(
                "key_length \(headDimension) differs from value_length \(valueLength) in \(source)")
        }
        maxPositionEmbeddings = try int("context_length")
        rmsNormEpsilon = optionalFloat("attention.layer_norm_rms_epsilon") ?? 1e-6
        ropeTheta = optionalFloat("rope.freq_base") ?? 1_000_000
        slidingWindow = (try? int("attention.sliding_window")) ?? maxPositionEmbeddings
        finalLogitSoftcapping = optionalFloat("final_logit_softcapping")
        if let type = gguf.metadata["gemma3.rope.scaling.type"]?.stringValue, type != "none" {
            let factor = optionalFloat("rope.scaling.factor") ?? 1
            guard type == "linear" else {
                throw InferenceError.unsupported("GGUF rope scaling type \"\(type)\" in \(source)")
            }
            ropeScalingFactor = factor
        } else if let factor = optionalFloat("rope.scaling.factor"), factor != 1 {
            ropeScalingFactor = factor
        }
        // llama.cpp: f_attention_scale = 1/sqrt(n_embd / n_head) for the 27B (62 layers), else 1/sqrt(head_dim).
        queryPreAttentionScalar = layerCount == 62 ? Float(hiddenSize / headCount) : Float(headDimension)
        guard let embedding = gguf.info("token_embd.weight"), embedding.shape.count == 2 else {
            throw InferenceError.missingTensor(name: "token_embd.weight", source: source)
        }
        vocabularySize = embedding.shape[0]
        tieWordEmbeddings = !gguf.contains("output.weight")
        layerTypes = Self.layerTypes(count: layerCount, pattern: 6)
        try validate(source: source)
    }
}
