import Foundation

/// The huggingface_hub cache layout, exactly (hub-docs `local-cache.md`, the reference's
/// section 4): `models--ORG--NAME/{blobs,refs,snapshots}`, relative symlinks, refs without a
/// newline, `flock(2)` locks under `.locks/`, and `trees/{commit}.json` once a snapshot is whole.
public struct HubCache: Sendable {
    public let root: String
    public let repo: String

    public init(root: String, repo: String) {
        self.root = root
        self.repo = repo
    }

    public var repoFolderName: String { "models--" + repo.split(separator: "/").joined(separator: "--") }
    public var repoFolder: String { root + "/" + repoFolderName }
    public var blobsFolder: String { repoFolder + "/blobs" }

    public func blobPath(_ etag: String) -> String { blobsFolder + "/" + etag }
    public func snapshotFolder(_ commit: String) -> String { repoFolder + "/snapshots/" + commit }
    public func snapshotPath(_ commit: String, _ path: String) -> String { snapshotFolder(commit) + "/" + path }
    public func lockPath(_ etag: String) -> String { root + "/.locks/" + repoFolderName + "/" + etag + ".lock" }
    /// huggingface_hub's name for a partial download, so either tool can resume the other's.
    public func incompletePath(_ etag: String) -> String { blobPath(etag) + ".incomplete" }

    /// Rejects paths that would leave the snapshot folder (`_validate_relative_filename`).
    public static func validate(_ path: String) throws {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.isEmpty, !path.hasPrefix("/"), !path.contains("\\"), !path.contains("\0"),
            !parts.contains(where: { $0 == ".." || $0.isEmpty })
        else { throw HubError.unsafePath(path) }
    }

    /// The commit `refs/{revision}` points at, if the cache knows it.
    public func commit(for revision: String) -> String? {
        if HubCache.isCommit(revision) { return revision }
        guard let text = try? String(contentsOfFile: repoFolder + "/refs/" + revision, encoding: .utf8) else { return nil }
        let commit = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return HubCache.isCommit(commit) ? commit : nil
    }

    public static func isCommit(_ s: String) -> Bool {
        s.utf8.count == 40 && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// Writes `refs/{revision}` atomically with the bare commit, no newline, only if it changed.
    public func writeRef(_ revision: String, commit: String) throws {
        guard !HubCache.isCommit(revision) || revision != commit else { return }
        let path = repoFolder + "/refs/" + revision
        if (try? String(contentsOfFile: path, encoding: .utf8)) == commit { return }
        try makeDirectory(FileSystemPath.parent(path))
        let temporary = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(commit.utf8)) else {
            throw HubError.io(operation: "write", path: temporary, reason: String(cString: strerror(errno)))
        }
        guard rename(temporary, path) == 0 else {
            throw HubError.io(operation: "rename into place", path: path, reason: String(cString: strerror(errno)))
        }
    }

    /// `snapshots/{commit}/{path}` -> `../../blobs/{etag}` (one more `../` per folder level).
    public func link(commit: String, path: String, etag: String) throws {
        let pointer = snapshotPath(commit, path)
        try makeDirectory(FileSystemPath.parent(pointer))
        let depth = path.split(separator: "/").count - 1
        let target = String(repeating: "../", count: 2 + depth) + "blobs/" + etag
        if let existing = try? FileManager.default.destinationOfSymbolicLink(atPath: pointer), existing == target { return }
        unlink(pointer)
        guard symlink(target, pointer) == 0 else {
            throw HubError.io(operation: "create the symlink", path: pointer, reason: String(cString: strerror(errno)))
        }
    }

    /// CACHEDIR.TAG, as huggingface_hub writes it on first download.
    public func tagCacheDirectory() {
        let path = root + "/CACHEDIR.TAG"
        guard !FileManager.default.fileExists(atPath: path) else { return }
        let text = """
            Signature: 8a477f597d28d172789f06886806bc55
            # This file is a cache directory tag created by huggingface_hub.
            # For information about cache directory tags, see:
            #\thttps://bford.info/cachedir/

            """
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    }

    public func makeDirectory(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw HubError.io(operation: "create the folder", path: path, reason: "\(error.localizedDescription)")
        }
    }
}

/// An exclusive `flock(2)` on a lock file, as py-filelock takes it, so that we and Python never
/// download the same blob at the same time. Released (and the file unlinked, as py-filelock does)
/// by `release`.
final class FileLock {
    let path: String
    private var fd: Int32 = -1

    init(path: String) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: FileSystemPath.parent(path), withIntermediateDirectories: true)
        while true {
            fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o664)
            guard fd >= 0 else { throw HubError.io(operation: "open the lock", path: path, reason: String(cString: strerror(errno))) }
            if flock(fd, LOCK_EX) != 0 {
                close(fd)
                throw HubError.io(operation: "lock", path: path, reason: String(cString: strerror(errno)))
            }
            // py-filelock unlinks on release; a lock on an unlinked file protects nothing: retry.
            var st = stat()
            if fstat(fd, &st) == 0, st.st_nlink > 0 { return }
            close(fd)
        }
    }

    func release() {
        guard fd >= 0 else { return }
        unlink(path)
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { release() }
}

enum FileSystemPath {
    static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
