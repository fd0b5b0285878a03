import ArgumentParser
import Foundation
import GoogleCloud

/// Cloud Run options shared by `deploy` and `ship`. Unset ones fall back to the codelab's `.env`
/// names (PROJECT_ID, REGION, SERVICE_NAME, SERVICE_ACC_EMAIL), from the environment or a `.env`
/// file in the current folder, so a codelab user changes one line of their pipeline.
struct CloudRunOptions: ParsableArguments {
    @Option(help: "Google Cloud project. Default: $PROJECT_ID or $GOOGLE_CLOUD_PROJECT.")
    var project: String?

    @Option(help: "Cloud Run region with L4 GPUs (e.g. europe-west4). Default: $REGION.")
    var region: String?

    @Option(help: "Cloud Run service name. Default: $SERVICE_NAME.")
    var service: String?

    @Option(name: .customLong("service-account"), help: "Runtime service account email. Default: $SERVICE_ACC_EMAIL, else the project's default.")
    var serviceAccount: String?

    @Flag(name: .customLong("cpu-only"), help: "A service without a GPU.")
    var cpuOnly = false

    @Option(name: .customLong("gpu-type"), help: "GPU accelerator.")
    var gpuType = "nvidia-l4"

    @Flag(name: .customLong("gpu-zonal-redundancy"), help: "Use zonal-redundant GPU capacity (a separate, often empty, quota). Off by default.")
    var gpuZonalRedundancy = false

    @Option(help: "CPUs per instance (an L4 needs at least 4).")
    var cpu = "4"

    @Option(help: "Memory per instance (an L4 needs at least 16Gi).")
    var memory = "16Gi"

    @Option(name: .customLong("min-instances"))
    var minInstances = 0

    @Option(name: .customLong("max-instances"), help: "Cloud Run's GPU guidance is 3.")
    var maxInstances = 3

    @Option(help: "Requests one instance takes at once (the server batches them).")
    var concurrency = 16

    @Option(help: "Request timeout in seconds (up to 3600).")
    var timeout = 600

    @Option(name: .customLong("startup-window"), help: "Seconds the startup probe on /health waits for the model to load (GPU: up to 1800; CPU: 600).")
    var startupWindow: Int?

    @Option(name: .customLong("set-env"), help: "Environment variable for the service, KEY=VALUE; repeatable.")
    var setEnv: [String] = []

    @Option(name: .customLong("set-secret"), help: "Environment variable from Secret Manager, KEY=SECRET[:VERSION]; repeatable.")
    var setSecret: [String] = []

    @Flag(name: .customLong("allow-unauthenticated"), help: "Let anyone call the service, in the way --public-access names.")
    var allowUnauthenticated = false

    @Option(
        name: .customLong("public-access"),
        help: """
            How a service is opened to anyone: invoker-check-off (sets invokerIamDisabled; Google's \
            recommendation, and it works under domain restricted sharing) or all-users (binds allUsers to \
            roles/run.invoker, as gcloud does; needs roles/run.admin). Implies --allow-unauthenticated; \
            'none' keeps the service private.
            """)
    var publicAccess: CloudRunService.PublicAccess?

    @Flag(name: .customLong("smoke-test"), help: "After the deploy, GET /health on the service URL (with an identity token unless the service is public); fail unless it answers 200.")
    var smokeTest = false

    @Option(name: .customLong("impersonate-service-account"), help: "For --smoke-test of a private service with user credentials: the service account whose identity token calls it (you need roles/iam.serviceAccountTokenCreator on it).")
    var impersonateServiceAccount: String?

    @Flag(name: .customLong("dry-run"), help: "Validate only (validateOnly=true) and print the service as Cloud Run would default it.")
    var dryRun = false

    func value(_ given: String?, _ names: [String], _ flag: String) throws -> String {
        if let given { return given }
        let env = CloudRunOptions.environment
        if let found = names.lazy.compactMap({ env[$0] }).first(where: { !$0.isEmpty }) { return found }
        throw ValidationError("\(flag) is required (or set \(names.joined(separator: " or ")))")
    }

    func makeService(image: String, servedModelName: String?) throws -> CloudRunService {
        var s = CloudRunService(
            project: try value(project, ["PROJECT_ID", "GOOGLE_CLOUD_PROJECT"], "--project"),
            region: try value(region, ["REGION"], "--region"), name: try value(service, ["SERVICE_NAME"], "--service"), image: image)
        s.gpu = !cpuOnly
        s.gpuType = gpuType
        s.gpuZonalRedundancy = gpuZonalRedundancy
        s.cpu = cpu
        s.memory = memory
        s.minInstances = minInstances
        s.maxInstances = maxInstances
        s.concurrency = concurrency
        s.timeoutSeconds = timeout
        s.startupWindowSeconds = startupWindow ?? (cpuOnly ? 600 : 1800)
        s.serviceAccount = serviceAccount ?? CloudRunOptions.environment["SERVICE_ACC_EMAIL"].flatMap { $0.isEmpty ? nil : $0 }
        s.publicAccess = publicAccess ?? (allowUnauthenticated ? .invokerCheckOff : .none)
        if let servedModelName { s.env.append(("SERVED_MODEL_NAME", servedModelName)) }
        for item in setEnv {
            guard let eq = item.firstIndex(of: "=") else { throw ValidationError("--set-env takes KEY=VALUE, not '\(item)'") }
            s.env.append((String(item[..<eq]), String(item[item.index(after: eq)...])))
        }
        for item in setSecret {
            guard let eq = item.firstIndex(of: "=") else { throw ValidationError("--set-secret takes KEY=SECRET[:VERSION]") }
            let ref = item[item.index(after: eq)...].split(separator: ":", maxSplits: 1).map(String.init)
            s.secretEnv.append((String(item[..<eq]), ref[0], ref.count > 1 ? ref[1] : "latest"))
        }
        return s
    }

    /// Deploys (or, with --dry-run, validates) and prints the URL; `--smoke-test` then calls /health.
    func deploy(_ service: CloudRunService) throws {
        var api = CloudRun(credentials: try GoogleCredentials.discover())
        api.log = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
        if dryRun {
            print(try api.dryRun(service))
            return
        }
        let deployment = try api.deploy(service)
        FileHandle.standardError.write(Data("deployed \(service.name): revision \(deployment.revision.split(separator: "/").last ?? "")\n".utf8))
        if smokeTest { try api.checkHealth(deployment, of: service, impersonating: impersonateServiceAccount) }
        print(deployment.url)
    }

    /// The process environment with a `.env` file in the current folder underneath it.
    static var environment: [String: String] {
        var values: [String: String] = [:]
        if let text = try? String(contentsOfFile: ".env", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                var l = line.trimmingCharacters(in: .whitespaces)
                if l.hasPrefix("export ") { l = String(l.dropFirst(7)) }
                guard !l.hasPrefix("#"), let eq = l.firstIndex(of: "=") else { continue }
                values[String(l[..<eq])] = String(l[l.index(after: eq)...]).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
            }
        }
        return values.merging(ProcessInfo.processInfo.environment) { _, process in process }
    }
}

extension CloudRunService.PublicAccess: ExpressibleByArgument {}
