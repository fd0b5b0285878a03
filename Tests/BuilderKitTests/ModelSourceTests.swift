import Foundation
import Testing
import TestSupport

@testable import BuilderKit

@Suite struct ModelSourceTests {
    @Test func splitsWeightsFromSmallFilesAndSkipsHiddenOnes() throws {
        let dir = try TemporaryDirectory()
        let model = try ModelSource(path: try makeModel(in: dir))
        #expect(model.weights.map(\.relativePath) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        #expect(model.smallFiles.map(\.relativePath) == ["config.json", "tokenizer.json"])
        #expect(model.weights[0].size == 200_000)
        #expect(model.origin == nil)
        #expect(!model.isSingleFile)
    }

    @Test func readsRepoRevisionAndSHA256FromAHubCacheSnapshot() throws {
        let dir = try TemporaryDirectory()
        let sha = String(repeating: "a1", count: 32)
        let commit = String(repeating: "c", count: 40)
        let repo = "hub/models--google--gemma-3-1b-it"
        _ = try dir.write("\(repo)/blobs/\(sha)", randomBytes(1000))
        _ = try dir.write("\(repo)/blobs/\(String(repeating: "b", count: 40))", Array("{}".utf8))
        let snapshot = dir.path + "/\(repo)/snapshots/\(commit)"
        try FileManager.default.createDirectory(atPath: snapshot, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: snapshot + "/model.safetensors", withDestinationPath: "../../blobs/\(sha)")
        try FileManager.default.createSymbolicLink(atPath: snapshot + "/config.json", withDestinationPath: "../../blobs/\(String(repeating: "b", count: 40))")

        let model = try ModelSource(path: snapshot)
        #expect(model.origin == .init(repo: "google/gemma-3-1b-it", revision: commit))
        #expect(model.weights.first?.sha256 == sha)
        #expect(model.weights.first?.size == 1000, "the size is the blob's, through the symlink")
        #expect(model.smallFiles.first?.sha256 == nil, "a 40-hex blob name is a git sha1, not a sha256")
    }

    @Test func aSingleGGUFFile() throws {
        let dir = try TemporaryDirectory()
        let path = try dir.write("gemma-3-270m-Q4_K_M.gguf", randomBytes(100))
        let model = try ModelSource(path: path)
        #expect(model.isSingleFile)
        #expect(model.weights.map(\.relativePath) == ["gemma-3-270m-Q4_K_M.gguf"])
        #expect(model.smallFiles.isEmpty)
    }

    @Test func badModelPathsAreClearErrors() throws {
        let dir = try TemporaryDirectory()
        #expect(throws: BuilderError.modelNotFound(dir.path + "/nope")) { try ModelSource(path: dir.path + "/nope") }
        try FileManager.default.createDirectory(atPath: dir.path + "/empty/.git", withIntermediateDirectories: true)
        #expect(throws: BuilderError.modelEmpty(dir.path + "/empty")) { try ModelSource(path: dir.path + "/empty") }
        try FileManager.default.createDirectory(atPath: dir.path + "/broken", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.path + "/broken/model.safetensors", withDestinationPath: "/nonexistent/blob")
        #expect { try ModelSource(path: dir.path + "/broken") } throws: { "\($0)".contains("broken symlink") }
    }
}
