import Foundation

/// API base URLs, with gcloud's own override variables so tests (and private endpoints) can
/// redirect them: `CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN` and friends, `GCE_METADATA_HOST`.
public struct GoogleEndpoints: Sendable {
    public var run: String
    public var secretManager: String
    public var iamCredentials: String
    public var oauthToken: String
    /// `http://HOST` of the metadata server.
    public var metadata: String

    public init(environment env: [String: String] = ProcessInfo.processInfo.environment) {
        func base(_ variable: String, _ fallback: String) -> String {
            var url = env[variable].flatMap { $0.isEmpty ? nil : $0 } ?? fallback
            while url.hasSuffix("/") { url.removeLast() }
            return url
        }
        run = base("CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN", "https://run.googleapis.com")
        secretManager = base("CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER", "https://secretmanager.googleapis.com")
        iamCredentials = base("CLOUDSDK_API_ENDPOINT_OVERRIDES_IAMCREDENTIALS", "https://iamcredentials.googleapis.com")
        oauthToken = "https://oauth2.googleapis.com/token"
        let host = env["GCE_METADATA_HOST"] ?? env["GCE_METADATA_ROOT"] ?? "metadata.google.internal"
        metadata = host.contains("://") ? host : "http://" + host
    }

    /// gcloud's override value may or may not end in the API version; strip a trailing `/v1` or `/v2`
    /// so paths can be appended uniformly.
    static func strippingVersion(_ url: String) -> String {
        for suffix in ["/v1", "/v2"] where url.hasSuffix(suffix) { return String(url.dropLast(suffix.count)) }
        return url
    }
}
