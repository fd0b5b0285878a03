import CKernels

/// What this machine's cores can do at most, for benchmarks that print how far a figure is from it.
///
/// A batched decode step is bound by arithmetic: every weight is multiplied with every sequence's
/// activations once. With the multiply-adds per token (`Gemma3Config.multiplyAddsPerToken`) and
/// this peak, a benchmark can print the fewest milliseconds a step of N sequences could take here, so
/// a throughput target can be judged against what the hardware allows rather than guessed at.
public enum MachinePeak {
    /// f32 fused multiply-adds per second over all the engine's threads (one per core), measured with
    /// a register-resident loop of 12 independent SIMD8 chains (enough to hide the FMA latency, as the
    /// engine's register-blocked kernel does). Without AVX-512 VNNI, products of up to
    /// `CPUBackend.int8RowLimit` rows use int8 (`vpmaddubsw` + `vpmaddwd`), which does about the
    /// same number of multiply-adds per cycle (measured on a Zen 2: 19.2 G/s per core against 19.7
    /// for f32), so this bound holds for them too. With AVX-512 VNNI or BF16, see
    /// `int8MultiplyAddsPerSecond` and `bf16MultiplyAddsPerSecond`.
    /// The best of `repeats` runs: a run in which another process took a core reads low.
    public static func fusedMultiplyAddsPerSecond(iterations: Int = 20_000_000, repeats: Int = 3) -> Double {
        instructionPeak(productsPerInstruction: 8, iterations: iterations, repeats: repeats) { iterations, _ in
            chains(iterations: iterations)
        }
    }

    /// Int8 multiply-adds per second of `vpdpbusd` over all the engine's threads (12 independent
    /// chains on 512-bit registers, 64 products each), best of `repeats`; nil on a CPU without AVX-512
    /// VNNI (or with its tiles turned off). The bound for the products of int8 `WeightTiles`.
    public static func int8MultiplyAddsPerSecond(iterations: Int = 5_000_000, repeats: Int = 3) -> Double? {
        guard WeightTiles.int8Available else { return nil }
        return instructionPeak(productsPerInstruction: 64, iterations: iterations, repeats: repeats) {
            Float(int8_tiles_peak($0, $1))
        }
    }

    /// bf16 multiply-adds per second of `vdpbf16ps` (32 products each), as `int8MultiplyAddsPerSecond`;
    /// nil on a CPU without AVX-512 BF16. The bound for the products of bf16 `WeightTiles`.
    public static func bf16MultiplyAddsPerSecond(iterations: Int = 5_000_000, repeats: Int = 3) -> Double? {
        guard WeightTiles.bf16Available else { return nil }
        return instructionPeak(productsPerInstruction: 32, iterations: iterations, repeats: repeats) {
            bf16_tiles_peak($0, $1)
        }
    }

    /// Runs `chains(iterations, seed)` (12 chains of one instruction) on every thread; the best of
    /// `repeats` rates. The seed is 64 bytes of 0x01 (int8 ones; bf16 2.4e-38: no overflow).
    private static func instructionPeak(
        productsPerInstruction: Int, iterations: Int, repeats: Int, _ chains: (Int, UnsafeRawPointer) -> Float
    ) -> Double {
        let threads = Parallel.threadCount
        let seed = [UInt8](repeating: 1, count: 64)
        let results = UnsafeMutablePointer<Float>.allocate(capacity: threads)
        defer { results.deallocate() }
        return bestRate(repeats: repeats) {
            seed.withUnsafeBytes { bytes in
                let pointer = bytes.baseAddress!
                Parallel.forRanges(threads, minimumChunk: 1) { range in
                    for index in range { results[index] = chains(iterations, pointer) }
                }
            }
            // Read so that the loops are not optimized away.
            precondition((0..<threads).allSatisfy { results[$0].isFinite }, "the peak loop diverged")
            return Double(threads * iterations * 12 * productsPerInstruction)
        }
    }

    /// The best of `repeats` rates of `body`, which works on every thread and returns how much it did.
    private static func bestRate(repeats: Int, _ body: () -> Double) -> Double {
        let clock = ContinuousClock()
        var best = 0.0
        for _ in 0..<max(1, repeats) {
            let start = clock.now
            let work = body()
            best = max(best, work / ((clock.now - start) / .seconds(1)))
        }
        return best
    }

    /// The engine's threads, over which the peak is measured.
    public static var threads: Int { Parallel.threadCount }

    /// Each chain is a = 1 + a·0.5 (a fixed point at 2: no overflow, no denormals), one FMA per step.
    @inline(never)
    static func chains(iterations: Int) -> Float {
        let half = SIMD8<Float>(repeating: 0.5)
        let one = SIMD8<Float>(repeating: 1)
        var a0 = SIMD8<Float>(repeating: 0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0
        var a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0
        for _ in 0..<iterations {
            a0 = one.addingProduct(a0, half); a1 = one.addingProduct(a1, half); a2 = one.addingProduct(a2, half)
            a3 = one.addingProduct(a3, half); a4 = one.addingProduct(a4, half); a5 = one.addingProduct(a5, half)
            a6 = one.addingProduct(a6, half); a7 = one.addingProduct(a7, half); a8 = one.addingProduct(a8, half)
            a9 = one.addingProduct(a9, half); a10 = one.addingProduct(a10, half); a11 = one.addingProduct(a11, half)
        }
        return (a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11).sum()
    }

    /// Bytes per second all threads read from memory together, each summing its own part of a
    /// buffer much larger than the caches (best of `repeats`). A decode step of one sequence streams
    /// every weight once and can go no faster than this.
    public static func readBytesPerSecond(megabytes: Int = 512, repeats: Int = 3) -> Double {
        let count = megabytes << 20 / MemoryLayout<SIMD8<Float>>.stride
        let buffer = UnsafeMutablePointer<SIMD8<Float>>.allocate(capacity: count)
        defer { buffer.deallocate() }
        buffer.initialize(repeating: SIMD8<Float>(repeating: 1), count: count)
        let threads = Parallel.threadCount
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: threads)
        defer { sums.deallocate() }
        return bestRate(repeats: repeats) {
            Parallel.forRanges(threads, minimumChunk: 1) { range in
                for index in range {
                    let part = buffer + count / threads * index
                    var a = SIMD8<Float>(), b = a, c = a, d = a
                    var i = 0
                    while i + 4 <= count / threads {
                        a += part[i]; b += part[i + 1]; c += part[i + 2]; d += part[i + 3]
                        i += 4
                    }
                    sums[index] = (a + b + c + d).sum()
                }
            }
            precondition((0..<threads).allSatisfy { sums[$0] > 0 }, "the bandwidth loop read nothing")
            return Double(count / threads * threads * MemoryLayout<SIMD8<Float>>.stride)
        }
    }
}
