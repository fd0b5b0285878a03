/// What the weight products of one decoded token cost on the CPU backend as loaded: multiply-adds
/// by the instructions that do them, and bytes of weights read (the packed tiles where there are).
public struct ProductCost: Sendable {
    /// Multiply-adds of matrices without tiles (f32 FMA, or int8 without VNNI at about its rate).
    public var f32MultiplyAdds = 0
    /// Multiply-adds of matrices with int8 tiles (`vpdpbusd`).
    public var int8MultiplyAdds = 0
    /// Multiply-adds of matrices with bf16 tiles (`vdpbf16ps`, two products each: x's high and low parts).
    public var bf16MultiplyAdds = 0
    /// Bytes of weights one decode step reads.
    public var bytes = 0

    /// The fewest seconds a step of `size` tokens can take at these rates (multiply-adds per second;
    /// nil where the CPU lacks the instruction, whose products then have none): the longer of its
    /// multiply-adds at their instructions' peaks and one read of its weights at `bandwidth`.
    public func floorSeconds(size: Int, fma: Double, int8: Double?, bf16: Double?, bandwidth: Double) -> Double {
        let arithmetic =
            Double(f32MultiplyAdds) / fma + Double(int8MultiplyAdds) / (int8 ?? fma) + Double(2 * bf16MultiplyAdds) / (bf16 ?? fma)
        return max(Double(size) * arithmetic, Double(bytes) / bandwidth)
    }
}

extension Gemma3Model where Backend == CPUBackend {
    /// The products of one decoded token: every layer's projections and the LM head, plus the norm
    /// weights read (the embedding row of the token is left out: one row).
    public var productCost: ProductCost {
        var cost = ProductCost()
        for matrix in productMatrices { cost.add(matrix) }
        for layer in layers {
            for norm in [layer.inputNorm, layer.queryNorm, layer.keyNorm, layer.postAttentionNorm, layer.preFeedforwardNorm,
                         layer.postFeedforwardNorm] {
                cost.bytes += norm.byteCount
            }
        }
        cost.bytes += finalNorm.byteCount
        return cost
    }
}

extension ProductCost {
    mutating func add(_ matrix: WeightTensor) {
        let products = matrix.rows * matrix.columns
        switch matrix.tiles?.kind {
        case .int8: int8MultiplyAdds += products
        case .bf16: bf16MultiplyAdds += products
        case nil: f32MultiplyAdds += products
        }
        bytes += matrix.tiles?.byteCount ?? matrix.byteCount
    }
}
