import Foundation

/// Elementwise transcendental functions over f32 arrays, eight lanes at a time.
///
/// libm's `expf`/`tanhf` are scalar calls; over a 2048-wide MLP or a 262144-entry logit vector they
/// cost more than the matrix products around them. `exp` is Cephes' `expf` (range reduction by
/// ln 2 in two parts, degree-6 polynomial, about 1 ulp), which keeps results within float rounding of
/// the reference. Everything works on whole arrays so each call is one function call (debug builds
/// do not inline across files; see Dequantize.swift).
enum VectorMath {
    @inline(__always) static func exp(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let clamped = x.clamped(lowerBound: SIMD8(repeating: -87.33654), upperBound: SIMD8(repeating: 88.02969))
        let n = (clamped * 1.442_695_04).rounded(.toNearestOrEven)
        var r = clamped.addingProduct(n, SIMD8(repeating: -0.693_359_375))
        r = r.addingProduct(n, SIMD8(repeating: 2.121_944_4e-4))
        var p = SIMD8<Float>(repeating: 1.987_569_15e-4) * r + SIMD8(repeating: 1.398_199_950_7e-3)
        p = p * r + SIMD8(repeating: 8.333_451_907_3e-3)
        p = p * r + SIMD8(repeating: 4.166_579_589_4e-2)
        p = p * r + SIMD8(repeating: 1.666_666_545_9e-1)
        p = p * r + SIMD8(repeating: 5.000_000_120_1e-1)
        let y = (p * r * r + r) + 1
        // 2^n assembled in the exponent bits; n is an integer in [-126, 128] after the clamp. Adding
        // 1.5·2^23 puts n in the low mantissa bits (a generic float-to-int conversion is not vectorized).
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let integer = unsafeBitCast(n + magic, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
        let bits = (integer &+ 127) &<< 23
        return y * unsafeBitCast(bits, to: SIMD8<Float>.self)
    }

    @inline(__always) static func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always) static func store(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// Scalar exp with the same algorithm, for array tails.
    @inline(__always) static func exp(_ x: Float) -> Float { exp(SIMD8(repeating: x))[0] }

    /// gate[i] = gelu_tanh(gate[i]) · up[i], using 0.5·x·(1 + tanh(u)) = x / (1 + exp(−2u)), which has no
    /// cancellation near 0 (gelu_pytorch_tanh, gemma3-and-serving.md §1.3).
    static func geluMultiply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let x = load(gate + i)
            let u = x.addingProduct(x * x * x, 0.044715) * 0.797_884_560_802_865_4
            store(x / (1 + exp(-2 * u)) * load(up + i), gate + i)
            i += 8
        }
        while i < count {
            let x = gate[i]
            let u = 0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x)
            gate[i] = x / (1 + exp(-2 * u)) * up[i]
            i += 1
        }
    }

    /// In-place softmax of `count` floats, max-subtracted as torch does.
    static func softmax(_ v: UnsafeMutablePointer<Float>, count: Int) {
        let maximum = self.maximum(v, count: count)
        var sums = SIMD8<Float>()
        var i = 0
        while i + 8 <= count {
            let e = exp(load(v + i) - maximum)
            store(e, v + i)
            sums += e
            i += 8
        }
        var sum = sums.sum()
        while i < count {
            v[i] = exp(v[i] - maximum)
            sum += v[i]
            i += 1
        }
        let inverse = 1 / sum
        i = 0
        while i + 8 <= count {
            store(load(v + i) * inverse, v + i)
            i += 8
        }
        while i < count {
            v[i] *= inverse
            i += 1
        }
    }

    /// log Σ exp(v), max-subtracted; the sum accumulates in eight lanes of f32 then Double.
    static func logSumExp(_ v: UnsafePointer<Float>, count: Int) -> Float {
        let maximum = self.maximum(v, count: count)
        var sums = SIMD8<Float>()
        var total: Double = 0
        var i = 0
        while i + 8 <= count {
            sums += exp(load(v + i) - maximum)
            i += 8
            // Flush to Double now and then so f32 lanes never sum more than 4096 terms.
            if i % 32_768 == 0 {
                total += Double(sums.sum())
                sums = SIMD8()
            }
        }
        total += Double(sums.sum())
        while i < count {
            total += Double(exp(v[i] - maximum))
            i += 1
        }
        return maximum + Float(Foundation.log(total))
    }

    static func maximum(_ v: UnsafePointer<Float>, count: Int) -> Float {
        var lanes = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        while i + 8 <= count {
            lanes = pointwiseMax(lanes, load(v + i))
            i += 8
        }
        var result = lanes.max()
        while i < count {
            result = Swift.max(result, v[i])
            i += 1
        }
        return result
    }
}
