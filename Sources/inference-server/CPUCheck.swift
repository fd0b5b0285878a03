import Foundation

/// The engine module is compiled for Haswell (AVX2, FMA, F16C) and may execute those instructions
/// anywhere, even while checking. This file is in the executable, compiled for the baseline CPU, so
/// the check runs before any engine code and a missing feature is a message, not SIGILL.
enum CPUCheck {
    static func missingFeatures() -> [String] {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return [] }
        let flags = Set(line.split(separator: ":", maxSplits: 1).last?.split(separator: " ").map(String.init) ?? [])
        return ["avx2", "fma", "f16c"].filter { !flags.contains($0) }
    }

    /// Exits with status 2 and a message when the CPU cannot run the engine.
    static func requireEngineFeatures() {
        let missing = missingFeatures()
        guard !missing.isEmpty else { return }
        FileHandle.standardError.write(
            Data(
                ("inference-server: this CPU lacks \(missing.joined(separator: ", ")); the engine needs x86-64 with AVX2, FMA "
                    + "and F16C (Intel Haswell, AMD Zen or newer)\n").utf8))
        exit(2)
    }
}
