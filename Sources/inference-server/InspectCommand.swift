import ArgumentParser

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the model files this server would load.")
    @OptionGroup var options: ModelOptions

    func run() throws {
        let (path, lines) = try options.inventory()
        print("model \(path):")
        for line in lines { print(line) }
    }
}
