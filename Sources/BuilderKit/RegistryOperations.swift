import Foundation
import OCI
import Registry

/// `builder push` and `builder pull`: an OCI layout to a registry and back.
public enum RegistryOperations {
    /// Pushes the image in `layout` (`DIR` or `DIR:TAG`) to `reference`; returns `REF@DIGEST`.
    public static func push(
        layout layoutSpec: String, to reference: ImageReference, client: RegistryClient, jobs: Int,
        mode: RegistryClient.UploadMode, chunkSize: Int64, mountSources: [Digest: String] = [:],
        mountFrom: String? = nil, progress: ProgressFactory
    ) throws -> (text: String, result: ImagePusher.Result) {
        let (dir, tag) = splitLayoutSpec(layoutSpec)
        let layout = try OCILayout(root: FileSystem.absolute(dir))
        var pusher = ImagePusher(client: client)
        pusher.jobs = jobs
        pusher.mode = mode
        pusher.chunkSize = chunkSize
        pusher.mountSources = mountSources
        pusher.mountFrom = mountFrom
        pusher.progress = progress.perBlob
        let result = try pusher.push(layout: layout, tag: tag, to: reference)
        var pinned = reference
        if pinned.tag == nil, pinned.digest == nil { pinned.tag = "latest" }
        pinned.digest = result.digest.description
        return (pinned.description, result)
    }

    /// Pulls `reference` (one platform) into an OCI layout at `output`, written atomically.
    public static func pull(
        _ reference: ImageReference, to output: BuildRequest.Output, client: RegistryClient, platform: Platform, jobs: Int,
        progress: ProgressFactory
    ) throws -> Digest {
        let target = try OutputTarget(output)
        do {
            let writer = try OCILayoutWriter(root: target.stagingLayout)
            var puller = ImagePuller(client: client)
            puller.platform = platform
            puller.jobs = jobs
            puller.progress = progress.perBlob
            var (descriptor, _) = try puller.pull(reference, into: writer)
            descriptor.annotations = ["org.opencontainers.image.ref.name": reference.tag ?? "latest"]
            try writer.finish(index: ImageIndex(manifests: [descriptor]))
            try target.publish(mtime: 0)
            return descriptor.digest
        } catch {
            target.discard()
            throw error
        }
    }

    /// `DIR[:TAG]`: a colon after the last slash names a tag.
    public static func splitLayoutSpec(_ spec: String) -> (String, String?) {
        if let colon = spec.lastIndex(of: ":"), !spec[colon...].contains("/"), colon != spec.startIndex {
            return (String(spec[..<colon]), String(spec[spec.index(after: colon)...]))
        }
        return (spec, nil)
    }
}
