import ArgumentParser
import BuilderKit
import Foundation
import GoogleCloud
import Registry

/// Options every command that talks to a registry shares.
struct RegistryOptions: ParsableArguments {
    @Option(name: .customLong("insecure-registry"), help: "Allow plain HTTP to this HOST[:PORT] (loopback always may); repeatable.")
    var insecureRegistries: [String] = []

    @Option(name: .customLong("ca-file"), help: "PEM file of CA certificates to trust for the registry instead of the system store.")
    var caFile: String?

    @Option(help: "Registry user name (with --password-stdin). Default: docker's config.json and credential helpers.")
    var username: String?

    @Flag(name: .customLong("password-stdin"), help: "Read the registry password or token from stdin.")
    var passwordStdin = false

    @Flag(name: .customLong("google-access-token-stdin"), help: "Read a Google access token from stdin for *.pkg.dev and gcr.io (user oauth2accesstoken).")
    var googleAccessTokenStdin = false

    @Option(help: "Blobs transferred in parallel.")
    var jobs: Int = 4

    @Option(name: .customLong("upload-mode"), help: "put (POST then one PUT: works everywhere, required by Artifact Registry), patch (one streamed PATCH then PUT), or chunked.")
    var uploadMode: UploadModeArgument = .put

    @Option(name: .customLong("chunk-size"), help: "Bytes per PATCH with --upload-mode chunked.")
    var chunkSize: Int64 = 64 << 20

    func validate() throws {
        guard jobs >= 1, jobs <= 64 else { throw ValidationError("--jobs must be between 1 and 64") }
        guard !(passwordStdin && googleAccessTokenStdin) else { throw ValidationError("stdin holds one secret: use --password-stdin or --google-access-token-stdin") }
        guard passwordStdin == (username != nil) else { throw ValidationError("--username and --password-stdin go together") }
        guard chunkSize >= 1 << 20 else { throw ValidationError("--chunk-size must be at least 1 MiB") }
    }

    /// A client for `reference`'s registry with the secrets read from stdin where asked.
    func makeClient(for registry: String?) throws -> RegistryClient {
        var explicit: [String: Credentials] = [:]
        var googleToken: String?
        if passwordStdin || googleAccessTokenStdin {
            let secret = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            guard !secret.isEmpty else { throw ValidationError("stdin was empty: pipe the secret in, e.g. `gcloud auth print-access-token | builder ...`") }
            if passwordStdin, let username, let registry { explicit[registry] = Credentials(username: username, secret: secret) }
            if googleAccessTokenStdin { googleToken = secret }
        }
        var options = RegistryClient.Options()
        options.insecureRegistries = Set(insecureRegistries)
        options.caFile = caFile
        if let attempts = ProcessInfo.processInfo.environment["BUILDER_RETRY_ATTEMPTS"].flatMap(Int.init) { options.retry.attempts = attempts }
        if let base = ProcessInfo.processInfo.environment["BUILDER_RETRY_BASE_DELAY"].flatMap(Double.init) { options.retry.baseDelay = base }
        var store = CredentialStore(explicit: explicit, googleAccessToken: googleToken)
        // For Artifact Registry with nothing else configured: the Google chain (on Cloud Build, the
        // build's service account from the metadata server).
        store.googleTokenProvider = { try GoogleCredentials.discover().accessToken() }
        return RegistryClient(options: options, credentials: store)
    }
}

enum UploadModeArgument: String, ExpressibleByArgument, CaseIterable {
    case put, patch, chunked

    var mode: RegistryClient.UploadMode { RegistryClient.UploadMode(rawValue: rawValue)! }
}

/// Runs a command body, turning our errors into one line on stderr and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ValidationError {
        throw error
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode.failure
    }
}
