import ArgumentParser
import Foundation

/// Until the HTTP server lands, `serve` reports the model it was given and says that serving is not
/// implemented yet, with exit status 3 (the image tests rely on both).
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the OpenAI API (not implemented yet).")
    @OptionGroup var options: ModelOptions

    func run() throws {
        let (path, lines) = try options.inventory()
        print("inference-server: found model \(path) with \(lines.count) file\(lines.count == 1 ? "" : "s"):")
        for line in lines { print(line) }
        let port = ProcessInfo.processInfo.environment["PORT"] ?? "8080"
        FileHandle.standardError.write(
            Data(
                "inference-server: serving on port \(port) is not implemented yet; the engine and the OpenAI API land with their own issues\n"
                    .utf8))
        throw ExitCode(3)
    }
}
