import Foundation

/// Endpoint, cache, token and offline mode, worked out as huggingface_hub does
/// (`constants.py`, `utils/_auth.py`): the reference's section 1.1, 3 and 4.1.
public struct HubConfiguration: Sendable {
    public var endpoint: String
    public var cacheDirectory: String
    public var token: String?
    public var offline: Bool

    public init(endpoint: String, cacheDirectory: String, token: String?, offline: Bool) {
        self.endpoint = endpoint
        self.cacheDirectory = cacheDirectory
        self.token = token
        self.offline = offline
    }

    /// `endpoint` and `tokenFile` come from the command line and win over the environment.
    public static func resolve(
        environment env: [String: String] = ProcessInfo.processInfo.environment, endpoint: String? = nil,
        tokenFile: String? = nil, cacheDirectory: String? = nil, token explicitToken: String? = nil
    ) throws -> HubConfiguration {
        let home = env["HOME"] ?? NSHomeDirectory()
        let hfHome = env["HF_HOME"] ?? ((env["XDG_CACHE_HOME"] ?? home + "/.cache") + "/huggingface")
        let cache = cacheDirectory ?? env["HF_HUB_CACHE"] ?? env["HUGGINGFACE_HUB_CACHE"] ?? hfHome + "/hub"
        var base = endpoint ?? env["HF_ENDPOINT"] ?? "https://huggingface.co"
        while base.hasSuffix("/") { base.removeLast() }

        var token = explicitToken.flatMap(clean)
        if token == nil, let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw HubError.io(operation: "read the token file", path: tokenFile, reason: "it cannot be read")
            }
            token = clean(text)
        }
        token = token ?? env["HF_TOKEN"].flatMap(clean) ?? env["HUGGING_FACE_HUB_TOKEN"].flatMap(clean)
        if token == nil {
            let path = env["HF_TOKEN_PATH"] ?? hfHome + "/token"
            token = (try? String(contentsOfFile: path, encoding: .utf8)).flatMap(clean)
        }
        let offlineValue = (env["HF_HUB_OFFLINE"] ?? env["TRANSFORMERS_OFFLINE"] ?? "").uppercased()
        return HubConfiguration(
            endpoint: base, cacheDirectory: expandTilde(cache, home: home), token: token,
            offline: ["1", "ON", "YES", "TRUE"].contains(offlineValue))
    }

    /// `_clean_token`: line breaks removed, blanks trimmed; empty means none.
    static func clean(_ raw: String) -> String? {
        let token = raw.replacingOccurrences(of: "\r", with: "").replacingOccurrences(of: "\n", with: "")
            .trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }

    static func expandTilde(_ path: String, home: String) -> String {
        path.hasPrefix("~/") ? home + path.dropFirst() : path
    }
}
