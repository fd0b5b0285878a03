/// CUDA failures, each with what to do about it.
public enum CUDAError: Error, CustomStringConvertible, Equatable {
    case libraryNotFound(what: String, tried: [String], hint: String)
    case missingSymbol(library: String, symbol: String)
    case driver(call: String, code: Int32, name: String, message: String)
    case noDevice
    case compilation(arch: String, log: String)
    case nvrtc(call: String, code: Int32, message: String)
    case unsupportedArchitecture(String, supported: [String])
    case outOfMemory(requested: Int, free: Int)
    case cublas(call: String, status: Int32)
    case invalidSetting(String)

    public var description: String {
        switch self {
        case .libraryNotFound(let what, let tried, let hint):
            return "\(what) was not found (tried: \(tried.joined(separator: "; "))). \(hint)"
        case .missingSymbol(let library, let symbol):
            return "\(library) has no \(symbol): it is older than this program needs (CUDA 12.2 or newer)"
        case .driver(let call, let code, let name, let message):
            var text = "\(call) failed: \(name) (\(code)): \(message)"
            switch code {
            case 34: text += ". The loaded libcuda.so.1 is the toolkit's stub, not a driver: put the real driver's library first on LD_LIBRARY_PATH"
            case 35, 803: text += ". The NVIDIA driver is older than CUDA 12.2 needs (driver 525 or newer)"
            case 100: text += ". No NVIDIA GPU is visible to this process"
            case 209, 222: text += ". The kernels were built for another GPU or toolchain: clear the kernel cache (inference-server doctor says where)"
            default: break
            }
            return text
        case .noDevice:
            return "the NVIDIA driver loaded but reports no GPU; on Cloud Run, deploy with a GPU (builder deploy without --cpu-only)"
        case .compilation(let arch, let log):
            return "the CUDA kernels did not compile for \(arch):\n\(log)"
        case .nvrtc(let call, let code, let message):
            return "\(call) failed (NVRTC \(code)): \(message)"
        case .unsupportedArchitecture(let arch, let supported):
            return "NVRTC cannot compile for \(arch); it supports \(supported.joined(separator: ", "))"
        case .outOfMemory(let requested, let free):
            return "the GPU is out of memory: \(requested / 1_048_576) MiB asked for, \(free / 1_048_576) MiB free. Lower --gpu-memory-utilization or --max-num-seqs, use a smaller --max-model-len, or a GPU with more memory"
        case .cublas(let call, let status):
            return "\(call) failed with cuBLAS status \(status); set INFERENCE_CUBLAS=off to use the built-in kernels instead"
        case .invalidSetting(let message):
            return message
        }
    }
}
