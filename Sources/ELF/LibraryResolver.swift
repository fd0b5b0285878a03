#if canImport(Glibc)
import Glibc
#endif

/// Finds every shared object an executable needs at run time, the way glibc's `ld.so` would on
/// this machine (ld.so(8), "Rpath token expansion" and the search order), and says where each
/// must go in an image so that the same loader finds it there.
///
/// The search order per object: DT_RPATH of the object and of the executable (only when the
/// object has no DT_RUNPATH), DT_RUNPATH, the directories of /etc/ld.so.conf, then the default
/// directories. LD_LIBRARY_PATH is ignored on purpose: the build host's environment must not
/// change what goes into an image.
public struct LibraryResolver: Sendable {
    /// One file that must be in the image.
    public struct Placement: Hashable, Sendable {
        /// Where the bytes come from (may be a symlink; readers follow it).
        public var hostPath: String
        /// Absolute path inside the image.
        public var imagePath: String
    }

    public struct Result: Sendable {
        public var executable: ELFFile
        /// The loader and every library, in a stable order (sorted by image path).
        public var libraries: [Placement]
        /// Directories found only through /etc/ld.so.conf: the image has no ld.so.cache, so
        /// they must be named in LD_LIBRARY_PATH for the loader to search them.
        public var extraSearchPath: [String]
    }

    public var root: String
    public var ldSoConf: String

    /// `root` prefixes every path looked at, so that tests can resolve against a fake tree.
    public init(root: String = "", ldSoConf: String = "/etc/ld.so.conf") {
        self.root = root
        self.ldSoConf = ldSoConf
    }

    /// `hostPath` is the executable; `imagePath` where it will be in the image (for $ORIGIN).
    public func resolve(executable hostPath: String, imagePath: String) throws -> Result {
        let exe = try ELFFile(path: hostPath)
        let confDirs = readLdSoConf(root + ldSoConf, depth: 0)
        let defaults = ["/lib/\(exe.machine.multiarchTriple)", "/usr/lib/\(exe.machine.multiarchTriple)", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]

        var placements: [String: Placement] = [:]
        var extra: [String] = []
        var provided = Set<String>()  // sonames already satisfied

        if let interp = exe.interpreter {
            guard access(root + interp, R_OK) == 0 else {
                throw ELFError.libraryNotFound(name: interp, neededBy: hostPath, searched: [interp])
            }
            placements[interp] = Placement(hostPath: root + interp, imagePath: interp)
            // libc names the loader in DT_NEEDED; the kernel already mapped it from PT_INTERP,
            // and ld.so matches it by soname, so a second copy would never be loaded.
            if let loader = try? ELFFile(path: root + interp) {
                provided.insert(loader.soname ?? basename(interp))
            }
            provided.insert(basename(interp))
        }

        // Breadth-first over the dependency graph, as ld.so loads objects.
        var queue: [(file: ELFFile, imagePath: String)] = [(exe, imagePath)]
        var index = 0
        while index < queue.count {
            let (object, objectImagePath) = queue[index]
            index += 1
            for name in object.needed where !provided.contains(name) {
                provided.insert(name)
                var searched: [String] = []
                var found: (host: String, image: String, viaConf: Bool)?

                if name.contains("/") {
                    found = (root + name, name, false)
                } else {
                    var dirs: [(host: String, image: String, viaConf: Bool)] = []
                    func expand(_ entries: [String], of file: ELFFile, at image: String) -> [(String, String, Bool)] {
                        entries.map { entry in
                            let host = expandOrigin(entry, origin: dirname(file.path))
                            let img = expandOrigin(entry, origin: dirname(image))
                            // An $ORIGIN entry already names a host path; a plain one is under root.
                            return (entry.contains("$ORIGIN") || entry.contains("${ORIGIN}") ? host : root + host, img, false)
                        }
                    }
                    if object.runpath.isEmpty {
                        dirs += expand(object.rpath, of: object, at: objectImagePath)
                        if object != exe { dirs += expand(exe.rpath, of: exe, at: imagePath) }
                    } else {
                        dirs += expand(object.runpath, of: object, at: objectImagePath)
                    }
                    dirs += confDirs.map { (root + $0, $0, !defaults.contains($0)) }
                    dirs += defaults.map { (root + $0, $0, false) }
                    for dir in dirs {
                        let candidate = dir.host + "/" + name
                        searched.append(dir.image)
                        // Skip files for another architecture, as ld.so does (e.g. /usr/lib32).
                        if access(candidate, R_OK) == 0, let lib = try? ELFFile(path: candidate), lib.machine == exe.machine {
                            found = (candidate, dir.image + "/" + name, dir.viaConf)
                            break
                        }
                    }
                }
                guard let hit = found else {
                    throw ELFError.libraryNotFound(name: name, neededBy: object.path, searched: searched)
                }
                let lib = try ELFFile(path: hit.host)
                let image = normalize(hit.image)
                if hit.viaConf, !extra.contains(dirname(image)) { extra.append(dirname(image)) }
                if placements[image] == nil {
                    placements[image] = Placement(hostPath: hit.host, imagePath: image)
                    queue.append((lib, image))
                }
            }
        }
        return Result(
            executable: exe,
            libraries: placements.values.sorted { $0.imagePath < $1.imagePath },
            extraSearchPath: extra)
    }

    private func readLdSoConf(_ path: String, depth: Int) -> [String] {
        guard depth < 8, let text = readText(path) else { return [] }
        var dirs: [String] = []
        for raw in text.split(whereSeparator: { $0 == "\n" }) {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?
                .trimmingSpaces ?? ""
            if line.isEmpty { continue }
            if line.hasPrefix("include") {
                let pattern = line.dropFirst("include".count).trimmingSpaces
                let absolute = pattern.hasPrefix("/") ? pattern : dirname(path.dropRootPrefix(root)) + "/" + pattern
                for file in glob(root + absolute) { dirs += readLdSoConf(file, depth: depth + 1) }
            } else if line.hasPrefix("/") {
                dirs.append(line)
            }
        }
        return dirs
    }

    private func glob(_ pattern: String) -> [String] {
        var g = glob_t()
        defer { globfree(&g) }
        guard Glibc.glob(pattern, 0, nil, &g) == 0 else { return [] }
        return (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }.sorted()
    }
}

func expandOrigin(_ entry: String, origin: String) -> String {
    entry.replacingAll("${ORIGIN}", with: origin).replacingAll("$ORIGIN", with: origin)
}

func dirname(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

func basename(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return path }
    return String(path[path.index(after: slash)...])
}

/// Removes `.` and `..` components and repeated slashes, without touching the file system.
func normalize(_ path: String) -> String {
    var parts: [Substring] = []
    for part in path.split(separator: "/") {
        if part == "." { continue }
        if part == ".." { _ = parts.popLast(); continue }
        parts.append(part)
    }
    return "/" + parts.joined(separator: "/")
}

func readText(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += buffer.prefix(n)
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            out += rest[..<range.lowerBound]
            out += replacement
            rest = rest[range.upperBound...]
        }
        return out + rest
    }

    func dropRootPrefix(_ root: String) -> String {
        root.isEmpty || !hasPrefix(root) ? self : String(dropFirst(root.count))
    }
}
