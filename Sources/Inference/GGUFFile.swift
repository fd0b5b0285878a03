/// A GGUF file (v2 or v3, little-endian), memory-mapped, header and tensor table validated in full.
///
/// Layout (ggml docs/gguf.md, gemma3-and-serving.md §3.1): magic "GGUF", version, tensor count,
/// metadata count, the metadata key/values, the tensor infos (name, dims innermost first, ggml type,
/// offset), padding to `general.alignment` (32 if absent), then the tensor data. Every count, length
/// and offset is checked against the file size before it is used, so a damaged file throws.
public struct GGUFFile: Sendable {
    public struct TensorInfo: Sendable, Equatable {
        public let name: String
        public let format: WeightFormat
        /// Row-major shape, outermost first (the GGUF dims reversed): `[out, in]` for a linear weight.
        public let shape: [Int]
        /// Byte range inside the tensor data section.
        public let dataRange: Range<Int>
    }

    public static let magic: UInt32 = 0x4655_4747  // "GGUF" read as a little-endian u32
    public static let defaultAlignment = 32

    public let file: MappedFile
    public let version: Int
    public let metadata: [String: GGUFValue]
    /// Tensor infos in file order.
    public let tensorInfos: [TensorInfo]
    public let alignment: Int
    /// Offset of the tensor data section in the file.
    public let dataStart: Int
    private let tensorIndex: [String: Int]

    public var path: String { file.path }

    public init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        var reader = Reader(file: file)
        let magic = try reader.u32("the magic number")
        guard magic == Self.magic else {
            throw reader.invalid("the file does not start with \"GGUF\" (is it a GGUF model?)")
        }
        let version = try reader.u32("the version")
        if version.byteSwapped == 2 || version.byteSwapped == 3 {
            throw InferenceError.unsupported("\(file.path) is a big-endian GGUF; convert it to little-endian")
        }
        guard version == 2 || version == 3 else {
            throw reader.invalid("GGUF version \(version) is not supported (versions 2 and 3 are)")
        }
        let tensorCount = try reader.u64("the tensor count")
        let metadataCount = try reader.u64("the metadata count")
        // Each entry takes at least 13 (metadata) or 24 (tensor info) bytes: larger counts are lies.
        guard metadataCount <= UInt64(file.size / 13) else {
            throw reader.invalid("metadata count \(metadataCount) is larger than the file")
        }
        guard tensorCount <= UInt64(file.size / 24) else {
            throw reader.invalid("tensor count \(tensorCount) is larger than the file")
        }

        var metadata: [String: GGUFValue] = [:]
        for _ in 0..<Int(metadataCount) {
            let key = try reader.string("a metadata key")
            let type = try reader.u32("the type of \(key)")
            let value = try reader.value(type: type, key: key, depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw reader.invalid("metadata key \(key) appears twice")
            }
        }

        var alignment = Self.defaultAlignment
        if let value = metadata["general.alignment"] {
            guard case .uint32(let a) = value, a > 0, a % 8 == 0, a <= 1 << 20 else {
                throw reader.invalid("general.alignment must be a u32 multiple of 8")
            }
            alignment = Int(a)
        }

        struct Pending {
            var name: String
            var format: WeightFormat
            var shape: [Int]
            var offset: Int
            var bytes: Int
        }
        var pending: [Pending] = []
        var tensorIndex: [String: Int] = [:]
        for _ in 0..<Int(tensorCount) {
            let name = try reader.string("a tensor name")
            let dimensionCount = try reader.u32("the dimension count of \(name)")
            guard (1...4).contains(dimensionCount) else {
                throw reader.invalid("tensor \(name) has \(dimensionCount) dimensions (1 to 4 allowed)")
            }
            var dimensions: [Int] = []
            var elements = 1
            for _ in 0..<dimensionCount {
                let dimension = try reader.u64("a dimension of \(name)")
                guard dimension > 0, dimension <= UInt64(Int32.max) else {
                    throw reader.invalid("tensor \(name) has dimension \(dimension)")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(dimension))
                guard !overflow, product <= file.size * 8 else {
                    throw reader.invalid("tensor \(name) is larger than the file")
                }
                elements = product
                dimensions.append(Int(dimension))
            }
            let type = try reader.u32("the type of \(name)")
            guard let format = WeightFormat(ggmlType: type) else {
                throw InferenceError.unsupported(
                    "tensor \(name) in \(file.path) has ggml type \(type); the engine reads "
                        + WeightFormat.allCases.map(\.rawValue).joined(separator: ", "))
            }
            guard dimensions[0] % format.blockElements == 0, let bytes = format.byteCount(elements: elements) else {
                throw reader.invalid("tensor \(name): rows of \(dimensions[0]) are not whole \(format.rawValue) blocks")
            }
            let offset = try reader.u64("the offset of \(name)")
            guard offset % UInt64(alignment) == 0 else {
                throw reader.invalid("tensor \(name) offset \(offset) is not aligned to \(alignment)")
            }
            guard offset <= UInt64(file.size) else {
                throw reader.invalid("tensor \(name) starts past the end of the file")
            }
            guard tensorIndex.updateValue(pending.count, forKey: name) == nil else {
                throw reader.invalid("tensor \(name) appears twice")
            }
            pending.append(
                Pending(name: name, format: format, shape: dimensions.reversed(), offset: Int(offset), bytes: bytes))
        }

        let dataStart = (reader.offset + alignment - 1) / alignment * alignment
        let dataSize = file.size - dataStart
        if !pending.isEmpty {
            guard dataStart <= file.size else {
                throw reader.invalid("the tensor data section starts past the end of the file (truncated?)")
            }
        }
        var infos: [TensorInfo] = []
        for tensor in pending {
            guard tensor.offset <= dataSize, tensor.bytes <= dataSize - tensor.offset else {
                throw reader.invalid("tensor \(tensor.name) runs past the end of the file (truncated?)")
            }
            infos.append(
                TensorInfo(
                    name: tensor.name, format: tensor.format, shape: tensor.shape,
                    dataRange: tensor.offset..<tensor.offset + tensor.bytes))
        }
        let ordered = infos.sorted { $0.dataRange.lowerBound < $1.dataRange.lowerBound }
        for (previous, next) in zip(ordered, ordered.dropFirst())
        where next.dataRange.lowerBound < previous.dataRange.upperBound {
            throw reader.invalid("tensors \(previous.name) and \(next.name) overlap")
        }

        self.version = Int(version)
        self.metadata = metadata
        self.tensorInfos = infos
        self.alignment = alignment
        self.dataStart = dataStart
        self.tensorIndex = tensorIndex
    }

    public func contains(_ name: String) -> Bool { tensorIndex[name] != nil }

    public func info(_ name: String) -> TensorInfo? { tensorIndex[name].map { tensorInfos[$0] } }

    public func tensor(_ name: String) throws -> WeightTensor {
        guard let info = info(name) else { throw InferenceError.missingTensor(name: name, source: path) }
        return WeightTensor(
            name: name, format: info.format, shape: info.shape, data: file.base + dataStart + info.dataRange.lowerBound,
            byteCount: info.dataRange.count, owner: file)
    }

    /// A bounds-checked little-endian cursor over the mapped file.
    private struct Reader {
        let file: MappedFile
        var offset = 0

        func invalid(_ reason: String) -> InferenceError { .invalidGGUF(path: file.path, reason: reason) }

        mutating func take(_ count: Int, _ what: String) throws -> UnsafeRawPointer {
            guard count >= 0, count <= file.size - offset else {
                throw invalid("the file ends inside \(what) at byte \(offset) (truncated?)")
            }
            defer { offset += count }
            return file.base + offset
        }

        mutating func u32(_ what: String) throws -> UInt32 {
            try take(4, what).loadUnaligned(as: UInt32.self).littleEndian
        }
        mutating func u64(_ what: String) throws -> UInt64 {
            try take(8, what).loadUnaligned(as: UInt64.self).littleEndian
        }

        mutating func string(_ what: String) throws -> String {
            let length = try u64("the length of \(what)")
            guard length <= UInt64(file.size - offset) else {
                throw invalid("\(what) at byte \(offset) claims \(length) bytes, more than the file has left")
            }
            let start = try take(Int(length), what)
            return String(decoding: UnsafeRawBufferPointer(start: start, count: Int(length)), as: UTF8.self)
        }

        mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
            switch type {
            case 0: return .uint8(try take(1, key).load(as: UInt8.self))
            case 1: return .int8(try take(1, key).load(as: Int8.self))
            case 2: return .uint16(try take(2, key).loadUnaligned(as: UInt16.self).littleEndian)
            case 3: return .int16(try take(2, key).loadUnaligned(as: Int16.self).littleEndian)
            case 4: return .uint32(try u32(key))
            case 5: return .int32(Int32(bitPattern: try u32(key)))
            case 6: return .float32(Float(bitPattern: try u32(key)))
            case 7:
                let byte = try take(1, key).load(as: UInt8.self)
                guard byte <= 1 else { throw invalid("\(key) is a bool with value \(byte)") }
                return .bool(byte == 1)
            case 8: return .string(try string(key))
            case 9:
                guard depth < 4 else { throw invalid("\(key) nests arrays too deeply") }
                let elementType = try u32("the element type of \(key)")
                let count = try u64("the length of \(key)")
                let minimumBytes: UInt64
                switch elementType {
                case 0, 1, 7: minimumBytes = 1
                case 2, 3: minimumBytes = 2
                case 4, 5, 6: minimumBytes = 4
                case 8, 10, 11, 12: minimumBytes = 8  // a string is at least its 8-byte length
                case 9: minimumBytes = 12
                default: throw invalid("\(key) is an array of unknown value type \(elementType)")
                }
                guard count <= UInt64(file.size - offset) / minimumBytes else {
                    throw invalid("\(key) claims \(count) elements, more than the file has bytes left")
                }
                var items: [GGUFValue] = []
                items.reserveCapacity(min(Int(count), 1 << 20))
                for _ in 0..<Int(count) { items.append(try value(type: elementType, key: key, depth: depth + 1)) }
                return .array(items)
            case 10: return .uint64(try u64(key))
            case 11: return .int64(Int64(bitPattern: try u64(key)))
            case 12: return .float64(Double(bitPattern: try u64(key)))
            default: throw invalid("\(key) has unknown value type \(type)")
            }
        }
    }
}
