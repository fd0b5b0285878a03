#if canImport(Glibc)
    import Glibc
#endif

/// A read-only view of one weight tensor where it lies: in a memory-mapped file (or, in tests, in
/// owned bytes). Shapes are row-major, outermost first, as in PyTorch: a linear layer's weight is
/// `[out, in]` with `in` contiguous (a GGUF `[in, out]` tensor is the same bytes, §3.1).
///
/// `@unchecked Sendable`: `data` points into memory that never changes and that `owner` keeps alive.
public struct WeightTensor: @unchecked Sendable {
    public let name: String
    public let format: WeightFormat
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let byteCount: Int
    /// Rows of a matrix (the product of all but the last dimension).
    public let rows: Int
    /// Contiguous elements per row (the last dimension).
    public let columns: Int
    /// Bytes per row; whole blocks, because loaders check that `columns` is a multiple of the block size.
    public let rowBytes: Int
    /// Keeps the mapping (or buffer) behind `data` alive.
    let owner: AnyObject
    /// The same matrix repacked for AVX-512 dot products, when the CPU backend made one (`CPUBackend.matrix`).
    var tiles: WeightTiles?

    init(name: String, format: WeightFormat, shape: [Int], data: UnsafeRawPointer, byteCount: Int, owner: AnyObject) {
        self.name = name
        self.format = format
        self.shape = shape
        self.data = data
        self.byteCount = byteCount
        self.owner = owner
        rows = shape.dropLast().reduce(1, *)
        columns = shape.last ?? 1
        rowBytes = columns / format.blockElements * format.blockBytes
    }

    /// A tensor over a copy of `bytes`, for tests and small synthetic weights.
    public init(name: String, format: WeightFormat, shape: [Int], bytes: [UInt8]) throws {
        let elements = shape.reduce(1, *)
        guard shape.allSatisfy({ $0 > 0 }), let expected = format.byteCount(elements: elements), expected == bytes.count
        else {
            throw InferenceError.invalidTensor(
                name: name, reason: "\(bytes.count) bytes do not hold a \(format.rawValue) tensor of shape \(shape)")
        }
        let storage = OwnedBytes(bytes)
        self.init(
            name: name, format: format, shape: shape, data: storage.pointer, byteCount: bytes.count, owner: storage)
    }

    public var elementCount: Int { shape.reduce(1, *) }

    /// The start of row `row`.
    @inline(__always) public func row(_ row: Int) -> UnsafeRawPointer { data + row * rowBytes }

    /// Checks the shape the model expects, naming the tensor in the error.
    public func expectShape(_ expected: [Int]) throws {
        guard shape == expected else {
            throw InferenceError.invalidTensor(
                name: name, reason: "shape \(shape), expected \(expected) from the config")
        }
    }

    /// Rows `rows` widened to f32 into `out` (rows.count × columns floats): how a GPU backend converts
    /// a quantized or f16 matrix a slice at a time.
    public func widenRows(_ rows: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        precondition(rows.lowerBound >= 0 && rows.upperBound <= self.rows)
        for (i, r) in rows.enumerated() { Dequantize.row(format, row(r), count: columns, into: out + i * columns) }
    }

    /// All elements widened to f32 (small tensors: norm weights, tests).
    public func floats() -> [Float] {
        [Float](unsafeUninitializedCapacity: elementCount) { buffer, count in
            for r in 0..<rows {
                Dequantize.row(format, row(r), count: columns, into: buffer.baseAddress! + r * columns)
            }
            count = elementCount
        }
    }
}

/// Heap bytes that a `WeightTensor` can point into.
/// `@unchecked Sendable`: written once in `init`, read-only afterwards.
final class OwnedBytes: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    /// The mapping that holds `pointer` (huge-page aligned), or nil when it came from the heap.
    private let mapping: (start: UnsafeMutableRawPointer, length: Int)?

    /// `count` bytes, uninitialized, for the caller to fill before any tensor reads them.
    init(count: Int) {
        if count >= Self.hugePage, let mapped = Self.mapHuge(count) {
            pointer = mapped.pointer
            mapping = (mapped.start, mapped.length)
        } else {
            pointer = .allocate(byteCount: max(count, 1), alignment: 64)
            mapping = nil
        }
    }

    convenience init(_ bytes: [UInt8]) {
        self.init(count: bytes.count)
        if !bytes.isEmpty {
            bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        }
    }

    deinit {
        if let mapping {
            #if os(Linux)
                munmap(mapping.start, mapping.length)
            #endif
        } else {
            pointer.deallocate()
        }
    }

    private static let hugePage = 2 << 20

    /// Anonymous memory at a 2 MiB boundary, asked to be backed by transparent huge pages
    /// (MADV_HUGEPAGE, which a kernel in `madvise` mode needs): packing the weights then faults a
    /// page per 2 MiB instead of per 4 KiB, and decode, which reads every weight each step, walks
    /// far fewer TLB entries. nil if the mapping fails (the heap is used then).
    private static func mapHuge(_ count: Int) -> (pointer: UnsafeMutableRawPointer, start: UnsafeMutableRawPointer, length: Int)? {
        #if !os(Linux)
            return nil  // transparent huge pages are Linux's
        #else
        let length = count + hugePage
        guard let start = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            start != MAP_FAILED
        else { return nil }
        let aligned = (Int(bitPattern: start) + hugePage - 1) / hugePage * hugePage
        let pointer = UnsafeMutableRawPointer(bitPattern: aligned)!
        // Whole huge pages only: a tail that filled a 2 MiB page would be resident in full (about
        // 60 MB over the 270M's matrices). Advice only: 4 KiB pages if refused.
        _ = madvise(pointer, count / hugePage * hugePage, Int32(MADV_HUGEPAGE))
        return (pointer, start, length)
        #endif
    }
}
