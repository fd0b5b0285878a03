import Foundation
import Testing

@testable import Inference

@Suite struct ConfigTests {
    func config(_ json: String) throws -> Gemma3Config {
        try Gemma3Config(json: try JSONValue.parse(Array(json.utf8)), source: "config.json")
    }

    @Test func the270MConfigAndItsDerivedValues() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Fixtures/config-270m.json"
        let c = try Gemma3Config(configFile: path)
        #expect(
            c.hiddenSize == 640 && c.layerCount == 18 && c.headCount == 4 && c.kvHeadCount == 1
                && c.vocabularySize == 262_144)
        #expect(c.layerTypes.enumerated().filter { $0.element == .full }.map(\.offset) == [5, 11, 17])
        #expect(c.attentionScale == 0.0625)
        // 18 layers × (1.64 M attention + 3.93 M MLP) + the 262,144 × 640 head.
        #expect(c.multiplyAddsPerToken == 268_042_240)
        #expect(c.bfloat16EmbeddingScale == 25.25)
        #expect(abs(c.embeddingScale - 25.298221) < 1e-5)
        #expect(
            c.slidingWindow == 512 && c.ropeLocalBase == 10_000 && c.ropeTheta == 1_000_000 && c.ropeScalingFactor == 1)
        let local = c.inverseFrequencies(for: .sliding)
        let global = c.inverseFrequencies(for: .full)
        #expect(local.count == 128 && local[0] == 1 && abs(local[64] - 0.01) < 1e-7)
        #expect(abs(global[64] - 0.001) < 1e-8)
    }

    @Test func defaultsAndPatterns() throws {
        // Missing fields take transformers' Gemma3TextConfig defaults; the pattern gives global layers.
        let c = try config(#"{"model_type": "gemma3_text", "num_hidden_layers": 12, "sliding_window_pattern": 4}"#)
        #expect(c.hiddenSize == 2304 && c.headCount == 8 && c.slidingWindow == 4096 && c.rmsNormEpsilon == 1e-6)
        #expect(c.layerTypes.enumerated().filter { $0.element == .full }.map(\.offset) == [3, 7, 11])
        let d = try config(#"{"num_hidden_layers": 7}"#)
        #expect(d.layerTypes.enumerated().filter { $0.element == .full }.map(\.offset) == [5])
        // The text part of a multimodal config.
        let m = try config(#"{"model_type": "gemma3", "text_config": {"hidden_size": 1152, "num_hidden_layers": 26}}"#)
        #expect(m.hiddenSize == 1152 && m.layerTypes.count == 26)
    }

    @Test func ropeScalingAppliesToGlobalLayersOnly() throws {
        let legacy = try config(#"{"rope_scaling": {"rope_type": "linear", "factor": 8.0}, "head_dim": 4}"#)
        #expect(legacy.ropeScalingFactor == 8)
        #expect(legacy.inverseFrequencies(for: .full)[0] == 0.125 && legacy.inverseFrequencies(for: .sliding)[0] == 1)
        let modern = try config(
            #"{"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4, "rope_theta": 500000}, "sliding_attention": {"rope_type": "default", "rope_theta": 20000}}}"#
        )
        #expect(modern.ropeScalingFactor == 4 && modern.ropeTheta == 500_000 && modern.ropeLocalBase == 20_000)
    }

    @Test func refusesWhatItCannotRun() throws {
        let cases = [
            #"{"model_type": "llama"}"#,
            #"{"rope_scaling": {"rope_type": "yarn", "factor": 4}}"#,
            #"{"hidden_activation": "silu"}"#,
            #"{"attn_logit_softcapping": 50.0}"#,
            #"{"num_attention_heads": 3, "num_key_value_heads": 2}"#,
            #"{"num_hidden_layers": 2, "layer_types": ["full_attention"]}"#,
            #"{"layer_types": ["sliding_attention", "chunked"], "num_hidden_layers": 2}"#,
            #"{"hidden_size": "640"}"#,
            #"{"hidden_size": 0}"#,
            #"[1]"#,
        ]
        for json in cases {
            #expect(throws: InferenceError.self, "\(json)") { try config(json) }
        }
    }

    @Test func jsonParserEdgeCases() throws {
        #expect(
            try JSONValue.parse(Array(#"{"a": [1, -2.5e3, "\u00e9\ud83d\ude00", true, null]}"#.utf8))
                == .object(["a": .array([.integer(1), .number(-2500), .string("é😀"), .bool(true), .null])]))
        for bad in [
            #"{"a":1,"a":2}"#, "[1,]", "01", #""\ud800""#, "[" + String(repeating: "[", count: 70) + "]", "1 2",
            #"{"a" 1}"#, "\u{FF}",
        ] {
            #expect(throws: JSONValue.ParseError.self, "\(bad)") { try JSONValue.parse(Array(bad.utf8)) }
        }
    }
}
