import Foundation
import OCI
import Registry

/// `builder run`: the same image a registry serves, started on this machine with runc. The image
/// is unpacked once per manifest digest into a bundle under the cache folder (layers applied in
/// order, whiteouts honoured), runc's default spec is adapted to the image's config (entrypoint,
/// environment, working folder) with the host's network, so the server is reachable on its port.
public struct LocalRun {
    public var platform: Platform = .linuxAMD64
    public var cacheDirectory: String
    public var environment: [(String, String)] = []
    public var arguments: [String] = []

    public init(cacheDirectory: String) { self.cacheDirectory = cacheDirectory }

    public static var defaultCacheDirectory: String {
        let env = ProcessInfo.processInfo.environment
        return (env["XDG_CACHE_HOME"] ?? ((env["HOME"] ?? NSHomeDirectory()) + "/.cache")) + "/gemma-run"
    }

    /// Unpacks (or reuses) the bundle for the image in `layoutDirectory` and writes its runtime spec.
    public func prepare(layoutDirectory: String, tag: String?) throws -> (bundle: String, digest: Digest) {
        let layout = try OCILayout(root: FileSystem.absolute(layoutDirectory))
        let descriptor = try layout.select(tag: tag)
        let single = OCILayout(root: layout.root, replacingIndex: ImageIndex(manifests: [descriptor]))
        let image = try single.image(for: platform)
        let bundle = cacheDirectory + "/bundles/" + image.manifestDescriptor.digest.encoded
        let rootfs = bundle + "/rootfs"
        if !FileManager.default.fileExists(atPath: bundle + "/.complete") {
            FileSystem.removeTree(bundle)
            try FileManager.default.createDirectory(atPath: rootfs, withIntermediateDirectories: true)
            for layer in image.manifest.layers {
                try LayerExtractor.apply(layer: layout.blobPath(layer.digest), into: rootfs)
            }
            // Marks a whole unpack: an interrupted one is redone next time.
            guard FileManager.default.createFile(atPath: bundle + "/.complete", contents: nil) else {
                throw BuilderError.io(operation: "write", path: bundle + "/.complete", reason: "cannot create the file")
            }
        }
        try writeSpec(bundle: bundle, config: image.config)
        return (bundle, image.manifestDescriptor.digest)
    }

    /// runc's own default spec, with the image's process and the host network.
    func writeSpec(bundle: String, config: ImageConfiguration) throws {
        let scratch = bundle + "/.spec"
        FileSystem.removeTree(scratch)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { FileSystem.removeTree(scratch) }
        let runc = Process()
        runc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        runc.arguments = ["runc", "spec", "--bundle", scratch]
        try runc.run()
        runc.waitUntilExit()
        guard runc.terminationStatus == 0, let data = FileManager.default.contents(atPath: scratch + "/config.json"),
            var spec = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { throw BuilderError.io(operation: "make a runtime spec with", path: "runc spec", reason: "is runc installed? (apt-get install runc)") }

        let run = config.config ?? ImageConfiguration.Config()
        var env = EnvironmentList(run.Env ?? [])
        for (k, v) in environment { env[k] = v }
        var process = spec["process"] as? [String: Any] ?? [:]
        process["terminal"] = false
        process["args"] = (run.Entrypoint ?? []) + (arguments.isEmpty ? (run.Cmd ?? []) : arguments)
        process["env"] = env.entries
        process["cwd"] = (run.WorkingDir?.isEmpty == false) ? run.WorkingDir! : "/"
        spec["process"] = process
        spec["root"] = ["path": bundle + "/rootfs", "readonly": false]
        spec["hostname"] = "builder-run"
        if var linux = spec["linux"] as? [String: Any], let namespaces = linux["namespaces"] as? [[String: Any]] {
            // The host's network namespace: the server's port is the host's port.
            linux["namespaces"] = namespaces.filter { $0["type"] as? String != "network" }
            spec["linux"] = linux
        }
        let out = try JSONSerialization.data(withJSONObject: spec, options: [.prettyPrinted, .sortedKeys])
        guard FileManager.default.createFile(atPath: bundle + "/config.json", contents: out) else {
            throw BuilderError.io(operation: "write", path: bundle + "/config.json", reason: "cannot create the file")
        }
    }
}
