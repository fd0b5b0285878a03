import ArgumentParser
import BuilderKit
import Foundation
import OCI
import Registry

struct PullCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Pull an image from a registry into an OCI layout; prints the manifest digest.",
        discussion: """
            From an index, the --platform image is taken (linux/amd64 by default). Every blob is checked \
            against its digest as it streams to disk, and the layout is renamed into place only when \
            complete.
            """
    )

    @Argument(help: "The image: HOST/REPOSITORY[:TAG][@sha256:...].")
    var source: String

    @Argument(help: "Where to write it: oci:DIR.")
    var destination: String

    @Option(help: "The platform to take from a multi-platform image, os/arch.")
    var platform: String = "linux/amd64"

    @OptionGroup var registry: RegistryOptions

    @Flag(help: "Print no progress lines.")
    var quiet = false

    func validate() throws {
        guard destination.hasPrefix("oci:"), destination.count > 4 else { throw ValidationError("the destination must be oci:DIR") }
        guard Platform(parsing: platform) != nil else { throw ValidationError("--platform takes os/arch, e.g. linux/amd64") }
    }

    func run() throws {
        try reportingErrors {
            let reference = try ImageReference(parsing: source)
            let client = try registry.makeClient(for: reference.registry)
            let digest = try RegistryOperations.pull(
                reference, to: .layout(String(destination.dropFirst(4))), client: client, platform: Platform(parsing: platform)!,
                jobs: registry.jobs, progress: quiet ? .silent : .standardError())
            print(digest)
        }
    }
}
