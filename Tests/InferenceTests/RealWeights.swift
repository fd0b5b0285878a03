import Foundation
import TestSupport
import Testing
import Tokenizer

@testable import Inference

/// The real Gemma 3 270M, fetched once per test run into the git-ignored `models/` folder by
/// `../shared/tools/get-gemma3-270m.sh` (idempotent), as CI runs it.
enum RealWeights {
    struct Unavailable: Error, CustomStringConvertible, Sendable {
        var description: String
    }

    static let models = repositoryRoot + "/models"
    static var folder: String { models + "/gemma-3-270m" }
    static var gguf: String { models + "/gemma-3-270m-q4_k_m.gguf" }

    /// Runs the fetch script once; the result is shared by every test.
    static let fetched: Result<Void, Unavailable> = {
        let script = repositoryRoot + "/../shared/tools/get-gemma3-270m.sh"
        if FileManager.default.fileExists(atPath: script) {
            do {
                // One fetch at a time: test targets run in parallel (scripts/test fetches before them).
                try? FileManager.default.createDirectory(atPath: models, withIntermediateDirectories: true)
                let result = try run(["flock", models + "/.fetch.lock", "bash", script, models])
                if result.status != 0 {
                    return .failure(Unavailable(description: "\(script) failed: \(result.stderr)"))
                }
            } catch {
                return .failure(Unavailable(description: "cannot run \(script): \(error)"))
            }
        }
        guard FileManager.default.fileExists(atPath: folder + "/model.safetensors"),
            FileManager.default.fileExists(atPath: gguf)
        else {
            return .failure(
                Unavailable(
                    description: "no weights in \(models) and no ../shared/tools/get-gemma3-270m.sh to fetch them"))
        }
        return .success(())
    }()

    static func require() throws {
        try fetched.get()
    }

    static let huggingFace: Result<Gemma3Model<CPUBackend>, Unavailable> = load {
        let config = try Gemma3Config(configFile: folder + "/config.json")
        return try Gemma3Model(
            config: config,
            weights: Gemma3Weights(safetensors: SafetensorsCheckpoint(directory: folder), config: config),
            backend: CPUBackend())
    }

    static let ggufModel: Result<Gemma3Model<CPUBackend>, Unavailable> = load {
        let file = try GGUFFile(path: gguf)
        let config = try Gemma3Config(gguf: file)
        // As `Engine` loads it for the CPU: the Q5_0 matrices rewritten as Q8_0.
        return try Gemma3Model(
            config: config, weights: Gemma3Weights(gguf: file, config: config).withQ5AsQ8(),
            backend: CPUBackend(exact: true))
    }

    static let tokenizer: Result<Tokenizer, Unavailable> = {
        if case .failure(let error) = fetched { return .failure(error) }
        do {
            return .success(try Tokenizer(directory: URL(fileURLWithPath: folder)))
        } catch {
            return .failure(Unavailable(description: "\(error)"))
        }
    }()

    private static func load(_ body: () throws -> Gemma3Model<CPUBackend>) -> Result<
        Gemma3Model<CPUBackend>, Unavailable
    > {
        if case .failure(let error) = fetched { return .failure(error) }
        do {
            return .success(try body())
        } catch {
            return .failure(Unavailable(description: "\(error)"))
        }
    }
}

/// The reference outputs of HF transformers (shared/golden, copied into Fixtures/).
struct GoldenFile: Decodable {
    struct Tokenization: Decodable {
        var text: String
        var ids: [Int]
        var decoded: String
    }
    struct Chat: Decodable {
        var messages: [Message]
        var rendered: String
        var ids: [Int]
    }
    struct Message: Decodable {
        var role: String
        var content: String
    }
    struct Case: Decodable {
        var name: String
        var promptText: String
        var inputIDs: [Int]
        var greedyIDs: [Int]
        var greedyText: String
        var steps: [Step]

        enum CodingKeys: String, CodingKey {
            case name, steps
            case promptText = "prompt_text"
            case inputIDs = "input_ids"
            case greedyIDs = "greedy_ids"
            case greedyText = "greedy_text"
        }
    }
    struct Step: Decodable {
        /// [id, logit] pairs, highest first.
        var top: [[Double]]
        var logsumexp: Double
    }

    var tokenization: [Tokenization]
    var chat: [Chat]
    var generation: [Case]

    static func load(_ name: String) throws -> GoldenFile {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/" + name)
        return try JSONDecoder().decode(GoldenFile.self, from: Data(contentsOf: url))
    }
}
