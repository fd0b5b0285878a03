import Foundation

/// A username and secret for one registry. `description` never shows the secret.
public struct Credentials: Hashable, Sendable, CustomStringConvertible {
    public var username: String
    public var secret: String

    public init(username: String, secret: String) {
        self.username = username
        self.secret = secret
    }

    public var basicAuthorization: String {
        "Basic " + Data("\(username):\(secret)".utf8).base64EncodedString()
    }

    public var description: String { "Credentials(username: \(username), secret: <redacted>)" }
}

/// Where credentials come from, in order: what the command line gave; for Google registries an
/// access token given on stdin; docker's config.json (`credHelpers`, then `auths`, then
/// `credsStore`), as docker and ko read it; then a Google access token from the environment.
public struct CredentialStore: Sendable {
    public var explicit: [String: Credentials]
    public var googleAccessToken: String?
    /// Asked last for Google registries: the Google credentials chain (metadata server on Cloud Build).
    public var googleTokenProvider: (@Sendable () throws -> String)?
    public var dockerConfigDirectory: String?
    public var environment: [String: String]

    public init(
        explicit: [String: Credentials] = [:], googleAccessToken: String? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) {
        self.explicit = explicit
        self.googleAccessToken = googleAccessToken
        self.environment = environment
        if let dir = environment["DOCKER_CONFIG"] {
            dockerConfigDirectory = dir
        } else if let home = environment["HOME"] {
            dockerConfigDirectory = home + "/.docker"
        }
    }

    /// The credentials for `reference`'s registry, or nil to go anonymous.
    public func credentials(for reference: ImageReference) throws -> Credentials? {
        if let given = explicit[reference.registry] { return given }
        if reference.isGoogle, let token = googleAccessToken {
            return Credentials(username: "oauth2accesstoken", secret: token)
        }
        if let fromDocker = try dockerConfigCredentials(for: reference.registry) { return fromDocker }
        if reference.isGoogle {
            // The token the Google credentials chain leaves for child processes (gcloud's variable).
            for name in ["CLOUDSDK_AUTH_ACCESS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN"] {
                if let token = environment[name], !token.isEmpty {
                    return Credentials(username: "oauth2accesstoken", secret: token)
                }
            }
            if let provider = googleTokenProvider {
                return Credentials(username: "oauth2accesstoken", secret: try provider())
            }
        }
        return nil
    }

    struct DockerConfig: Decodable {
        struct Auth: Decodable {
            var auth: String?
            var username: String?
            var password: String?
            var identitytoken: String?
        }
        var auths: [String: Auth]?
        var credsStore: String?
        var credHelpers: [String: String]?
    }

    func dockerConfigCredentials(for registry: String) throws -> Credentials? {
        guard let dir = dockerConfigDirectory,
            let data = FileManager.default.contents(atPath: dir + "/config.json")
        else { return nil }
        let config: DockerConfig
        do {
            config = try JSONDecoder().decode(DockerConfig.self, from: data)
        } catch {
            throw RegistryError.credentialHelper(name: "config", detail: "\(dir)/config.json is not valid JSON")
        }
        // Docker Hub is stored under its v1 index URL.
        let keys = registry == "registry-1.docker.io"
            ? ["https://index.docker.io/v1/", "index.docker.io", "docker.io", registry]
            : [registry, "https://\(registry)", "http://\(registry)", "https://\(registry)/v1/", "https://\(registry)/v2/"]
        if let helper = keys.lazy.compactMap({ config.credHelpers?[$0] }).first {
            return try runHelper(helper, server: registry)
        }
        for key in keys {
            guard let entry = config.auths?[key] else { continue }
            if let encoded = entry.auth, !encoded.isEmpty {
                guard let decoded = Data(base64Encoded: encoded).map({ String(decoding: $0, as: UTF8.self) }),
                    let colon = decoded.firstIndex(of: ":")
                else {
                    throw RegistryError.credentialHelper(name: "config", detail: "the auth entry for \(key) is not base64 of user:password")
                }
                return Credentials(username: String(decoded[..<colon]), secret: String(decoded[decoded.index(after: colon)...]))
            }
            if let user = entry.username, let password = entry.password {
                return Credentials(username: user, secret: password)
            }
        }
        if let store = config.credsStore, !store.isEmpty {
            return try runHelper(store, server: registry)
        }
        return nil
    }

    /// Runs `docker-credential-NAME get` with the server on stdin (docker-credential-helpers protocol).
    func runHelper(_ name: String, server: String) throws -> Credentials? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["docker-credential-\(name)", "get"]
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        do { try process.run() } catch {
            throw RegistryError.credentialHelper(name: name, detail: "it could not be started")
        }
        input.fileHandleForWriting.write(Data(server.utf8))
        try? input.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        if process.terminationStatus != 0 {
            let message = String(decoding: out, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            // The protocol's answer for "no credentials for this server": go anonymous.
            if message.contains("credentials not found") { return nil }
            throw RegistryError.credentialHelper(name: name, detail: "exit status \(process.terminationStatus)")
        }
        struct Answer: Decodable {
            var Username: String
            var Secret: String
        }
        guard let answer = try? JSONDecoder().decode(Answer.self, from: out) else {
            throw RegistryError.credentialHelper(name: name, detail: "its answer is not {\"Username\",\"Secret\"} JSON")
        }
        return Credentials(username: answer.Username, secret: answer.Secret)
    }
}
