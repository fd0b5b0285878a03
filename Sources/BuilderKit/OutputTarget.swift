import OCI

#if canImport(Glibc)
import Glibc
#endif

/// Where a build lands, written so that a failed or interrupted build never leaves something that
/// looks like an image: everything goes into a hidden staging folder beside the output and is
/// renamed into place only when complete.
struct OutputTarget {
    let output: BuildRequest.Output
    let stagingLayout: String
    private let finalPath: String

    init(_ output: BuildRequest.Output) throws {
        self.output = output
        switch output {
        case .layout(let dir): finalPath = FileSystem.absolute(dir)
        case .archive(let file): finalPath = FileSystem.absolute(file)
        }
        let parent = FileSystem.parent(finalPath)
        guard FileSystem.kind(parent) == .directory else {
            throw BuilderError.io(operation: "write into", path: parent, reason: "the folder does not exist")
        }
        switch output {
        case .layout:
            switch FileSystem.kind(finalPath) {
            case .missing: break
            case .directory:
                let names = try FileSystem.listDirectory(finalPath)
                // An earlier image may be replaced; anything else is the user's and is left alone.
                if !names.isEmpty, !names.contains("oci-layout") { throw BuilderError.outputNotEmpty(finalPath) }
            default: throw BuilderError.outputNotEmpty(finalPath)
            }
        case .archive:
            let kind = FileSystem.kind(finalPath)
            if kind != .missing, kind != .file { throw BuilderError.outputNotAFile(finalPath) }
        }
        OutputTarget.removeAbandoned(near: finalPath)
        stagingLayout = "\(parent)/.\(FileSystem.lastComponent(finalPath)).partial-\(getpid())"
        FileSystem.removeTree(stagingLayout)
    }

    /// Moves the finished image into place.
    func publish(mtime: Int64) throws {
        switch output {
        case .layout:
            if FileSystem.kind(finalPath) == .directory {
                let old = "\(FileSystem.parent(finalPath))/.\(FileSystem.lastComponent(finalPath)).old-\(getpid())"
                try FileSystem.rename(finalPath, old)
                try FileSystem.rename(stagingLayout, finalPath)
                FileSystem.removeTree(old)
            } else {
                try FileSystem.rename(stagingLayout, finalPath)
            }
        case .archive:
            let partial = stagingLayout + ".tar"
            unlink(partial)
            let file = try BlobFile(creating: partial)
            do {
                try OCIArchive.pack(layout: stagingLayout, into: file, mtime: mtime)
                try FileSystem.rename(partial, finalPath)
            } catch {
                unlink(partial)
                throw error
            }
            FileSystem.removeTree(stagingLayout)
        }
    }

    func discard() {
        FileSystem.removeTree(stagingLayout)
        unlink(stagingLayout + ".tar")
    }

    /// Staging folders of builds that were killed: their process is gone, so they are garbage.
    private static func removeAbandoned(near path: String) {
        let parent = FileSystem.parent(path)
        let prefix = ".\(FileSystem.lastComponent(path))."
        guard let names = try? FileSystem.listDirectory(parent) else { return }
        for name in names where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            guard rest.hasPrefix("partial-") || rest.hasPrefix("old-"),
                let pidText = rest.split(separator: "-").last?.split(separator: ".").first, let pid = Int32(pidText)
            else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { FileSystem.removeTree(parent + "/" + name) }
        }
    }
}
