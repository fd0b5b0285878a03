import Foundation

/// Causal attention over the KV ring buffer, scores in f32 and softmax with the maximum subtracted,
/// as HF's eager path does (`softmax(q·kᵀ·scaling + mask, float32) · v`, gemma3-and-serving.md §1.3).
///
/// Work items are (token, KV head) pairs: the query heads that share a KV head (all four in Gemma 3
/// 270M/1B, which have one) read each key and value row once while it is in L1. A single token
/// (decode) has too few such pairs to feed every core, so there each query head is its own item.
extension CPUBackend {
    public func attention(
        queries: CPUBuffer, keys: CPUBuffer, values: CPUBuffer, rows: Int, firstPosition: Int, heads: Int, kvHeads: Int,
        headDimension: Int, capacity: Int, window: Int?, scale: Float, into out: CPUBuffer
    ) {
        let lastPosition = firstPosition + rows - 1
        precondition(heads % kvHeads == 0 && rows * heads * headDimension <= min(queries.count, out.count))
        precondition(capacity * kvHeads * headDimension <= min(keys.count, values.count))
        // The ring must still hold the oldest key the first query needs.
        let oldestNeeded = window.map { max(0, firstPosition - $0 + 1) } ?? 0
        precondition(lastPosition - oldestNeeded < capacity, "the KV cache is too small for this batch")
        let group = heads / kvHeads
        let maximumKeys = window.map { min($0, lastPosition + 1) } ?? (lastPosition + 1)
        let byGroup = rows * kvHeads >= 2 * Parallel.threadCount
        let headsPerItem = byGroup ? group : 1
        let q = queries.pointer
        let k = keys.pointer
        let v = values.pointer
        let o = out.pointer
        let d = headDimension
        Parallel.forRanges(rows * heads / headsPerItem) { range in
            // scores: (headsPerItem, keys seen by one query)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: headsPerItem * maximumKeys)
            defer { scores.deallocate() }
            for item in range {
                let t = item / (heads / headsPerItem)
                let firstHead = (item % (heads / headsPerItem)) * headsPerItem
                let kvHead = firstHead / group
                let position = firstPosition + t
                let first = window.map { max(0, position - $0 + 1) } ?? 0
                let count = position - first + 1
                for j in 0..<count {
                    let key = k + (((first + j) % capacity) * kvHeads + kvHead) * d
                    for g in 0..<headsPerItem {
                        let query = q + (t * heads + firstHead + g) * d
                        scores[g * maximumKeys + j] = DotProduct.f32(key, query, d) * scale
                    }
                }
                for g in 0..<headsPerItem {
                    Self.softmax(scores + g * maximumKeys, count)
                    (o + (t * heads + firstHead + g) * d).initialize(repeating: 0, count: d)
                }
                for j in 0..<count {
                    let value = v + (((first + j) % capacity) * kvHeads + kvHead) * d
                    for g in 0..<headsPerItem {
                        let result = o + (t * heads + firstHead + g) * d
                        let weight = scores[g * maximumKeys + j]
                        let p = SIMD8<Float>(repeating: weight)
                        var c = 0
                        while c + 8 <= d {
                            storeLanes(loadLanes(result + c).addingProduct(loadLanes(value + c), p), result + c)
                            c += 8
                        }
                        while c < d {
                            result[c] += weight * value[c]
                            c += 1
                        }
                    }
                }
            }
        }
    }
}

// Lane helpers, repeated per file: debug builds only inline within a file (see Dequantize.swift).
@inline(__always) private func loadLanes(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always) private func storeLanes(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
