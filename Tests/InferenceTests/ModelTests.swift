import Foundation
import TestSupport
import Testing

@testable import Inference

/// A tiny random Gemma 3 (two sliding layers with a 4-token window and one global layer), written
/// as a Hugging Face folder and as a GGUF, checked against a plain reference forward pass.
struct TinyModel {
    static let config = """
        {"model_type": "gemma3_text", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
         "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 8, "sliding_window": 4,
         "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": null,
         "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
         "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": null, "attn_logit_softcapping": null}
        """

    var tensors: [(name: String, shape: [Int], values: [Float])] = []

    init(seed: UInt64) {
        var random = TestRandom(seed: seed)
        let c = try! Gemma3Config(json: try! JSONValue.parse(Array(Self.config.utf8)), source: "tiny")
        func add(_ name: String, _ shape: [Int], scale: Float = 0.5) {
            tensors.append((name, shape, random.floats(shape.reduce(1, *), scale: scale)))
        }
        add("model.embed_tokens.weight", [c.vocabularySize, c.hiddenSize])
        add("model.norm.weight", [c.hiddenSize])
        for i in 0..<c.layerCount {
            let p = "model.layers.\(i)."
            add(p + "input_layernorm.weight", [c.hiddenSize])
            add(p + "self_attn.q_proj.weight", [c.headCount * c.headDimension, c.hiddenSize])
            add(p + "self_attn.k_proj.weight", [c.headDimension, c.hiddenSize])
            add(p + "self_attn.v_proj.weight", [c.headDimension, c.hiddenSize])
            add(p + "self_attn.q_norm.weight", [c.headDimension])
            add(p + "self_attn.k_norm.weight", [c.headDimension])
            add(p + "self_attn.o_proj.weight", [c.hiddenSize, c.headCount * c.headDimension])
            add(p + "post_attention_layernorm.weight", [c.hiddenSize])
            add(p + "pre_feedforward_layernorm.weight", [c.hiddenSize])
            add(p + "mlp.gate_proj.weight", [c.intermediateSize, c.hiddenSize])
            add(p + "mlp.up_proj.weight", [c.intermediateSize, c.hiddenSize])
            add(p + "mlp.down_proj.weight", [c.hiddenSize, c.intermediateSize])
            add(p + "post_feedforward_layernorm.weight", [c.hiddenSize])
        }
    }

    func value(_ name: String) -> [Float] { tensors.first { $0.name == name }!.values }

    func writeFolder(_ dir: TemporaryDirectory) throws -> String {
        var builder = SafetensorsBuilder()
        for t in tensors { builder.add(t.name, dtype: "F32", shape: t.shape, floats: t.values) }
        _ = try dir.write("tiny/model.safetensors", builder.bytes())
        _ = try dir.write("tiny/config.json", Array(Self.config.utf8))
        return dir.path + "/tiny"
    }

    /// The same weights as a GGUF: llama.cpp names, norms stored as 1 + w, Q8_0 for no tensor (all f32).
    func ggufBytes() -> [UInt8] {
        var builder = GGUFBuilder()
        builder.add("general.architecture", string: "gemma3")
        for (key, value) in [
            ("embedding_length", 16), ("feed_forward_length", 24), ("block_count", 3), ("attention.head_count", 2),
            ("attention.head_count_kv", 1), ("attention.key_length", 8), ("attention.value_length", 8),
            ("context_length", 64), ("attention.sliding_window", 4),
        ] { builder.add("gemma3." + key, u32: UInt32(value)) }
        builder.add("gemma3.rope.freq_base", f32: 1e6)
        let names = [
            "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v",
            "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "self_attn.o_proj": "attn_output",
            "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
            "post_feedforward_layernorm": "post_ffw_norm",
        ]
        for t in tensors {
            var name: String
            if t.name == "model.embed_tokens.weight" {
                name = "token_embd.weight"
            } else if t.name == "model.norm.weight" {
                name = "output_norm.weight"
            } else {
                let parts = t.name.split(separator: ".")
                let role = parts[3..<(parts.count - 1)].joined(separator: ".")
                name = "blk.\(parts[2]).\(names[role]!).weight"
            }
            let values = t.name.hasSuffix("norm.weight") ? t.values.map { $0 + 1 } : t.values
            builder.addTensor(name, format: .f32, shape: t.shape, data: f32Bytes(values))
        }
        // Only the 3-layer pattern's last layer is global in this config; GGUF hard-codes pattern 6, so
        // the GGUF model treats all three as sliding: the tests account for that.
        return builder.build().bytes
    }

    /// A plain forward pass in Double over the whole sequence (no cache): the logits after each token.
    func referenceLogits(_ tokens: [Int], globalLayers: Set<Int> = [2]) -> [[Double]] {
        let hidden = 16
        let heads = 2
        let headDim = 8
        let inter = 24
        let vocab = 40
        let window = 4
        func matrix(_ name: String) -> [Double] { value(name).map(Double.init) }
        func linear(_ x: [Double], _ w: [Double], _ outDim: Int) -> [Double] {
            let inDim = x.count
            return (0..<outDim).map { r in (0..<inDim).reduce(0) { $0 + w[r * inDim + $1] * x[$1] } }
        }
        func norm(_ x: [Double], _ w: [Double]) -> [Double] {
            let scale = 1 / (x.reduce(0) { $0 + $1 * $1 } / Double(x.count) + 1e-6).squareRoot()
            return x.enumerated().map { $0.element * scale * (1 + w[$0.offset]) }
        }
        func rope(_ v: [Double], _ position: Int, base: Double) -> [Double] {
            var out = v
            for j in 0..<headDim / 2 {
                let angle = Double(position) / pow(base, Double(2 * j) / Double(headDim))
                out[j] = v[j] * cos(angle) - v[j + headDim / 2] * sin(angle)
                out[j + headDim / 2] = v[j + headDim / 2] * cos(angle) + v[j] * sin(angle)
            }
            return out
        }
        let embedding = matrix("model.embed_tokens.weight")
        var h = tokens.map { t in (0..<hidden).map { embedding[t * hidden + $0] * Double(hidden).squareRoot() } }
        for layer in 0..<3 {
            let p = "model.layers.\(layer)."
            let isGlobal = globalLayers.contains(layer)
            var keys: [[Double]] = []
            var values: [[Double]] = []
            var queries: [[[Double]]] = []
            for (position, x) in h.enumerated() {
                let n = norm(x, matrix(p + "input_layernorm.weight"))
                let q = linear(n, matrix(p + "self_attn.q_proj.weight"), heads * headDim)
                let base = isGlobal ? 1e6 : 1e4
                queries.append(
                    (0..<heads).map { head in
                        rope(
                            norm(
                                Array(q[(head * headDim)..<((head + 1) * headDim)]),
                                matrix(p + "self_attn.q_norm.weight")), position, base: base)
                    })
                keys.append(
                    rope(
                        norm(
                            linear(n, matrix(p + "self_attn.k_proj.weight"), headDim),
                            matrix(p + "self_attn.k_norm.weight")), position, base: base))
                values.append(linear(n, matrix(p + "self_attn.v_proj.weight"), headDim))
            }
            for position in h.indices {
                var attended: [Double] = []
                for head in 0..<heads {
                    let first = isGlobal ? 0 : max(0, position - window + 1)
                    let scores = (first...position).map { k in
                        zip(queries[position][head], keys[k]).reduce(0) { $0 + $1.0 * $1.1 } / Double(8).squareRoot()
                    }
                    let m = scores.max()!
                    let e = scores.map { exp($0 - m) }
                    let total = e.reduce(0, +)
                    attended += (0..<headDim).map { d in
                        (first...position).enumerated().reduce(0) { $0 + e[$1.offset] / total * values[$1.element][d] }
                    }
                }
                var x = h[position]
                let o = norm(
                    linear(attended, matrix(p + "self_attn.o_proj.weight"), hidden),
                    matrix(p + "post_attention_layernorm.weight"))
                x = zip(x, o).map(+)
                let n = norm(x, matrix(p + "pre_feedforward_layernorm.weight"))
                let g = linear(n, matrix(p + "mlp.gate_proj.weight"), inter)
                let u = linear(n, matrix(p + "mlp.up_proj.weight"), inter)
                let act = zip(g, u).map { g, u in
                    0.5 * g * (1 + tanh((2 / Double.pi).squareRoot() * (g + 0.044715 * g * g * g))) * u
                }
                let down = norm(
                    linear(act, matrix(p + "mlp.down_proj.weight"), hidden),
                    matrix(p + "post_feedforward_layernorm.weight"))
                h[position] = zip(x, down).map(+)
            }
        }
        return h.map { linear(norm($0, matrix("model.norm.weight")), embedding, vocab) }
    }
}

@Suite struct ModelTests {
    let tokens = [2, 7, 11, 3, 19, 23, 5, 31, 17, 13, 29, 37, 1, 8]

    func load(_ path: String) throws -> Gemma3Model<CPUBackend> {
        let config = try Gemma3Config(configFile: path + "/config.json")
        let weights = try Gemma3Weights(safetensors: try SafetensorsCheckpoint(directory: path), config: config)
        return try Gemma3Model(config: config, weights: weights, backend: try CPUBackend(exact: true))
    }

    @Test(arguments: [1, 3, 5, 64])
    func forwardPassMatchesTheReferenceForAnyBatchSize(batch: Int) throws {
        let tiny = TinyModel(seed: 42)
        let dir = try TemporaryDirectory()
        let model = try load(try tiny.writeFolder(dir))
        let expected = tiny.referenceLogits(tokens)
        // All at once (in batches of `batch`), then token by token on a second session.
        let session = model.makeSession(maximumBatch: batch)
        let logits = try session.append(tokens)
        for v in 0..<40 { #expect(abs(Double(logits[v]) - expected.last![v]) < 1e-3, "token \(v)") }
        let stepwise = model.makeSession(maximumBatch: batch)
        for (i, token) in tokens.enumerated() {
            let step = try stepwise.append([token])
            let worst = (0..<40).map { abs(Double(step[$0]) - expected[i][$0]) }.max()!
            #expect(worst < 1e-3, "position \(i): \(worst)")
        }
    }

    @Test func theGGUFPathReadsNormsAsStored() throws {
        let tiny = TinyModel(seed: 9)
        let gguf = try GGUFFile(file: try MappedFile(copying: tiny.ggufBytes(), path: "tiny.gguf"))
        let config = try Gemma3Config(gguf: gguf)
        let model = try Gemma3Model(
            config: config, weights: try Gemma3Weights(gguf: gguf, config: config), backend: try CPUBackend(exact: true))
        let logits = try model.makeSession(maximumBatch: 4).append(tokens)
        // GGUF files carry no layer pattern: with 3 layers and llama.cpp's pattern 6, all are sliding.
        let expected = tiny.referenceLogits(tokens, globalLayers: []).last!
        for v in 0..<40 { #expect(abs(Double(logits[v]) - expected[v]) < 1e-3) }
    }

    /// The counts `bench-batch --peak` turns into a step's floors, checked against the tensors: every
    /// product's rows × columns, and every stored byte once (the tied head is the embedding).
    @Test func multiplyAddsAndBytesPerStepCountEveryWeight() throws {
        let tiny = TinyModel(seed: 3)
        let dir = try TemporaryDirectory()
        let path = try tiny.writeFolder(dir)
        let model = try load(path)
        let products = tiny.tensors.filter { $0.shape.count == 2 }.map { $0.shape[0] * $0.shape[1] }
        #expect(model.config.multiplyAddsPerToken == products.reduce(0, +))
        let cost = model.productCost
        #expect(cost.f32MultiplyAdds == products.reduce(0, +) && cost.int8MultiplyAdds == 0)
        #expect(cost.bytes == tiny.tensors.map { 4 * $0.values.count }.reduce(0, +))
    }

    /// The real Q4_K_M as the engine loads it: with AVX-512 VNNI every product is in int8 tiles and
    /// the bytes are the tiles' (Q8_0 1.0625 bytes a weight, Q5_0 0.6875: the file's; Q4_K 0.75, Q6_K 1.25).
    @Test(.enabled(if: WeightTiles.int8Available, "this CPU has no AVX-512 VNNI"))
    func theQ4KMModelIsAllInTiles() throws {
        try RealWeights.require()
        let engine = try Engine.load(path: RealWeights.gguf, tokenizerDirectory: RealWeights.folder)
        // Packing drops the mapped file's pages of each matrix: read again, they are the same bytes.
        let embedding = engine.weights.embedding
        let rows = [0, 2, 818, embedding.rows - 1]
        let before = rows.map { Array(UnsafeRawBufferPointer(start: embedding.row($0), count: embedding.rowBytes)) }
        let down = engine.weights.layers[3].down.floats()
        #expect(engine.model.packTiles() > 0)
        #expect(rows.map { Array(UnsafeRawBufferPointer(start: embedding.row($0), count: embedding.rowBytes)) } == before)
        #expect(engine.weights.layers[3].down.floats() == down)
        let cost = engine.model.productCost
        #expect(cost.f32MultiplyAdds == 0 && cost.int8MultiplyAdds == engine.config.multiplyAddsPerToken)
        var bytes = 0
        for layer in engine.weights.layers {
            for m in [layer.query, layer.key, layer.value, layer.output, layer.gate, layer.up, layer.down] {
                let perWeight = ([.q4_K: 0.75, .q6_K: 1.25, .q5_0: 0.6875, .q8_0: 1.0625] as [WeightFormat: Double])[m.format]!
                bytes += Int(perWeight * Double(m.elementCount))
            }
            bytes += [layer.inputNorm, layer.queryNorm, layer.keyNorm, layer.postAttentionNorm, layer.preFeedforwardNorm,
                      layer.postFeedforwardNorm].reduce(0) { $0 + $1.byteCount }
        }
        #expect(engine.weights.lmHead.format == .q8_0)
        bytes += Int(1.0625 * Double(engine.weights.lmHead.elementCount)) + engine.weights.finalNorm.byteCount
        #expect(cost.bytes == bytes)
    }

    @Test func sessionsRefuseBadInput() throws {
        let dir = try TemporaryDirectory()
        let model = try load(try TinyModel(seed: 1).writeFolder(dir))
        let session = model.makeSession(contextLength: 8)
        #expect(throws: InferenceError.invalidArgument("token id 40 is outside the vocabulary (0..<40)")) {
            try session.append([2, 40])
        }
        #expect(throws: InferenceError.self) { try session.append([]) }
        try session.append([2, 3, 4, 5, 6])
        #expect(throws: InferenceError.contextOverflow(requested: 9, limit: 8)) { try session.append([1, 2, 3, 4]) }
        #expect(session.tokenCount == 5)
    }

    @Test func missingOrMisshapenTensorsAreNamed() throws {
        let dir = try TemporaryDirectory()
        var tiny = TinyModel(seed: 1)
        tiny.tensors.removeAll { $0.name == "model.layers.1.mlp.up_proj.weight" }
        let path = try tiny.writeFolder(dir)
        #expect(throws: InferenceError.missingTensor(name: "model.layers.1.mlp.up_proj.weight", source: path)) {
            try load(path)
        }

        let other = try TemporaryDirectory()
        var wrong = TinyModel(seed: 1)
        let index = wrong.tensors.firstIndex { $0.name == "model.layers.0.self_attn.k_proj.weight" }!
        wrong.tensors[index].shape = [16, 8]
        do {
            _ = try load(try wrong.writeFolder(other))
            Issue.record("a k_proj of the wrong shape loaded")
        } catch let error as InferenceError {
            #expect("\(error)".contains("model.layers.0.self_attn.k_proj.weight") && "\(error)".contains("[16, 8]"))
        }
    }
}
