import Foundation
import HTTP

/// One file of a repository, as the tree API lists it.
public struct RepoFile: Hashable, Sendable, Decodable {
    public var path: String
    public var size: Int64
    /// The git blob id (sha1) of the file, or of its LFS pointer.
    public var oid: String
    public var lfs: LFS?

    public struct LFS: Hashable, Sendable, Decodable {
        public var oid: String
        public var size: Int64
    }

    /// The cache's blob name: the sha256 for LFS files, the git sha1 otherwise.
    public var etag: String { lfs?.oid ?? oid }
}

/// The Hub's HTTP API (the reference's section 1): revision, tree, resolve. Every call retries
/// dropped connections, 5xx and 429 (waiting for Retry-After); the token goes to the endpoint
/// only, never to the host a redirect leads to.
public final class HubClient: Sendable {
    public let configuration: HubConfiguration
    let http: HTTPClient
    let retry: RetryPolicy

    public init(configuration: HubConfiguration, retry: RetryPolicy = RetryPolicy(attempts: 8, baseDelay: 0.5, maxDelay: 10)) {
        self.configuration = configuration
        self.http = HTTPClient()
        self.retry = retry
    }

    var authorization: [(String, String)] {
        configuration.token.map { [("Authorization", "Bearer " + $0)] } ?? []
    }

    /// `GET /api/models/{repo}/revision/{rev}` -> the 40-hex commit.
    public func resolveCommit(repo: String, revision: String) throws -> String {
        let url = "\(configuration.endpoint)/api/models/\(repo)/revision/\(URLText.queryEscape(revision))"
        let response = try call(HTTPRequest(url: url, headers: authorization), step: "resolving \(repo)@\(revision)", repo: repo, revision: revision)
        struct Info: Decodable { var sha: String? }
        guard let sha = (try? JSONDecoder().decode(Info.self, from: Data(response.body)))?.sha, HubCache.isCommit(sha) else {
            throw HubError.invalidResponse(step: "resolving \(repo)@\(revision)", detail: "no commit sha in the answer")
        }
        return sha
    }

    /// Every file at `commit`, following the tree API's `Link: rel="next"` pages.
    public func listFiles(repo: String, commit: String) throws -> [RepoFile] {
        var url: String? = "\(configuration.endpoint)/api/models/\(repo)/tree/\(commit)?recursive=true&expand=false"
        var files: [RepoFile] = []
        var pages = 0
        while let next = url, pages < 10_000 {
            pages += 1
            let response = try call(HTTPRequest(url: next, headers: authorization), step: "listing \(repo)", repo: repo, revision: commit)
            struct Entry: Decodable {
                var type: String
                var path: String
                var size: Int64?
                var oid: String?
                var lfs: RepoFile.LFS?
            }
            guard let entries = try? JSONDecoder().decode([Entry].self, from: Data(response.body)) else {
                throw HubError.invalidResponse(step: "listing \(repo)", detail: "the tree is not a JSON array of entries")
            }
            for e in entries where e.type == "file" {
                guard let oid = e.oid, let size = e.size else {
                    throw HubError.invalidResponse(step: "listing \(repo)", detail: "\(e.path) has no oid or size")
                }
                try HubCache.validate(e.path)
                files.append(RepoFile(path: e.path, size: size, oid: oid, lfs: e.lfs))
            }
            url = response.header("Link").flatMap(HubClient.nextLink).map { URLText.resolve($0, against: next) }
        }
        return files
    }

    /// Where the bytes of `path` are: the resolve URL itself, or (for LFS files) the CDN URL the
    /// Hub redirects to. Relative redirects are followed with the token, absolute ones are not.
    public func downloadLocation(repo: String, commit: String, path: String) throws -> String {
        var url = "\(configuration.endpoint)/\(repo)/resolve/\(commit)/\(escapePath(path))"
        for _ in 0..<5 {
            let response = try call(
                HTTPRequest(method: "HEAD", url: url, headers: authorization + [("Accept-Encoding", "identity")]),
                step: "locating \(path)", repo: repo, revision: commit, path: path, acceptRedirects: true)
            guard (300..<400).contains(response.status), let location = response.header("Location") else { return url }
            let resolved = URLText.resolve(location, against: url)
            if URLText.origin(resolved) != URLText.origin(url) { return resolved }
            url = resolved
        }
        return url
    }

    /// GETs `url` (with the token only if it is the endpoint's origin), from byte `start` to
    /// `end` (exclusive) when given, streaming the body to `sink`. Returns the status.
    /// A 200 to a range request that does not start at 0 means the server ignores ranges: its
    /// body is not streamed (it would land at the wrong offset) and the caller starts over.
    func get(_ url: String, range: (Int64, Int64)?, step: String, repo: String, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        var headers: [(String, String)] = [("Accept-Encoding", "identity")]
        if URLText.origin(url) == URLText.origin(configuration.endpoint) { headers += authorization }
        var accepted: Set<Int> = [200]
        if let (start, end) = range {
            headers.append(("Range", "bytes=\(start)-\(end - 1)"))
            accepted = start == 0 ? [200, 206] : [206]
        }
        let response = try call(HTTPRequest(url: url, headers: headers), step: step, repo: repo, sink: sink, sinkStatuses: accepted)
        return response.status
    }

    /// One request with retries and the Hub's error mapping (the reference's section 2).
    func call(
        _ request: HTTPRequest, step: String, repo: String, revision: String? = nil, path: String? = nil,
        acceptRedirects: Bool = false, sink: ((UnsafeRawBufferPointer) throws -> Void)? = nil, sinkStatuses: Set<Int> = Set(200..<300)
    ) throws -> HTTPResponse {
        func attempt() throws -> HTTPResponse {
            let response: HTTPResponse
            do {
                response = sink == nil
                    ? try http.send(request) : try http.sendFollowingRedirects(request, sink: sink, sinkStatuses: sinkStatuses)
            } catch let error as HTTPError where error.isRetryable {
                throw TransientFailure(description: error.description)
            }
            if response.status == 200, sink != nil, !sinkStatuses.contains(200) {
                throw RangesIgnored()
            }
            if (200..<300).contains(response.status) || (acceptRedirects && (300..<400).contains(response.status)) {
                return response
            }
            throw try mapError(response, step: step, repo: repo, revision: revision, path: path)
        }
        // A streamed body has moved the caller's offset: its own retry loop must decide where to
        // start again, so a streaming request is tried once here.
        return sink == nil ? try retry.run(step) { _ in try attempt() } : try attempt()
    }

    func mapError(_ response: HTTPResponse, step: String, repo: String, revision: String?, path: String?) throws -> Error {
        let code = response.header("X-Error-Code") ?? ""
        let message = response.header("X-Error-Message") ?? ""
        switch (response.status, code) {
        case (401, "GatedRepo"): return HubError.gatedNeedsToken(repo: repo, endpoint: configuration.endpoint)
        case (403, "GatedRepo"): return HubError.gatedNotAccepted(repo: repo, endpoint: configuration.endpoint)
        case (_, "RepoNotFound"): return HubError.repoNotFound(repo: repo, hadToken: configuration.token != nil)
        case (_, "RevisionNotFound"): return HubError.revisionNotFound(repo: repo, revision: revision ?? "?")
        case (_, "EntryNotFound"): return HubError.entryNotFound(repo: repo, path: path ?? "?")
        case (401, _) where message.contains("Invalid credentials"): return HubError.invalidToken(endpoint: configuration.endpoint)
        case (401, _): return HubError.repoNotFound(repo: repo, hadToken: configuration.token != nil)
        case (403, _): return HubError.forbidden(repo: repo, detail: message)
        case (404, _): return HubError.repoNotFound(repo: repo, hadToken: configuration.token != nil)
        case (let s, _) where RetryPolicy.isRetryable(status: s):
            return TransientFailure(
                description: "the Hub answered \(s) while \(step)", retryAfter: response.header("Retry-After").flatMap(Double.init))
        default:
            return HubError.unexpectedStatus(step: step, status: response.status, detail: message)
        }
    }

    /// `<https://...>; rel="next"` from a Link header.
    static func nextLink(_ header: String) -> String? {
        for part in header.split(separator: ",") where part.contains("rel=\"next\"") {
            guard let open = part.firstIndex(of: "<"), let close = part.firstIndex(of: ">"), open < close else { continue }
            return String(part[part.index(after: open)..<close])
        }
        return nil
    }

    /// Percent-encodes a repository path, keeping `/` (urllib's `quote` default).
    func escapePath(_ path: String) -> String {
        path.split(separator: "/", omittingEmptySubsequences: false).map { URLText.queryEscape(String($0)) }.joined(separator: "/")
    }
}

/// The server answered a range request with the whole file.
struct RangesIgnored: Error {}
