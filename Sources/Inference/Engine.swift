import Foundation
import Tokenizer

/// A loaded model ready to generate: the Gemma 3 weights on the CPU backend, the tokenizer and the
/// checkpoint's generation defaults. Loading maps the weights (no copy) and validates every header.
public struct Engine: Sendable {
    public enum Format: String, Sendable {
        case safetensors
        case gguf
    }

    public let path: String
    public let format: Format
    public let model: Gemma3Model<CPUBackend>
    /// The checkpoint's tensors (views into the mapped files), from which another backend builds its model.
    public let weights: Gemma3Weights
    /// nil when no tokenizer was found: prompts must then be token ids.
    public let tokenizer: Tokenizer?
    /// Where the tokenizer came from, for messages.
    public let tokenizerSource: String?
    public let generationConfig: GenerationConfig
    public let loadSeconds: Double

    public var config: Gemma3Config { model.config }

    /// Loads a Hugging Face folder (config.json + safetensors) or a `.gguf` file. The tokenizer comes
    /// from `tokenizerDirectory`, else the model folder (or the GGUF's folder) when it has a `tokenizer.json`.
    /// `exactActivations` keeps every product in f32 (see `CPUBackend.exact`).
    public static func load(path: String, tokenizerDirectory: String? = nil, exactActivations: Bool = false) throws -> Engine {
        let clock = ContinuousClock()
        let start = clock.now
        let backend = try CPUBackend(exact: exactActivations)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw InferenceError.unreadableFile(path: path, reason: "no such file or folder")
        }
        let format: Format
        let model: Gemma3Model<CPUBackend>
        let weights: Gemma3Weights
        var generationConfig = GenerationConfig()
        let folder: String
        var ggufFile: GGUFFile? = nil
        var path = path
        var isFolder = isDirectory.boolValue
        // A folder that holds one GGUF and no safetensors (a GGUF repo with its tokenizer files beside
        // it, as `builder build` packages one) is that GGUF, with the folder's tokenizer.
        if isFolder, let gguf = try singleGGUF(in: path) {
            path = gguf
            isFolder = false
        }
        folder = isFolder ? path : (path as NSString).deletingLastPathComponent
        // The tokenizer (a third of a second for Gemma's 33 MB tokenizer.json, on one core) loads on
        // its own thread while the weights are mapped and packed.
        let candidates = [tokenizerDirectory, folder.isEmpty ? "." : folder].compactMap { $0 }
        let tokenizerFolder = candidates.first(where: { FileManager.default.fileExists(atPath: $0 + "/tokenizer.json") })
        if tokenizerFolder == nil, let tokenizerDirectory {
            throw InferenceError.tokenizerUnavailable("\(tokenizerDirectory) has no tokenizer.json")
        }
        let loadingTokenizer = tokenizerFolder.map { directory in
            (directory, Background { try Tokenizer(directory: URL(fileURLWithPath: directory)) })
        }
        if isFolder {
            format = .safetensors
            let config = try Gemma3Config(configFile: path + "/config.json")
            let checkpoint = try SafetensorsCheckpoint(directory: path)
            weights = try Gemma3Weights(safetensors: checkpoint, config: config)
            model = try Gemma3Model(config: config, weights: weights, backend: backend)
            if FileManager.default.fileExists(atPath: path + "/generation_config.json") {
                generationConfig = try GenerationConfig(file: path + "/generation_config.json")
            }
        } else {
            format = .gguf
            let gguf = try GGUFFile(path: path)
            let config = try Gemma3Config(gguf: gguf)
            weights = try Gemma3Weights(gguf: gguf, config: config)
            // The CPU reads Q5_0 matrices faster rewritten as Q8_0 (`withQ5AsQ8`), unless it packs
            // them into int8 tiles (those are made from the Q5_0 itself: a Q8_0 copy would only
            // take memory); `weights` stays as stored, for a GPU backend. INFERENCE_REPACK_Q5=0
            // keeps Q5_0 (A/B runs).
            let tiles = !exactActivations && WeightTiles.int8Available
            let repack = !tiles && ProcessInfo.processInfo.environment["INFERENCE_REPACK_Q5"] != "0"
            model = try Gemma3Model(config: config, weights: repack ? weights.withQ5AsQ8() : weights, backend: backend)
            let eos = [
                gguf.metadata["tokenizer.ggml.eos_token_id"]?.intValue,
                gguf.metadata["tokenizer.ggml.eot_token_id"]?.intValue,
            ]
            generationConfig = GenerationConfig(
                bosTokenID: gguf.metadata["tokenizer.ggml.bos_token_id"]?.intValue, eosTokenIDs: eos.compactMap { $0 })
            ggufFile = gguf
        }

        var tokenizer: Tokenizer? = nil
        var tokenizerSource: String? = nil
        if let (directory, loading) = loadingTokenizer {
            tokenizer = try loading.value()
            tokenizerSource = directory + "/tokenizer.json"
        } else if let ggufFile, let vocabulary = try sentencePieceVocabulary(ggufFile) {
            // Read only when there is no tokenizer.json: one given or beside the GGUF wins, even
            // over damaged embedded metadata.
            tokenizer = try Tokenizer(sentencePiece: vocabulary)
            tokenizerSource = path + " (embedded vocabulary)"
        }
        return Engine(
            path: path, format: format, model: model, weights: weights, tokenizer: tokenizer, tokenizerSource: tokenizerSource,
            generationConfig: generationConfig, loadSeconds: (clock.now - start).seconds)
    }

    /// The GGUF's own tokenizer (`tokenizer.ggml.*`), when it has one of the kind Gemma uses: the
    /// SentencePiece pieces with scores and types. Other kinds (e.g. `gpt2` byte-level BPE) give nil,
    /// so such a file still loads and takes token ids or a tokenizer.json.
    static func sentencePieceVocabulary(_ gguf: GGUFFile) throws -> SentencePieceVocabulary? {
        let m = gguf.metadata
        guard m["tokenizer.ggml.model"]?.stringValue == "llama", let tokens = m["tokenizer.ggml.tokens"]?.arrayValue else { return nil }
        let pieces = tokens.compactMap(\.stringValue)
        let scores = (m["tokenizer.ggml.scores"]?.arrayValue ?? []).compactMap { $0.doubleValue.map(Float.init) }
        let types = (m["tokenizer.ggml.token_type"]?.arrayValue ?? []).compactMap {
            $0.intValue.flatMap { SentencePieceVocabulary.PieceType(rawValue: Int32(clamping: $0)) }
        }
        guard pieces.count == tokens.count, scores.count == tokens.count, types.count == tokens.count else {
            throw InferenceError.unreadableFile(
                path: gguf.path, reason: "its tokenizer metadata is damaged (tokens, scores and token_type must be arrays of one length, with known types)")
        }
        var v = SentencePieceVocabulary(pieces: pieces, scores: scores, types: types)
        v.bosID = m["tokenizer.ggml.bos_token_id"]?.intValue
        v.eosID = m["tokenizer.ggml.eos_token_id"]?.intValue
        v.unknownID = m["tokenizer.ggml.unknown_token_id"]?.intValue
        v.paddingID = m["tokenizer.ggml.padding_token_id"]?.intValue
        v.addBOS = m["tokenizer.ggml.add_bos_token"]?.boolValue ?? true
        v.addEOS = m["tokenizer.ggml.add_eos_token"]?.boolValue ?? false
        v.addSpacePrefix = m["tokenizer.ggml.add_space_prefix"]?.boolValue ?? false
        v.chatTemplate = m["tokenizer.chat_template"]?.stringValue
        return v
    }

    /// The one `.gguf` file of a folder that has no safetensors weights, if that is what it holds.
    private static func singleGGUF(in folder: String) throws -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        guard !names.contains(where: { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.index.json") }) else {
            return nil
        }
        let ggufs = names.filter { $0.hasSuffix(".gguf") }.sorted()
        if ggufs.count > 1 {
            throw InferenceError.unreadableFile(
                path: folder, reason: "it holds several GGUF files (\(ggufs.joined(separator: ", "))): name one")
        }
        return ggufs.first.map { folder + "/" + $0 }
    }

    /// Token ids that end a generation: the checkpoint's eos list, plus `<eos>` and `<end_of_turn>`,
    /// which Gemma 3 instruction-tuned models use (trap 8 of §8).
    public var stopTokenIDs: Set<Int> {
        var ids = Set(generationConfig.eosTokenIDs)
        if let tokenizer { ids.formUnion(tokenizer.specialTokens.stopTokenIDs) }
        if ids.isEmpty { ids = [1, 106] }
        return ids
    }

    /// The tokenizer, or an error saying how to provide one.
    public func requireTokenizer() throws -> Tokenizer {
        guard let tokenizer else {
            throw InferenceError.tokenizerUnavailable(
                "no tokenizer.json beside \(path), and no SentencePiece vocabulary in it: "
                    + "name a folder with tokenizer.json (generate --tokenizer DIR), or give the prompt as token ids")
        }
        return tokenizer
    }

    /// A new session (KV cache and scratch) on this engine's model.
    public func makeSession(contextLength: Int? = nil, maximumBatch: Int = 128) -> InferenceSession<CPUBackend> {
        model.makeSession(contextLength: contextLength, maximumBatch: maximumBatch)
    }
}

/// Work run on a thread of its own, whose result (or error) is taken later with `value()`.
private final class Background<Value: Sendable>: @unchecked Sendable {
    private var result: Result<Value, Error>?
    private let done = DispatchSemaphore(value: 0)

    init(_ work: @escaping @Sendable () throws -> Value) {
        let thread = Thread { [self] in
            result = Result(catching: work)
            done.signal()
        }
        thread.stackSize = 8 << 20  // the JSON parser recurses, as on the main thread
        thread.start()
    }

    /// Waits for the work; `result` is written once, before the signal that this wait consumes.
    func value() throws -> Value {
        done.wait()
        done.signal()
        return try result!.get()
    }
}
