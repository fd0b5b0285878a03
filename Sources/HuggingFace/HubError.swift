/// What can go wrong while fetching from the Hub, each with what the user can do about it.
/// No message ever contains the token.
public enum HubError: Error, CustomStringConvertible, Equatable {
    /// 401 GatedRepo: the repository is gated and no token was sent.
    case gatedNeedsToken(repo: String, endpoint: String)
    /// 403 GatedRepo: the token's owner has not accepted the license.
    case gatedNotAccepted(repo: String, endpoint: String)
    case invalidToken(endpoint: String)
    case repoNotFound(repo: String, hadToken: Bool)
    case revisionNotFound(repo: String, revision: String)
    case entryNotFound(repo: String, path: String)
    case forbidden(repo: String, detail: String)
    case unexpectedStatus(step: String, status: Int, detail: String)
    case invalidResponse(step: String, detail: String)
    case verificationFailed(path: String, expected: String, actual: String)
    case diskFull(directory: String, needed: Int64, available: Int64)
    case offlineMiss(repo: String, revision: String, cache: String)
    case unsafePath(String)
    case io(operation: String, path: String, reason: String)
    case noFilesSelected(repo: String, patterns: String)

    public var description: String {
        switch self {
        case .gatedNeedsToken(let repo, let endpoint):
            return "\(repo) is a gated model and no Hugging Face token was given: accept its license at \(endpoint)/\(repo), then pass a token (--token-file, HF_TOKEN or `hf auth login`)"
        case .gatedNotAccepted(let repo, let endpoint):
            return "\(repo) is a gated model and the token's account has not been granted access: accept the license at \(endpoint)/\(repo) with that account (or use a token of an account that has)"
        case .invalidToken(let endpoint):
            return "\(endpoint) rejected the token (invalid credentials): make a new one at \(endpoint)/settings/tokens"
        case .repoNotFound(let repo, let hadToken):
            return "repository \(repo) was not found" + (hadToken ? "; check the name" : "; check the name, or pass a token if it is private or gated")
        case .revisionNotFound(let repo, let revision):
            return "revision '\(revision)' of \(repo) was not found: give a branch, tag or commit that exists"
        case .entryNotFound(let repo, let path):
            return "\(repo) has no file \(path) at that revision"
        case .forbidden(let repo, let detail):
            return "403 from the Hub for \(repo)\(detail.isEmpty ? "" : ": \(detail)"); check that the token has read permission"
        case .unexpectedStatus(let step, let status, let detail):
            return "the Hub answered \(status) while \(step)\(detail.isEmpty ? "" : ": \(detail)")"
        case .invalidResponse(let step, let detail):
            return "the Hub sent an invalid response while \(step): \(detail)"
        case .verificationFailed(let path, let expected, let actual):
            return "\(path) failed verification twice (expected \(expected), got \(actual)); the bad bytes were deleted. The mirror or a proxy may be corrupting downloads"
        case .diskFull(let directory, let needed, let available):
            return "not enough space in \(directory): \(ByteCount.format(needed)) more is needed, \(ByteCount.format(available)) is free. Files already verified are kept; free space (or set HF_HUB_CACHE elsewhere) and run again to resume"
        case .offlineMiss(let repo, let revision, let cache):
            return "offline mode (HF_HUB_OFFLINE) and \(repo)@\(revision) is not in the cache \(cache): fetch it once online"
        case .unsafePath(let path):
            return "the repository lists an unsafe path '\(path)' (absolute or with '..'); refusing to write outside the cache"
        case .io(let operation, let path, let reason):
            return "could not \(operation) \(path): \(reason)"
        case .noFilesSelected(let repo, let patterns):
            return "no file of \(repo) matches \(patterns)"
        }
    }
}

import Foundation
import HTTP
