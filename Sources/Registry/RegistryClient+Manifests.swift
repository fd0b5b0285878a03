import Foundation
import HTTP
import OCI

extension RegistryClient {
    /// Every manifest type we can read, in order of preference.
    static let manifestAccept = [
        MediaType.imageIndex, MediaType.imageManifest, MediaType.dockerManifestList, MediaType.dockerManifest,
    ].joined(separator: ", ")

    /// GET a manifest or index by tag or digest; its bytes are checked against the digest when
    /// the reference pins one, and against the registry's `Docker-Content-Digest` otherwise.
    public func getManifest(_ reference: ImageReference, _ tagOrDigest: String) throws -> (bytes: [UInt8], mediaType: String, digest: Digest) {
        let step = "reading manifest \(tagOrDigest)"
        return try options.retry.run(step) { _ in
            let response = try send(
                HTTPRequest(url: try url(reference, "/manifests/\(tagOrDigest)"), headers: [("Accept", RegistryClient.manifestAccept)]),
                to: reference, actions: "pull", step: step)
            if response.status == 404 {
                throw RegistryError.notFound(registry: reference.registry, repository: reference.repository, what: "manifest \(tagOrDigest)")
            }
            try check(response, [200], reference: reference, step: step)
            let actual = Digest.of(response.body)
            let expected = tagOrDigest.hasPrefix("sha256:") ? tagOrDigest : response.header("Docker-Content-Digest")
            if let expected, expected != actual.description {
                throw RegistryError.digestMismatch(registry: reference.registry, what: "manifest", expected: expected, actual: actual.description)
            }
            let type = response.header("Content-Type")?.split(separator: ";").first.map { String($0).trimmingCharacters(in: " ") }
            return (response.body, type ?? MediaType.imageManifest, actual)
        }
    }

    /// PUT a manifest under a tag or its digest; returns the digest the registry reports.
    @discardableResult
    public func putManifest(_ reference: ImageReference, _ tagOrDigest: String, bytes: [UInt8], mediaType: String) throws -> Digest {
        let step = "putting manifest \(tagOrDigest)"
        let digest = Digest.of(bytes)
        return try options.retry.run(step) { _ in
            let response = try send(
                HTTPRequest(method: "PUT", url: try url(reference, "/manifests/\(tagOrDigest)"), headers: [("Content-Type", mediaType)], body: .bytes(bytes)),
                to: reference, actions: "pull,push", step: step)
            try check(response, [200, 201], reference: reference, step: step)
            if let echoed = response.header("Docker-Content-Digest"), echoed != digest.description {
                throw RegistryError.digestMismatch(registry: reference.registry, what: "manifest", expected: digest.description, actual: echoed)
            }
            return digest
        }
    }
}
