import ELF
import OCI

/// The server executable and everything the loader needs to start it, as layer entries:
/// the program interpreter, every shared library from the dependency graph, and the symlinked
/// directories the host uses to reach them (`/lib64 -> usr/lib64` on merged-/usr Debian), so that
/// an image built `FROM scratch` starts exactly as the binary does here.
public struct ServerBundle: Sendable {
    public var imagePath: String
    public var architecture: String
    public var entries: [LayerEntry]
    public var libraryCount: Int
    /// Directories to put in LD_LIBRARY_PATH (found through ld.so.conf only).
    public var extraSearchPath: [String]

    public init(server hostPath: String, imageDirectory: String = "/usr/local/bin", resolver: LibraryResolver = LibraryResolver()) throws {
        switch FileSystem.kind(hostPath) {
        case .missing: throw BuilderError.invalidOption("server \(hostPath) does not exist; build it with `swift build -c release --product inference-server` or pass --server PATH")
        case .file: break
        default: throw BuilderError.invalidOption("server \(hostPath) is not a file")
        }
        imagePath = imageDirectory + "/" + FileSystem.lastComponent(hostPath)
        let resolved = try resolver.resolve(executable: hostPath, imagePath: imagePath)
        architecture = resolved.executable.machine.ociArchitecture
        libraryCount = resolved.libraries.count
        extraSearchPath = resolved.extraSearchPath

        var entries = [LayerEntry(path: imagePath, kind: .file(source: hostPath, executable: true))]
        for library in resolved.libraries {
            var target = library.imagePath
            if library.imagePath == library.hostPath.dropRootPrefix(resolver.root) {
                let mapped = ServerBundle.mapDirectories(library.imagePath, root: resolver.root)
                entries += mapped.symlinks
                target = mapped.path
            }
            entries.append(LayerEntry(path: target, kind: .file(source: library.hostPath, executable: true)))
        }
        self.entries = entries
    }

    /// Resolves symlinked directories along `path` on the host; returns the path with real
    /// directories and the symlink entries that make the original path work in the image.
    static func mapDirectories(_ path: String, root: String) -> (path: String, symlinks: [LayerEntry]) {
        var components = path.split(separator: "/").map(String.init)
        guard let file = components.popLast() else { return (path, []) }
        var current = ""  // resolved, without root
        var symlinks: [LayerEntry] = []
        var hops = 0
        var pending = components[...]
        while let component = pending.first {
            pending = pending.dropFirst()
            let candidate = current + "/" + component
            if FileSystem.isSymlink(root + candidate), let target = FileSystem.readLink(root + candidate), hops < 32 {
                hops += 1
                symlinks.append(LayerEntry(path: candidate, kind: .symlink(target: target)))
                let base = target.hasPrefix("/") ? "" : current
                // Walk the target's own components too: it may cross further symlinks.
                pending = (target.split(separator: "/").map(String.init) + pending)[...]
                current = target.hasPrefix("/") ? "" : base
                continue
            }
            if component == ".." {
                current = FileSystem.parent(current.isEmpty ? "/" : current)
                if current == "/" { current = "" }
            } else if component != "." {
                current = candidate
            }
        }
        return (current + "/" + file, symlinks)
    }
}

extension String {
    func dropRootPrefix(_ root: String) -> String {
        root.isEmpty || !hasPrefix(root) ? self : String(dropFirst(root.count))
    }
}
