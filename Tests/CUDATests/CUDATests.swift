import Foundation
import Testing
import TestSupport

@testable import CUDA

/// What CI can check without a GPU: every kernel compiles with NVRTC 12.2 (the wheel `scripts/test`
/// installs) to a CUBIN for the L4 (sm_89) and the H100 (sm_90); the cache reuses it; a missing
/// driver or compiler is a readable error; `doctor` reports all of it.
@Suite(.serialized) struct CUDATests {
    /// NVRTC from the pip wheel, found the way the server finds it (no override).
    static let nvrtc: Result<NVRTC, CUDAError> = Result { () throws(CUDAError) in
        do { return try NVRTC() } catch let error as CUDAError { throw error } catch { fatalError("\(error)") }
    }

    @Test(arguments: [89, 90])
    func everyKernelCompilesToACUBIN(architecture: Int) throws {
        let nvrtc = try Self.nvrtc.get()
        #expect(nvrtc.version.major == 12 && nvrtc.version.minor == 2, "the CUDA 12.2 compiler Cloud Run's driver can load")
        let cubin = try nvrtc.compile(GemmaKernels.source, architecture: architecture, options: GemmaKernels.options)
        #expect(KernelCache.isCUBIN(cubin))
        #expect(KernelCache.architecture(ofCUBIN: cubin) == architecture)
        for name in GemmaKernels.names {
            #expect(KernelCache.cubin(cubin, defines: name), "\(name) is not in the sm_\(architecture) CUBIN")
        }
        // Every extern "C" kernel of the source is in the list the server and doctor check.
        let declared = GemmaKernels.source.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("extern \"C\" __global__ void ") else { return nil }
            var rest = line.split(separator: "void ", maxSplits: 1)[1]
            if rest.hasPrefix("__launch_bounds__(") { rest = rest.split(separator: ")", maxSplits: 1)[1] }
            return rest.split(separator: "(")[0].trimmingCharacters(in: .whitespaces)
        }
        #expect(Set(declared) == Set(GemmaKernels.names))
    }

    /// Every kernel may be launched while the one before it still runs (programmatic dependent
    /// launch, on sm_90): each must call grid_wait before it touches a step's data, and none may
    /// return before it, or it reads what the kernel before has not yet written. The first
    /// statements of each kernel are grid_release and grid_wait, or (the gemv kernels, which ask
    /// L2 for their weights in between) a helper whose body waits; the few kernels that load their
    /// weights before waiting are named here, their prologue read by hand, and wait before any return.
    @Test func everyKernelWaitsForTheOneBeforeIt() throws {
        let source = GemmaKernels.source
        func body(after marker: String) -> Substring? {
            guard let start = source.range(of: marker), let open = source[start.upperBound...].firstIndex(of: "{") else { return nil }
            return source[source.index(after: open)...].prefix(1200)
        }
        let helpers = ["gemv_rows<", "gemv_pairs<", "gemv_gelu_rows<", "gemv_rows_staged<", "decode_layer_phases<"]
        for helper in helpers {
            let definition = "void " + helper.dropLast() + "("
            let text = try #require(body(after: definition), "\(helper) is defined")
            // Waits itself, or through wait_for_x (checked below).
            let wait = text.contains("= wait_for_x<") ? "= wait_for_x<" : "grid_wait();"
            let beforeWait = text.components(separatedBy: wait)[0]
            let touches = [
                "return", "gemv_part", "x[", "x +", "out[", "fused_residual_norm", "residual_norm(", "ticket", "norm.residual",
                "_block", "gemv_gelu_group", "grid_barrier", "stamp(",
            ].filter { beforeWait.contains($0) }
            #expect(text.contains(wait) && touches.isEmpty, "\(helper) waits before \(touches)")
        }
        // The persistent kernels' MLP alone (decode_mlp) waits in its own branch, after asking L2 for
        // its weights and loading its norm's, before anything else.
        let phases = try #require(body(after: "void decode_layer_phases("), "decode_layer_phases is defined")
        let mlp = try #require(source.range(of: "if constexpr (MLP) {").map { source[$0.upperBound...].prefix(700) })
        #expect(phases.contains("if constexpr (ATTENTION) {"))
        let beforeMLPWait = mlp.components(separatedBy: "grid_wait();")[0]
        let touched = ["return", "fused_residual_norm", "gemv_gelu_group", "_block", "o[", "residual", "ticket", "stamp("]
            .filter { beforeMLPWait.contains($0) }
        #expect(mlp.contains("grid_wait();") && touched.isEmpty, "decode_mlp waits before \(touched)")
        // wait_for_x: in each branch, grid_wait before the fused norm reads x or the residual.
        let waitForX = try #require(body(after: "const float* wait_for_x("), "wait_for_x is defined")
            .components(separatedBy: "// One row per warp part")[0]
        for branch in waitForX.components(separatedBy: "} else {") {
            let beforeWait = branch.components(separatedBy: "grid_wait();")[0]
            #expect(branch.contains("grid_wait();") && !beforeWait.contains("fused_residual_norm") && !beforeWait.contains("return"))
        }
        // Kernels that read weights before grid_wait, and what of a step's data they must not touch
        // there; attention_rows asks L2 for the next products' weights, then waits unless early.
        let weightPrologues: Set<String> = ["rms_norm_add_norm"]
        let allowedBeforeWait: [String: [String]] = [
            "attention_rows": [
                "grid_release()", "u64 b = blockIdx.x + (u64)gridDim.x * (blockIdx.y + (u64)gridDim.y * blockIdx.z)",
                "u64 blocks = (u64)gridDim.x * gridDim.y * gridDim.z", "prefetch_ahead(ahead0, bytes0, b, blocks, bulk)",
                "prefetch_ahead(ahead1, bytes1, b, blocks, bulk)", "prefetch_ahead(ahead2, bytes2, b, blocks, bulk)",
                "bool waitHere = !(store && early)", "if (waitHere)",
            ]
        ]
        // Its early loads (a decode step's attention, which waits inside attend): the statements of
        // attention_block before its branches and of attend before its own wait, read by hand, pinned
        // here: they read the rows table, the head norms' weights, the angles and the KV rows of
        // earlier steps (attend_keys, which skips the fresh key's row, being stored by the same
        // launch), and write nothing. The empty share waits before its header; the row is stored
        // after attend. (The emulator runs launches one after another, so only this catches a read
        // of the step's data moved before the wait.)
        func statements(_ text: Substring) -> [String] {
            let code = text.split(separator: "\n", omittingEmptySubsequences: false)
                .map { $0.components(separatedBy: "//")[0] }.joined(separator: " ")
            return code.split(separator: ";").map {
                $0.split(whereSeparator: \.isWhitespace).joined(separator: " ")
            }.filter { !$0.isEmpty }
        }
        func opening(_ signature: String, upTo marker: String, length: Int = 3000) throws -> Substring {
            let start = try #require(source.range(of: signature), "\(signature) is defined")
            let text = source[start.upperBound...].prefix(length)
            let open = try #require(text.firstIndex(of: "{"))
            let end = try #require(text.range(of: marker), "\(signature) has \(marker)")
            return text[text.index(after: open)..<end.lowerBound]
        }
        let attendBeforeWait = try opening("__device__ void attend(", upTo: "if (early) grid_wait();")
        #expect(statements(attendBeforeWait) == [
            "__shared__ float warp_m[ATT_WARPS], warp_l[ATT_WARPS]", "__shared__ float warp_acc[ATT_WARPS][ATT_MAX_DIM]",
            "int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5",
            "int width = kvHeads * dim, d0 = 8 * lane", "bool active = d0 < dim", "u64 column = (u64)kvh * dim + d0",
            "float qwv[8], kwv[8], c[8], s[8]", "if (qw) { head_weights(qw, dim, qwv)", "head_weights(kw, dim, kwv)",
            "head_angles(angles, dim, c, s)", "} int base = lo + ATT_GROUP * warp", "float kr[ATT_GROUP][8], vr[ATT_GROUP][8]",
            "if (base <= hi) attend_keys(kcache, vcache, base, hi, fresh, column, width, capacity, active, kr, vr)",
        ])
        let keys = try #require(body(after: "void attend_keys("))
        #expect(keys.contains("if (active && key != fresh) {"), "attend_keys skips the fresh key's row")
        let blockOpening = try opening("__device__ void attention_block(", upTo: "if (trims && partial && lo > hi) {")
        #expect(statements(blockOpening) == [
            "SegmentRow r = rows[row]", "int kvh = h / (heads / kvHeads), width = kvHeads * dim",
            "u64 at = ((u64)row * heads + h) * dim", "int lo = oldest_key(r.position, r.window), hi = r.position",
            "float* partial = 0", "if (splits > 1) { lo += z * share", "if (lo + share - 1 < hi) hi = lo + share - 1",
            "partial = partials + (((u64)row * heads + h) * splits + z) * (dim + 2)",
            "} const float* kfresh = store ? k + (u64)row * width + (u64)kvh * dim : 0",
            "const float* vfresh = store ? v + (u64)row * width + (u64)kvh * dim : 0",
            "const float* angles = qw ? table + (u64)row * dim : 0",
            "int storer = trims ? splits - 1 : 0, fresh = store ? r.position : -1",
            "if (trims && (fresh < lo || fresh > hi)) fresh = -1",
        ])
        let block = try opening("__device__ void attention_block(", upTo: "// Each row's attention against", length: 4000)
        let call = try #require(block.range(of: "attend("))
        #expect(!block[..<call.lowerBound].contains("store_row") && block[call.upperBound...].contains("store_row_normed<bf16>"))
        let header = try #require(block.range(of: "partial[0] = NEG_INF"))
        #expect(block[..<header.lowerBound].components(separatedBy: "lo > hi) {").last?.contains("if (early) grid_wait();") == true)
        // The fused MLP: before its wait, its shared memory, its rows asked of L2 and its slice of down's
        // weights copied into shared memory; nothing of the step's data.
        let mlpBeforeWait = try opening(" mlp_fused_bf16(", upTo: "grid_wait();")
        #expect(statements(mlpBeforeWait) == [
            "__shared__ uint4 slice[MLP_MAX_HIDDEN / MLP_SLICE_BLOCKS * MLP_SLICE / 8]", "__shared__ float4 xs[MLP_MAX_HIDDEN / 4]",
            "__shared__ float4 hs[MLP_SLICE / 4]", "grid_release()",
            "int b = blockIdx.x, s = b / MLP_SLICE_BLOCKS, i = b % MLP_SLICE_BLOCKS, chunk = k / MLP_SLICE_BLOCKS",
            "gemv_gelu_prefetch(gate, up, m, k, 1, 2 * b)", "gemv_gelu_prefetch(gate, up, m, k, 1, 2 * b + 1)",
            "copy_down_slice(slice, down, m, s, i, chunk)", "float wv[NORM_PER_THREAD], nv[NORM_PER_THREAD]",
            "norm_weights(w, next, k, wv, nv)",
        ])
        // ... whose copy reads only down's weights into the block's shared memory.
        let copy = try opening("void copy_down_slice(", upTo: "extern \"C\" __global__ void __launch_bounds__(256, 4) mlp_fused_bf16(")
        #expect(statements(copy) == [
            "for (int q = threadIdx.x", "q < chunk * (MLP_SLICE / 8)", "q += blockDim.x) { int j = q / (MLP_SLICE / 8), c = q % (MLP_SLICE / 8)",
            "copy16_to_shared(slice + q, down + (u64)(i * chunk + j) * m + (u64)s * MLP_SLICE + 8 * c)", "} }",
        ])
        // The streamed gate/up product: before its wait, its ring, the copies of its first items into
        // it and the lines of the rest asked of L2; nothing of the step's data.
        let gateUpBeforeWait = try opening(" gemv_gelu_norm_staged_bf16(", upTo: "x = wait_for_x<true>(")
        #expect(statements(gateUpBeforeWait) == [
            "__shared__ uint4 ring[GELU_RING * 256]", "grid_release()",
            "int warp = threadIdx.x >> 5, rows = 8 / splits, stride = 32 * splits, n = ((k >> 3) + stride - 1) / stride",
            "int row = blockIdx.x * GELU_NORM_GROUPS * rows + warp / splits, column = (warp % splits) * 32 + (threadIdx.x & 31)",
            "int items = GELU_NORM_GROUPS * 2 * n, c", "GeluItem ahead = {0, 0, 0}", "for (int j = 0", "j < GELU_RING",
            "j++, gelu_next(ahead, n)) { const uint4* p = j < items ? gelu_item(gate, up, m, k, stride, row, rows, column, ahead, c) : 0",
            "if (p) copy16_to_shared(ring + j * 256 + threadIdx.x, p)", "copies_commit()",
            "} if ((threadIdx.x & 7) == 0) { GeluItem t = ahead", "for (int j = GELU_RING", "j < items",
            "j++, gelu_next(t, n)) { const uint4* p = gelu_item(gate, up, m, k, stride, row, rows, column, t, c)",
            "if (p) prefetch_l2(p)", "} }",
        ])
        // ... whose items are addresses in gate's and up's rows, nothing read.
        let item = try opening("const uint4* gelu_item(", upTo: "extern \"C\" __global__ void __launch_bounds__(256, 4) gemv_gelu_norm_staged_bf16(")
        #expect(statements(item) == [
            "int r = row + t.g * rows", "c = column + t.i * stride", "if (r >= m || c >= (k >> 3)) return 0",
            "return (const uint4*)((t.u ? up : gate) + (u64)r * k) + c", "}",
        ])
        // The merge with the output projection: before its wait, its shared memory and a lane's chunk
        // of each of its warp's rows of wo (its head's columns) copied there; nothing of the step's data.
        let outputBeforeWait = try opening(" attention_output_bf16(", upTo: "grid_wait();")
        #expect(statements(outputBeforeWait) == [
            "__shared__ uint4 stage[OUT_ROWS / 8 * 256]", "__shared__ float4 merged[ATT_MAX_DIM / 4]",
            "grid_release()",
            "int g = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, first = g * OUT_ROWS + (threadIdx.x >> 5) * (OUT_ROWS / 8)",
            "bool mine = lane < (dim >> 3)", "for (int j = 0", "j < OUT_ROWS / 8",
            "j++) if (first + j < m && mine) copy16_to_shared(stage + j * 256 + threadIdx.x, wo + (u64)(first + j) * heads * dim + (u64)h * dim + 8 * lane)",
        ])
        let prologues: Set<String> = ["mlp_fused_bf16", "gemv_gelu_norm_staged_bf16", "attention_output_bf16"]
        for name in GemmaKernels.names where !prologues.contains(name) {
            let text = try #require(body(after: " \(name)("), "\(name) has a body")
            let statements = text.split(separator: ";").prefix(2).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            var waitsFirst = statements == ["grid_release()", "grid_wait()"]
            if weightPrologues.contains(name) {
                let beforeWait = text.components(separatedBy: "grid_wait();")[0]
                let touches = ["return", "x[", "xr[", "rr[", "residual", "out"].filter { beforeWait.contains($0) }
                waitsFirst = statements.first == "grid_release()" && text.contains("grid_wait();") && touches.isEmpty
            }
            if let allowed = allowedBeforeWait[name] {
                let beforeWait = text.components(separatedBy: "grid_wait();")[0].split(separator: ";")
                    .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
                waitsFirst = text.contains("grid_wait();") && beforeWait == allowed
            }
            let helper = helpers.first { text.prefix(700).contains($0) }
            #expect(waitsFirst || helper != nil, "\(name) begins with grid_release(); grid_wait(); or calls a helper that does")
        }
    }

    /// The sizes the backend plans launches by are the source's: a stage of another size, say, would
    /// stage threads' chunks past its end or leave the backend choosing kernels by a wrong rule.
    @Test func theBackendsConstantsAreTheSources() {
        let source = GemmaKernels.source
        let defines: [(String, Int)] = [
            ("STAGE_CHUNKS", GemmaKernels.stageChunks), ("OUT_ROWS", GemmaKernels.outputRows), ("GELU_NORM_GROUPS", GemmaKernels.geluNormGroups),
            ("GEMV_MAX_TOKENS", GemmaKernels.gemvMaximumTokens), ("MLP_SLICE", GemmaKernels.fusedMLPSlice),
            ("MLP_SLICE_BLOCKS", GemmaKernels.fusedMLPSliceBlocks), ("MLP_MAX_HIDDEN", GemmaKernels.fusedMLPMaximumHidden),
            ("PREFETCH_BULK_LINES", GemmaKernels.prefetchBulkLines), ("ATT_MAX_DIM", GemmaKernels.attentionMaximumDimension),
        ]
        for (name, value) in defines {
            #expect(source.contains("#define \(name) \(value)\n"), "\(name) is not \(value) in the source")
        }
        #expect(source.contains("#define NORM_FUSED_MAX (256 * NORM_PER_THREAD)"))
        #expect(source.contains("#define NORM_PER_THREAD \(GemmaKernels.fusedNormMaximum / 256)\n"))
    }

    @Test func compileErrorsCarryNVRTCsLog() throws {
        let nvrtc = try Self.nvrtc.get()
        #expect { try nvrtc.compile("extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }", architecture: 89) } throws: { error in
            guard case CUDAError.compilation(let arch, let log) = error else { return false }
            return arch == "sm_89" && log.contains("undefined_name")
        }
        #expect { try nvrtc.compile("", architecture: 99) } throws: { "\($0)".contains("sm_89") }
    }

    @Test func theCacheKeepsCUBINsAndRefusesDamagedOnes() throws {
        let nvrtc = try Self.nvrtc.get()
        let dir = try TemporaryDirectory()
        let cache = KernelCache(directory: dir.path + "/kernels")
        let first = try cache.cubin(source: GemmaKernels.source, architecture: 89, options: GemmaKernels.options, compiler: nvrtc)
        #expect(!first.fromCache && FileManager.default.fileExists(atPath: first.path))
        let second = try cache.cubin(source: GemmaKernels.source, architecture: 89, options: GemmaKernels.options, compiler: nvrtc)
        #expect(second.fromCache && second.cubin == first.cubin)
        // Another architecture or another source is another entry.
        #expect(cache.path(source: GemmaKernels.source, architecture: 90, options: GemmaKernels.options, compilerVersion: "12.2") != first.path)
        #expect(cache.path(source: GemmaKernels.source + " ", architecture: 89, options: GemmaKernels.options, compilerVersion: "12.2") != first.path)
        // A truncated file is compiled again, not handed to the driver.
        try Data(first.cubin.prefix(100)).write(to: URL(fileURLWithPath: first.path))
        let third = try cache.cubin(source: GemmaKernels.source, architecture: 89, options: GemmaKernels.options, compiler: nvrtc)
        #expect(!third.fromCache && third.cubin == first.cubin)
    }

    @Test func missingLibrariesAreReadableErrors() throws {
        // No NVIDIA driver on CI machines: the error names what was tried and what to do.
        let env = ["INFERENCE_LIBCUDA": "/nonexistent/libcuda.so.1", "HOME": "/nonexistent"]
        if (try? CUDADriver(environment: env)) == nil {
            #expect { try CUDADriver(environment: env) } throws: { error in
                let text = "\(error)"
                return text.contains("libcuda.so.1") && text.contains("runs on the CPU") && text.contains("LD_LIBRARY_PATH")
            }
        }
        let nowhere = ["INFERENCE_NVRTC": "/nonexistent/libnvrtc.so.12", "HOME": "/nonexistent", "PATH": "/usr/bin"]
        let candidates = NVRTC.candidates(environment: nowhere)
        #expect(candidates.first == "/nonexistent/libnvrtc.so.12")
        #expect(!candidates.contains { $0.contains("stubs") })
        #expect(!CUDADriver.candidates().contains { $0.contains("stubs") }, "the toolkit's stub libcuda fails every call")
        // A CUDA 12 driver (Cloud Run's 535) cannot load an NVRTC 13 CUBIN: that library is not looked for.
        #expect(!NVRTC.candidates(environment: nowhere, driverMajor: 12).contains { $0.hasSuffix(".so.13") })
        #expect(NVRTC.candidates(environment: nowhere, driverMajor: 13).contains { $0.hasSuffix(".so.13") })
        // One that is found anyway (by its plain name) is refused with what to install.
        if let newer = try? NVRTC(environment: nowhere), newer.version.major > 12 {
            #expect { try NVRTC(environment: ["INFERENCE_NVRTC": newer.path], driverMajor: 12) } throws: { error in
                "\(error)".contains("nvidia-cuda-nvrtc-cu12")
            }
        }
    }

    @Test func doctorReportsAndCompiles() throws {
        let server = repositoryRoot + "/.build/debug/inference-server"
        try #require(FileManager.default.isExecutableFile(atPath: server), "run `swift build` first (scripts/test does)")
        let dir = try TemporaryDirectory()
        var env = ProcessInfo.processInfo.environment
        env["INFERENCE_KERNEL_CACHE"] = dir.path
        let arguments = ["env"] + env.map { "\($0.key)=\($0.value)" } + [server, "doctor", "--compile-kernels", "--arch", "sm_89", "--arch", "sm_90"]
        let result = try run(arguments)
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("nvrtc") && result.stdout.contains("12.2"))
        #expect(result.stdout.contains("kernels sm_89") && result.stdout.contains("kernels sm_90"))
        #expect(!result.stdout.contains("FAILED") && !result.stdout.contains("MISSING"))
        // cuBLAS is optional: found or not, doctor says where it is or what prefill does without it.
        #expect(result.stdout.contains("cublas          "))
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".cubin") }
        #expect(files.count == 2)
        let again = try run(arguments)
        #expect(again.stdout.contains("from the cache"))
        // Without a GPU, --require-gpu fails and says why.
        let strict = try run(["env", "INFERENCE_LIBCUDA=/nonexistent/libcuda.so.1", "INFERENCE_KERNEL_CACHE=\(dir.path)", server, "doctor", "--require-gpu"])
        if strict.stdout.contains("driver          none") {
            #expect(strict.status == 1)
        }
    }
}
