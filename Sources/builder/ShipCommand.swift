import ArgumentParser
import BuilderKit
import Foundation
import GoogleCloud
import HuggingFace
import OCI
import Registry

struct ShipCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ship",
        abstract: "Fetch a model, build its image, push it and deploy it to Cloud Run: the whole pipeline, one step.",
        discussion: """
            What the project's cloudbuild.yaml runs. Defaults come from the codelab's .env names: \
            MODEL_NAME, PROJECT_ID, REGION, AR_REPO_NAME, SERVICE_NAME, SERVICE_ACC_EMAIL (from the \
            environment or a .env file here), so --image defaults to \
            REGION-docker.pkg.dev/PROJECT_ID/AR_REPO_NAME/SERVICE_NAME. The Hugging Face token comes \
            from HF_TOKEN (Cloud Build's secretEnv) or --hf-token-secret; it never enters the image.
            """
    )

    @Option(help: "The model, ORG/NAME[@REVISION]. Default: $MODEL_NAME.")
    var model: String?

    @Option(help: "Where to push: HOST/REPOSITORY[:TAG]. Default: from REGION, PROJECT_ID, AR_REPO_NAME, SERVICE_NAME.")
    var image: String?

    @Option(help: "The server executable. Default: the inference-server beside this builder.")
    var server: String?

    @Option(name: .customLong("hf-token-secret"), help: "Secret Manager secret holding the Hugging Face token.")
    var hfTokenSecret: String?

    @Option(help: "Where to build the image before pushing (an OCI layout folder).")
    var workdir: String = "./.builder-ship"

    @Flag(name: .customLong("no-deploy"), help: "Stop after the push (build-and-push pipelines).")
    var noDeploy = false

    @Option(help: "For a GPU service: the libnvrtc.so.12 the image gets, so the server compiles its CUDA kernels. Default: INFERENCE_NVRTC, the CUDA toolkit, or the nvidia-cuda-nvrtc-cu12 pip wheel.")
    var nvrtc: String?

    @OptionGroup var registry: RegistryOptions
    @OptionGroup var cloudRun: CloudRunOptions

    func run() throws {
        try reportingErrors {
            let env = CloudRunOptions.environment
            let progress = ProgressFactory.standardError()
            let modelSpec = try cloudRun.value(model, ["MODEL_NAME"], "--model")
            let parts = modelSpec.split(separator: "@", maxSplits: 1).map(String.init)
            let step: (String) -> Void = { FileHandle.standardError.write(Data("== \($0)\n".utf8)) }

            step("fetch \(modelSpec)")
            let secretToken = try hfTokenSecret.map { String(decoding: try SecretManager(credentials: GoogleCredentials.discover()).access($0), as: UTF8.self) }
            var fetcher = SnapshotFetcher(client: HubClient(configuration: try HubConfiguration.resolve(token: secretToken)))
            fetcher.progress = progress.perBlob
            let snapshot = try fetcher.fetch(repo: parts[0], revision: parts.count > 1 ? parts[1] : "main").snapshot

            let target: String
            if let image {
                target = image
            } else {
                let region = try cloudRun.value(cloudRun.region, ["REGION"], "--region")
                let project = try cloudRun.value(cloudRun.project, ["PROJECT_ID", "GOOGLE_CLOUD_PROJECT"], "--project")
                let repo = try cloudRun.value(nil, ["AR_REPO_NAME"], "--image (or AR_REPO_NAME)")
                let name = try cloudRun.value(cloudRun.service, ["SERVICE_NAME"], "--service")
                target = "\(region)-docker.pkg.dev/\(project)/\(repo)/\(name)"
            }
            let reference = try ImageReference(parsing: target)

            step("build the image over scratch")
            let layout = FileSystemPaths.absolute(workdir)
            var request = BuildRequest(model: snapshot, server: server ?? BuildCommand.defaultServer(), output: .layout(layout))
            request.sourceDateEpoch = try BuildRequest.sourceDateEpoch(from: env)
            if !cloudRun.cpuOnly {
                // A GPU service: the image carries NVRTC (as `build --gpu`), or the server could not
                // compile its kernels and would run on the instance's CPU.
                if let found = nvrtc ?? GPURuntime.findNVRTC() {
                    request.nvrtc = found
                } else {
                    step("warning: no NVRTC 12 on this machine (`pip install nvidia-cuda-nvrtc-cu12==12.2.140`, or --nvrtc): the image cannot compile its CUDA kernels and the service will run on its CPU")
                }
            }
            _ = try ImageBuilder(request: request, progress: progress).build()

            step("push to \(reference.repositoryReference)")
            let client = try registry.makeClient(for: reference.registry)
            let (pushed, result) = try RegistryOperations.push(
                layout: layout + ":" + request.tag, to: reference, client: client, jobs: registry.jobs, mode: registry.uploadMode.mode,
                chunkSize: registry.chunkSize, progress: progress)
            step("pushed \(pushed): \(result.count(.uploaded)) blobs uploaded, \(result.count(.existed) + result.count(.mounted)) already there")
            guard !noDeploy else {
                print(pushed)
                return
            }

            var pinned = reference
            pinned.tag = nil
            pinned.digest = result.digest.description
            step("deploy to Cloud Run")
            let service = try cloudRun.makeService(image: pinned.description, servedModelName: parts[0])
            try cloudRun.deploy(service)
        }
    }
}

enum FileSystemPaths {
    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}
