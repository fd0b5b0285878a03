import Foundation

@testable import Inference

/// Builds safetensors files in memory: `tensors` in order, contiguous data, header padded to 8.
struct SafetensorsBuilder {
    struct Entry {
        var name: String
        var dtype: String
        var shape: [Int]
        var data: [UInt8]
    }

    var entries: [Entry] = []
    var metadata: [String: String] = ["format": "pt"]

    mutating func add(_ name: String, dtype: String = "F32", shape: [Int], floats: [Float]) {
        precondition(dtype == "F32" || dtype == "BF16")
        var data: [UInt8] = []
        for value in floats {
            if dtype == "F32" {
                withUnsafeBytes(of: value.bitPattern.littleEndian) { data += $0 }
            } else {
                withUnsafeBytes(of: UInt16(Gemma3Config.roundedToBFloat16(value).bitPattern >> 16).littleEndian) {
                    data += $0
                }
            }
        }
        entries.append(Entry(name: name, dtype: dtype, shape: shape, data: data))
    }

    /// The header JSON text, with offsets as they would be written.
    func headerJSON() -> String {
        var parts: [String] = []
        var offset = 0
        for entry in entries {
            let shape = entry.shape.map(String.init).joined(separator: ",")
            parts.append(
                "\"\(entry.name)\":{\"dtype\":\"\(entry.dtype)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + entry.data.count)]}"
            )
            offset += entry.data.count
        }
        let meta = metadata.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",")
        parts.append("\"__metadata__\":{\(meta)}")
        return "{" + parts.joined(separator: ",") + "}"
    }

    func bytes(header: String? = nil) -> [UInt8] {
        var json = Array((header ?? headerJSON()).utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out += $0 }
        out += json
        for entry in entries { out += entry.data }
        return out
    }
}

/// Builds GGUF v3 files in memory.
struct GGUFBuilder {
    struct Tensor {
        var name: String
        var type: UInt32
        /// GGUF order: innermost first.
        var dimensions: [UInt64]
        var data: [UInt8]
    }

    var metadata: [(String, UInt32, [UInt8])] = []
    var tensors: [Tensor] = []
    var alignment = 32

    static func string(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt64(text.utf8.count).littleEndian) { out += $0 }
        return out + Array(text.utf8)
    }

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    mutating func add(_ key: String, u32 value: UInt32) { metadata.append((key, 4, Self.le(value))) }
    mutating func add(_ key: String, f32 value: Float) { metadata.append((key, 6, Self.le(value.bitPattern))) }
    mutating func add(_ key: String, string value: String) { metadata.append((key, 8, Self.string(value))) }
    mutating func add(_ key: String, strings: [String]) {
        var payload = Self.le(UInt32(8)) + Self.le(UInt64(strings.count))
        for s in strings { payload += Self.string(s) }
        metadata.append((key, 9, payload))
    }

    mutating func addTensor(_ name: String, format: WeightFormat, shape: [Int], data: [UInt8]) {
        tensors.append(
            Tensor(name: name, type: format.ggmlType, dimensions: shape.reversed().map(UInt64.init), data: data))
    }

    /// The file, with the offset of the tensor info table and of the data section for tests that damage them.
    func build() -> (bytes: [UInt8], tensorInfoStart: Int, dataStart: Int) {
        var out: [UInt8] =
            Array("GGUF".utf8) + Self.le(UInt32(3)) + Self.le(UInt64(tensors.count)) + Self.le(UInt64(metadata.count))
        for (key, type, payload) in metadata { out += Self.string(key) + Self.le(type) + payload }
        let tensorInfoStart = out.count
        var offset = 0
        var offsets: [Int] = []
        for tensor in tensors {
            offsets.append(offset)
            offset += (tensor.data.count + alignment - 1) / alignment * alignment
        }
        for (tensor, offset) in zip(tensors, offsets) {
            out += Self.string(tensor.name) + Self.le(UInt32(tensor.dimensions.count))
            for d in tensor.dimensions { out += Self.le(d) }
            out += Self.le(tensor.type) + Self.le(UInt64(offset))
        }
        while out.count % alignment != 0 { out.append(0) }
        let dataStart = out.count
        for (tensor, offset) in zip(tensors, offsets) {
            while out.count < dataStart + offset { out.append(0) }
            out += tensor.data
        }
        return (out, tensorInfoStart, dataStart)
    }
}


/// f32 values as little-endian bytes.
func f32Bytes(_ values: [Float]) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(values.count * 4)
    for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
    return out
}
