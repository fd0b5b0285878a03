import Foundation

/// Runs `body` on each item with at most `jobs` threads (blocking I/O, so real threads rather than
/// the cooperative pool, which has one thread per core). The first error stops new items from
/// starting and is rethrown once the running ones finish.
public func parallelForEach<T: Sendable>(_ items: [T], jobs: Int, _ body: @escaping @Sendable (T) throws -> Void) throws {
    let state = ParallelState()
    let group = DispatchGroup()
    for _ in 0..<max(1, min(jobs, items.count)) {
        group.enter()
        let thread = Thread {
            defer { group.leave() }
            while true {
                state.lock.lock()
                guard state.error == nil, state.next < items.count else {
                    state.lock.unlock()
                    return
                }
                let item = items[state.next]
                state.next += 1
                state.lock.unlock()
                do {
                    try body(item)
                } catch {
                    state.lock.lock()
                    if state.error == nil { state.error = error }
                    state.lock.unlock()
                }
            }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    group.wait()
    if let error = state.error { throw error }
}

private final class ParallelState: @unchecked Sendable {
    // @unchecked: `next` and `error` are only touched under `lock`.
    let lock = NSLock()
    var next = 0
    var error: Error?
}
