import Foundation

/// The weights of a Hugging Face model folder: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (`{"weight_map": {"tensor": "model-00001-of-00002.safetensors"}}`).
public struct SafetensorsCheckpoint: Sendable {
    public let directory: String
    public let files: [SafetensorsFile]
    /// Which file holds each tensor.
    private let location: [String: Int]

    public static let singleFileName = "model.safetensors"
    public static let indexFileName = "model.safetensors.index.json"

    public init(directory: String) throws {
        self.directory = directory
        let single = directory + "/" + Self.singleFileName
        let indexPath = directory + "/" + Self.indexFileName
        if FileManager.default.fileExists(atPath: single) {
            let file = try SafetensorsFile(path: single)
            files = [file]
            location = Dictionary(uniqueKeysWithValues: file.tensors.keys.map { ($0, 0) })
            return
        }
        guard FileManager.default.fileExists(atPath: indexPath) else {
            throw InferenceError.unreadableFile(
                path: directory, reason: "neither \(Self.singleFileName) nor \(Self.indexFileName) is in the folder")
        }
        let index = try MappedFile(path: indexPath)
        let json: JSONValue
        do {
            json = try JSONValue.parse(index.bytes(0..<index.size))
        } catch {
            throw InferenceError.invalidSafetensors(path: indexPath, reason: "\(error)")
        }
        guard let weightMap = json["weight_map"]?.objectValue, !weightMap.isEmpty else {
            throw InferenceError.invalidSafetensors(path: indexPath, reason: "no weight_map object with entries")
        }
        var shardNames: [String] = []
        var shardOf: [String: Int] = [:]
        var location: [String: Int] = [:]
        for (tensor, value) in weightMap.sorted(by: { $0.key < $1.key }) {
            guard let shard = value.stringValue else {
                throw InferenceError.invalidSafetensors(
                    path: indexPath, reason: "weight_map.\(tensor) is not a file name")
            }
            // Shards must be files in this folder: a name like "../x" would read outside the model.
            guard !shard.isEmpty, !shard.contains("/"), shard != ".", shard != ".." else {
                throw InferenceError.invalidSafetensors(
                    path: indexPath,
                    reason: "weight_map.\(tensor) names \"\(shard)\", which is not a file in the model folder")
            }
            if shardOf[shard] == nil {
                shardOf[shard] = shardNames.count
                shardNames.append(shard)
            }
            location[tensor] = shardOf[shard]
        }
        let files = try shardNames.map { try SafetensorsFile(path: directory + "/" + $0) }
        for (tensor, file) in location where files[file].tensors[tensor] == nil {
            throw InferenceError.invalidSafetensors(
                path: indexPath, reason: "weight_map puts \(tensor) in \(shardNames[file]), which does not contain it")
        }
        self.files = files
        self.location = location
    }

    public var tensorNames: [String] { location.keys.sorted() }

    public func contains(_ name: String) -> Bool { location[name] != nil }

    public func tensor(_ name: String) throws -> WeightTensor {
        guard let file = location[name] else { throw InferenceError.missingTensor(name: name, source: directory) }
        return try files[file].tensor(name)
    }
}
