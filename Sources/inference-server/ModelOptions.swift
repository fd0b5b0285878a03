import ArgumentParser
import Foundation

struct ModelOptions: ParsableArguments {
    @Option(help: "The model folder or file. Default: $MODEL_PATH.")
    var model: String?

    func resolvedPath() throws -> String {
        guard let path = model ?? ProcessInfo.processInfo.environment["MODEL_PATH"] else {
            throw ValidationError("no model: pass --model PATH or set MODEL_PATH")
        }
        guard FileManager.default.fileExists(atPath: path) else {
            throw ValidationError("model \(path) does not exist")
        }
        return path
    }

    func inventory() throws -> (path: String, lines: [String]) {
        let path = try resolvedPath()
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
        var lines: [String] = []
        if isDirectory.boolValue {
            let names = (FileManager.default.enumerator(atPath: path)?.allObjects as? [String] ?? []).sorted()
            for name in names {
                let attributes = try? FileManager.default.attributesOfItem(atPath: path + "/" + name)
                if let size = attributes?[.size] as? Int, attributes?[.type] as? FileAttributeType == .typeRegular {
                    lines.append("  \(name) (\(size) bytes)")
                }
            }
        } else {
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            lines.append("  \(path) (\(size) bytes)")
        }
        return (path, lines)
    }
}
