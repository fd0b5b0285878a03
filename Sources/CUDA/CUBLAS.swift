import Foundation

/// cuBLAS (`libcublas.so.12`/`.13`), opened with dlopen like the driver, for the products of many
/// rows (prefill): bf16 weights times bf16 activations, accumulated in f32. Optional: without it the
/// backend's own kernels do every product (`INFERENCE_CUBLAS=off` forces that).
public final class CUBLAS: @unchecked Sendable {
    // @unchecked: one handle, used from the engine thread under the backend's lock.
    public let path: String
    private let library: DynamicLibrary
    private let handle: OpaquePointer?
    private let gemmEx:
        @convention(c) (
            OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafeRawPointer, UInt64, Int32, Int32, UInt64, Int32,
            Int32, UnsafeRawPointer, UInt64, Int32, Int32, Int32, Int32
        ) -> Int32

    public static func candidates(environment env: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        let names = ["libcublas.so.12", "libcublas.so.13"]
        var list: [String] = []
        if let given = env["INFERENCE_CUBLAS"], !given.isEmpty {
            list += given.hasSuffix(".so") || given.contains(".so.") ? [given] : names.map { given + "/" + $0 }
        }
        return list + NVRTC.libraryCandidates(names, wheelFolders: ["nvidia/cublas/lib", "nvidia/cu13/lib"], environment: env)
    }

    /// Where cuBLAS would be loaded from, without a GPU (for `doctor`); throws the readable
    /// not-found error otherwise.
    public static func locate(environment env: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        try open(environment: env).location(of: "cublasGemmEx")
    }

    private static func open(environment env: [String: String]) throws -> DynamicLibrary {
        try DynamicLibrary.open(
            candidates(environment: env), what: "cuBLAS (libcublas.so.12)",
            hint: "Install it with `pip install nvidia-cublas-cu12==12.2.5.6`, use an nvidia/cuda:12.2 runtime base image, or set INFERENCE_CUBLAS to the library; the server works without it, with slower prefill")
    }

    /// Opens cuBLAS and creates a handle on `context` (made current first).
    public init(context: CUDAContext, environment env: [String: String] = ProcessInfo.processInfo.environment) throws {
        library = try Self.open(environment: env)
        path = library.location(of: "cublasGemmEx")
        gemmEx = try library.function("cublasGemmEx", as: type(of: gemmEx))
        let create = try library.function("cublasCreate_v2", as: (@convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32).self)
        context.makeCurrent()
        var created: OpaquePointer? = nil
        let status = create(&created)
        guard status == 0 else { throw CUDAError.cublas(call: "cublasCreate", status: status) }
        handle = created
    }

    /// out (rows × m, f32) = x (rows × k, bf16) · wᵀ (w: m × k, bf16), row-major, f32 accumulation.
    /// In cuBLAS's column-major terms: outᵀ (m × rows) = op(w) (m × k) · xᵀ (k × rows), with w read
    /// transposed in place.
    public func matmulBF16(weight: UInt64, m: Int, k: Int, x: UInt64, rows: Int, out: UInt64) throws {
        var alpha: Float = 1
        var beta: Float = 0
        let transpose: Int32 = 1, none: Int32 = 0
        let bf16: Int32 = 14, f32: Int32 = 0  // CUDA_R_16BF, CUDA_R_32F
        let compute32F: Int32 = 68  // CUBLAS_COMPUTE_32F
        let defaultAlgorithm: Int32 = -1
        let status = gemmEx(
            handle, transpose, none, Int32(m), Int32(rows), Int32(k), &alpha, weight, bf16, Int32(k), x, bf16, Int32(k),
            &beta, out, f32, Int32(m), compute32F, defaultAlgorithm)
        guard status == 0 else { throw CUDAError.cublas(call: "cublasGemmEx", status: status) }
    }
}
