import Foundation
import HTTP

/// How a partial download is split, persisted beside it (`blobs/{etag}.incomplete.parts`) so a
/// killed run resumes every range where it stopped. A partial file without this record was
/// written front to back (by huggingface_hub, or by us with one range): its size is what is done.
struct PartPlan: Codable {
    struct Part: Codable {
        var start: Int64
        var end: Int64
        var done: Int64
    }

    var size: Int64
    var parts: [Part]

    static func load(partial: String, size: Int64, pieces: Int) -> PartPlan {
        if let data = FileManager.default.contents(atPath: partial + ".parts"),
            let plan = try? JSONDecoder().decode(PartPlan.self, from: data), plan.size == size,
            FileManager.default.fileExists(atPath: partial)
        {
            return plan
        }
        unlink(partial + ".parts")
        let existing = (try? FileManager.default.attributesOfItem(atPath: partial)[.size] as? Int64) ?? 0
        if existing > 0, existing <= size {
            return PartPlan(size: size, parts: [Part(start: 0, end: size, done: existing)])
        }
        unlink(partial)
        let count = Int64(max(1, pieces))
        let step = (size + count - 1) / count
        let parts = stride(from: Int64(0), to: max(size, 1), by: Int(max(step, 1))).map {
            Part(start: $0, end: min($0 + step, size), done: 0)
        }
        return PartPlan(size: size, parts: size == 0 ? [Part(start: 0, end: 0, done: 0)] : parts)
    }
}

/// The plan shared by the threads that fill it, saved now and then.
final class SharedPlan: @unchecked Sendable {
    // @unchecked: `plan` is only touched under `lock`.
    private let lock = NSLock()
    private var plan: PartPlan
    private let path: String
    private var unsaved: Int64 = 0

    init(_ plan: PartPlan, path: String) {
        self.plan = plan
        self.path = path
    }

    func part(_ i: Int) -> PartPlan.Part {
        lock.lock()
        defer { lock.unlock() }
        return plan.parts[i]
    }

    var count: Int { plan.parts.count }

    var done: Int64 {
        lock.lock()
        defer { lock.unlock() }
        return plan.parts.reduce(0) { $0 + $1.done }
    }

    func advance(_ i: Int, by n: Int64) {
        lock.lock()
        plan.parts[i].done += n
        unsaved += n
        let due = unsaved >= 16 << 20
        if due { unsaved = 0 }
        lock.unlock()
        if due { save() }
    }

    /// Written only when there are several parts: one front-to-back part is described by the
    /// file's size alone, which is also how huggingface_hub resumes.
    func save() {
        lock.lock()
        let snapshot = plan
        lock.unlock()
        guard snapshot.parts.count > 1, let data = try? JSONEncoder().encode(snapshot) else { return }
        let temporary = path + ".tmp"
        if FileManager.default.createFile(atPath: temporary, contents: data) { rename(temporary, path) }
    }
}

extension SnapshotFetcher {
    /// Fills `partial` with the file's bytes from `url`, several ranges at once for large files.
    func download(_ file: RepoFile, from url: String, to partial: String, repo: String, counter: ByteCounter) throws {
        let pieces = file.size >= parallelThreshold ? jobs : 1
        var plan = PartPlan.load(partial: partial, size: file.size, pieces: pieces)
        do {
            try fill(plan, file: file, url: url, partial: partial, repo: repo, counter: counter)
        } catch is RangesIgnored {
            // The server sends whole files only: start over, front to back, in one request.
            unlink(partial)
            unlink(partial + ".parts")
            plan = PartPlan(size: file.size, parts: [.init(start: 0, end: file.size, done: 0)])
            try fill(plan, file: file, url: url, partial: partial, repo: repo, counter: counter)
        }
    }

    private func fill(_ plan: PartPlan, file: RepoFile, url: String, partial: String, repo: String, counter: ByteCounter) throws {
        let fd = open(partial, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw HubError.io(operation: "create", path: partial, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        let shared = SharedPlan(plan, path: partial + ".parts")
        shared.save()
        let report = LockedReporter(progress?(file.path, file.size))
        let client = client
        let blobs = FileSystemPath.parent(partial)
        let retry = client.retry
        try parallelForEach(Array(0..<shared.count), jobs: shared.count) { index in
            try retry.run("downloading \(file.path)") { _ in
                let part = shared.part(index)
                let start = part.start + part.done
                if start >= part.end { return }
                var offset = start
                var writeError: Error?
                let status = try client.get(url, range: part.start == 0 && part.end == file.size && start == 0 ? nil : (start, part.end),
                    step: "downloading \(file.path)", repo: repo
                ) { chunk in
                    guard offset + Int64(chunk.count) <= part.end else {
                        throw HubError.invalidResponse(step: "downloading \(file.path)", detail: "more bytes than the file's \(file.size)")
                    }
                    var written = 0
                    while written < chunk.count {
                        let n = pwrite(fd, chunk.baseAddress! + written, chunk.count - written, off_t(offset) + off_t(written))
                        if n < 0 {
                            if errno == EINTR { continue }
                            let code = errno
                            if code == ENOSPC {
                                let error = HubError.diskFull(directory: blobs, needed: file.size - shared.done, available: 0)
                                writeError = error
                                throw error
                            }
                            throw HubError.io(operation: "write", path: partial, reason: String(cString: strerror(code)))
                        }
                        written += n
                    }
                    offset += Int64(chunk.count)
                    shared.advance(index, by: Int64(chunk.count))
                    counter.add(Int64(chunk.count))
                    report.update(shared.done)
                }
                if let writeError { throw writeError }
                _ = status
                if offset < part.end {
                    shared.save()
                    throw TransientFailure(description: "the download of \(file.path) stopped at byte \(offset) of \(part.end)")
                }
            }
        }
        shared.save()
    }
}

/// A progress callback called from several threads, one at a time.
final class LockedReporter: @unchecked Sendable {
    // @unchecked: `report` is only called under `lock`.
    private let lock = NSLock()
    private let report: ((Int64) -> Void)?

    init(_ report: ((Int64) -> Void)?) { self.report = report }

    func update(_ done: Int64) {
        guard let report else { return }
        lock.lock()
        report(done)
        lock.unlock()
    }
}
