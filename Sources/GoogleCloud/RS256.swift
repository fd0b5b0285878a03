import COpenSSL

/// RSASSA-PKCS1-v1_5 with SHA-256 (JWS "RS256") through OpenSSL, for service-account JWTs.
enum RS256 {
    static func sign(_ input: [UInt8], privateKeyPEM pem: String) throws -> [UInt8] {
        let pemBytes = Array(pem.utf8)
        let key: OpaquePointer? = pemBytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let key else { throw GoogleCloudError.invalidCredentialsFile(path: "private_key", reason: "the PEM private key cannot be read") }
        defer { EVP_PKEY_free(key) }
        guard let context = EVP_MD_CTX_new() else { throw GoogleCloudError.invalidCredentialsFile(path: "private_key", reason: "OpenSSL out of memory") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key) == 1,
            input.withUnsafeBytes({ EVP_DigestSignUpdate(context, $0.baseAddress, $0.count) }) == 1
        else { throw GoogleCloudError.invalidCredentialsFile(path: "private_key", reason: "the key cannot sign with RS256 (is it an RSA key?)") }
        var length = 0
        guard EVP_DigestSignFinal(context, nil, &length) == 1 else {
            throw GoogleCloudError.invalidCredentialsFile(path: "private_key", reason: "signing failed")
        }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSignFinal(context, &signature, &length) == 1 else {
            throw GoogleCloudError.invalidCredentialsFile(path: "private_key", reason: "signing failed")
        }
        return Array(signature.prefix(length))
    }
}

/// base64url without padding (RFC 7515 section 2).
func base64URL(_ bytes: [UInt8]) -> String {
    var text = Data(bytes).base64EncodedString()
    text = text.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    while text.hasSuffix("=") { text.removeLast() }
    return text
}

import Foundation
