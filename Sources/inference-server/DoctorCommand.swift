import ArgumentParser
import CUDA
import Foundation

/// `inference-server doctor`: what this machine offers the server, the first thing to run when a
/// Cloud Run GPU revision fails. Each line is a finding; problems say what to do.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Report the CPU, the NVIDIA driver and GPU, NVRTC and the kernel cache; optionally compile every kernel.",
        discussion: """
            Without a GPU it says so (the server then runs on the CPU) and exits 0, unless --require-gpu. \
            --compile-kernels compiles the CUDA kernels with NVRTC for the GPU found, or for each --arch \
            given (sm_89 is Cloud Run's L4, sm_90 the H100), stores the CUBINs in the kernel cache and, on \
            a GPU, loads them. Environment: INFERENCE_LIBCUDA (the driver library), INFERENCE_NVRTC (NVRTC's \
            library or folder), INFERENCE_KERNEL_CACHE (the cache folder), \
            INFERENCE_PREBUILT_KERNELS (a read-only folder of CUBINs made ahead, as builder build --gpu adds), INFERENCE_CUBLAS (cuBLAS's library, or \
            off), INFERENCE_TENSOR_CORES (off: prefill products without cuBLAS use the tiled kernel), \
            INFERENCE_FUSED_NORMS (off: a one-sequence decode step launches each residual norm on its own), \
            INFERENCE_PIPELINE (off: each decode step is read back before the next is queued), \
            INFERENCE_PREFETCH_AHEAD (MiB of the next weights a one-sequence step's attention asks L2 for; \
            default none, as off), INFERENCE_PREFETCH_KIND (how: lines, bulk or evict-last; default bulk), \
            INFERENCE_FUSED_MLP (on: a one-token step's MLP in one launch; default off, slower on an H100), \
            INFERENCE_FUSED_OUTPUT (on: a one-token step's attention shares merged inside the output \
            projection; default off, not yet timed on a GPU), \
            INFERENCE_STAGED_WEIGHTS (products, gate-up or on: one-token products copy their weights into \
            shared memory before they wait; default products on sm_90 and later, off before), \
            INFERENCE_DECODE_TUNING (off: serve does not time the staged weights' and the L2 prefetch's \
            values on the card at start, which it does for those not set, keeping the fastest).

            Example: inference-server doctor --compile-kernels --arch sm_89 --arch sm_90
            """)

    @Flag(name: .customLong("compile-kernels"), help: "Compile every CUDA kernel with NVRTC (and load them on a GPU).")
    var compileKernels = false

    @Option(name: .customLong("arch"), help: "GPU architecture to compile for, e.g. sm_89 (repeatable). Default: the GPU's.")
    var architectures: [String] = []

    @Flag(name: .customLong("require-gpu"), help: "Exit 1 when no usable NVIDIA GPU is found.")
    var requireGPU = false

    func run() throws {
        var problems = 0
        let cpu = CPUCheck.missingFeatures()
        line("cpu", "\(ProcessInfo.processInfo.activeProcessorCount) cores; " + (cpu.isEmpty ? "AVX2, FMA and F16C present" : "MISSING \(cpu.joined(separator: ", ")): the CPU engine cannot run"))
        if !cpu.isEmpty { problems += 1 }

        var driver: CUDADriver? = nil
        do {
            let found = try CUDADriver()
            driver = found
            line("driver", "\(found.path), CUDA \(found.versionString)")
            line(
                "graphs",
                found.supportsGraphs
                    ? (ProcessInfo.processInfo.environment["INFERENCE_CUDA_GRAPHS"] == "off"
                        ? "turned off (INFERENCE_CUDA_GRAPHS=off): kernels are launched one by one"
                        : "available: repeated decode steps are captured and replayed as CUDA graphs")
                    : "not in this driver: kernels are launched one by one")
            line(
                "launches",
                !found.supportsDependentLaunch
                    ? "each kernel waits for the one before to finish (dependent launches need a CUDA 12.3 driver)"
                    : ProcessInfo.processInfo.environment["INFERENCE_DEPENDENT_LAUNCH"] == "off"
                        ? "dependent launches turned off (INFERENCE_DEPENDENT_LAUNCH=off)"
                        : "dependent on sm_90 and later: a kernel starts while the one before it drains")
            line(
                "pipeline",
                !found.supportsReadbacks
                    ? "decode steps one at a time (pipelining needs cuMemcpyDtoHAsync and events)"
                    : ProcessInfo.processInfo.environment["INFERENCE_PIPELINE"] == "off"
                        ? "decode steps one at a time (INFERENCE_PIPELINE=off)"
                        : "decode steps pipelined (greedy, sampled, penalized, with logprobs or without): the next step is queued before this one's tokens are read back")
            for device in found.devices {
                let memory = (try? found.memoryInfo(ordinal: device.ordinal)).map { " (\(gib($0.free)) free)" } ?? ""
                line("gpu \(device.ordinal)", "\(device.name), sm_\(device.architecture), \(gib(device.totalMemory)) memory\(memory), \(device.multiprocessors) SMs, \(device.l2CacheBytes >> 20) MiB L2, about \(Int(device.peakBandwidth / 1e9)) GB/s")
            }
        } catch {
            line("driver", "none: \(error)")
            line("device", "cpu")
            if requireGPU { problems += 1 }
        }

        var targets: [Int] = []
        for name in architectures {
            guard let sm = Int(name.lowercased().replacingOccurrences(of: "sm_", with: "")) else {
                throw ValidationError("--arch takes names like sm_89, not '\(name)'")
            }
            targets.append(sm)
        }
        if targets.isEmpty, let driver { targets = Array(Set(driver.devices.map(\.architecture))).sorted() }

        let cache = KernelCache()
        line("kernel cache", cache.directory)
        if let prebuilt = cache.prebuilt { line("prebuilt", "\(prebuilt) (kernels made ahead, looked in first)") }
        do {
            let nvrtc = try NVRTC(driverMajor: driver.map { $0.version / 1000 })
            line("nvrtc", "\(nvrtc.versionString) at \(nvrtc.path); compiles for \(nvrtc.supportedArchitectures.map { "sm_\($0)" }.joined(separator: " "))")
            if nvrtc.version.major > 12 {
                line("note", "NVRTC \(nvrtc.versionString) makes CUBINs that only a CUDA \(nvrtc.version.major) driver loads; Cloud Run's driver (535) is CUDA 12.2: images need NVRTC 12")
            } else if nvrtc.version.major == 12 && nvrtc.version.minor > 2 {
                line("note", "NVRTC \(nvrtc.versionString) is newer than Cloud Run's driver (535, CUDA 12.2); its CUBINs still load there (minor-version compatibility), PTX would not")
            }
            if compileKernels {
                if targets.isEmpty {
                    line("kernels", "no GPU and no --arch: nothing to compile for (try --arch sm_89)")
                    problems += 1
                }
                for sm in targets {
                    let started = Date()
                    do {
                        let entry = try cache.cubin(source: GemmaKernels.source, architecture: sm, options: GemmaKernels.options, compiler: nvrtc)
                        let missing = GemmaKernels.names.filter { !KernelCache.module(entry.cubin, defines: $0) }
                        let how = entry.fromCache ? "from the cache" : String(format: "compiled in %.2f s", Date().timeIntervalSince(started))
                        let what = entry.ptxArchitecture.map {
                            "PTX for compute_\($0) (NVRTC \(nvrtc.versionString) does not know sm_\(sm): the driver compiles it at load)"
                        } ?? "CUBIN"
                        line("kernels sm_\(sm)", "\(GemmaKernels.names.count) kernels, \(entry.cubin.count) bytes of \(what), \(how): \(entry.path)")
                        if !missing.isEmpty {
                            line("kernels sm_\(sm)", "MISSING \(missing.joined(separator: ", "))")
                            problems += 1
                        }
                        if let driver, let device = driver.devices.first(where: { $0.architecture == sm }) {
                            try driver.loadModule(entry.cubin, kernels: GemmaKernels.names, ordinal: device.ordinal)
                            line("kernels sm_\(sm)", "loaded on gpu \(device.ordinal)")
                        }
                    } catch {
                        line("kernels sm_\(sm)", "FAILED: \(error)")
                        problems += 1
                    }
                }
            }
        } catch {
            line("nvrtc", "none: \(error)")
            if compileKernels || driver != nil { problems += 1 }
        }
        // Optional: prefill products on a GPU; without it the built-in kernels do them.
        if ProcessInfo.processInfo.environment["INFERENCE_CUBLAS"] == "off" {
            line("cublas", "turned off (INFERENCE_CUBLAS=off): prefill products use the built-in kernels")
        } else {
            do {
                line("cublas", "\(try CUBLAS.locate()) (prefill products)")
            } catch {
                line("cublas", "none (optional; prefill products use the built-in kernels, on the tensor cores from sm_80): \(error)")
            }
        }
        if problems > 0 { throw ExitCode(1) }
    }

    private func line(_ key: String, _ value: String) {
        print(key.padding(toLength: 16, withPad: " ", startingAt: 0) + value)
    }

    private func gib(_ bytes: Int) -> String { String(format: "%.1f GiB", Double(bytes) / 1_073_741_824) }
}
