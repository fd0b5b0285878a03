import Foundation
import HTTP
import Hashing

/// `builder fetch`: a repository revision into the huggingface_hub cache, every byte verified.
///
/// Per file: reuse what the cache has (ours or Python's), else download under the blob's lock
/// into `blobs/{etag}.incomplete`, large files as several byte ranges at once, resuming whatever
/// a killed run left; check the size and the hash (sha256 for LFS files, git blob sha1 for the
/// others); only then rename it to `blobs/{etag}` and link it into `snapshots/`. A file that
/// fails verification is deleted and fetched once more; a second failure is an error.
public struct SnapshotFetcher: Sendable {
    public struct Result: Sendable {
        public var snapshot: String
        public var commit: String
        public var files: [RepoFile]
        /// Bytes that came over the network in this run.
        public var bytesFetched: Int64
        public var reused: Int
    }

    public var client: HubClient
    public var selection = FileSelection()
    public var jobs = 8
    /// Files at least this large are fetched as several ranges in parallel.
    public var parallelThreshold: Int64 = 64 << 20
    public var progress: (@Sendable (String, Int64) -> ((Int64) -> Void)?)?
    /// For tests: pretend the disk has this many bytes free.
    var freeSpaceOverride: Int64?

    public init(client: HubClient) { self.client = client }

    public func fetch(repo: String, revision: String = "main") throws -> Result {
        let config = client.configuration
        let cache = HubCache(root: config.cacheDirectory, repo: repo)
        if config.offline { return try offline(cache: cache, repo: repo, revision: revision) }

        let commit = HubCache.isCommit(revision) ? revision : try client.resolveCommit(repo: repo, revision: revision)
        let all = try client.listFiles(repo: repo, commit: commit)
        let chosenPaths = Set(selection.select(all.map(\.path)))
        let files = all.filter { chosenPaths.contains($0.path) }.sorted { $0.path < $1.path }
        guard !files.isEmpty else {
            throw HubError.noFilesSelected(repo: repo, patterns: selection.include.isEmpty ? "the default patterns" : selection.include.joined(separator: " "))
        }
        try cache.makeDirectory(cache.blobsFolder)
        cache.tagCacheDirectory()
        try cache.writeRef(revision, commit: commit)

        // Reuse verified blobs first; then make sure the rest fits before fetching anything.
        let counter = ByteCounter()
        var missing: [RepoFile] = []
        var reused = 0
        for file in files {
            if FileManager.default.fileExists(atPath: cache.blobPath(file.etag)), (try? verify(file, at: cache.blobPath(file.etag))) != nil {
                try cache.link(commit: commit, path: file.path, etag: file.etag)
                reused += 1
            } else {
                unlink(cache.blobPath(file.etag))
                missing.append(file)
            }
        }
        try checkSpace(for: missing, cache: cache)

        let small = missing.filter { $0.size < parallelThreshold }
        let large = missing.filter { $0.size >= parallelThreshold }
        let fetcher = self
        try parallelForEach(small, jobs: jobs) { file in
            try fetcher.fetchFile(file, repo: repo, commit: commit, cache: cache, counter: counter)
        }
        for file in large {
            try fetchFile(file, repo: repo, commit: commit, cache: cache, counter: counter)
        }
        return Result(snapshot: cache.snapshotFolder(commit), commit: commit, files: files, bytesFetched: counter.value, reused: reused)
    }

    /// HF_HUB_OFFLINE: the snapshot the cache already has, or an error saying it has none.
    func offline(cache: HubCache, repo: String, revision: String) throws -> Result {
        guard let commit = cache.commit(for: revision), FileManager.default.fileExists(atPath: cache.snapshotFolder(commit)) else {
            throw HubError.offlineMiss(repo: repo, revision: revision, cache: cache.root)
        }
        return Result(snapshot: cache.snapshotFolder(commit), commit: commit, files: [], bytesFetched: 0, reused: 0)
    }

    func fetchFile(_ file: RepoFile, repo: String, commit: String, cache: HubCache, counter: ByteCounter) throws {
        let lock = try FileLock(path: cache.lockPath(file.etag))
        defer { lock.release() }
        // Another process may have finished it while we waited for the lock.
        if FileManager.default.fileExists(atPath: cache.blobPath(file.etag)), (try? verify(file, at: cache.blobPath(file.etag))) != nil {
            try cache.link(commit: commit, path: file.path, etag: file.etag)
            return
        }
        let location = try client.downloadLocation(repo: repo, commit: commit, path: file.path)
        let partial = cache.incompletePath(file.etag)
        var lastMismatch = ""
        for attempt in 0..<2 {
            try download(file, from: location, to: partial, repo: repo, counter: counter)
            do {
                try verify(file, at: partial)
                guard rename(partial, cache.blobPath(file.etag)) == 0 else {
                    throw HubError.io(operation: "rename into place", path: cache.blobPath(file.etag), reason: String(cString: strerror(errno)))
                }
                unlink(partial + ".parts")
                try cache.link(commit: commit, path: file.path, etag: file.etag)
                return
            } catch HubError.verificationFailed(_, _, let actual) {
                // Bad bytes never stay: delete them and fetch the whole file once more.
                unlink(partial)
                unlink(partial + ".parts")
                lastMismatch = actual
                _ = attempt
            }
        }
        throw HubError.verificationFailed(path: file.path, expected: file.etag, actual: lastMismatch)
    }

    /// Size and hash of a complete file against the tree listing.
    func verify(_ file: RepoFile, at path: String) throws {
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int64) ?? -1
        guard size == file.size else {
            throw HubError.verificationFailed(path: file.path, expected: "\(file.size) bytes", actual: "\(size) bytes")
        }
        let actual: String
        let expected: String
        if let lfs = file.lfs {
            actual = try hashFile(path, digest: SHA256(), prefix: [])
            expected = lfs.oid
        } else {
            actual = try hashFile(path, digest: SHA1(), prefix: Array("blob \(file.size)\0".utf8))
            expected = file.oid
        }
        guard actual == expected else { throw HubError.verificationFailed(path: file.path, expected: expected, actual: actual) }
    }

    func hashFile(_ path: String, digest: MessageDigest, prefix: [UInt8]) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw HubError.io(operation: "read", path: path, reason: "cannot open")
        }
        defer { try? handle.close() }
        digest.update(prefix)
        while true {
            let chunk = handle.readData(ofLength: 4 << 20)
            if chunk.isEmpty { break }
            digest.update(chunk)
        }
        return digest.finalize().hexString
    }

    /// Fails before the first byte when the files cannot fit, counting what partial files hold.
    func checkSpace(for files: [RepoFile], cache: HubCache) throws {
        var needed: Int64 = 0
        for file in files {
            let have = (try? FileManager.default.attributesOfItem(atPath: cache.incompletePath(file.etag))[.size] as? Int64) ?? 0
            needed += max(file.size - have, 0)
        }
        let available = freeSpace(cache.blobsFolder)
        // Keep a small margin: the file system needs room for metadata too.
        if needed + (16 << 20) > available {
            throw HubError.diskFull(directory: cache.blobsFolder, needed: needed + (16 << 20) - available, available: available)
        }
    }

    func freeSpace(_ path: String) -> Int64 {
        if let freeSpaceOverride { return freeSpaceOverride }
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return Int64.max }
        return Int64(s.f_bavail) * Int64(s.f_frsize)
    }
}

/// Bytes received over the network, summed across threads.
final class ByteCounter: @unchecked Sendable {
    // @unchecked: `total` is only touched under `lock`.
    private let lock = NSLock()
    private var total: Int64 = 0

    func add(_ n: Int64) {
        lock.lock()
        total += n
        lock.unlock()
    }

    var value: Int64 {
        lock.lock()
        defer { lock.unlock() }
        return total
    }
}
