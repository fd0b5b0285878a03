/// Google Cloud failures, each saying which call, what Google said and what to do. Never a token.
public enum GoogleCloudError: Error, CustomStringConvertible, Equatable {
    case noCredentials(tried: [String])
    case invalidCredentialsFile(path: String, reason: String)
    case tokenExchange(endpoint: String, status: Int, detail: String)
    case permissionDenied(call: String, detail: String, role: String)
    case notFound(call: String, detail: String)
    case quotaExceeded(call: String, detail: String)
    case invalidArgument(call: String, detail: String)
    case apiError(call: String, status: Int, detail: String)
    case secretCorrupt(name: String)
    case operationFailed(name: String, code: Int, message: String)
    case operationTimedOut(name: String, seconds: Int)
    case deployFailed(service: String, message: String, logURI: String?)
    case invalidResponse(call: String, detail: String)
    case conflict(call: String, detail: String)
    case unhealthy(url: String, status: Int, detail: String)

    public var description: String {
        switch self {
        case .noCredentials(let tried):
            return "no Google credentials found (tried \(tried.joined(separator: ", "))); run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a key file, or run on Cloud Build/Cloud Run"
        case .invalidCredentialsFile(let path, let reason):
            return "\(path) is not a usable credentials file: \(reason)"
        case .tokenExchange(let endpoint, let status, let detail):
            return "the token endpoint \(endpoint) answered \(status)\(detail.isEmpty ? "" : ": \(detail)"); the key may be revoked or the clock wrong"
        case .permissionDenied(let call, let detail, let role):
            return "permission denied while \(call): \(detail). Grant the caller \(role)"
        case .notFound(let call, let detail):
            return "not found while \(call): \(detail)"
        case .quotaExceeded(let call, let detail):
            return "quota exceeded while \(call): \(detail). For GPUs, request 'Total Nvidia L4 GPU allocation' quota for the region (zonal redundancy off and on are separate quotas; --gpu-zonal-redundancy changes which is used)"
        case .invalidArgument(let call, let detail):
            return "Google rejected the request while \(call): \(detail)"
        case .apiError(let call, let status, let detail):
            return "Google answered \(status) while \(call)\(detail.isEmpty ? "" : ": \(detail)")"
        case .secretCorrupt(let name):
            return "the payload of \(name) failed its CRC32C check: it was corrupted in transit; try again"
        case .operationFailed(let name, let code, let message):
            return "operation \(name) failed (code \(code)): \(message)"
        case .operationTimedOut(let name, let seconds):
            return "operation \(name) did not finish within \(seconds) s; it may still complete: check the Cloud Run console"
        case .deployFailed(let service, let message, let logURI):
            return "the new revision of \(service) did not become ready: \(message)" + (logURI.map { "\nlogs: \($0)" } ?? "")
        case .invalidResponse(let call, let detail):
            return "invalid response while \(call): \(detail)"
        case .conflict(let call, let detail):
            return "a concurrent change got in the way while \(call): \(detail); run the command again"
        case .unhealthy(let url, let status, let detail):
            return "the service is deployed but \(url) answered \(status)\(detail.isEmpty ? "" : ": \(detail)")"
        }
    }
}
