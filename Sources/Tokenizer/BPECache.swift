import Foundation

/// Memoizes BPE results per word, like the library's `Cache` (10,000 entries, words under 256
/// bytes, no eviction once full). Shared by copies of a `Tokenizer`, hence the lock.
final class BPECache: @unchecked Sendable {
    static let defaultCapacity = 10_000
    static let maximumWordLength = 256

    private let lock = NSLock()
    private var entries: [[UInt8]: [Int32]] = [:]
    private let capacity: Int

    init(capacity: Int = BPECache.defaultCapacity) {
        self.capacity = capacity
    }

    /// Long words are neither looked up nor stored: hashing them costs more than it saves.
    func get(_ word: ArraySlice<UInt8>) -> [Int32]? {
        guard word.count < Self.maximumWordLength else { return nil }
        let key = Array(word)
        lock.lock()
        defer { lock.unlock() }
        return entries[key]
    }

    func set(_ word: ArraySlice<UInt8>, _ ids: [Int32]) {
        guard word.count < Self.maximumWordLength else { return }
        let key = Array(word)
        lock.lock()
        defer { lock.unlock() }
        if entries.count < capacity { entries[key] = ids }
    }
}
