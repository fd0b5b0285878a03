import Foundation
import TestSupport
import Testing

@testable import Inference

@Suite struct SafetensorsTests {
    func sample() -> SafetensorsBuilder {
        var builder = SafetensorsBuilder()
        builder.add("a.weight", dtype: "F32", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6])
        builder.add("b.weight", dtype: "BF16", shape: [4], floats: [0.5, -1, 2, 1.5])
        return builder
    }

    func parse(_ bytes: [UInt8]) throws -> SafetensorsFile {
        try SafetensorsFile(file: try MappedFile(copying: bytes, path: "test.safetensors"))
    }

    @Test func readsTensorsInPlace() throws {
        let file = try parse(sample().bytes())
        #expect(file.metadata == ["format": "pt"])
        let a = try file.tensor("a.weight")
        #expect(a.format == .f32 && a.shape == [2, 3] && a.rows == 2 && a.columns == 3)
        #expect(a.floats() == [1, 2, 3, 4, 5, 6])
        // A view into the mapping, not a copy.
        #expect(a.data >= file.file.base && a.data < file.file.base + file.file.size)
        #expect(try file.tensor("b.weight").floats() == [0.5, -1, 2, 1.5])
        #expect(throws: InferenceError.self) { try file.tensor("missing") }
    }

    @Test func loadsAShardedCheckpointFromDisk() throws {
        let dir = try TemporaryDirectory()
        var first = SafetensorsBuilder()
        first.add("x", shape: [2], floats: [1, 2])
        var second = SafetensorsBuilder()
        second.add("y", dtype: "BF16", shape: [1, 2], floats: [3, 4])
        _ = try dir.write("model-00001-of-00002.safetensors", first.bytes())
        _ = try dir.write("model-00002-of-00002.safetensors", second.bytes())
        _ = try dir.write(
            "model.safetensors.index.json",
            Array(
                #"{"metadata":{"total_size":8},"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}"#
                    .utf8))
        let checkpoint = try SafetensorsCheckpoint(directory: dir.path)
        #expect(checkpoint.files.count == 2)
        #expect(checkpoint.tensorNames == ["x", "y"])
        #expect(try checkpoint.tensor("x").floats() == [1, 2])
        #expect(try checkpoint.tensor("y").floats() == [3, 4])
    }

    @Test func rejectsBadShardIndexes() throws {
        let dir = try TemporaryDirectory()
        var shard = SafetensorsBuilder()
        shard.add("x", shape: [1], floats: [1])
        _ = try dir.write("a.safetensors", shard.bytes())
        let cases = [
            #"{"weight_map":{"x":"../a.safetensors"}}"#,  // outside the folder
            #"{"weight_map":{"y":"a.safetensors"}}"#,  // shard lacks the tensor
            #"{"weight_map":{"x":"missing.safetensors"}}"#,
            #"{"weight_map":{}}"#,
            #"{"weight_map":{"x":1}}"#,
            #"not json"#,
        ]
        for index in cases {
            _ = try dir.write("model.safetensors.index.json", Array(index.utf8))
            #expect(throws: InferenceError.self, "\(index)") { try SafetensorsCheckpoint(directory: dir.path) }
        }
        try FileManager.default.removeItem(atPath: dir.path + "/model.safetensors.index.json")
        #expect(throws: InferenceError.self) { try SafetensorsCheckpoint(directory: dir.path) }
    }

    @Test func rejectsTargetedDamage() throws {
        let builder = sample()
        let good = builder.bytes()
        var headerTooLong = good
        headerTooLong.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(good.count).littleEndian) { Array($0) })
        var hugeHeader = good
        hugeHeader.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64.max.littleEndian) { Array($0) })
        let headers = [
            // overlapping offsets
            #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            // bytes do not match shape × dtype
            #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            // offsets past the data
            #"{"a":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}}"#,
            // reversed offsets, negative, fractional, huge
            #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0.0,4.0]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,99999999999999999999999]}}"#,
            #"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#,
            // unknown dtype, missing fields, wrong types
            #"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}"#,
            #"{"a":{"shape":[1],"data_offsets":[0,4]}}"#,
            #"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#,
            #"{"a":{"dtype":"F32","shape":[1]}}"#,
            #"{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}"#,
            #"{"a":[]}"#,
            #"{"__metadata__":{"format":1}}"#,
            #"[]"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            String(repeating: "[", count: 100_000),
            "{\"a\":\"\u{7}\"}",
        ]
        var damaged = [headerTooLong, hugeHeader, Array(good.prefix(7)), Array(good.prefix(good.count - 1))]
        damaged += headers.map { builder.bytes(header: $0) }
        for (index, bytes) in damaged.enumerated() {
            #expect(throws: InferenceError.self, "case \(index)") { try parse(bytes) }
        }
    }

    /// Thousands of random truncations, byte flips and length changes: each parses or throws, and
    /// whatever parses only ever points inside the file.
    @Test func survivesRandomDamage() throws {
        let good = sample().bytes()
        var random = TestRandom(seed: 7)
        var thrown = 0
        for round in 0..<3000 {
            var bytes = good
            switch round % 4 {
            case 0: bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &random)))
            case 1:
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    bytes[Int.random(in: 0..<bytes.count, using: &random)] ^= UInt8.random(in: 1...255, using: &random)
                }
            case 2:
                let length = UInt64.random(in: 0...UInt64(bytes.count * 2), using: &random)
                bytes.replaceSubrange(0..<8, with: withUnsafeBytes(of: length.littleEndian) { Array($0) })
            default:
                // Flip a digit in the header, which moves offsets or shapes.
                let digits = bytes.indices.filter { $0 >= 8 && bytes[$0] >= 0x30 && bytes[$0] <= 0x39 }
                let at = digits[Int.random(in: 0..<digits.count, using: &random)]
                bytes[at] = UInt8(0x30 + Int.random(in: 0...9, using: &random))
            }
            guard !bytes.isEmpty else { continue }
            do {
                let file = try parse(bytes)
                for name in file.tensors.keys {
                    if let tensor = try? file.tensor(name) {
                        #expect(tensor.data >= file.file.base)
                        #expect(tensor.data + tensor.byteCount <= file.file.base + file.file.size)
                    }
                }
            } catch is InferenceError {
                thrown += 1
            }
        }
        #expect(thrown > 1500, "most damage must be detected, got \(thrown) of 3000")
    }
}
