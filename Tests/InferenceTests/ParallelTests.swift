import Dispatch
import Foundation
import Synchronization
import Testing

@testable import Inference

/// The engine's worker pool: every index of every product exactly once, under back-to-back jobs
/// (the workers' claim races), concurrent callers (the pool is busy: the fallback) and nested calls.
@Suite struct ParallelTests {
    /// Runs forRanges and checks each index was visited exactly once.
    static func check(_ count: Int, minimumChunk: Int, granularity: Int) -> Bool {
        let visits = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: count)
        for i in 0..<count { (visits + i).initialize(to: Atomic(0)) }
        defer { visits.deallocate() }
        Parallel.forRanges(count, minimumChunk: minimumChunk, granularity: granularity) { range in
            for i in range { visits[i].add(1, ordering: .relaxed) }
        }
        return (0..<count).allSatisfy { visits[$0].load(ordering: .relaxed) == 1 }
    }

    @Test func everyIndexOnceAcrossManyJobs() {
        var failures = 0
        for job in 0..<20_000 {
            let count = 1 + job % 700
            if !Self.check(count, minimumChunk: 1 + job % 5, granularity: 1 + job % 17) { failures += 1 }
        }
        #expect(failures == 0)
    }

    @Test func concurrentAndNestedCallers() {
        let failures = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 8) { caller in
            for job in 0..<2_000 {
                if !Self.check(64 + (job * 7 + caller) % 500, minimumChunk: 4, granularity: 8) { failures.add(1, ordering: .relaxed) }
            }
        }
        // A product whose chunks run products of their own.
        let inner = Atomic<Int>(0)
        Parallel.forRanges(64, minimumChunk: 1) { range in
            for _ in range {
                Parallel.forRanges(100, minimumChunk: 1) { inner.add($0.count, ordering: .relaxed) }
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(inner.load(ordering: .relaxed) == 6_400)
    }
}
