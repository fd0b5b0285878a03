import ArgumentParser
import BuilderKit
import Foundation
import Registry

struct PushCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Push an image from an OCI layout to a registry; prints REF@sha256:...",
        discussion: """
            Blobs the registry already has are skipped (HEAD), blobs it has in another repository named \
            with --mount-from are mounted, the rest are uploaded in parallel (--jobs), each as one \
            streamed request of known length. The manifest goes last, so a registry never holds a \
            manifest with missing blobs. Transient failures (dropped connections, 408, 429, 5xx) are \
            retried with backoff; a refused credential fails at once with what to check.

            Credentials: --username/--password-stdin; docker's config.json ($DOCKER_CONFIG or ~/.docker: \
            auths, credHelpers, credsStore); for Artifact Registry (*.pkg.dev) and gcr.io a Google access \
            token from --google-access-token-stdin or CLOUDSDK_AUTH_ACCESS_TOKEN.

            Example:
              gcloud auth print-access-token | builder push --google-access-token-stdin \\
                oci:./image us-central1-docker.pkg.dev/my-project/models/gemma-3-1b-it:v1
            """
    )

    @Argument(help: "The image: oci:DIR or oci:DIR:TAG.")
    var source: String

    @Argument(help: "Where to: HOST/REPOSITORY[:TAG].")
    var destination: String

    @Option(name: .customLong("mount-from"), help: "A repository of the same registry holding some of the blobs, to mount instead of upload.")
    var mountFrom: String?

    @OptionGroup var registry: RegistryOptions

    @Flag(help: "Print no progress lines.")
    var quiet = false

    func validate() throws {
        guard source.hasPrefix("oci:"), source.count > 4 else { throw ValidationError("the source must be oci:DIR[:TAG]") }
    }

    func run() throws {
        try reportingErrors {
            let reference = try ImageReference(parsing: destination)
            let client = try registry.makeClient(for: reference.registry)
            let (text, result) = try RegistryOperations.push(
                layout: String(source.dropFirst(4)), to: reference, client: client, jobs: registry.jobs,
                mode: registry.uploadMode.mode, chunkSize: registry.chunkSize, mountFrom: mountFrom,
                progress: quiet ? .silent : .standardError())
            if !quiet {
                FileHandle.standardError.write(Data("pushed: \(result.count(.uploaded)) uploaded, \(result.count(.mounted)) mounted, \(result.count(.existed)) already there\n".utf8))
            }
            print(text)
        }
    }
}

