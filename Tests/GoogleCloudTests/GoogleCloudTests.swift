import Foundation
import HTTP
import Testing
import TestSupport

@testable import GoogleCloud

@Suite(.serialized) struct GoogleCredentialsTests {
    @Test func theChainInOrder() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        var env = fakes.environment
        env["CLOUDSDK_AUTH_ACCESS_TOKEN"] = "ya29.env"
        env["GOOGLE_APPLICATION_CREDENTIALS"] = fakes.keyFile
        #expect(try GoogleCredentials.discover(environment: env).accessToken() == "ya29.env")
        env["CLOUDSDK_AUTH_ACCESS_TOKEN"] = nil
        let sa = try GoogleCredentials.discover(environment: env)
        #expect(try sa.accessToken() == "ya29.service-account", "our RS256 JWT verified by the fake with the public key")
        #expect(sa.projectID == "test-project")
        env["GOOGLE_APPLICATION_CREDENTIALS"] = nil
        // gcloud's ADC file, an authorized_user one: refresh-token grant, quota project header.
        let adc = try fakes.dir.write(".config/gcloud/application_default_credentials.json", Array(#"{"type": "authorized_user", "client_id": "client-id", "client_secret": "client-secret", "refresh_token": "refresh-token", "quota_project_id": "quota-p"}"#.utf8))
        let user = try GoogleCredentials.discover(environment: env)
        var userEndpoints = GoogleEndpoints(environment: env)
        userEndpoints.oauthToken = fakes.base + "/token"
        let userWithFake = GoogleCredentials(source: user.source, description: user.sourceDescription, endpoints: userEndpoints)
        #expect(try userWithFake.accessToken() == "ya29.user")
        #expect(try userWithFake.headers().contains { $0.0 == "x-goog-user-project" && $0.1 == "quota-p" })
        try FileManager.default.removeItem(atPath: adc)
        // Nothing else: the metadata server, which is what a Cloud Build step has.
        let metadata = try GoogleCredentials.discover(environment: env)
        #expect(try metadata.accessToken() == "ya29.metadata")
        #expect(try metadata.identityToken(audience: "https://svc.a.run.app") == "id-token-for:https://svc.a.run.app")
        #expect(try sa.identityToken(audience: "https://svc.a.run.app") == "id-token-for:https://svc.a.run.app")
    }

    @Test func identityTokensFallBackToIAMCredentials() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        // A metadata server whose /identity answers nothing (as Cloud Build's has): generateIdToken for
        // the account the metadata server names, authorized by its access token.
        try fakes.scenario("ok", ["metadata_identity": false])
        let metadata = try GoogleCredentials.discover(environment: fakes.environment)
        #expect(try metadata.identityToken(audience: "https://svc.a.run.app") == "id-token-for:https://svc.a.run.app")
        let minted = try fakes.requests().filter { ($0["path"] as? String)?.hasSuffix(":generateIdToken") == true }
        #expect(minted.map { $0["path"] as? String } == ["/v1/projects/-/serviceAccounts/build-sa@test-project.iam.gserviceaccount.com:generateIdToken"])
        #expect(minted.first?["credential"] as? String == "metadata")

        // User credentials cannot mint one themselves; impersonating a service account they can.
        var env = fakes.environment
        env["CLOUDSDK_AUTH_ACCESS_TOKEN"] = "ya29.env"
        let user = try GoogleCredentials.discover(environment: env)
        #expect { try user.identityToken(audience: "https://svc.a.run.app") } throws: { "\($0)".contains("--impersonate-service-account") }
        #expect(try user.identityToken(audience: "https://a", serviceAccount: "caller@test-project.iam.gserviceaccount.com") == "id-token-for:https://a")
        #expect { try user.identityToken(audience: "https://a", serviceAccount: "denied@test-project.iam.gserviceaccount.com") } throws: {
            "\($0)".contains("roles/iam.serviceAccountTokenCreator on denied@")
        }
        #expect(throws: GoogleCloudError.self) { try user.identityToken(audience: "https://a", serviceAccount: "not/an-email") }
    }

    @Test func aBadKeyAndNoCredentialsAreClearErrors() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        // A key the fake does not know: its signature fails verification.
        let other = fakes.dir.path + "/other.pem"
        #expect(try run(["openssl", "genpkey", "-algorithm", "RSA", "-out", other]).status == 0)
        let json: [String: Any] = [
            "type": "service_account", "private_key": try String(contentsOfFile: other, encoding: .utf8),
            "client_email": "builder@test-project.iam.gserviceaccount.com", "token_uri": fakes.base + "/token",
        ]
        let bad = try fakes.dir.write("bad.json", Array(try JSONSerialization.data(withJSONObject: json)))
        var env = fakes.environment
        env["GOOGLE_APPLICATION_CREDENTIALS"] = bad
        #expect { try GoogleCredentials.discover(environment: env).accessToken() } throws: { "\($0)".contains("Invalid JWT Signature") }
        let broken = try fakes.dir.write("broken.json", Array(#"{"type": "external_account"}"#.utf8))
        env["GOOGLE_APPLICATION_CREDENTIALS"] = broken
        #expect { try GoogleCredentials.discover(environment: env) } throws: { "\($0)".contains("external_account") }
        let nothing = ["HOME": fakes.dir.path, "GCE_METADATA_HOST": "127.0.0.1:\(freePort())"]
        #expect { try GoogleCredentials.discover(environment: nothing) } throws: { "\($0)".contains("no Google credentials") }
    }
}

@Suite(.serialized) struct SecretManagerTests {
    @Test func readsAndChecksTheSecret() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        let credentials = try GoogleCredentials.discover(environment: fakes.environment)
        let sm = SecretManager(credentials: credentials, endpoints: GoogleEndpoints(environment: fakes.environment))
        #expect(try sm.access("projects/p/secrets/hf-token/versions/latest") == Array("hf_secret_value_123".utf8))
        #expect(try sm.access("projects/p/secrets/hf-token") == Array("hf_secret_value_123".utf8))
        #expect { try sm.access("projects/p/secrets/forbidden/versions/1") } throws: { "\($0)".contains("roles/secretmanager.secretAccessor") }
        #expect { try sm.access("projects/p/secrets/missing/versions/1") } throws: { "\($0)".contains("not found") }
        #expect(throws: GoogleCloudError.self) { try sm.access("hf-token") }
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283, "the CRC-32C check value")
    }

    @Test func aCorruptPayloadIsRejected() throws {
        let fakes = try GoogleFakes(corruptCRC: true)
        defer { fakes.stop() }
        let sm = SecretManager(credentials: try GoogleCredentials.discover(environment: fakes.environment), endpoints: GoogleEndpoints(environment: fakes.environment))
        #expect(throws: GoogleCloudError.secretCorrupt(name: "projects/p/secrets/hf-token/versions/latest")) {
            try sm.access("projects/p/secrets/hf-token/versions/latest")
        }
    }
}

@Suite(.serialized) struct CloudRunTests {
    func cloudRun(_ fakes: GoogleFakes) throws -> CloudRun {
        var run = CloudRun(credentials: try GoogleCredentials.discover(environment: fakes.environment), endpoints: GoogleEndpoints(environment: fakes.environment))
        run.pollInterval = 0.05
        run.timeoutSeconds = 5
        return run
    }

    func service() -> CloudRunService {
        var s = CloudRunService(project: "test-project", region: "europe-west4", name: "gemma-3-1b-it", image: "europe-west4-docker.pkg.dev/test-project/models/gemma@sha256:" + String(repeating: "a", count: 64))
        s.env = [("SERVED_MODEL_NAME", "google/gemma-3-1b-it")]
        s.secretEnv = [("HF_TOKEN", "hf-token", "latest")]
        s.serviceAccount = "runtime@test-project.iam.gserviceaccount.com"
        s.publicAccess = .invokerCheckOff
        return s
    }

    @Test func deploysAGPUServiceThatGooglesTypesAccept() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        try fakes.scenario("ok", polls: 3)
        let deployment = try cloudRun(fakes).deploy(service())
        #expect(deployment.url == "https://gemma-3-1b-it-xyz-uc.a.run.app")
        let patch = try #require(try fakes.requests().first { $0["method"] as? String == "PATCH" })
        #expect((patch["query"] as? String)?.contains("allowMissing=true") == true)
        let body = try JSONSerialization.jsonObject(with: Data((patch["body"] as? String ?? "").utf8)) as? [String: Any]
        let template = body?["template"] as? [String: Any]
        #expect((template?["nodeSelector"] as? [String: String])?["accelerator"] == "nvidia-l4")
        #expect(template?["gpuZonalRedundancyDisabled"] as? Bool == true)
        let container = (template?["containers"] as? [[String: Any]])?.first
        let resources = container?["resources"] as? [String: Any]
        #expect((resources?["limits"] as? [String: String])?["nvidia.com/gpu"] == "1")
        #expect(resources?["cpuIdle"] as? Bool == false)
        let probe = container?["startupProbe"] as? [String: Any]
        #expect((probe?["periodSeconds"] as? Int ?? 0) * (probe?["failureThreshold"] as? Int ?? 0) == 1800)
        #expect(body?["invokerIamDisabled"] as? Bool == true)
    }

    @Test func allUsersBindingIsAReadModifyWriteThatKeepsOtherBindings() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        // One concurrent change lands between our read and our write: the etag makes the write fail
        // with 409, and the second round must keep the other party's binding.
        try fakes.scenario("ok", ["policy_races": 1])
        var s = service()
        s.publicAccess = .allUsers
        _ = try cloudRun(fakes).deploy(s)
        let requests = try fakes.requests()
        let patch = try #require(requests.first { $0["method"] as? String == "PATCH" })
        let body = try JSONSerialization.jsonObject(with: Data((patch["body"] as? String ?? "").utf8)) as? [String: Any]
        #expect(body?["invokerIamDisabled"] as? Bool == false, "the invoker check stays on; the binding opens the service")
        let writes = requests.filter { ($0["path"] as? String)?.hasSuffix(":setIamPolicy") == true }
        #expect(writes.count == 2)
        #expect(requests.filter { ($0["path"] as? String)?.hasSuffix(":getIamPolicy") == true }.count == 2)
        let last = try JSONSerialization.jsonObject(with: Data((writes.last?["body"] as? String ?? "").utf8)) as? [String: Any]
        let bindings = (last?["policy"] as? [String: Any])?["bindings"] as? [[String: Any]] ?? []
        #expect(bindings.contains { $0["role"] as? String == "roles/run.invoker" && ($0["members"] as? [String]) == ["allUsers"] })
        #expect(bindings.contains { $0["role"] as? String == "roles/run.developer" }, "the concurrent change is kept")
        // Deployed again: the binding is already there, nothing is written.
        _ = try cloudRun(fakes).deploy(s)
        #expect(try fakes.requests().filter { ($0["path"] as? String)?.hasSuffix(":setIamPolicy") == true }.count == 2)

        // An organization that forbids allUsers: the error names the other way.
        let other = try GoogleFakes()
        defer { other.stop() }
        try other.scenario("domain_restricted")
        #expect { try cloudRun(other).deploy(s) } throws: { "\($0)".contains("--public-access invoker-check-off") }
    }

    @Test func theSmokeTestCallsAPrivateServiceWithAnIdentityToken() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        try fakes.scenario("ok", ["service_uri_here": true, "metadata_identity": false])
        let cr = try cloudRun(fakes)
        var s = service()
        s.publicAccess = .none
        let deployment = try cr.deploy(s)
        #expect(deployment.url == fakes.base + "/__service/gemma-3-1b-it")
        try cr.checkHealth(deployment, of: s)
        // Without a token the private service refuses, and the error says what to grant.
        var env = fakes.environment
        env["CLOUDSDK_AUTH_ACCESS_TOKEN"] = "ya29.env"
        let asUser = CloudRun(credentials: try GoogleCredentials.discover(environment: env), endpoints: GoogleEndpoints(environment: env))
        #expect { try asUser.checkHealth(deployment, of: s, impersonating: "denied@test-project.iam.gserviceaccount.com") } throws: {
            "\($0)".contains("serviceAccountTokenCreator")
        }
        // A token minted for another audience is refused, and the error says what to grant.
        let elsewhere = CloudRun.Deployment(url: deployment.url + "/", revision: deployment.revision)
        #expect { try cr.checkHealth(elsewhere, of: s) } throws: { error in
            guard case GoogleCloudError.unhealthy(_, 403, let detail) = error else { return false }
            return detail.contains("roles/run.invoker")
        }
        // A public service needs no token, so credentials that cannot mint one still pass.
        s.publicAccess = .invokerCheckOff
        let open = try cr.deploy(s)
        try asUser.checkHealth(open, of: s)
    }

    @Test func dryRunReturnsTheDefaultedService() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        let text = try cloudRun(fakes).dryRun(service())
        #expect(text.contains("nvidia-l4") && text.contains("gemma-3-1b-it"))
        #expect(try fakes.requests().contains { ($0["query"] as? String)?.contains("validateOnly=true") == true })
    }

    @Test func failuresSayWhatHappened() throws {
        let fakes = try GoogleFakes()
        defer { fakes.stop() }
        let cr = try cloudRun(fakes)
        try fakes.scenario("revision_fails")
        #expect { try cr.deploy(service()) } throws: { error in
            guard case GoogleCloudError.deployFailed(_, let message, let log) = error else { return false }
            return message.contains("startup probe") && log?.contains("console.cloud.google.com/logs") == true
        }
        try fakes.scenario("quota")
        #expect { try cr.deploy(service()) } throws: { "\($0)".contains("quota") && "\($0)".contains("zonal redundancy") }
        try fakes.scenario("permission")
        #expect { try cr.deploy(service()) } throws: { "\($0)".contains("roles/run.admin") }
        try fakes.scenario("never_done")
        #expect { try cr.deploy(service()) } throws: { error in
            if case GoogleCloudError.operationTimedOut = error { return true }
            return false
        }
    }

    @Test func impossibleServicesAreRefusedBeforeAnyCall() throws {
        var s = service()
        s.cpu = "2"
        #expect { try s.validate() } throws: { "\($0)".contains("4 CPU") }
        s = service()
        s.name = "Bad_Name"
        #expect(throws: GoogleCloudError.self) { try s.validate() }
        s = service()
        s.gpu = false
        s.startupWindowSeconds = 1800
        #expect { try s.validate() } throws: { "\($0)".contains("600") }
    }
}

/// The pipeline files parse as Google's own Cloud Build `Build` type (unknown fields rejected).
@Suite struct CloudBuildConfigTests {
    @Test func cloudbuildFilesAreValidBuilds() throws {
        let files = [repositoryRoot + "/cloudbuild.yaml"] + ((try? FileManager.default.contentsOfDirectory(atPath: repositoryRoot + "/builder")) ?? [])
            .filter { $0.hasSuffix(".yaml") }.map { repositoryRoot + "/builder/" + $0 }
        #expect(files.count >= 2)
        let check = """
            import json, sys, yaml
            from google.cloud.devtools import cloudbuild_v1
            for path in sys.argv[1:]:
                cloudbuild_v1.Build.from_json(json.dumps(yaml.safe_load(open(path))), ignore_unknown_fields=False)
                print("ok", path)
            """
        let result = try run(["python3", "-c", check] + files)
        #expect(result.status == 0, "\(result.stderr)")
    }
}
