import Foundation

/// What `builder deploy` asks Cloud Run for, with the defaults of a Gemma 3 1B GPU service
/// (the reference's section 4.2 and 4.7): one NVIDIA L4, 4 CPU and 16 GiB (the L4 minimum), CPU
/// always allocated, startup CPU boost, zonal redundancy off, at most 3 instances, and a startup
/// probe on /health whose window covers a model load up to the 1800 s GPU limit.
public struct CloudRunService: Sendable {
    public var project: String
    public var region: String
    public var name: String
    public var image: String
    public var gpu: Bool = true
    public var gpuType = "nvidia-l4"
    public var gpuZonalRedundancy = false
    public var cpu = "4"
    public var memory = "16Gi"
    public var minInstances = 0
    public var maxInstances = 3
    /// Requests one instance takes at once: the server batches them, so more than 1.
    public var concurrency = 16
    public var timeoutSeconds = 600
    public var serviceAccount: String?
    public var env: [(String, String)] = []
    /// Environment variables read from Secret Manager: name -> (secret, version).
    public var secretEnv: [(String, String, String)] = []
    public var port = 8080
    public var healthPath = "/health"
    public var startupWindowSeconds = 1800
    public var publicAccess = PublicAccess.none
    public var labels: [String: String] = ["managed-by": "builder"]

    /// Whether, and how, anyone may call the service without an identity token.
    public enum PublicAccess: String, Sendable, CaseIterable {
        /// Callers need roles/run.invoker (Cloud Run's default).
        case none
        /// `invokerIamDisabled`: Google's recommended way, which also works under an organization's
        /// domain restricted sharing policy.
        case invokerCheckOff = "invoker-check-off"
        /// allUsers bound to roles/run.invoker on the service, as `gcloud run deploy
        /// --allow-unauthenticated` does; needs run.services.setIamPolicy.
        case allUsers = "all-users"
    }

    public var isPublic: Bool { publicAccess != .none }

    public init(project: String, region: String, name: String, image: String) {
        self.project = project
        self.region = region
        self.name = name
        self.image = image
    }

    public var resourceName: String { "projects/\(project)/locations/\(region)/services/\(name)" }

    /// Checks what Cloud Run would reject, before any call.
    public func validate() throws {
        let nameOK = name.count < 50 && name.first?.isLetter == true && !name.hasSuffix("-")
            && name.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "-" }
        guard nameOK else {
            throw GoogleCloudError.invalidArgument(call: "checking the service", detail: "'\(name)' must start with a letter, use lower-case letters, digits and -, not end with -, and be under 50 characters")
        }
        if gpu {
            guard (Int(cpu) ?? 0) >= 4, memoryGiB >= 16 else {
                throw GoogleCloudError.invalidArgument(call: "checking the service", detail: "an L4 GPU needs at least 4 CPU and 16Gi of memory (got \(cpu) and \(memory))")
            }
        }
        let limit = gpu ? 1800 : 600
        guard startupWindowSeconds > 0, startupWindowSeconds <= limit else {
            throw GoogleCloudError.invalidArgument(call: "checking the service", detail: "the startup probe window is at most \(limit) s \(gpu ? "with" : "without") a GPU")
        }
        guard timeoutSeconds >= 1, timeoutSeconds <= 3600 else {
            throw GoogleCloudError.invalidArgument(call: "checking the service", detail: "the request timeout is 1 to 3600 s")
        }
    }

    var memoryGiB: Double {
        if memory.hasSuffix("Gi") { return Double(memory.dropLast(2)) ?? 0 }
        if memory.hasSuffix("Mi") { return (Double(memory.dropLast(2)) ?? 0) / 1024 }
        return 0
    }

    /// The v2 `Service` body (proto3 JSON: lowerCamelCase, Durations as "600s").
    public var body: [String: Any] {
        // Extend the probe window with failureThreshold: periodSeconds is at most 240.
        let period = 10
        let probe: [String: Any] = [
            "initialDelaySeconds": 0, "timeoutSeconds": 5, "periodSeconds": period,
            "failureThreshold": max(1, startupWindowSeconds / period),
            "httpGet": ["path": healthPath, "port": port],
        ]
        var limits: [String: String] = ["cpu": cpu, "memory": memory]
        if gpu { limits["nvidia.com/gpu"] = "1" }
        var container: [String: Any] = [
            "name": "server",
            "image": image,
            "ports": [["name": "http1", "containerPort": port]],
            "resources": ["limits": limits, "cpuIdle": false, "startupCpuBoost": true],
            "startupProbe": probe,
        ]
        var envList: [[String: Any]] = env.map { ["name": $0.0, "value": $0.1] }
        envList += secretEnv.map { ["name": $0.0, "valueSource": ["secretKeyRef": ["secret": $0.1, "version": $0.2]]] }
        if !envList.isEmpty { container["env"] = envList }
        var template: [String: Any] = [
            "timeout": "\(timeoutSeconds)s",
            "maxInstanceRequestConcurrency": concurrency,
            "scaling": ["minInstanceCount": minInstances, "maxInstanceCount": maxInstances],
            "containers": [container],
        ]
        if gpu {
            template["nodeSelector"] = ["accelerator": gpuType]
            template["gpuZonalRedundancyDisabled"] = !gpuZonalRedundancy
        }
        if let serviceAccount { template["serviceAccount"] = serviceAccount }
        return [
            "ingress": "INGRESS_TRAFFIC_ALL",
            "invokerIamDisabled": publicAccess == .invokerCheckOff,
            "labels": labels,
            "template": template,
        ]
    }
}
