import Foundation

/// The instruction-set extensions the engine is compiled for (`-target-cpu haswell` in Package.swift).
///
/// A binary built that way executes AVX2/FMA/F16C instructions anywhere in this module, so a CPU
/// without them dies on SIGILL; checking first turns that into an error a user can act on
/// (cpu-performance-notes.md, "Swift SIMD code needs a target CPU").
public enum CPUFeatures {
    /// The `/proc/cpuinfo` flag names the engine needs.
    public static let required = ["avx2", "fma", "f16c"]

    /// The required flags this machine lacks; empty when all are present or when the flags cannot be
    /// read (not Linux), where the check cannot help anyway.
    public static func missing(cpuinfo: String? = nil) -> [String] {
        guard let text = cpuinfo ?? (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) else { return [] }
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
        let flags = Set(line.split(separator: ":", maxSplits: 1).last?.split(separator: " ").map(String.init) ?? [])
        return required.filter { !flags.contains($0) }
    }

    /// Throws `InferenceError.unsupportedCPU` unless the CPU has AVX2, FMA and F16C.
    public static func check() throws {
        let missing = missing()
        if !missing.isEmpty { throw InferenceError.unsupportedCPU(missing: missing) }
    }
}
