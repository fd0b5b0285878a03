/// How a weight tensor's elements are stored: plain floats, or ggml quantization blocks.
///
/// Block layouts are ggml's (gemma3-and-serving.md §3.5, from ggml-common.h); a row of a quantized
/// tensor is a whole number of blocks, so rows can be dequantized independently.
public enum WeightFormat: String, Sendable, CaseIterable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case q8_0 = "Q8_0"
    case q4_0 = "Q4_0"
    case q4_1 = "Q4_1"
    case q5_0 = "Q5_0"
    case q5_1 = "Q5_1"
    case q4_K = "Q4_K"
    case q6_K = "Q6_K"

    /// Elements per block (1 for plain floats).
    public var blockElements: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q8_0, .q4_0, .q4_1, .q5_0, .q5_1: return 32
        case .q4_K, .q6_K: return 256
        }
    }

    /// Bytes per block, as `sizeof(block_xxx)` in ggml-common.h.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q8_0: return 34  // half d; int8 qs[32]
        case .q4_0: return 18  // half d; uint8 qs[16]
        case .q4_1: return 20  // half d, m; uint8 qs[16]
        case .q5_0: return 22  // half d; uint8 qh[4]; uint8 qs[16]
        case .q5_1: return 24  // half d, m; uint8 qh[4]; uint8 qs[16]
        case .q4_K: return 144  // half d, dmin; uint8 scales[12]; uint8 qs[128]
        case .q6_K: return 210  // uint8 ql[128], qh[64]; int8 scales[16]; half d
        }
    }

    /// The ggml_type id of this format in GGUF tensor infos (§3.1).
    public var ggmlType: UInt32 {
        switch self {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q5_0: return 6
        case .q5_1: return 7
        case .q8_0: return 8
        case .q4_K: return 12
        case .q6_K: return 14
        case .bf16: return 30
        }
    }

    public init?(ggmlType: UInt32) {
        guard let format = WeightFormat.allCases.first(where: { $0.ggmlType == ggmlType }) else { return nil }
        self = format
    }

    /// Bytes that `count` elements take, or nil when `count` is not a whole number of blocks or overflows.
    public func byteCount(elements count: Int) -> Int? {
        guard count >= 0, count % blockElements == 0 else { return nil }
        let (bytes, overflow) = (count / blockElements).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }
}
