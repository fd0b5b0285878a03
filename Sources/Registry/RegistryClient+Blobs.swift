import Foundation
import HTTP
import Hashing
import OCI

extension RegistryClient {
    /// How a blob got to the registry.
    public enum BlobOutcome: String, Sendable {
        case existed, mounted, uploaded
    }

    /// How blob bytes are sent. Artifact Registry takes only monolithic uploads.
    public enum UploadMode: String, Sendable, CaseIterable {
        /// POST, then one PUT carrying the whole blob with a known Content-Length (the default).
        case put
        /// POST, one streamed PATCH with the whole blob, then an empty PUT (JFrog needs PATCH).
        case patch
        /// POST, then PATCHes of `chunkSize` bytes with Content-Range, then PUT (only when asked).
        case chunked
    }

    /// HEAD /v2/NAME/blobs/DIGEST: does the registry have this blob already?
    public func blobExists(_ reference: ImageReference, _ descriptor: Descriptor) throws -> Bool {
        try options.retry.run("checking blob \(descriptor.digest)") { _ in
            let response = try send(
                HTTPRequest(method: "HEAD", url: try url(reference, "/blobs/\(descriptor.digest)")), to: reference,
                actions: "pull,push", step: "checking blob \(descriptor.digest)")
            if response.status == 404 { return false }
            try check(response, [200], reference: reference, step: "checking blob \(descriptor.digest)")
            return true
        }
    }

    /// Makes `descriptor` present in `reference`'s repository, reading it from `path` if it must
    /// be sent: HEAD first, then a cross-repository mount from `mountFrom` (a repository of the same
    /// registry known to hold it), then an upload. A failed attempt restarts with a new session.
    public func pushBlob(
        _ reference: ImageReference, _ descriptor: Descriptor, from path: String, mountFrom: String? = nil,
        mode: UploadMode = .put, chunkSize: Int64 = 64 << 20, progress: ((Int64) -> Void)? = nil
    ) throws -> BlobOutcome {
        if try blobExists(reference, descriptor) { return .existed }
        let step = "uploading blob \(descriptor.digest)"
        return try options.retry.run(step) { _ in
            // 1. Open an upload session, or mount (distribution spec, "Mounting a blob from another repository").
            var start = "/blobs/uploads/"
            var extraScopes: [String] = []
            if let from = mountFrom, from != reference.repository {
                start += "?mount=\(descriptor.digest)&from=\(URLText.queryEscape(from))"
                extraScopes = ["repository:\(from):pull"]
            }
            let opened = try send(
                HTTPRequest(method: "POST", url: try url(reference, start)), to: reference, actions: "pull,push",
                extraScopes: extraScopes, step: step)
            if opened.status == 201 { return .mounted }
            try check(opened, [202], reference: reference, step: step)
            guard let location = opened.header("Location") else {
                throw RegistryError.invalidResponse(registry: reference.registry, step: step, detail: "202 without a Location")
            }
            var session = URLText.resolve(location, against: opened.url)

            // 2. Send the bytes.
            let sent: HTTPResponse
            let digestQuery = "digest=" + URLText.queryEscape(descriptor.digest.description)
            func withDigest(_ url: String) -> String { url + (url.contains("?") ? "&" : "?") + digestQuery }
            func octets(_ length: Int64) -> [(String, String)] {
                [("Content-Type", "application/octet-stream"), ("Content-Length", String(length))]
            }
            switch mode {
            case .put:
                sent = try send(
                    HTTPRequest(method: "PUT", url: withDigest(session), headers: octets(descriptor.size),
                        body: .file(path: path, offset: 0, length: descriptor.size)),
                    to: reference, actions: "pull,push", step: step, progress: { up, _ in progress?(up) })
            case .patch, .chunked:
                let piece = mode == .patch ? max(descriptor.size, 1) : chunkSize
                var offset: Int64 = 0
                while offset < descriptor.size {
                    let length = min(piece, descriptor.size - offset)
                    var headers = octets(length)
                    if mode == .chunked { headers.append(("Content-Range", "\(offset)-\(offset + length - 1)")) }
                    let base = offset
                    let patched = try send(
                        HTTPRequest(method: "PATCH", url: session, headers: headers, body: .file(path: path, offset: offset, length: length)),
                        to: reference, actions: "pull,push", step: step, progress: { up, _ in progress?(base + up) })
                    try check(patched, [202, 204], reference: reference, step: step)
                    if let next = patched.header("Location") { session = URLText.resolve(next, against: session) }
                    offset += length
                }
                sent = try send(
                    HTTPRequest(method: "PUT", url: withDigest(session), headers: [("Content-Length", "0")]), to: reference,
                    actions: "pull,push", step: step)
            }
            try check(sent, [201, 204], reference: reference, step: step)
            if let echoed = sent.header("Docker-Content-Digest"), echoed != descriptor.digest.description {
                throw RegistryError.digestMismatch(
                    registry: reference.registry, what: "blob", expected: descriptor.digest.description, actual: echoed)
            }
            return .uploaded
        }
    }

    /// Streams a blob to `path`, hashing as it goes; the file exists only if the digest matched.
    public func pullBlob(_ reference: ImageReference, _ descriptor: Descriptor, to path: String, progress: ((Int64) -> Void)? = nil) throws {
        let step = "downloading blob \(descriptor.digest)"
        try options.retry.run(step) { _ in
            let partial = path + ".partial"
            guard FileManager.default.createFile(atPath: partial, contents: nil), let file = FileHandle(forWritingAtPath: partial) else {
                throw RegistryError.invalidResponse(registry: reference.registry, step: step, detail: "cannot write \(partial)")
            }
            defer { try? file.close() }
            let hasher = SHA256()
            var received: Int64 = 0
            let response: HTTPResponse
            do {
                response = try send(
                    HTTPRequest(url: try url(reference, "/blobs/\(descriptor.digest)")), to: reference, actions: "pull", step: step,
                    sink: { chunk in
                        received += Int64(chunk.count)
                        guard received <= descriptor.size else {
                            throw RegistryError.invalidResponse(registry: reference.registry, step: step, detail: "more bytes than the descriptor's \(descriptor.size)")
                        }
                        hasher.update(chunk)
                        file.write(Data(chunk))
                    }, progress: { _, down in progress?(down) })
            } catch {
                unlink(partial)
                throw error
            }
            do {
                try check(response, [200], reference: reference, step: step)
            } catch {
                unlink(partial)
                throw error
            }
            let actual = Digest(sha256: hasher.finalize())
            guard actual == descriptor.digest, received == descriptor.size else {
                unlink(partial)
                // A short body is a dropped connection: worth another try. A wrong digest is not.
                if received < descriptor.size { throw TransientFailure(description: "the download of \(descriptor.digest) ended early") }
                throw RegistryError.digestMismatch(
                    registry: reference.registry, what: "blob", expected: descriptor.digest.description, actual: actual.description)
            }
            try file.close()
            guard rename(partial, path) == 0 else {
                throw RegistryError.invalidResponse(registry: reference.registry, step: step, detail: "cannot rename into \(path)")
            }
        }
    }
}
