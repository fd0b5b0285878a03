import Dispatch
import Foundation

/// Splits work over the machine's cores with `DispatchQueue.concurrentPerform`, in contiguous ranges
/// so each thread streams its own part of a weight matrix.
enum Parallel {
    static let threadCount = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Calls `body` on disjoint ranges covering 0..<count, in parallel when there is enough work:
    /// ranges are at least `minimumChunk` long and multiples of `granularity` (except the last).
    @inline(__always)
    static func forRanges(_ count: Int, minimumChunk: Int = 1, granularity: Int = 1, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        // Up to four chunks per core: `concurrentPerform` hands them out as threads free up, so a core
        // slowed by another process (these machines are shared) does not hold up the whole product.
        let chunks = max(1, min(threadCount == 1 ? 1 : 4 * threadCount, count / max(minimumChunk, 1)))
        if chunks == 1 {
            body(0..<count)
            return
        }
        let units = (count + granularity - 1) / granularity
        withoutActuallyEscaping(body) { body in
            let work = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
                let lower = min(count, units * chunk / chunks * granularity)
                let upper = min(count, units * (chunk + 1) / chunks * granularity)
                if lower < upper { work.value(lower..<upper) }
            }
        }
    }
}

/// Hands a kernel's closure (which captures raw buffer pointers) to `concurrentPerform`, whose
/// closure must be `@Sendable`. `@unchecked`: `concurrentPerform` returns only after every iteration
/// has finished, so the closure never outlives the call, and each iteration works on its own range.
private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
