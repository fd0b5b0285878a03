import Foundation
import Hummingbird

/// An error as the OpenAI API reports it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}` (vLLM's `ErrorResponse`, code = the status).
public struct OpenAIError: Error, Sendable, HTTPResponseError {
    public var status: HTTPResponse.Status
    public var message: String
    public var param: String?
    /// Extra headers (Retry-After for 429 and 503).
    public var retryAfter: Int?

    public init(_ status: HTTPResponse.Status, _ message: String, param: String? = nil, retryAfter: Int? = nil) {
        self.status = status
        self.message = message
        self.param = param
        self.retryAfter = retryAfter
    }

    public static func badRequest(_ message: String, param: String? = nil) -> OpenAIError {
        OpenAIError(.badRequest, message, param: param)
    }

    /// OpenAI's error type names for each status.
    public var type: String {
        switch status.code {
        case 400: return "BadRequestError"
        case 401: return "AuthenticationError"
        case 404: return "NotFoundError"
        case 405: return "MethodNotAllowedError"
        case 408: return "RequestTimeoutError"
        case 413: return "RequestTooLargeError"
        case 415: return "UnsupportedMediaTypeError"
        case 429: return "RateLimitError"
        case 503: return "ServiceUnavailableError"
        case 400..<500: return "BadRequestError"
        default: return "InternalServerError"
        }
    }

    public var body: JSON {
        .object([
            (
                "error",
                .object([
                    ("message", .string(message)), ("type", .string(type)), ("param", JSON(param)),
                    ("code", .int(status.code)),
                ])
            )
        ])
    }

    public var headers: HTTPFields {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        return headers
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body.serialized())))
    }
}

extension OpenAIError {
    /// A decoding failure of a request body, told in the request's own field names.
    init(decoding error: any Error) {
        func path(_ keys: [any CodingKey]) -> String {
            var out = ""
            for key in keys {
                if let index = key.intValue {
                    out += "[\(index)]"
                } else {
                    out += (out.isEmpty ? "" : ".") + snakeCase(key.stringValue)
                }
            }
            return out
        }
        // The decoder converts the client's snake_case names to Swift's (`max_tokens` → `maxTokens`);
        // the message and `param` name the field as the client sent it.
        func snakeCase(_ name: String) -> String {
            var out = ""
            for character in name {
                if character.isUppercase { out += "_" + character.lowercased() } else { out.append(character) }
            }
            return out
        }
        func typeName(_ type: Any.Type) -> String {
            switch type {
            case is Int.Type, is Int?.Type: return "an integer"
            case is Double.Type, is Double?.Type: return "a number"
            case is Bool.Type, is Bool?.Type: return "a boolean"
            case is String.Type, is String?.Type: return "a string"
            default: return "\(type)".contains("Array") ? "a list" : "an object of the documented shape"
            }
        }
        switch error {
        case DecodingError.typeMismatch(let type, let context):
            let at = path(context.codingPath)
            self = .badRequest(
                at.isEmpty ? "the request body must be a JSON object" : "'\(at)' must be \(typeName(type))",
                param: at.isEmpty ? nil : at)
        case DecodingError.valueNotFound(let type, let context):
            let at = path(context.codingPath)
            self = .badRequest(
                at.isEmpty ? "the request body must be a JSON object, not null" : "'\(at)' must be \(typeName(type)), not null",
                param: at.isEmpty ? nil : at)
        case DecodingError.keyNotFound(let key, let context):
            let at = path(context.codingPath + [key])
            self = .badRequest("'\(at)' is required", param: at)
        case DecodingError.dataCorrupted(let context):
            let at = path(context.codingPath)
            if at.isEmpty {
                self = .badRequest(
                    "a number in the request is not valid for its field (integers must be whole and fit in 64 bits): "
                        + context.debugDescription)
            } else {
                self = .badRequest("'\(at)': \(context.debugDescription)", param: at)
            }
        default:
            self = .badRequest("the request body could not be read: \(error)")
        }
    }
}
