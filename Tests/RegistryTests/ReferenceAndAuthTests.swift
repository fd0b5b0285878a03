import Foundation
import HTTP
import Testing
import TestSupport

@testable import Registry

@Suite struct ImageReferenceTests {
    @Test(arguments: [
        ("us-central1-docker.pkg.dev/proj/repo/gemma:v1", "us-central1-docker.pkg.dev", "proj/repo/gemma", "v1", nil as String?),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", nil, nil),
        ("localhost/x@sha256:" + String(repeating: "a", count: 64), "localhost", "x", nil, "sha256:" + String(repeating: "a", count: 64)),
        ("ubuntu", "registry-1.docker.io", "library/ubuntu", nil, nil),
        ("docker.io/me/app:1.0", "registry-1.docker.io", "me/app", "1.0", nil),
        ("ghcr.io/org/img:tag@sha256:" + String(repeating: "b", count: 64), "ghcr.io", "org/img", "tag", "sha256:" + String(repeating: "b", count: 64)),
    ])
    func parses(_ text: String, _ registry: String, _ repository: String, _ tag: String?, _ digest: String?) throws {
        let ref = try ImageReference(parsing: text)
        #expect(ref.registry == registry)
        #expect(ref.repository == repository)
        #expect(ref.tag == tag)
        #expect(ref.digest == digest)
    }

    @Test func rejectsBadReferences() {
        for bad in ["", "Upper/Case", "host/repo:bad tag", "host/repo@sha256:short", "host//x", "host/x/"] {
            #expect(throws: RegistryError.self) { try ImageReference(parsing: bad) }
        }
    }

    @Test func knowsLoopbackAndGoogleHosts() throws {
        #expect(try ImageReference(parsing: "127.0.0.1:5000/x").isLoopback)
        #expect(try ImageReference(parsing: "localhost:5000/x").isLoopback)
        #expect(try !ImageReference(parsing: "example.com/x").isLoopback)
        #expect(try ImageReference(parsing: "europe-west4-docker.pkg.dev/p/r/i").isGoogle)
        #expect(try ImageReference(parsing: "gcr.io/p/i").isGoogle)
        #expect(try !ImageReference(parsing: "ghcr.io/p/i").isGoogle)
    }
}

@Suite struct AuthChallengeTests {
    @Test func parsesBearerWithQuotedCommas() throws {
        let c = try #require(AuthChallenge(header: #"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push""#))
        #expect(c.scheme == .bearer)
        #expect(c.realm == "https://auth.example/token")
        #expect(c.service == "reg.example")
        #expect(c.scope == "repository:a/b:pull,push")
    }

    @Test func parsesBasicAndRejectsOthers() {
        #expect(AuthChallenge(header: #"Basic realm="Registry Realm""#)?.scheme == .basic)
        #expect(AuthChallenge(header: "Negotiate abc") == nil)
    }
}

@Suite struct URLTextTests {
    @Test func resolvesLocations() {
        #expect(URLText.resolve("/v2/x/blobs/uploads/1?state=a", against: "https://r.example:5000/v2/x/blobs/uploads/") == "https://r.example:5000/v2/x/blobs/uploads/1?state=a")
        #expect(URLText.resolve("https://cdn.example/b", against: "https://r.example/v2/") == "https://cdn.example/b")
        #expect(URLText.origin("HTTPS://User@R.Example:443/a?b") == "https://r.example:443")
        #expect(URLText.redacted("https://r/x?_state=secret&digest=1") == "https://r/x?…")
        #expect(URLText.queryEscape("repository:a/b:pull,push") == "repository%3Aa%2Fb%3Apull%2Cpush")
    }
}

@Suite struct CredentialStoreTests {
    @Test func readsDockerConfigAuthsHelpersAndGoogleTokens() throws {
        let dir = try TemporaryDirectory()
        let helper = try dir.write("bin/docker-credential-fake", Array("""
            #!/bin/sh
            read server
            if [ "$server" = "helped.example" ]; then echo '{"Username":"helper-user","Secret":"helper-secret"}'; exit 0; fi
            echo "credentials not found in native keychain"; exit 1
            """.utf8))
        chmod(helper, 0o755)
        let auth = Data("alice:s3cret".utf8).base64EncodedString()
        _ = try dir.write("docker/config.json", Array("""
            {"auths": {"https://index.docker.io/v1/": {"auth": "\(auth)"}, "plain.example": {"username": "bob", "password": "pw"}},
             "credHelpers": {"helped.example": "fake"}, "credsStore": "fake"}
            """.utf8))
        let env = ["DOCKER_CONFIG": dir.path + "/docker", "PATH": dir.path + "/bin:" + (ProcessInfo.processInfo.environment["PATH"] ?? "")]
        setenv("PATH", env["PATH"]!, 1)
        let store = CredentialStore(environment: env)
        #expect(try store.credentials(for: ImageReference(parsing: "alpine")) == Credentials(username: "alice", secret: "s3cret"))
        #expect(try store.credentials(for: ImageReference(parsing: "plain.example/x")) == Credentials(username: "bob", secret: "pw"))
        #expect(try store.credentials(for: ImageReference(parsing: "helped.example/x")) == Credentials(username: "helper-user", secret: "helper-secret"))
        #expect(try store.credentials(for: ImageReference(parsing: "other.example/x")) == nil, "credsStore says not found: anonymous")

        let google = CredentialStore(googleAccessToken: "ya29.token", environment: env)
        #expect(try google.credentials(for: ImageReference(parsing: "us-docker.pkg.dev/p/r/i")) == Credentials(username: "oauth2accesstoken", secret: "ya29.token"))
        let fromEnv = CredentialStore(environment: ["CLOUDSDK_AUTH_ACCESS_TOKEN": "ya29.env"])
        #expect(try fromEnv.credentials(for: ImageReference(parsing: "gcr.io/p/i"))?.secret == "ya29.env")
        #expect(!"\(Credentials(username: "u", secret: "hunter2"))".contains("hunter2"))
    }
}
