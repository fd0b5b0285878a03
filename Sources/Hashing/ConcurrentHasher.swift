import Foundation

/// Hashes blocks on a second thread while the caller does its own work with the same bytes
/// (typically writing them to disk), so that a layer costs max(write, hash) per block rather
/// than write + hash. The caller hands a block to `begin`, does its work, then calls `wait`
/// before it reuses the buffer.
///
/// Blocks are hashed in the order they are given: there is at most one in flight.
public final class ConcurrentHasher: @unchecked Sendable {
    // @unchecked: `pending` is written by the caller only while the worker is idle
    // (between `wait` and the next `begin`) and read by the worker only between the two
    // semaphore signals, so the semaphores order every access.
    private let hashers: [SHA256]
    private let start = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private var pending: UnsafeRawBufferPointer?
    private var inFlight = false
    private var thread: Thread?
    private var stopping = false

    /// `count` independent SHA-256 states that all receive the same bytes (usually one).
    public init(count: Int = 1) {
        hashers = (0..<count).map { _ in SHA256() }
        let t = Thread { [unowned self] in self.run() }
        t.name = "sha256"
        thread = t
        t.start()
    }

    private func run() {
        while true {
            start.wait()
            if stopping { done.signal(); return }
            if let block = pending {
                for h in hashers { h.update(block) }
            }
            done.signal()
        }
    }

    /// Starts hashing `block`; the memory must stay valid and unchanged until `wait` returns.
    public func begin(_ block: UnsafeRawBufferPointer) {
        precondition(!inFlight, "ConcurrentHasher.begin while a block is in flight")
        pending = block
        inFlight = true
        start.signal()
    }

    /// Waits for the block given to `begin`.
    public func wait() {
        guard inFlight else { return }
        done.wait()
        inFlight = false
        pending = nil
    }

    /// Waits for the last block, stops the worker, and returns each state's digest.
    public func finalize() -> [[UInt8]] {
        wait()
        stopping = true
        start.signal()
        done.wait()
        return hashers.map { $0.finalize() }
    }

    deinit {
        if !stopping {
            wait()
            stopping = true
            start.signal()
            done.wait()
        }
    }
}
