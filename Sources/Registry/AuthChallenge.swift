/// A `WWW-Authenticate` challenge (RFC 7235), as registries send it on 401:
/// `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:x:pull"`
/// or `Basic realm="..."` (distribution spec, "Token Authentication Specification").
public struct AuthChallenge: Hashable, Sendable {
    public enum Scheme: String, Sendable { case basic, bearer }

    public var scheme: Scheme
    public var parameters: [String: String]

    public var realm: String? { parameters["realm"] }
    public var service: String? { parameters["service"] }
    public var scope: String? { parameters["scope"] }

    public init?(header: String) {
        let trimmed = header.drop { $0 == " " }
        let schemeName = trimmed.prefix { $0 != " " }
        guard let scheme = Scheme(rawValue: schemeName.lowercased()) else { return nil }
        self.scheme = scheme
        parameters = AuthChallenge.parseParameters(trimmed.dropFirst(schemeName.count))
    }

    /// `key="quoted, with commas",key2=token` -> dictionary; keys lower-cased.
    static func parseParameters(_ text: Substring) -> [String: String] {
        var result: [String: String] = [:]
        var i = text.startIndex
        func skip(_ chars: String) { while i < text.endIndex, chars.contains(text[i]) { i = text.index(after: i) } }
        while i < text.endIndex {
            skip(" ,")
            let keyStart = i
            while i < text.endIndex, text[i] != "=" { i = text.index(after: i) }
            guard i < text.endIndex else { break }
            let key = text[keyStart..<i].trimmingCharacters(in: " ").lowercased()
            i = text.index(after: i)
            var value = ""
            if i < text.endIndex, text[i] == "\"" {
                i = text.index(after: i)
                while i < text.endIndex, text[i] != "\"" {
                    if text[i] == "\\", text.index(after: i) < text.endIndex { i = text.index(after: i) }
                    value.append(text[i])
                    i = text.index(after: i)
                }
                if i < text.endIndex { i = text.index(after: i) }
            } else {
                let start = i
                while i < text.endIndex, text[i] != "," { i = text.index(after: i) }
                value = text[start..<i].trimmingCharacters(in: " ")
            }
            if !key.isEmpty { result[key] = value }
        }
        return result
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
