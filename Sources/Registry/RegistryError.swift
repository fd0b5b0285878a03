/// Registry failures, each naming the registry, the repository and the step, never a secret.
public enum RegistryError: Error, CustomStringConvertible, Equatable {
    case invalidReference(String, reason: String)
    case unauthorized(registry: String, repository: String, step: String, detail: String)
    case denied(registry: String, repository: String, step: String, detail: String)
    case notFound(registry: String, repository: String, what: String)
    case unexpectedStatus(registry: String, repository: String, step: String, status: Int, detail: String)
    case digestMismatch(registry: String, what: String, expected: String, actual: String)
    case tokenService(realm: String, detail: String)
    case insecureNotAllowed(registry: String)
    case credentialHelper(name: String, detail: String)
    case invalidResponse(registry: String, step: String, detail: String)

    public var description: String {
        switch self {
        case .invalidReference(let text, let reason):
            return "'\(text)' is not an image reference (\(reason)); write HOST/REPOSITORY[:TAG], e.g. us-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG"
        case .unauthorized(let registry, let repository, let step, let detail):
            return "401 from \(registry) while \(step) (\(repository)): the credentials were refused\(detail.isEmpty ? "" : " (\(detail))"); check `--username`/`--password-stdin`, your docker config or, for Artifact Registry, the access token"
        case .denied(let registry, let repository, let step, let detail):
            return "403 from \(registry) while \(step): the account has no permission on \(repository)\(detail.isEmpty ? "" : " (\(detail))"); for Artifact Registry grant roles/artifactregistry.writer on the repository"
        case .notFound(let registry, let repository, let what):
            return "\(registry)/\(repository): \(what) not found; check the name and that the repository exists"
        case .unexpectedStatus(let registry, let repository, let step, let status, let detail):
            return "\(registry) answered \(status) while \(step) (\(repository))\(detail.isEmpty ? "" : ": \(detail)")"
        case .digestMismatch(let registry, let what, let expected, let actual):
            return "\(registry) returned \(what) with digest \(actual), expected \(expected): the content is corrupt or was replaced; nothing was written"
        case .tokenService(let realm, let detail):
            return "the token service \(realm) failed: \(detail)"
        case .insecureNotAllowed(let registry):
            return "\(registry) does not speak HTTPS; pass --insecure-registry \(registry) to allow plain HTTP to it"
        case .credentialHelper(let name, let detail):
            return "docker-credential-\(name) failed: \(detail); check that it is installed and logged in"
        case .invalidResponse(let registry, let step, let detail):
            return "\(registry) sent an invalid response while \(step): \(detail)"
        }
    }
}
