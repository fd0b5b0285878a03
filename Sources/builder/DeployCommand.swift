import ArgumentParser
import Foundation
import GoogleCloud

struct DeployCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deploy",
        abstract: "Create or update a Cloud Run service (NVIDIA L4 GPU by default) running an image; prints its URL.",
        discussion: """
            Upserts the service through the Cloud Run Admin API v2 (PATCH with allowMissing), waits for \
            the operation, and succeeds only when the service is ready and its newest revision is the one \
            serving. On failure it prints the revision's condition and its log link. Defaults fit a Gemma 3 \
            1B service: 1 nvidia-l4, 4 CPU, 16Gi, CPU always allocated, startup CPU boost, zonal redundancy \
            off, 3 instances at most, a startup probe on /health covering a 30-minute model load.

            Public access: --allow-unauthenticated turns off the invoker IAM check (invokerIamDisabled); \
            --public-access all-users binds allUsers to roles/run.invoker instead, as gcloud does. \
            --smoke-test calls /health on the new URL, with an identity token when the service is private \
            (from the metadata server, a service-account key, or IAM Credentials generateIdToken for \
            --impersonate-service-account).

            Credentials: CLOUDSDK_AUTH_ACCESS_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, gcloud's application \
            default credentials, or the metadata server (Cloud Build, Cloud Run). The caller needs \
            roles/run.admin (or run.developer) and roles/iam.serviceAccountUser on the runtime account.

            Example:
              builder deploy us-central1-docker.pkg.dev/p/models/gemma@sha256:... \\
                --project p --region europe-west4 --service gemma-3-1b-it --allow-unauthenticated
            """
    )

    @Argument(help: "The image, best pinned by digest: HOST/REPOSITORY@sha256:...")
    var image: String

    @Option(name: .customLong("served-model-name"), help: "The model name the API answers to (SERVED_MODEL_NAME).")
    var servedModelName: String?

    @OptionGroup var cloudRun: CloudRunOptions

    func run() throws {
        try reportingErrors {
            try cloudRun.deploy(try cloudRun.makeService(image: image, servedModelName: servedModelName))
        }
    }
}
