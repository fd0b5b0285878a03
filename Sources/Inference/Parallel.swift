import Dispatch
import Foundation
import Synchronization

/// Splits work over the machine's cores in contiguous ranges, so each thread streams its own part of
/// a weight matrix.
///
/// A decode step is about 130 products of a few dozen microseconds each; waking a parked GCD thread
/// for every one costs a measurable part of the step. So the engine keeps its own workers (one per
/// core beside the calling thread) that poll for work between products and park only when idle, as
/// llama.cpp's thread pool does. A call made while the pool is busy (another engine thread, or a
/// nested call) goes to `concurrentPerform` instead.
enum Parallel {
    static let threadCount = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Calls `body` on disjoint ranges covering 0..<count, in parallel when there is enough work:
    /// ranges are at least `minimumChunk` long and multiples of `granularity` (except the last).
    @inline(__always)
    static func forRanges(_ count: Int, minimumChunk: Int = 1, granularity: Int = 1, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        // Up to four chunks per core: they are handed out as threads free up, so a core slowed by
        // another process (these machines are shared) does not hold up the whole product.
        let chunks = max(1, min(threadCount == 1 ? 1 : 4 * threadCount, count / max(minimumChunk, 1)))
        if chunks == 1 {
            body(0..<count)
            return
        }
        let units = (count + granularity - 1) / granularity
        withoutActuallyEscaping(body) { body in
            let chunk = { (index: Int) in
                let lower = min(count, units * index / chunks * granularity)
                let upper = min(count, units * (index + 1) / chunks * granularity)
                if lower < upper { body(lower..<upper) }
            }
            if let pool = WorkerPool.shared, pool.run(chunks: chunks, chunk) { return }
            let work = UncheckedSendable(chunk)
            DispatchQueue.concurrentPerform(iterations: chunks) { work.value($0) }
        }
    }
}

/// Workers that claim chunk indices of the current job from one atomic word:
/// generation (24 bits) | chunk count (20 bits) | next index (20 bits). A worker runs a chunk only
/// after its compare-and-swap on that word succeeds, which proves the job is still the one it read
/// and its caller is still waiting for it, so the job's closure is alive.
final class WorkerPool: @unchecked Sendable {
    // @unchecked: the shared state is the atomics; the job slots are published through `state`.
    static let shared: WorkerPool? = Parallel.threadCount > 1 ? WorkerPool(workers: Parallel.threadCount - 1) : nil

    private let state = Atomic<UInt64>(0)
    private let remaining = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let sleepers = Atomic<Int>(0)
    /// The job of generation g is in slot g % 2; a slot is reused only two generations later, after
    /// every chunk of its job has finished.
    private let job0 = Atomic<UInt>(0)
    private let job1 = Atomic<UInt>(0)
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Polls of the job word a worker makes before parking (a few hundred microseconds: longer than
    /// the gaps between the products of one step, short enough not to burn an idle core).
    private static let spinLimit = 100_000

    private final class Job {
        let body: (Int) -> Void
        init(_ body: @escaping (Int) -> Void) { self.body = body }
    }

    private init(workers: Int) {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        for _ in 0..<workers {
            let thread = Thread { [unowned self] in self.workerLoop() }
            thread.name = "inference-worker"
            thread.start()
        }
    }

    private func slot(_ generation: UInt64) -> UInt {
        generation & 1 == 0 ? job0.load(ordering: .acquiring) : job1.load(ordering: .acquiring)
    }

    /// Runs `body` for 0..<chunks on the caller and the workers; false (nothing run) when busy.
    func run(chunks: Int, _ body: (Int) -> Void) -> Bool {
        guard chunks < (1 << 20), busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            return false
        }
        defer { busy.store(false, ordering: .releasing) }
        withoutActuallyEscaping(body) { body in
            let job = Job(body)
            let pointer = UInt(bitPattern: Unmanaged.passUnretained(job).toOpaque())
            let generation = ((state.load(ordering: .relaxed) >> 40) + 1) & 0xFF_FFFF
            if generation & 1 == 0 { job0.store(pointer, ordering: .releasing) } else { job1.store(pointer, ordering: .releasing) }
            remaining.store(chunks, ordering: .relaxed)
            state.store(generation << 40 | UInt64(chunks) << 20, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(mutex)
                pthread_cond_broadcast(condition)
                pthread_mutex_unlock(mutex)
            }
            while let index = claim(generation) {
                body(index)
                remaining.subtract(1, ordering: .releasing)
            }
            while remaining.load(ordering: .acquiring) > 0 {}
            withExtendedLifetime(job) {}
        }
        return true
    }

    /// The next chunk index of `generation`, or nil when it has none left (or is over).
    private func claim(_ generation: UInt64) -> Int? {
        var current = state.load(ordering: .acquiring)
        while current >> 40 == generation {
            let chunks = (current >> 20) & 0xF_FFFF
            let index = current & 0xF_FFFF
            guard index < chunks else { return nil }
            let (exchanged, original) = state.compareExchange(expected: current, desired: current + 1, ordering: .acquiringAndReleasing)
            if exchanged { return Int(index) }
            current = original
        }
        return nil
    }

    private func workerLoop() {
        var seen: UInt64 = 0
        while true {
            var current = state.load(ordering: .acquiring)
            var spins = 0
            while current >> 40 == seen {
                if spins < Self.spinLimit {
                    spins += 1
                } else {
                    // Park. The caller stores the job word, then reads `sleepers`; this thread counts
                    // itself in, then reads the job word: one of the two sees the other.
                    pthread_mutex_lock(mutex)
                    sleepers.add(1, ordering: .sequentiallyConsistent)
                    if state.load(ordering: .sequentiallyConsistent) >> 40 == seen { pthread_cond_wait(condition, mutex) }
                    sleepers.subtract(1, ordering: .sequentiallyConsistent)
                    pthread_mutex_unlock(mutex)
                    spins = 0
                }
                current = state.load(ordering: .acquiring)
            }
            seen = current >> 40
            while let index = claim(seen) {
                // The claim succeeded, so the caller is still in `run` and the job is alive. The
                // reference is dropped before the chunk counts as done: the caller then frees the job.
                do {
                    let job = Unmanaged<Job>.fromOpaque(UnsafeRawPointer(bitPattern: slot(seen))!).takeUnretainedValue()
                    job.body(index)
                }
                remaining.subtract(1, ordering: .releasing)
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
