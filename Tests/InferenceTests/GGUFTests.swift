import Foundation
import TestSupport
import Testing

@testable import Inference

@Suite struct GGUFTests {
    func sample() -> GGUFBuilder {
        var builder = GGUFBuilder()
        builder.add("general.architecture", string: "gemma3")
        builder.add("gemma3.block_count", u32: 2)
        builder.add("gemma3.rope.freq_base", f32: 1e6)
        builder.add("tokenizer.ggml.tokens", strings: ["<pad>", "<eos>", "<bos>"])
        builder.addTensor("norm.weight", format: .f32, shape: [4], data: f32Bytes([1, 2, 3, 4]))
        var random = TestRandom(seed: 3)
        builder.addTensor("q.weight", format: .q8_0, shape: [2, 64], data: random.bytes(2 * 2 * 34))
        return builder
    }

    func parse(_ bytes: [UInt8]) throws -> GGUFFile {
        try GGUFFile(file: try MappedFile(copying: bytes, path: "test.gguf"))
    }

    @Test func readsMetadataAndTensors() throws {
        let file = try parse(sample().build().bytes)
        #expect(file.version == 3)
        #expect(file.metadata["general.architecture"] == .string("gemma3"))
        #expect(file.metadata["gemma3.block_count"]?.intValue == 2)
        #expect(file.metadata["gemma3.rope.freq_base"]?.doubleValue == 1e6)
        #expect(
            file.metadata["tokenizer.ggml.tokens"]?.arrayValue?.compactMap(\.stringValue) == [
                "<pad>", "<eos>", "<bos>",
            ])
        let norm = try file.tensor("norm.weight")
        #expect(norm.floats() == [1, 2, 3, 4])
        let q = try file.tensor("q.weight")
        // GGUF dims [64, 2] are the row-major shape [2, 64].
        #expect(q.format == .q8_0 && q.shape == [2, 64] && q.rowBytes == 68 && q.byteCount == 136)
        #expect(file.tensorInfos.map(\.name) == ["norm.weight", "q.weight"])
    }

    @Test func rejectsTargetedDamage() throws {
        let (good, infoStart, _) = sample().build()
        func patched(_ offset: Int, _ bytes: [UInt8]) -> [UInt8] {
            var copy = good
            copy.replaceSubrange(offset..<offset + bytes.count, with: bytes)
            return copy
        }
        // Offsets of the first tensor info's fields: name (8 + 11), n_dims (4), dims (8), type (4), offset (8).
        let firstName = infoStart
        let firstDims = firstName + 8 + 11
        let firstType = firstDims + 4 + 8
        let firstOffset = firstType + 4
        var bigEndian = good
        bigEndian.replaceSubrange(4..<8, with: [0, 0, 0, 3])
        var tooManyElements = GGUFBuilder()
        tooManyElements.add("k", strings: ["a"])
        var tooMany = tooManyElements.build().bytes
        tooMany.replaceSubrange(24 + 8 + 1 + 4 + 4..<24 + 8 + 1 + 4 + 4 + 8, with: GGUFBuilder.le(UInt64(1) << 60))
        let damaged: [[UInt8]] = [
            Array("GGUF".utf8),  // truncated header
            patched(0, Array("GGML".utf8)),  // magic
            patched(4, GGUFBuilder.le(UInt32(1))),  // version 1
            bigEndian,
            patched(8, GGUFBuilder.le(UInt64.max)),  // tensor count
            patched(16, GGUFBuilder.le(UInt64(1) << 40)),  // metadata count
            patched(24, GGUFBuilder.le(UInt64(1) << 50)),  // first key length
            patched(firstName, GGUFBuilder.le(UInt64(1) << 62)),  // tensor name length
            patched(firstDims, GGUFBuilder.le(UInt32(0))),  // zero dimensions
            patched(firstDims, GGUFBuilder.le(UInt32(9))),  // too many dimensions
            patched(firstDims + 4, GGUFBuilder.le(UInt64(1) << 40)),  // dimension past the file
            patched(firstType, GGUFBuilder.le(UInt32(16))),  // IQ2_XXS: unsupported
            patched(firstType, GGUFBuilder.le(UInt32(99))),  // unknown type
            patched(firstOffset, GGUFBuilder.le(UInt64(3))),  // unaligned
            patched(firstOffset, GGUFBuilder.le(UInt64(1) << 40)),  // past the end
            patched(firstOffset, GGUFBuilder.le(UInt64(32))),  // overlaps the second tensor
            Array(good.prefix(good.count - 1)),  // truncated data
            tooMany,
        ]
        for (index, bytes) in damaged.enumerated() {
            #expect(throws: InferenceError.self, "case \(index)") { try parse(bytes) }
        }
        // A Q8_0 row of 48 elements is not a whole number of 32-element blocks.
        var ragged = GGUFBuilder()
        ragged.addTensor("r", format: .q8_0, shape: [1, 48], data: [UInt8](repeating: 0, count: 51))
        #expect(throws: InferenceError.self) { try parse(ragged.build().bytes) }
    }

    @Test func survivesRandomDamage() throws {
        let (good, _, dataStart) = sample().build()
        var random = TestRandom(seed: 11)
        var thrown = 0
        for round in 0..<3000 {
            var bytes = good
            if round % 2 == 0 {
                bytes = Array(bytes.prefix(Int.random(in: 1..<dataStart + 8, using: &random)))
            } else {
                for _ in 0..<Int.random(in: 1...3, using: &random) {
                    bytes[Int.random(in: 0..<dataStart, using: &random)] ^=
                        UInt8(1) << UInt8.random(in: 0...7, using: &random)
                }
            }
            do {
                let file = try parse(bytes)
                for info in file.tensorInfos {
                    let tensor = try file.tensor(info.name)
                    #expect(tensor.data + tensor.byteCount <= file.file.base + file.file.size)
                }
            } catch is InferenceError {
                thrown += 1
            }
        }
        #expect(thrown > 1500, "most damage must be detected, got \(thrown) of 3000")
    }

    @Test func readsTheGemmaConfigFromMetadata() throws {
        var builder = GGUFBuilder()
        builder.add("general.architecture", string: "gemma3")
        for (key, value) in [
            ("embedding_length", 64), ("feed_forward_length", 128), ("block_count", 7), ("attention.head_count", 4),
            ("attention.head_count_kv", 2), ("attention.key_length", 16), ("attention.value_length", 16),
            ("context_length", 1024), ("attention.sliding_window", 8),
        ] {
            builder.add("gemma3." + key, u32: UInt32(value))
        }
        builder.add("gemma3.rope.freq_base", f32: 1e6)
        builder.addTensor(
            "token_embd.weight", format: .f32, shape: [10, 64], data: f32Bytes([Float](repeating: 0, count: 640)))
        let config = try Gemma3Config(gguf: parse(builder.build().bytes))
        #expect(
            config.hiddenSize == 64 && config.layerCount == 7 && config.kvHeadCount == 2 && config.headDimension == 16)
        #expect(config.vocabularySize == 10 && config.slidingWindow == 8 && config.queryPreAttentionScalar == 16)
        // Not in GGUF: the pattern (global at 5) and the local base, hard-coded as llama.cpp does.
        #expect(config.layerTypes == [.sliding, .sliding, .sliding, .sliding, .sliding, .full, .sliding])
        #expect(config.ropeLocalBase == 10_000 && config.ropeTheta == 1e6 && config.tieWordEmbeddings)
    }
}
