/// One HTTP request. Bodies stream from a file or come from memory; nothing else is buffered.
public struct HTTPRequest: Sendable {
    public enum Body: Sendable {
        case none
        case bytes([UInt8])
        /// `length` bytes of the file at `path`, from `offset`: sent with a known Content-Length,
        /// which is what Artifact Registry requires of blob uploads (no chunked encoding).
        case file(path: String, offset: Int64, length: Int64)

        var length: Int64 {
            switch self {
            case .none: return 0
            case .bytes(let b): return Int64(b.count)
            case .file(_, _, let length): return length
            }
        }
    }

    public var method: String
    public var url: String
    public var headers: [(String, String)]
    public var body: Body

    public init(method: String = "GET", url: String, headers: [(String, String)] = [], body: Body = .none) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
    }

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    public mutating func setHeader(_ name: String, _ value: String?) {
        headers.removeAll { $0.0.lowercased() == name.lowercased() }
        if let value { headers.append((name, value)) }
    }
}

/// The status, headers and (when collected) body of the final response.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]
    /// The URL that answered (after redirects, when they were followed).
    public var url: String

    public func header(_ name: String) -> String? {
        headers.last { $0.0.lowercased() == name.lowercased() }?.1
    }

    public func headers(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }

    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}
