/// Failures of one HTTP exchange, before any protocol meaning is given to the status.
public enum HTTPError: Error, CustomStringConvertible, Equatable {
    /// The connection failed or broke: DNS, refused, reset, TLS, timeout. `retryable` says whether
    /// trying again can help (a refused connection or a reset can; a bad certificate cannot).
    case transport(url: String, message: String, retryable: Bool)
    /// The response body was larger than the caller accepts in memory.
    case bodyTooLarge(url: String, limit: Int)
    /// A redirect chain that does not end.
    case tooManyRedirects(url: String)
    case invalidURL(String)

    public var description: String {
        switch self {
        case .transport(let url, let message, _): return "\(URLText.redacted(url)): \(message)"
        case .bodyTooLarge(let url, let limit): return "\(URLText.redacted(url)) answered with more than \(limit) bytes"
        case .tooManyRedirects(let url): return "\(URLText.redacted(url)) redirects more than 10 times"
        case .invalidURL(let url): return "'\(URLText.redacted(url))' is not a valid URL"
        }
    }

    public var isRetryable: Bool {
        if case .transport(_, _, let retryable) = self { return retryable }
        return false
    }
}
