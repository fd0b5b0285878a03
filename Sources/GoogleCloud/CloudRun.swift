import Foundation
import HTTP

/// The Cloud Run Admin API v2: upsert a service, wait for its long-running operation, and
/// succeed only when the new revision is the one serving.
public struct CloudRun: Sendable {
    let api: GoogleAPI
    let endpoints: GoogleEndpoints
    /// Seconds between operation polls (grows to 15 s).
    public var pollInterval: Double = 2
    public var timeoutSeconds = 1200
    public var log: @Sendable (String) -> Void = { _ in }

    public init(credentials: GoogleCredentials, endpoints: GoogleEndpoints = GoogleEndpoints(), http: HTTPClient = HTTPClient()) {
        api = GoogleAPI(credentials: credentials, http: http)
        self.endpoints = endpoints
    }

    public struct Deployment: Sendable {
        public var url: String
        public var revision: String
    }

    var base: String { GoogleEndpoints.strippingVersion(endpoints.run) + "/v2/" }
    static let deployRole = "roles/run.admin (or roles/run.developer) on the project, and roles/iam.serviceAccountUser on the runtime service account"

    /// `validateOnly`: Cloud Run checks and defaults the service without creating anything; the
    /// defaulted service is returned as JSON text.
    public func dryRun(_ service: CloudRunService) throws -> String {
        try service.validate()
        let operation = try api.call(
            "PATCH", base + service.resourceName + "?allowMissing=true&validateOnly=true",
            body: Array(try JSONSerialization.data(withJSONObject: service.body, options: [.sortedKeys])),
            what: "validating \(service.name)", role: CloudRun.deployRole)
        let shown = (operation["response"] as? [String: Any]) ?? operation
        return String(decoding: try JSONSerialization.data(withJSONObject: shown, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self)
    }

    /// Creates or updates the service (`PATCH ?allowMissing=true`), waits, and checks readiness.
    public func deploy(_ service: CloudRunService) throws -> Deployment {
        try service.validate()
        let what = "deploying \(service.name) in \(service.region)"
        var operation = try api.call(
            "PATCH", base + service.resourceName + "?allowMissing=true",
            body: Array(try JSONSerialization.data(withJSONObject: service.body, options: [.sortedKeys])),
            what: what, role: CloudRun.deployRole)
        guard let name = operation["name"] as? String else {
            throw GoogleCloudError.invalidResponse(call: what, detail: "no operation name")
        }
        log("waiting for operation \(name)")
        let started = Date()
        var delay = pollInterval
        while operation["done"] as? Bool != true {
            guard Date().timeIntervalSince(started) < Double(timeoutSeconds) else {
                throw GoogleCloudError.operationTimedOut(name: name, seconds: timeoutSeconds)
            }
            Thread.sleep(forTimeInterval: delay)
            delay = min(delay * 1.5, 15)
            operation = try api.call("GET", base + name, what: "waiting for \(name)", role: CloudRun.deployRole)
        }
        if let error = operation["error"] as? [String: Any] {
            let code = error["code"] as? Int ?? 0
            let message = error["message"] as? String ?? "no message"
            // google.rpc.Code: 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED.
            if code == 8 || message.lowercased().contains("quota") { throw GoogleCloudError.quotaExceeded(call: what, detail: message) }
            if code == 7 { throw GoogleCloudError.permissionDenied(call: what, detail: message, role: CloudRun.deployRole) }
            try failWithRevision(service, message: message)
        }

        let current = try api.call("GET", base + service.resourceName, what: "reading \(service.name)", role: CloudRun.deployRole)
        let condition = current["terminalCondition"] as? [String: Any]
        let ready = current["latestReadyRevision"] as? String
        let created = current["latestCreatedRevision"] as? String
        guard condition?["state"] as? String == "CONDITION_SUCCEEDED", let ready, ready == created else {
            try failWithRevision(service, message: condition?["message"] as? String ?? "the latest revision is not the ready one", revision: created)
        }
        guard let url = current["uri"] as? String else {
            throw GoogleCloudError.invalidResponse(call: what, detail: "the service has no uri")
        }
        if service.publicAccess == .allUsers { try grantAllUsersInvoker(service) }
        return Deployment(url: url, revision: ready)
    }

    static let invokerRole = "roles/run.invoker"
    static let iamPolicyRole = "roles/run.admin (it holds run.services.setIamPolicy) on the service or project"

    /// Adds allUsers to roles/run.invoker by read-modify-write of the service's IAM policy: setIamPolicy
    /// replaces the whole policy, so the etag from getIamPolicy guards against a concurrent change,
    /// and the other bindings are sent back untouched.
    public func grantAllUsersInvoker(_ service: CloudRunService) throws {
        let what = "letting allUsers invoke \(service.name)"
        for attempt in 1...3 {
            var policy = try api.call("GET", base + service.resourceName + ":getIamPolicy", what: what, role: CloudRun.iamPolicyRole)
            var bindings = policy["bindings"] as? [[String: Any]] ?? []
            let unconditional = bindings.firstIndex { $0["role"] as? String == CloudRun.invokerRole && $0["condition"] == nil }
            if let i = unconditional {
                var members = bindings[i]["members"] as? [String] ?? []
                if members.contains("allUsers") { return }
                members.append("allUsers")
                bindings[i]["members"] = members
            } else {
                bindings.append(["role": CloudRun.invokerRole, "members": ["allUsers"]])
            }
            policy["bindings"] = bindings
            let body = try JSONSerialization.data(withJSONObject: ["policy": policy], options: [.sortedKeys])
            do {
                _ = try api.call("POST", base + service.resourceName + ":setIamPolicy", body: Array(body), what: what, role: CloudRun.iamPolicyRole)
                log("allUsers may now invoke \(service.name)")
                return
            } catch GoogleCloudError.conflict where attempt < 3 {
                log("the IAM policy of \(service.name) changed meanwhile; reading it again")
            } catch GoogleCloudError.invalidArgument(let call, let detail) {
                throw GoogleCloudError.invalidArgument(
                    call: call,
                    detail: detail + ". An organization policy (iam.allowedPolicyMemberDomains, domain restricted sharing) forbids allUsers bindings; use --public-access invoker-check-off, which turns off the invoker check instead")
            }
        }
    }

    /// GET `url + path` as a client would: with an identity token for the service URL unless the
    /// service is public. Throws `unhealthy` unless it answers 200.
    public func checkHealth(_ deployment: Deployment, of service: CloudRunService, impersonating serviceAccount: String? = nil) throws {
        var headers: [(String, String)] = []
        if !service.isPublic {
            let token = try api.credentials.identityToken(audience: deployment.url, serviceAccount: serviceAccount)
            headers.append(("Authorization", "Bearer " + token))
        }
        let url = deployment.url + service.healthPath
        let response = try api.http.send(HTTPRequest(url: url, headers: headers))
        guard response.status == 200 else {
            let hint = (response.status == 401 || response.status == 403) && !service.isPublic
                ? "the caller needs roles/run.invoker on the service (or deploy with --allow-unauthenticated)" : ""
            throw GoogleCloudError.unhealthy(url: url, status: response.status, detail: hint)
        }
        log("\(url) answered 200")
    }

    /// Throws `deployFailed` with the revision's own condition and its Cloud Logging link.
    private func failWithRevision(_ service: CloudRunService, message: String, revision: String? = nil) throws -> Never {
        var detail = message
        var logURI: String?
        let current = try? api.call("GET", base + service.resourceName, what: "reading \(service.name)", role: CloudRun.deployRole)
        if let name = revision ?? current?["latestCreatedRevision"] as? String,
            let rev = try? api.call("GET", base + name, what: "reading revision \(name)", role: CloudRun.deployRole)
        {
            logURI = rev["logUri"] as? String
            let failed = (rev["conditions"] as? [[String: Any]])?.first { $0["state"] as? String == "CONDITION_FAILED" }
            if let reason = failed?["message"] as? String, !detail.contains(reason) { detail += "; \(reason)" }
        }
        throw GoogleCloudError.deployFailed(service: service.name, message: detail, logURI: logURI)
    }
}
