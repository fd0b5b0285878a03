import Foundation
import Testing
import TestSupport

/// The package root, found from this file's path.
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// The inference-server that `swift build` put in .build; the image tests package it.
func builtServer() throws -> String {
    let candidates = [
        ProcessInfo.processInfo.environment["INFERENCE_SERVER_BINARY"],
        packageRoot + "/.build/debug/inference-server",
        packageRoot + "/.build/release/inference-server",
    ].compactMap { $0 }
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        Issue.record("no inference-server binary: run `swift build` first (scripts/test does)")
        throw CocoaError(.fileNoSuchFile)
    }
    return found
}

/// A small model folder in the Hugging Face layout: two small files, two weight files and a
/// hidden download cache that must not be packaged.
func makeModel(in dir: TemporaryDirectory, name: String = "model") throws -> String {
    _ = try dir.write("\(name)/config.json", Array(#"{"model_type":"gemma3_text"}"#.utf8))
    _ = try dir.write("\(name)/tokenizer.json", Array(#"{"version":"1.0"}"#.utf8))
    _ = try dir.write("\(name)/model-00002-of-00002.safetensors", randomBytes(300_000))
    _ = try dir.write("\(name)/model-00001-of-00002.safetensors", randomBytes(200_000))
    _ = try dir.write("\(name)/.cache/huggingface/download/x.metadata", Array("not part of the model".utf8))
    return dir.path + "/" + name
}
