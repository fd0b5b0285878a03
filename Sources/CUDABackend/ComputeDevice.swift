import CUDA
import Foundation
import Inference

/// What `--device` asks for: `auto` takes the GPU when one is usable and says why not otherwise.
public enum DeviceChoice: String, Sendable, CaseIterable {
    case auto, cpu, cuda
}

/// Where the engine runs: one binary for every machine, the GPU found at start (gemma3-and-serving.md,
/// CUDA sections).
public enum ComputeDevice: @unchecked Sendable {
    // @unchecked: CUDABackend is Sendable itself; the enum only carries it.
    case cpu
    case cuda(CUDABackend)

    /// Opens the device `choice` names. `auto` falls back to the CPU when there is no driver or no
    /// GPU (silently: that is every CPU machine), and also when a GPU is there but cannot be used,
    /// e.g. without NVRTC: `note` then gives the reason and the flag that turns it into an error.
    public static func open(
        _ choice: DeviceChoice, environment: [String: String] = ProcessInfo.processInfo.environment,
        note: (String) -> Void
    ) throws -> ComputeDevice {
        switch choice {
        case .cpu:
            return .cpu
        case .cuda:
            return .cuda(noted(try CUDABackend(environment: environment), note))
        case .auto:
            do {
                return .cuda(noted(try CUDABackend(environment: environment), note))
            } catch let error as CUDAError {
                switch error {
                case .libraryNotFound(let what, _, _) where what.contains("driver"): break
                case .noDevice: break
                default:
                    note("a GPU is present but cannot be used (\(error)); running on the CPU. --device cuda makes this an error")
                }
                return .cpu
            }
        }
    }

    /// Worth a line: a failed tensor-core or fused-norm self-check (prefill or decode then runs slower
    /// than it should), and a GPU NVRTC does not know (its kernels go as PTX, which the driver
    /// compiles at load and caches).
    private static func noted(_ gpu: CUDABackend, _ note: (String) -> Void) -> CUDABackend {
        if let virtual = gpu.kernels.ptxArchitecture {
            note(
                "the NVRTC at \(gpu.nvrtcPath) does not know this GPU (sm_\(gpu.context.device.architecture)): the kernels "
                    + "go as PTX for compute_\(virtual), which the driver compiles at load; a newer NVRTC (INFERENCE_NVRTC) makes a CUBIN")
        }
        if let problem = gpu.tensorCoreProblem, problem.contains("self-check") {
            note("prefill products do not use the tensor cores: \(problem)")
        }
        if let problem = gpu.fusedNormProblem, problem.contains("self-check") {
            note("decode steps of one sequence do not fuse their residual norms: \(problem)")
        }
        return gpu
    }

    public var name: String {
        switch self {
        case .cpu: return "cpu"
        case .cuda(let gpu): return gpu.name
        }
    }
}

extension CUDABackend {
    /// Bytes of KV cache the server may reserve on this GPU once the weights are loaded: the share
    /// `utilization` of the card's memory (vLLM's --gpu-memory-utilization) less what is already in
    /// use (the weights, other processes) and `reserve` for activations and libraries, capped at
    /// `requested`. Throws a clear error at start when not even `minimum` fits.
    public func kvCacheBudget(utilization: Double, requested: Int, minimum: Int, reserve: Int = 512 << 20) throws -> Int {
        let (free, total) = try context.memoryInfo()
        let allowed = Int(Double(total) * utilization) - (total - free) - reserve
        guard allowed >= minimum else {
            throw CUDAError.outOfMemory(requested: minimum + reserve, free: max(0, Int(Double(total) * utilization) - (total - free)))
        }
        return min(requested, allowed)
    }
}
