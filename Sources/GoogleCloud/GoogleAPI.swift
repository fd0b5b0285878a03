import Foundation
import HTTP

/// One authenticated JSON call to a Google REST API, with Google's error body
/// (`{"error": {"code", "message", "status"}}`) turned into an error a user can act on.
struct GoogleAPI: Sendable {
    let credentials: GoogleCredentials
    let http: HTTPClient
    var retry = RetryPolicy(attempts: 5, baseDelay: 0.5, maxDelay: 8)

    /// `role` is what to grant when the answer is 403.
    func call(_ method: String, _ url: String, body: [UInt8]? = nil, what: String, role: String) throws -> [String: Any] {
        try retry.run(what) { _ in
            var headers = try credentials.headers()
            if body != nil { headers.append(("Content-Type", "application/json")) }
            let response: HTTPResponse
            do {
                response = try http.send(HTTPRequest(method: method, url: url, headers: headers, body: body.map { .bytes($0) } ?? .none))
            } catch let error as HTTPError where error.isRetryable {
                throw TransientFailure(description: error.description)
            }
            let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]
            if (200..<300).contains(response.status) { return object ?? [:] }
            let error = object?["error"] as? [String: Any]
            let message = (error?["message"] as? String) ?? response.bodyText.prefix(300).description
            let status = error?["status"] as? String ?? ""
            switch response.status {
            case 403 where status == "RESOURCE_EXHAUSTED" || message.lowercased().contains("quota"):
                throw GoogleCloudError.quotaExceeded(call: what, detail: message)
            case 429 where status == "RESOURCE_EXHAUSTED" && message.lowercased().contains("quota"):
                throw GoogleCloudError.quotaExceeded(call: what, detail: message)
            case 401, 403: throw GoogleCloudError.permissionDenied(call: what, detail: message, role: role)
            case 404: throw GoogleCloudError.notFound(call: what, detail: message)
            case 409: throw GoogleCloudError.conflict(call: what, detail: message)
            case 400, 412: throw GoogleCloudError.invalidArgument(call: what, detail: message)
            case let s where RetryPolicy.isRetryable(status: s):
                throw TransientFailure(description: "\(s) while \(what): \(message)", retryAfter: response.header("Retry-After").flatMap(Double.init))
            default:
                throw GoogleCloudError.apiError(call: what, status: response.status, detail: message)
            }
        }
    }
}
