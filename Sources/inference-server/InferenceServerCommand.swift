import ArgumentParser

/// `inference-server`: `serve` (the OpenAI API), `inspect` (list the model files), `generate` (run
/// the engine once, for people and for checks) and `doctor` (the CPU, GPU, driver and CUDA kernels).
@main
struct InferenceServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inference-server",
        abstract: "OpenAI-compatible Gemma 3 server (vLLM's API) on the CPU; `generate` runs the engine once.",
        subcommands: [Serve.self, Inspect.self, Generate.self, Doctor.self, BenchBatch.self, GPUCheckCommand.self],
        defaultSubcommand: Serve.self
    )
}
