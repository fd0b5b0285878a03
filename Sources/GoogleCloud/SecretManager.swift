import Foundation
import HTTP

/// Secret Manager's `versions/*:access`: the secret's bytes, checked against their CRC32C, kept in
/// memory only.
public struct SecretManager: Sendable {
    let api: GoogleAPI
    let endpoints: GoogleEndpoints

    public init(credentials: GoogleCredentials, endpoints: GoogleEndpoints = GoogleEndpoints(), http: HTTPClient = HTTPClient()) {
        api = GoogleAPI(credentials: credentials, http: http)
        self.endpoints = endpoints
    }

    /// `name` is `projects/P/secrets/S/versions/V` (V may be `latest`); a bare `projects/P/secrets/S`
    /// means its latest version.
    public func access(_ name: String) throws -> [UInt8] {
        var resource = name
        if !resource.contains("/versions/") { resource += "/versions/latest" }
        let parts = resource.split(separator: "/")
        guard parts.count >= 6, parts[0] == "projects", parts[parts.count - 4] == "secrets" || parts[2] == "locations" else {
            throw GoogleCloudError.invalidArgument(call: "reading a secret", detail: "'\(name)' is not projects/PROJECT/secrets/NAME[/versions/VERSION]")
        }
        let answer = try api.call(
            "GET", GoogleEndpoints.strippingVersion(endpoints.secretManager) + "/v1/" + resource + ":access",
            what: "reading secret \(resource)", role: "roles/secretmanager.secretAccessor on the secret")
        guard let payload = answer["payload"] as? [String: Any], let encoded = payload["data"] as? String,
            let data = Data(base64Encoded: encoded)
        else { throw GoogleCloudError.invalidResponse(call: "reading secret \(resource)", detail: "no payload.data") }
        let bytes = [UInt8](data)
        // int64 fields are JSON strings in Google's REST mapping.
        if let crcText = payload["dataCrc32c"] as? String ?? (payload["dataCrc32c"] as? Int).map(String.init) {
            guard let expected = UInt64(crcText), UInt32(truncatingIfNeeded: expected) == CRC32C.checksum(bytes) else {
                throw GoogleCloudError.secretCorrupt(name: resource)
            }
        }
        return bytes
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as Secret Manager checksums payloads.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
