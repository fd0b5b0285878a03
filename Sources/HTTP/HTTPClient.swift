import CCurl
import Foundation

/// A blocking, streaming HTTP/1.1 and HTTP/2 client over libcurl. Safe to use from many threads at
/// once: each request takes an easy handle from a pool (keeping its connections alive for the next
/// request) and gives it back. Redirects are followed here, not by curl, so that credentials are
/// dropped when a redirect leaves the origin (Docker Hub's and the Hub's CDNs; see
/// swift-container-plugin PR #167 for what goes wrong otherwise).
public final class HTTPClient: @unchecked Sendable {
    // @unchecked: `pool` is only touched under `lock`; a handle is used by one thread at a time.
    public struct Options: Sendable {
        /// PEM bundle to trust instead of the system store (`--ca-file`).
        public var caFile: String?
        public var userAgent = "gemma-run-builder/0.1"
        public var connectTimeout: Int = 30
        /// A transfer slower than 1 byte/s for this many seconds is treated as a dropped connection.
        public var stallTimeout: Int = 60

        public init(caFile: String? = nil) { self.caFile = caFile }
    }

    public let options: Options
    private let lock = NSLock()
    private var pool: [UnsafeMutableRawPointer] = []

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    public init(options: Options = Options()) {
        _ = HTTPClient.globalInit
        self.options = options
    }

    deinit { pool.forEach { curl_easy_cleanup($0) } }

    /// Sends `request` once. With a `sink`, the body of a response whose status is in
    /// `sinkStatuses` is streamed to it (others are collected in memory, up to `maxBody`, for error
    /// messages); without one, the body is collected. `progress` gets (bytes sent, bytes received) as the transfer goes.
    public func send(
        _ request: HTTPRequest, maxBody: Int = 16 << 20, sink: ((UnsafeRawBufferPointer) throws -> Void)? = nil,
        sinkStatuses: Set<Int> = Set(200..<300), progress: ((Int64, Int64) -> Void)? = nil
    ) throws -> HTTPResponse {
        let handle = takeHandle()
        defer { giveBack(handle) }
        let exchange = Exchange(url: request.url, maxBody: maxBody, sink: sink, progress: progress)
        exchange.sinkStatuses = sinkStatuses
        var headerList: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(headerList) }

        try check(handle, request.url) { ccurl_setopt_string(handle, CURLOPT_URL, request.url) }
        _ = ccurl_setopt_string(handle, CURLOPT_USERAGENT, options.userAgent)
        _ = ccurl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        _ = ccurl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT, options.connectTimeout)
        _ = ccurl_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1)
        _ = ccurl_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, options.stallTimeout)
        _ = ccurl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0)
        _ = ccurl_setopt_string(handle, CURLOPT_ACCEPT_ENCODING, "")  // let curl decode gzip'd JSON
        if let ca = options.caFile { _ = ccurl_setopt_string(handle, CURLOPT_CAINFO, ca) }

        var headers = request.headers
        // curl would send "Expect: 100-continue" before large bodies; registries answer it
        // inconsistently, and it costs a round trip per blob.
        headers.append(("Expect", ""))
        if case .none = request.body, request.method == "POST" || request.method == "PUT" || request.method == "PATCH" {
            headers.append(("Content-Length", "0"))
        }
        for (name, value) in headers {
            headerList = curl_slist_append(headerList, value.isEmpty ? "\(name):" : "\(name): \(value)")
        }
        _ = ccurl_setopt_slist(handle, CURLOPT_HTTPHEADER, headerList)

        var bodyFile: FileHandle?
        defer { try? bodyFile?.close() }
        switch request.method {
        case "GET": _ = ccurl_setopt_long(handle, CURLOPT_HTTPGET, 1)
        case "HEAD": _ = ccurl_setopt_long(handle, CURLOPT_NOBODY, 1)
        default: _ = ccurl_setopt_string(handle, CURLOPT_CUSTOMREQUEST, request.method)
        }
        switch request.body {
        case .none:
            break
        case .bytes(let bytes):
            exchange.upload = .bytes(bytes, 0)
            _ = ccurl_setopt_long(handle, CURLOPT_UPLOAD, 1)
            _ = ccurl_setopt_off(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(bytes.count))
        case .file(let path, let offset, let length):
            guard let file = FileHandle(forReadingAtPath: path) else {
                throw HTTPError.transport(url: request.url, message: "cannot open \(path) to send it", retryable: false)
            }
            try file.seek(toOffset: UInt64(offset))
            bodyFile = file
            exchange.upload = .file(file.fileDescriptor, length)
            _ = ccurl_setopt_long(handle, CURLOPT_UPLOAD, 1)
            _ = ccurl_setopt_off(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(length))
        }
        // CURLOPT_UPLOAD implies PUT; the CUSTOMREQUEST set above renames it (POST, PATCH).

        let context = Unmanaged.passUnretained(exchange).toOpaque()
        _ = ccurl_setopt_pointer(handle, CURLOPT_WRITEDATA, context)
        _ = ccurl_set_write_function(handle, curlWrite)
        _ = ccurl_setopt_pointer(handle, CURLOPT_HEADERDATA, context)
        _ = ccurl_set_header_function(handle, curlHeader)
        _ = ccurl_setopt_pointer(handle, CURLOPT_READDATA, context)
        _ = ccurl_set_read_function(handle, curlRead)
        if progress != nil {
            _ = ccurl_setopt_long(handle, CURLOPT_NOPROGRESS, 0)
            _ = ccurl_setopt_pointer(handle, CURLOPT_XFERINFODATA, context)
            _ = ccurl_set_xferinfo_function(handle, curlProgress)
        }

        var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        let code = errorBuffer.withUnsafeMutableBufferPointer { buffer -> CURLcode in
            _ = ccurl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, buffer.baseAddress)
            defer { _ = ccurl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, nil) }
            return curl_easy_perform(handle)
        }
        if let error = exchange.error { throw error }
        guard code == CURLE_OK else {
            let detail = String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let message = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            throw HTTPError.transport(url: request.url, message: message, retryable: HTTPClient.isRetryable(code))
        }
        var status = 0
        _ = ccurl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: exchange.headers, body: exchange.body, url: request.url)
    }

    /// Sends `request`, following up to 10 redirects. `Authorization` goes only to the origin of
    /// the first URL: a redirect to another host (a CDN, a storage bucket) gets the request without it.
    public func sendFollowingRedirects(
        _ request: HTTPRequest, maxBody: Int = 16 << 20, sink: ((UnsafeRawBufferPointer) throws -> Void)? = nil,
        sinkStatuses: Set<Int> = Set(200..<300), progress: ((Int64, Int64) -> Void)? = nil
    ) throws -> HTTPResponse {
        var current = request
        let origin = URLText.origin(request.url)
        for _ in 0..<10 {
            let response = try send(current, maxBody: maxBody, sink: sink, sinkStatuses: sinkStatuses, progress: progress)
            guard [301, 302, 303, 307, 308].contains(response.status), let location = response.header("Location") else {
                var final = response
                final.url = current.url
                return final
            }
            current.url = URLText.resolve(location, against: current.url)
            if URLText.origin(current.url) != origin { current.setHeader("Authorization", nil) }
            if response.status == 303 || ((response.status == 301 || response.status == 302) && current.method == "POST") {
                current.method = "GET"
                current.body = .none
            }
        }
        throw HTTPError.tooManyRedirects(url: request.url)
    }

    static func isRetryable(_ code: CURLcode) -> Bool {
        switch code {
        case CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR,
            CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE, CURLE_HTTP2, CURLE_HTTP2_STREAM, CURLE_COULDNT_RESOLVE_HOST,
            CURLE_SSL_CONNECT_ERROR,
            // A reused connection died mid-upload and curl cannot rewind our streamed body itself:
            // the whole request is sent again, body reopened from its start.
            CURLE_SEND_FAIL_REWIND:
            return true
        default:
            return false
        }
    }

    private func takeHandle() -> UnsafeMutableRawPointer {
        lock.lock()
        defer { lock.unlock() }
        if let handle = pool.popLast() { return handle }
        return curl_easy_init()!
    }

    private func giveBack(_ handle: UnsafeMutableRawPointer) {
        curl_easy_reset(handle)  // keeps the connection cache, forgets every option
        lock.lock()
        pool.append(handle)
        lock.unlock()
    }

    private func check(_ handle: UnsafeMutableRawPointer, _ url: String, _ body: () -> CURLcode) throws {
        let code = body()
        guard code == CURLE_OK else {
            throw HTTPError.transport(url: url, message: String(cString: curl_easy_strerror(code)), retryable: false)
        }
    }
}

/// The state one transfer's callbacks share.
private final class Exchange {
    enum Upload {
        case bytes([UInt8], Int)
        case file(Int32, Int64)
    }

    let url: String
    let maxBody: Int
    let sink: ((UnsafeRawBufferPointer) throws -> Void)?
    let progress: ((Int64, Int64) -> Void)?
    var upload: Upload?
    /// Statuses whose body goes to the sink; any other body is collected for the error message.
    var sinkStatuses: Set<Int> = Set(200..<300)
    var headers: [(String, String)] = []
    var status = 0
    var body: [UInt8] = []
    var error: Error?

    init(url: String, maxBody: Int, sink: ((UnsafeRawBufferPointer) throws -> Void)?, progress: ((Int64, Int64) -> Void)?) {
        self.url = url
        self.maxBody = maxBody
        self.sink = sink
        self.progress = progress
    }

    func received(_ data: UnsafeRawBufferPointer) -> Bool {
        do {
            if let sink, sinkStatuses.contains(status) {
                try sink(data)
            } else {
                guard body.count + data.count <= maxBody else { throw HTTPError.bodyTooLarge(url: url, limit: maxBody) }
                body += data
            }
            return true
        } catch {
            self.error = error
            return false
        }
    }

    func header(_ line: String) {
        let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix("HTTP/") {
            // A new response (after 100 Continue, or a redirect curl saw): start over.
            headers = []
            status = Int(trimmed.split(separator: " ").dropFirst().first ?? "") ?? 0
        } else if let colon = trimmed.firstIndex(of: ":") {
            let name = String(trimmed[..<colon])
            let value = trimmed[trimmed.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers.append((name, value))
        }
    }

    func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        switch upload {
        case .bytes(let bytes, let offset):
            let n = min(buffer.count, bytes.count - offset)
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
            upload = .bytes(bytes, offset + n)
            return n
        case .file(let fd, let remaining):
            let want = Int(min(Int64(buffer.count), remaining))
            if want == 0 { return 0 }
            var n: Int
            repeat { n = read(fd, buffer.baseAddress, want) } while n < 0 && errno == EINTR
            if n <= 0 {
                error = HTTPError.transport(url: url, message: "the file being sent ended early or could not be read", retryable: false)
                return Int(CURL_READFUNC_ABORT)
            }
            upload = .file(fd, remaining - Int64(n))
            return n
        case nil:
            return 0
        }
    }
}

private func exchange(_ pointer: UnsafeMutableRawPointer?) -> Exchange {
    Unmanaged<Exchange>.fromOpaque(pointer!).takeUnretainedValue()
}

private func curlWrite(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    let ok = exchange(context).received(UnsafeRawBufferPointer(start: data, count: length))
    return ok ? length : 0
}

private func curlHeader(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    let bytes = UnsafeRawBufferPointer(start: data, count: length)
    exchange(context).header(String(decoding: bytes, as: UTF8.self))
    return length
}

private func curlRead(_ buffer: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?) -> Int {
    exchange(context).fill(UnsafeMutableRawBufferPointer(start: buffer, count: size * count))
}

private func curlProgress(_ context: UnsafeMutableRawPointer?, _ downTotal: curl_off_t, _ downNow: curl_off_t, _ upTotal: curl_off_t, _ upNow: curl_off_t) -> Int32 {
    exchange(context).progress?(Int64(upNow), Int64(downNow))
    return 0
}
