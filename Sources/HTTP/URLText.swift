/// Small URL helpers that need no Foundation URL parsing (which is lenient in surprising ways).
public enum URLText {
    /// `scheme://host[:port]` of an absolute URL, lower-cased, or nil.
    public static func origin(_ url: String) -> String? {
        guard let schemeEnd = url.firstRange(of: "://") else { return nil }
        let afterScheme = url[schemeEnd.upperBound...]
        let authority = afterScheme.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        // Drop userinfo: it is never part of the origin.
        let hostPort = authority.split(separator: "@").last.map(String.init) ?? ""
        guard !hostPort.isEmpty else { return nil }
        return (url[..<schemeEnd.lowerBound] + "://" + hostPort).lowercased()
    }

    /// Resolves a `Location` header against the URL it came from: absolute, absolute-path or relative.
    public static func resolve(_ location: String, against base: String) -> String {
        if location.contains("://") { return location }
        guard let origin = origin(base) else { return location }
        if location.hasPrefix("//") {
            return String(base.prefix { $0 != ":" }) + ":" + location
        }
        if location.hasPrefix("/") { return origin + location }
        let path = base.dropFirst(origin.count).prefix { $0 != "?" && $0 != "#" }
        let directory = path.lastIndex(of: "/").map { path[...$0] } ?? "/"
        return origin + directory + location
    }

    /// The URL with its query string removed: registries put upload session state and some
    /// tokens (e.g. signed CDN URLs) there, and it must not reach a log or an error message.
    public static func redacted(_ url: String) -> String {
        guard let q = url.firstIndex(of: "?") else { return url }
        return String(url[..<q]) + "?…"
    }

    /// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
    public static func queryEscape(_ s: String) -> String {
        var out = ""
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                out += "%" + String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 15)]], as: UTF8.self)
            }
        }
        return out
    }
}
