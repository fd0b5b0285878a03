import Foundation
import HTTP

/// A client for registries that follow the OCI distribution spec (Artifact Registry, Docker Hub,
/// ghcr.io, the CNCF registry, Harbor, quay). One instance serves many threads: the per-registry
/// endpoint, challenge and token cache are behind a lock.
public final class RegistryClient: @unchecked Sendable {
    // @unchecked: every mutable field is read and written under `lock`.
    public struct Options: Sendable {
        /// Hosts (HOST[:PORT]) that may be reached over plain HTTP. Loopback always may.
        public var insecureRegistries: Set<String> = []
        public var retry = RetryPolicy()
        public var caFile: String?

        public init() {}
    }

    public let options: Options
    let http: HTTPClient
    let credentials: CredentialStore
    private let lock = NSLock()
    private var endpoints: [String: Endpoint] = [:]
    private var tokens: [String: Token] = [:]

    struct Endpoint {
        var base: String
        var challenge: AuthChallenge?
    }

    struct Token {
        var value: String
        var expires: Date
    }

    public init(options: Options = Options(), credentials: CredentialStore = CredentialStore()) {
        self.options = options
        self.credentials = credentials
        self.http = HTTPClient(options: HTTPClient.Options(caFile: options.caFile))
    }

    // MARK: Endpoint discovery

    /// `https://HOST` (or `http://` where allowed) and the registry's challenge, from `GET /v2/`.
    func endpoint(for reference: ImageReference) throws -> Endpoint {
        lock.lock()
        if let known = endpoints[reference.registry] {
            lock.unlock()
            return known
        }
        lock.unlock()
        let insecureAllowed = reference.isLoopback || options.insecureRegistries.contains(reference.registry)
        let found: Endpoint
        do {
            found = try options.retry.run("reaching \(reference.registry)") { _ in try ping("https://\(reference.registry)", reference) }
        } catch let error as HTTPError {
            guard insecureAllowed else {
                if error.description.lowercased().contains("ssl") { throw RegistryError.insecureNotAllowed(registry: reference.registry) }
                throw error
            }
            // Loopback or --insecure-registry: a plain-HTTP registry answers TLS with garbage.
            found = try options.retry.run("reaching \(reference.registry)") { _ in try ping("http://\(reference.registry)", reference) }
        }
        lock.lock()
        endpoints[reference.registry] = found
        lock.unlock()
        return found
    }

    private func ping(_ base: String, _ reference: ImageReference) throws -> Endpoint {
        let response: HTTPResponse
        do {
            response = try http.send(HTTPRequest(url: base + "/v2/"))
        } catch let error as HTTPError {
            // TLS against a plain-HTTP server is not transient: report it so the caller can fall back.
            if base.hasPrefix("https://"), !error.isRetryable || error.description.lowercased().contains("ssl") { throw error }
            throw TransientFailure(description: error.description)
        }
        switch response.status {
        case 200: return Endpoint(base: base, challenge: nil)
        case 401:
            let challenge = response.headers("WWW-Authenticate").lazy.compactMap(AuthChallenge.init(header:)).first
            return Endpoint(base: base, challenge: challenge)
        case let s where RetryPolicy.isRetryable(status: s):
            throw TransientFailure(description: "\(reference.registry) answered \(s) to GET /v2/", retryAfter: retryAfter(response))
        default:
            throw RegistryError.unexpectedStatus(
                registry: reference.registry, repository: reference.repository, step: "checking the API version (GET /v2/)",
                status: response.status, detail: errorDetail(response))
        }
    }

    // MARK: Authorization

    /// The `Authorization` header for `scopes`, fetching a registry token when the registry wants one.
    func authorization(for reference: ImageReference, scopes: [String], step: String, refresh: Bool) throws -> String? {
        let endpoint = try endpoint(for: reference)
        guard let challenge = endpoint.challenge else {
            return try credentials.credentials(for: reference)?.basicAuthorization
        }
        switch challenge.scheme {
        case .basic:
            return try credentials.credentials(for: reference)?.basicAuthorization
        case .bearer:
            let key = reference.registry + " " + scopes.joined(separator: " ")
            lock.lock()
            let cached = tokens[key]
            lock.unlock()
            if !refresh, let cached, cached.expires > Date() { return "Bearer " + cached.value }
            let token = try fetchToken(challenge, reference: reference, scopes: scopes, step: step)
            lock.lock()
            tokens[key] = token
            lock.unlock()
            return "Bearer " + token.value
        }
    }

    /// GET realm?service=&scope= with Basic credentials when we have them (the distribution spec's
    /// token flow, which Artifact Registry and Docker Hub use).
    private func fetchToken(_ challenge: AuthChallenge, reference: ImageReference, scopes: [String], step: String) throws -> Token {
        guard let realm = challenge.realm else {
            throw RegistryError.invalidResponse(registry: reference.registry, step: step, detail: "a Bearer challenge without a realm")
        }
        var query: [String] = []
        if let service = challenge.service { query.append("service=" + URLText.queryEscape(service)) }
        query += scopes.map { "scope=" + URLText.queryEscape($0) }
        var request = HTTPRequest(url: realm + (realm.contains("?") ? "&" : "?") + query.joined(separator: "&"))
        let creds = try credentials.credentials(for: reference)
        if let creds { request.setHeader("Authorization", creds.basicAuthorization) }
        return try options.retry.run("getting a token from \(URLText.redacted(realm))") { _ in
            let response: HTTPResponse
            do {
                response = try http.sendFollowingRedirects(request)
            } catch let error as HTTPError where error.isRetryable {
                throw TransientFailure(description: error.description)
            }
            switch response.status {
            case 200:
                struct Answer: Decodable {
                    var token: String?
                    var access_token: String?
                    var expires_in: Double?
                }
                guard let answer = try? JSONDecoder().decode(Answer.self, from: Data(response.body)),
                    let value = answer.token ?? answer.access_token, !value.isEmpty
                else { throw RegistryError.tokenService(realm: URLText.redacted(realm), detail: "the answer holds no token") }
                // The spec's default lifetime is 60 s; renew a little early.
                let lifetime = max((answer.expires_in ?? 60) * 0.9, 1)
                return Token(value: value, expires: Date().addingTimeInterval(lifetime))
            case 401:
                throw RegistryError.unauthorized(
                    registry: reference.registry, repository: reference.repository, step: step,
                    detail: creds == nil ? "no credentials were found for \(reference.registry)" : "as user \(creds!.username)")
            case 403:
                throw RegistryError.denied(registry: reference.registry, repository: reference.repository, step: step, detail: errorDetail(response))
            case let s where RetryPolicy.isRetryable(status: s):
                throw TransientFailure(description: "token service answered \(s)", retryAfter: retryAfter(response))
            default:
                throw RegistryError.tokenService(realm: URLText.redacted(realm), detail: "status \(response.status)")
            }
        }
    }

    // MARK: Requests

    /// Sends one request to `reference`'s registry with the right credentials; on a 401 it renews
    /// the token once (it may have expired, or the registry may want another scope).
    func send(
        _ request: HTTPRequest, to reference: ImageReference, actions: String, extraScopes: [String] = [], step: String,
        sink: ((UnsafeRawBufferPointer) throws -> Void)? = nil, progress: ((Int64, Int64) -> Void)? = nil
    ) throws -> HTTPResponse {
        var request = request
        let scopes = ["repository:\(reference.repository):\(actions)"] + extraScopes
        for attempt in 0..<2 {
            if let auth = try authorization(for: reference, scopes: scopes, step: step, refresh: attempt > 0) {
                request.setHeader("Authorization", auth)
            }
            let response: HTTPResponse
            do {
                response = try http.sendFollowingRedirects(request, sink: sink, progress: progress)
            } catch let error as HTTPError where error.isRetryable {
                throw TransientFailure(description: error.description)
            }
            if response.status == 401, attempt == 0 {
                // A registry may answer /v2/ without a challenge and still protect repositories.
                if let challenge = response.headers("WWW-Authenticate").lazy.compactMap(AuthChallenge.init(header:)).first {
                    lock.lock()
                    endpoints[reference.registry]?.challenge = challenge
                    lock.unlock()
                }
                continue
            }
            return response
        }
        throw RegistryError.unauthorized(registry: reference.registry, repository: reference.repository, step: step, detail: "")
    }

    /// Maps a response that is not one of `expected` to the error a user can act on.
    func check(_ response: HTTPResponse, _ expected: Set<Int>, reference: ImageReference, step: String) throws {
        if expected.contains(response.status) { return }
        switch response.status {
        case 401:
            throw RegistryError.unauthorized(registry: reference.registry, repository: reference.repository, step: step, detail: errorDetail(response))
        case 403:
            throw RegistryError.denied(registry: reference.registry, repository: reference.repository, step: step, detail: errorDetail(response))
        case let s where RetryPolicy.isRetryable(status: s):
            throw TransientFailure(description: "\(reference.registry) answered \(s) while \(step)", retryAfter: retryAfter(response))
        default:
            throw RegistryError.unexpectedStatus(
                registry: reference.registry, repository: reference.repository, step: step, status: response.status,
                detail: errorDetail(response))
        }
    }

    func url(_ reference: ImageReference, _ path: String) throws -> String {
        try endpoint(for: reference).base + "/v2/" + reference.repository + path
    }

    /// The registry's own words from an error body (`{"errors":[{"code","message"}]}`), if any.
    func errorDetail(_ response: HTTPResponse) -> String {
        struct Body: Decodable {
            struct Item: Decodable {
                var code: String?
                var message: String?
            }
            var errors: [Item]?
        }
        if let body = try? JSONDecoder().decode(Body.self, from: Data(response.body)), let errors = body.errors, !errors.isEmpty {
            return errors.map { [$0.code, $0.message].compactMap { $0 }.joined(separator: ": ") }.joined(separator: "; ")
        }
        return ""
    }

    func retryAfter(_ response: HTTPResponse) -> Double? {
        response.header("Retry-After").flatMap(Double.init)
    }
}
