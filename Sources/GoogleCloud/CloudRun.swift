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
        return Deployment(url: url, revision: ready)
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
