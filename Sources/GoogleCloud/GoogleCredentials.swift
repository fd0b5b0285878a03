import Foundation
import HTTP

/// Google credentials, found in this order (google-auth's `default()`, with gcloud's token variable
/// first): `CLOUDSDK_AUTH_ACCESS_TOKEN`; `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key,
/// signed JWT exchanged for a token, or an `authorized_user` file, refresh-token grant); gcloud's
/// application default credentials file; the metadata server (Cloud Build steps, Cloud Run, GCE).
/// Tokens are cached and renewed 3 min 45 s before they expire, as google-auth does.
public final class GoogleCredentials: @unchecked Sendable {
    // @unchecked: the cached token is only touched under `lock`.
    public enum Source: Sendable {
        case accessToken(String)
        case serviceAccount(ServiceAccountKey)
        case authorizedUser(AuthorizedUser)
        case metadataServer
    }

    public struct ServiceAccountKey: Sendable, Decodable {
        public var client_email: String
        public var private_key: String
        public var private_key_id: String?
        public var project_id: String?
        public var token_uri: String?
    }

    public struct AuthorizedUser: Sendable, Decodable {
        public var client_id: String
        public var client_secret: String
        public var refresh_token: String
        public var quota_project_id: String?
    }

    public let source: Source
    public let sourceDescription: String
    let endpoints: GoogleEndpoints
    let http: HTTPClient
    private let lock = NSLock()
    private var cached: (token: String, expires: Date)?
    static let scope = "https://www.googleapis.com/auth/cloud-platform"
    static let refreshMargin: TimeInterval = 225

    public init(source: Source, description: String, endpoints: GoogleEndpoints = GoogleEndpoints(), http: HTTPClient = HTTPClient()) {
        self.source = source
        self.sourceDescription = description
        self.endpoints = endpoints
        self.http = http
    }

    /// Walks the chain; a file that exists but is wrong is an error, not a reason to go on.
    public static func discover(environment env: [String: String] = ProcessInfo.processInfo.environment) throws -> GoogleCredentials {
        let endpoints = GoogleEndpoints(environment: env)
        var tried: [String] = []
        if let token = env["CLOUDSDK_AUTH_ACCESS_TOKEN"], !token.isEmpty {
            return GoogleCredentials(source: .accessToken(token), description: "CLOUDSDK_AUTH_ACCESS_TOKEN", endpoints: endpoints)
        }
        tried.append("CLOUDSDK_AUTH_ACCESS_TOKEN")
        if let path = env["GOOGLE_APPLICATION_CREDENTIALS"], !path.isEmpty {
            return try fromFile(path, endpoints: endpoints)
        }
        tried.append("GOOGLE_APPLICATION_CREDENTIALS")
        let gcloudDirectory = env["CLOUDSDK_CONFIG"] ?? ((env["HOME"] ?? NSHomeDirectory()) + "/.config/gcloud")
        let adc = gcloudDirectory + "/application_default_credentials.json"
        if FileManager.default.fileExists(atPath: adc) { return try fromFile(adc, endpoints: endpoints) }
        tried.append(adc)
        let metadata = GoogleCredentials(source: .metadataServer, description: "the metadata server", endpoints: endpoints, http: HTTPClient(options: {
            var o = HTTPClient.Options()
            o.connectTimeout = 3
            return o
        }()))
        if (try? metadata.accessToken()) != nil { return metadata }
        tried.append("the metadata server at \(endpoints.metadata)")
        throw GoogleCloudError.noCredentials(tried: tried)
    }

    static func fromFile(_ path: String, endpoints: GoogleEndpoints) throws -> GoogleCredentials {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GoogleCloudError.invalidCredentialsFile(path: path, reason: "it cannot be read")
        }
        struct Kind: Decodable { var type: String? }
        let type = (try? JSONDecoder().decode(Kind.self, from: data))?.type
        switch type {
        case "service_account":
            guard let key = try? JSONDecoder().decode(ServiceAccountKey.self, from: data) else {
                throw GoogleCloudError.invalidCredentialsFile(path: path, reason: "a service_account key needs client_email and private_key")
            }
            return GoogleCredentials(source: .serviceAccount(key), description: "service account \(key.client_email) (\(path))", endpoints: endpoints)
        case "authorized_user":
            guard let user = try? JSONDecoder().decode(AuthorizedUser.self, from: data) else {
                throw GoogleCloudError.invalidCredentialsFile(path: path, reason: "an authorized_user file needs client_id, client_secret and refresh_token")
            }
            return GoogleCredentials(source: .authorizedUser(user), description: "user credentials (\(path))", endpoints: endpoints)
        default:
            throw GoogleCloudError.invalidCredentialsFile(path: path, reason: "type '\(type ?? "missing")' is not supported (service_account or authorized_user)")
        }
    }

    /// The project the credentials belong to, when they say.
    public var projectID: String? {
        switch source {
        case .serviceAccount(let key): return key.project_id
        case .authorizedUser(let user): return user.quota_project_id
        default: return nil
        }
    }

    /// Headers for a Google API call: the bearer token, and the quota project for user credentials.
    public func headers() throws -> [(String, String)] {
        var headers = [("Authorization", "Bearer " + (try accessToken()))]
        if case .authorizedUser(let user) = source, let project = user.quota_project_id { headers.append(("x-goog-user-project", project)) }
        return headers
    }

    public func accessToken() throws -> String {
        lock.lock()
        if let cached, cached.expires.timeIntervalSinceNow > GoogleCredentials.refreshMargin {
            lock.unlock()
            return cached.token
        }
        lock.unlock()
        let fresh = try fetchAccessToken()
        lock.lock()
        cached = fresh
        lock.unlock()
        return fresh.token
    }

    private func fetchAccessToken() throws -> (token: String, expires: Date) {
        switch source {
        case .accessToken(let token):
            return (token, Date.distantFuture)
        case .serviceAccount(let key):
            let tokenURI = key.token_uri ?? endpoints.oauthToken
            let assertion = try jwt(key, claims: ["scope": GoogleCredentials.scope], audience: tokenURI)
            return try exchange(tokenURI, form: ["grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion], field: "access_token")
        case .authorizedUser(let user):
            return try exchange(endpoints.oauthToken, form: [
                "grant_type": "refresh_token", "client_id": user.client_id, "client_secret": user.client_secret,
                "refresh_token": user.refresh_token,
            ], field: "access_token")
        case .metadataServer:
            let response = try http.send(HTTPRequest(
                url: endpoints.metadata + "/computeMetadata/v1/instance/service-accounts/default/token",
                headers: [("Metadata-Flavor", "Google")]))
            guard response.status == 200 else {
                throw GoogleCloudError.tokenExchange(endpoint: endpoints.metadata, status: response.status, detail: "")
            }
            return try parseToken(response.body, field: "access_token", endpoint: endpoints.metadata)
        }
    }

    /// An OIDC identity token for `audience` (a private Cloud Run URL).
    ///
    /// With `serviceAccount`, always IAM Credentials `generateIdToken` for that account (the caller
    /// needs roles/iam.serviceAccountTokenCreator on it): this is how user credentials get one.
    /// Otherwise the metadata server's `/identity`, falling back to `generateIdToken` for the
    /// metadata server's own account where `/identity` answers nothing (Cloud Build has done so);
    /// or, for a service-account key, the token endpoint with a `target_audience` JWT.
    public func identityToken(audience: String, serviceAccount: String? = nil) throws -> String {
        if let serviceAccount { return try generateIdToken(serviceAccount: serviceAccount, audience: audience) }
        switch source {
        case .metadataServer:
            let response = try http.send(HTTPRequest(
                url: endpoints.metadata + "/computeMetadata/v1/instance/service-accounts/default/identity?audience=\(URLText.queryEscape(audience))&format=full",
                headers: [("Metadata-Flavor", "Google")]))
            if response.status == 200, !response.body.isEmpty {
                return response.bodyText.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let email = try http.send(HTTPRequest(
                url: endpoints.metadata + "/computeMetadata/v1/instance/service-accounts/default/email",
                headers: [("Metadata-Flavor", "Google")]))
            let account = email.bodyText.trimmingCharacters(in: .whitespacesAndNewlines)
            guard email.status == 200, account.contains("@") else {
                throw GoogleCloudError.tokenExchange(
                    endpoint: endpoints.metadata, status: response.status,
                    detail: "no identity token, and no service account email to ask IAM Credentials for one")
            }
            return try generateIdToken(serviceAccount: account, audience: audience)
        case .serviceAccount(let key):
            let tokenURI = key.token_uri ?? endpoints.oauthToken
            let assertion = try jwt(key, claims: ["target_audience": audience], audience: tokenURI)
            return try exchange(tokenURI, form: ["grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion], field: "id_token").token
        default:
            throw GoogleCloudError.invalidCredentialsFile(
                path: sourceDescription,
                reason: "user credentials cannot mint identity tokens themselves; name a service account to impersonate (--impersonate-service-account) on which you hold roles/iam.serviceAccountTokenCreator")
        }
    }

    /// IAM Credentials `generateIdToken`, authorized by our own access token.
    func generateIdToken(serviceAccount: String, audience: String) throws -> String {
        guard serviceAccount.contains("@"), !serviceAccount.contains(where: { "/?#% ".contains($0) }) else {
            throw GoogleCloudError.invalidArgument(call: "getting an identity token", detail: "'\(serviceAccount)' is not a service account email")
        }
        let url = GoogleEndpoints.strippingVersion(endpoints.iamCredentials) + "/v1/projects/-/serviceAccounts/\(serviceAccount):generateIdToken"
        let body = try JSONSerialization.data(withJSONObject: ["audience": audience, "includeEmail": true] as [String: Any], options: [.sortedKeys])
        let what = "getting an identity token for \(serviceAccount)"
        let answer = try GoogleAPI(credentials: self, http: http).call(
            "POST", url, body: Array(body), what: what, role: "roles/iam.serviceAccountTokenCreator on \(serviceAccount)")
        guard let token = answer["token"] as? String, !token.isEmpty else {
            throw GoogleCloudError.invalidResponse(call: what, detail: "no token in the answer")
        }
        return token
    }

    func jwt(_ key: ServiceAccountKey, claims: [String: String], audience: String) throws -> String {
        var header = ["alg": "RS256", "typ": "JWT"]
        if let kid = key.private_key_id { header["kid"] = kid }
        let now = Int(Date().timeIntervalSince1970)
        var payload: [String: Any] = ["iss": key.client_email, "aud": audience, "iat": now, "exp": now + 3600]
        for (k, v) in claims { payload[k] = v }
        let headerJSON = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        let payloadJSON = try JSONSerialization.data(withJSONObject: payload, options: [.sortedKeys])
        let input = base64URL(Array(headerJSON)) + "." + base64URL(Array(payloadJSON))
        let signature = try RS256.sign(Array(input.utf8), privateKeyPEM: key.private_key)
        return input + "." + base64URL(signature)
    }

    private func exchange(_ url: String, form: [String: String], field: String) throws -> (token: String, expires: Date) {
        let body = form.sorted { $0.key < $1.key }.map { "\($0.key)=\(URLText.queryEscape($0.value))" }.joined(separator: "&")
        let response = try http.send(HTTPRequest(
            method: "POST", url: url, headers: [("Content-Type", "application/x-www-form-urlencoded")], body: .bytes(Array(body.utf8))))
        guard response.status == 200 else {
            struct OAuthError: Decodable {
                var error: String?
                var error_description: String?
            }
            let detail = (try? JSONDecoder().decode(OAuthError.self, from: Data(response.body))).map {
                [$0.error, $0.error_description].compactMap { $0 }.joined(separator: ": ")
            } ?? ""
            throw GoogleCloudError.tokenExchange(endpoint: url, status: response.status, detail: detail)
        }
        return try parseToken(response.body, field: field, endpoint: url)
    }

    private func parseToken(_ body: [UInt8], field: String, endpoint: String) throws -> (token: String, expires: Date) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let token = object[field] as? String, !token.isEmpty
        else { throw GoogleCloudError.invalidResponse(call: "getting a token from \(endpoint)", detail: "no \(field) in the answer") }
        let lifetime = (object["expires_in"] as? Double) ?? (object["expires_in"] as? Int).map(Double.init) ?? 3600
        return (token, Date().addingTimeInterval(lifetime))
    }
}
