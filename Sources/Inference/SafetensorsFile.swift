/// One `.safetensors` file, memory-mapped, with its header validated in full before any tensor is used.
///
/// Format (huggingface/safetensors README): an 8-byte little-endian header length N, N bytes of JSON
/// `{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
/// then the data, offsets relative to its start. Every way a damaged file can lie (length past the
/// end, offsets outside the data or overlapping, a byte count that does not match shape and dtype)
/// is rejected here with the tensor's name, so nothing later can read out of bounds.
public struct SafetensorsFile: Sendable {
    public struct TensorInfo: Sendable, Equatable {
        public let name: String
        /// The safetensors dtype string (`BF16`, `F32`, ...).
        public let dtype: String
        public let shape: [Int]
        /// Byte range inside the data section (after the header).
        public let dataRange: Range<Int>
    }

    /// The safetensors reference implementation refuses headers above 100 MB (`MAX_HEADER_SIZE`).
    public static let maximumHeaderBytes = 100_000_000

    /// Bytes per element of every dtype the format defines.
    public static let elementBytes: [String: Int] = [
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
        "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    ]

    public let file: MappedFile
    public let metadata: [String: String]
    public let tensors: [String: TensorInfo]
    /// Offset of the data section in the file: 8 + N.
    public let dataStart: Int

    public var path: String { file.path }

    public init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        let path = file.path
        func invalid(_ reason: String) -> InferenceError { .invalidSafetensors(path: path, reason: reason) }

        guard file.size >= 8 else {
            throw invalid("the file is \(file.size) bytes, shorter than the 8-byte header length")
        }
        let headerLength = file.base.loadUnaligned(as: UInt64.self).littleEndian
        guard headerLength <= UInt64(Self.maximumHeaderBytes) else {
            throw invalid(
                "the header length \(headerLength) is above the format's limit of \(Self.maximumHeaderBytes) bytes")
        }
        guard Int(headerLength) <= file.size - 8 else {
            throw invalid(
                "the header length \(headerLength) runs past the end of the \(file.size)-byte file (truncated?)")
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = file.size - dataStart

        let header: JSONValue
        do {
            header = try JSONValue.parse(file.bytes(8..<dataStart))
        } catch {
            throw invalid("the header is not JSON: \(error)")
        }
        guard let fields = header.objectValue else { throw invalid("the header is not a JSON object") }

        var metadata: [String: String] = [:]
        var tensors: [String: TensorInfo] = [:]
        for (name, value) in fields {
            if name == "__metadata__" {
                guard let entries = value.objectValue else { throw invalid("__metadata__ is not an object") }
                for (key, item) in entries {
                    guard let text = item.stringValue else { throw invalid("__metadata__.\(key) is not a string") }
                    metadata[key] = text
                }
                continue
            }
            guard let info = value.objectValue else { throw invalid("entry \(name) is not an object") }
            guard let dtype = info["dtype"]?.stringValue else { throw invalid("tensor \(name) has no dtype string") }
            guard let elementBytes = Self.elementBytes[dtype] else {
                throw invalid("tensor \(name) has unknown dtype \(dtype)")
            }
            guard let shapeItems = info["shape"]?.arrayValue else { throw invalid("tensor \(name) has no shape array") }
            var shape: [Int] = []
            var elements = 1
            for item in shapeItems {
                guard let dimension = item.intValueStrict, dimension >= 0 else {
                    throw invalid("tensor \(name) has a shape entry that is not a non-negative integer")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
                guard !overflow, product <= dataSize else {
                    throw invalid("tensor \(name) has shape \(shape + [dimension]) larger than the file")
                }
                elements = product
                shape.append(dimension)
            }
            guard let offsets = info["data_offsets"]?.arrayValue, offsets.count == 2,
                let begin = offsets[0].intValueStrict, let end = offsets[1].intValueStrict
            else { throw invalid("tensor \(name) has no data_offsets pair of integers") }
            guard begin >= 0, begin <= end else {
                throw invalid("tensor \(name) has data_offsets [\(begin), \(end)] out of order")
            }
            guard end <= dataSize else {
                throw invalid(
                    "tensor \(name) ends at data offset \(end), past the \(dataSize) bytes of data (truncated?)")
            }
            guard end - begin == elements * elementBytes else {
                throw invalid(
                    "tensor \(name) has \(end - begin) bytes but shape \(shape) of \(dtype) needs \(elements * elementBytes)"
                )
            }
            tensors[name] = TensorInfo(name: name, dtype: dtype, shape: shape, dataRange: begin..<end)
        }

        // Overlapping tensors would alias each other's bytes; the format forbids it.
        let ordered = tensors.values.filter { !$0.dataRange.isEmpty }.sorted {
            $0.dataRange.lowerBound < $1.dataRange.lowerBound
        }
        for (previous, next) in zip(ordered, ordered.dropFirst())
        where next.dataRange.lowerBound < previous.dataRange.upperBound {
            throw invalid("tensors \(previous.name) and \(next.name) overlap")
        }

        self.metadata = metadata
        self.tensors = tensors
        self.dataStart = dataStart
    }

    /// The tensor `name` as a weight the engine can read (F32, F16 or BF16).
    public func tensor(_ name: String) throws -> WeightTensor {
        guard let info = tensors[name] else { throw InferenceError.missingTensor(name: name, source: path) }
        guard let format = WeightFormat(rawValue: info.dtype), format.blockElements == 1 else {
            throw InferenceError.invalidTensor(
                name: name, reason: "dtype \(info.dtype) in \(path); the engine reads F32, F16 and BF16 weights")
        }
        guard !info.shape.isEmpty, info.shape.allSatisfy({ $0 > 0 }) else {
            throw InferenceError.invalidTensor(name: name, reason: "empty shape \(info.shape) in \(path)")
        }
        let range = (dataStart + info.dataRange.lowerBound)..<(dataStart + info.dataRange.upperBound)
        return WeightTensor(
            name: name, format: format, shape: info.shape, data: file.base + range.lowerBound, byteCount: range.count,
            owner: file)
    }
}

extension JSONValue {
    /// An integer written as one (no fraction or exponent): offsets and shapes must be exact.
    var intValueStrict: Int? {
        if case .integer(let value) = self { return value }
        return nil
    }
}
