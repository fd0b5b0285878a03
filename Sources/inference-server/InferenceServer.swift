import ArgumentParser
import Foundation

/// Until the engine and the HTTP server land, this executable is an honest stub: it reports the
/// model it was given and says that serving is not implemented yet, with a non-zero exit.
@main
struct InferenceServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inference-server",
        abstract: "OpenAI-compatible Gemma 3 server (stub: serving is not implemented yet).",
        subcommands: [Serve.self, Inspect.self],
        defaultSubcommand: Serve.self
    )
}

struct ModelOptions: ParsableArguments {
    @Option(help: "The model folder or file. Default: $MODEL_PATH.")
    var model: String?

    func inventory() throws -> (path: String, lines: [String]) {
        guard let path = model ?? ProcessInfo.processInfo.environment["MODEL_PATH"] else {
            throw ValidationError("no model: pass --model PATH or set MODEL_PATH")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ValidationError("model \(path) does not exist")
        }
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

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the model files this server would load.")
    @OptionGroup var options: ModelOptions

    func run() throws {
        let (path, lines) = try options.inventory()
        print("model \(path):")
        lines.forEach { print($0) }
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the OpenAI API (not implemented yet).")
    @OptionGroup var options: ModelOptions

    func run() throws {
        let (path, lines) = try options.inventory()
        print("inference-server: found model \(path) with \(lines.count) file\(lines.count == 1 ? "" : "s"):")
        lines.forEach { print($0) }
        let port = ProcessInfo.processInfo.environment["PORT"] ?? "8080"
        FileHandle.standardError.write(Data("inference-server: serving on port \(port) is not implemented yet; the engine and the OpenAI API land with their own issues\n".utf8))
        throw ExitCode(3)
    }
}
