/// A reference to an image in a registry, as docker and the distribution spec write it:
/// `[HOST[:PORT]/]NAME[:TAG][@DIGEST]`. Docker Hub names get their defaults
/// (`registry-1.docker.io`, `library/`), as `docker pull ubuntu` does.
public struct ImageReference: Hashable, Sendable, CustomStringConvertible {
    /// Host and optional port, as used in URLs.
    public var registry: String
    /// The repository, e.g. `my-project/models/gemma-3-1b-it`.
    public var repository: String
    public var tag: String?
    public var digest: String?

    public init(registry: String, repository: String, tag: String? = nil, digest: String? = nil) {
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.digest = digest
    }

    public init(parsing text: String) throws {
        var rest = Substring(text)
        if rest.hasPrefix("docker://") { rest = rest.dropFirst("docker://".count) }
        guard !rest.isEmpty else { throw RegistryError.invalidReference(text, reason: "it is empty") }
        var digest: String?
        if let at = rest.firstIndex(of: "@") {
            digest = String(rest[rest.index(after: at)...])
            rest = rest[..<at]
            guard digest!.hasPrefix("sha256:"), digest!.count == 71 else {
                throw RegistryError.invalidReference(text, reason: "the digest after @ must be sha256: and 64 hex digits")
            }
        }
        var tag: String?
        // A colon after the last slash is a tag; one before it belongs to host:port.
        if let colon = rest.lastIndex(of: ":"), !rest[colon...].contains("/") {
            tag = String(rest[rest.index(after: colon)...])
            rest = rest[..<colon]
        }
        var registry = "registry-1.docker.io"
        var path = String(rest)
        if let slash = rest.firstIndex(of: "/") {
            let first = rest[..<slash]
            // The first component is a host when it looks like one (a dot, a port, or localhost).
            if first.contains(".") || first.contains(":") || first == "localhost" {
                registry = String(first)
                path = String(rest[rest.index(after: slash)...])
            }
        }
        if registry == "docker.io" || registry == "index.docker.io" { registry = "registry-1.docker.io" }
        if registry == "registry-1.docker.io", !path.contains("/") { path = "library/" + path }
        let allowed: (Character) -> Bool = { c in
            c.isASCII && (c.isLowercase || c.isNumber || c == "." || c == "_" || c == "-" || c == "/")
        }
        guard !path.isEmpty, path.allSatisfy(allowed), !path.hasPrefix("/"), !path.hasSuffix("/"), !path.contains("//") else {
            throw RegistryError.invalidReference(text, reason: "repository names use lower-case letters, digits and . _ - /")
        }
        if let tag {
            guard !tag.isEmpty, tag.count <= 128, tag.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
                throw RegistryError.invalidReference(text, reason: "a tag is up to 128 letters, digits, . _ -")
            }
        }
        self.init(registry: registry, repository: path, tag: tag, digest: digest)
    }

    /// What to ask the registry for: the digest when pinned, else the tag, else `latest`.
    public var manifestReference: String { digest ?? tag ?? "latest" }

    public var description: String {
        var s = "\(registry)/\(repository)"
        if let tag { s += ":\(tag)" }
        if let digest { s += "@\(digest)" }
        return s
    }

    /// Without tag or digest: `HOST/REPO`.
    public var repositoryReference: String { "\(registry)/\(repository)" }

    /// Hosts that may be reached over plain HTTP without being named: loopback only.
    public var isLoopback: Bool {
        let host = registry.hasPrefix("[") ? String(registry.prefix { $0 != "]" }.dropFirst()) : String(registry.prefix { $0 != ":" })
        return host == "localhost" || host.hasPrefix("127.") || host == "::1"
    }

    /// Artifact Registry and Container Registry take a Google access token as a password.
    public var isGoogle: Bool {
        let host = String(registry.prefix { $0 != ":" })
        return host.hasSuffix(".pkg.dev") || host == "gcr.io" || host.hasSuffix(".gcr.io")
    }
}
