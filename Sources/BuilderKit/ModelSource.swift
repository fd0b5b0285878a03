#if canImport(Glibc)
import Glibc
#endif

/// The model to package, read from a folder (a Hugging Face snapshot or any folder of files) or a
/// single file such as a `.gguf`. Files are split the way layers are: weights, one layer each, and
/// everything else (config, tokenizer, chat template) together.
public struct ModelSource: Sendable {
    public struct File: Hashable, Sendable {
        /// Path relative to the model root, with `/` separators.
        public var relativePath: String
        /// Where to read it (symlinks are followed when read).
        public var hostPath: String
        public var size: Int64
        /// The file's SHA-256 when known without reading it: in a Hugging Face cache a weight file
        /// is a symlink to `blobs/<sha256>`, verified when it was downloaded.
        public var sha256: String?
    }

    /// What the path tells about the model's origin on the Hub, when it is a cache snapshot.
    public struct HubOrigin: Hashable, Sendable {
        public var repo: String
        public var revision: String
    }

    public var root: String
    public var isSingleFile: Bool
    public var weights: [File]
    public var smallFiles: [File]
    public var origin: HubOrigin?

    /// Weight files, each of which gets a layer of its own.
    public static func isWeight(_ name: String) -> Bool {
        name.hasSuffix(".safetensors") || name.hasSuffix(".gguf")
    }

    public init(path given: String) throws {
        let path = FileSystem.absolute(given)
        switch FileSystem.kind(path) {
        case .missing:
            throw BuilderError.modelNotFound(given)
        case .other:
            throw BuilderError.unreadable(path: given, reason: "not a regular file or folder")
        case .file:
            root = path
            isSingleFile = true
            let file = try ModelSource.describe(hostPath: path, relativePath: FileSystem.lastComponent(path))
            weights = ModelSource.isWeight(file.relativePath) ? [file] : []
            smallFiles = ModelSource.isWeight(file.relativePath) ? [] : [file]
        case .directory:
            root = path
            isSingleFile = false
            var found: [File] = []
            try ModelSource.walk(directory: path, relative: "", depth: 0, into: &found)
            guard !found.isEmpty else { throw BuilderError.modelEmpty(given) }
            weights = found.filter { ModelSource.isWeight($0.relativePath) }
            smallFiles = found.filter { !ModelSource.isWeight($0.relativePath) }
        }
        origin = ModelSource.hubOrigin(of: path)
    }

    public var allFiles: [File] { (smallFiles + weights).sorted { $0.relativePath < $1.relativePath } }

    /// Recurses into subfolders, following symlinks (a Hub snapshot is made of them) but skipping
    /// hidden entries such as `.cache/huggingface` or `.git`, which are not part of the model.
    private static func walk(directory: String, relative: String, depth: Int, into found: inout [File]) throws {
        guard depth < 16 else {
            throw BuilderError.unreadable(path: directory, reason: "folders nested more than 16 deep (a symlink loop?)")
        }
        for name in try FileSystem.listDirectory(directory) where !name.hasPrefix(".") {
            let host = directory + "/" + name
            let rel = relative.isEmpty ? name : relative + "/" + name
            switch FileSystem.kind(host) {
            case .directory: try walk(directory: host, relative: rel, depth: depth + 1, into: &found)
            case .file: found.append(try describe(hostPath: host, relativePath: rel))
            case .missing: throw BuilderError.unreadable(path: host, reason: "it is a broken symlink")
            case .other: throw BuilderError.unreadable(path: host, reason: "not a regular file or folder")
            }
        }
    }

    private static func describe(hostPath: String, relativePath: String) throws -> File {
        guard access(hostPath, R_OK) == 0 else {
            throw BuilderError.unreadable(path: hostPath, reason: String(cString: strerror(errno)))
        }
        var sha: String?
        if FileSystem.isSymlink(hostPath), let target = FileSystem.readLink(hostPath) {
            let last = FileSystem.lastComponent(target)
            if target.contains("blobs/"), last.utf8.count == 64, last.utf8.allSatisfy({ isHexDigit($0) }) { sha = last }
        }
        return File(relativePath: relativePath, hostPath: hostPath, size: FileSystem.size(hostPath), sha256: sha)
    }

    /// `.../models--ORG--NAME/snapshots/COMMIT[/...]` is huggingface_hub's cache layout.
    static func hubOrigin(of path: String) -> HubOrigin? {
        let parts = path.split(separator: "/").map(String.init)
        guard let snapshots = parts.lastIndex(of: "snapshots"), snapshots > 0, snapshots + 1 < parts.count else {
            return nil
        }
        let folder = parts[snapshots - 1]
        let revision = parts[snapshots + 1]
        guard folder.hasPrefix("models--"), revision.utf8.count == 40, revision.utf8.allSatisfy({ isHexDigit($0) }) else {
            return nil
        }
        // Repository ids cannot contain "--", so the cache folder name splits back unambiguously.
        let id = String(folder.dropFirst("models--".count))
        guard !id.isEmpty else { return nil }
        return HubOrigin(repo: id.replacingOccurrences(of: "--", with: "/"), revision: revision)
    }
}

private func isHexDigit(_ c: UInt8) -> Bool { (48...57).contains(c) || (97...102).contains(c) }

import Foundation
