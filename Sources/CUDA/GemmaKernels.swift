/// The CUDA C source of the Gemma 3 kernels, compiled at start by NVRTC to a CUBIN for the device's
/// architecture (not PTX: Cloud Run's 535 driver cannot load PTX newer than CUDA 12.2's; only a GPU
/// NVRTC does not know gets PTX, see `KernelCache.cubin`).
///
/// Kept as a Swift string so the one `inference-server` binary carries it: nothing beside the binary
/// to package or find at run time. No CUDA header is included (NVRTC has no toolkit headers here):
/// bf16 is handled as its 16 bits, converted with round-to-nearest-even as PyTorch does.
///
/// Layouts follow `ComputeBackend`: activations and the KV cache are f32 row-major (tokens,
/// features); weight matrices are bf16 row-major (out, in) as in the checkpoint; norm weights are
/// f32 and already hold Gemma's 1 + w. Every kernel takes its sizes as arguments and checks its
/// bounds, so one CUBIN serves every Gemma 3 size.
public enum GemmaKernels {
    /// Every `extern "C"` kernel of `source`, for checks that the CUBIN holds them all.
    public static let names = [
        "embed_rows", "embed_drawn", "rms_norm", "rms_norm_add", "rms_norm_add_norm", "norm_rope", "gemv_bf16", "gemv_norm_bf16", "gemv_pairs_bf16", "gemv_gelu_bf16", "gemv_gelu_norm_bf16", "gemv_staged_bf16", "gemv_norm_staged_bf16", "gemv_gelu_norm_staged_bf16", "mlp_fused_bf16", "gemm_bf16", "gemm_mma_bf16", "to_bf16", "rope", "attention", "kv_store_rows", "attention_rows",
        "attention_combine", "attention_output_bf16", "decode_layer", "decode_attention", "decode_mlp",
        "gelu_tanh_mul", "add_rows", "softmax_rows", "argmax_rows", "argmax_finish", "sample_maxima", "sample_candidates", "sample_rows", "apply_penalties",
        "logprob_slices", "logprob_merge",
    ]

    /// Tokens one `gemv_pairs_bf16` or `gemv_gelu_bf16` launch takes (its accumulators are registers).
    /// 16: a decode step of up to 16 sequences (the server's default batch) reads each weight once,
    /// with f32 activations, so its numerics do not depend on how many sequences run.
    public static let gemvMaximumTokens = 16

    /// Warps per weight row in `gemv_bf16`: doubled (up to 8) while the rows are too few to fill a
    /// large GPU (4096 warps: an H100 holds 8448) and each lane keeps at least two 16-byte loads. From
    /// the matrix's shape alone, so a token's result does not depend on the batch.
    public static func gemvSplits(rows m: Int, columns k: Int) -> Int {
        var splits = 1
        while splits < 8 && m * splits < 4096 && k / 8 >= 2 * 32 * (2 * splits) { splits *= 2 }
        return splits
    }
    /// Most columns of a residual norm that `gemv_norm_bf16` and `gemv_gelu_norm_bf16` take
    /// (NORM_FUSED_MAX in the source: 8 a thread of their 256).
    public static let fusedNormMaximum = 2048
    /// Groups of rows each block of `gemv_gelu_norm_bf16` takes (GELU_NORM_GROUPS in the source).
    public static let geluNormGroups = 2
    /// 16-byte chunks of its weight row each thread of `gemv_staged_bf16` and `gemv_norm_staged_bf16`
    /// copies into shared memory before its wait (STAGE_CHUNKS in the source).
    public static let stageChunks = 8
    /// `mlp_fused_bf16`'s slices of intermediate rows (MLP_SLICE), blocks a slice (MLP_SLICE_BLOCKS)
    /// and largest hidden size (MLP_MAX_HIDDEN).
    public static let fusedMLPSlice = 256
    public static let fusedMLPSliceBlocks = 16
    public static let fusedMLPMaximumHidden = 1152
    /// Lines (128 bytes) of one bulk L2 prefetch in `prefetch_ahead` (PREFETCH_BULK_LINES in the source).
    public static let prefetchBulkLines = 128
    /// Places per slice for `sample_candidates` (SAMPLE_CANDIDATES in the source).
    public static let sampleCandidatesPerSlice = 512
    /// Rows of the output projection each block of `attention_output_bf16` takes (OUT_ROWS in the source).
    public static let outputRows = 32
    /// Largest head dimension `attention` takes (its query and partial sums live in shared memory).
    public static let attentionMaximumDimension = 256

    /// NVRTC options. No --use_fast_math: it would turn rope's sinf/cosf into approximations that
    /// are wrong for the large angles of late positions; the kernels ask for __expf/__logf by name.
    public static let options = ["--std=c++17"]

    public static let source = #"""
        typedef unsigned short bf16;
        typedef unsigned int u32;
        typedef unsigned long long u64;
        #define NEG_INF __int_as_float(0xff800000)

        __device__ __forceinline__ float bf16_to_f32(bf16 v) { return __uint_as_float(((u32)v) << 16); }

        __device__ __forceinline__ bf16 f32_to_bf16(float f) {
            u32 u = __float_as_uint(f);
            if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)0x7fc0;  // NaN stays NaN
            u += 0x7fffu + ((u >> 16) & 1u);                             // round to nearest even
            return (bf16)(u >> 16);
        }

        // Programmatic dependent launch (sm_90 and later; the backend asks for it only there, see
        // CUDAContext): a kernel so launched may start while the one before it still runs. Every kernel
        // first calls grid_release, which lets the next kernel's blocks start too, then grid_wait,
        // which returns once the kernel before has finished and its writes are visible; before it, a
        // kernel writes nothing and reads only what no kernel of the step writes: the weights (the gemv
        // kernels ask L2 for theirs), and in a decode step's attention (attention_rows, early) the
        // rows table and RoPE angles copied ahead of the step's kernels and the KV rows of earlier steps.
        // Each thread waits before it can return, so a kernel never ends before the one it follows.
        // Elsewhere (sm_89, the emulator) both are nothing and launches run one after the other.
        __device__ __forceinline__ void grid_release() {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
        #endif
        }
        __device__ __forceinline__ void grid_wait() {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            asm volatile("griddepcontrol.wait;" ::: "memory");
        #endif
        }
        // Asks L2 for the 128-byte lines of a weight range (read-only: safe before grid_wait): a gemv's
        // own rows, only on sm_90, where a dependent launch waits for the kernel before it meanwhile
        // (elsewhere the rows would be asked for just before they are read). prefetch_line below asks
        // for the weights of products further ahead.
        __device__ __forceinline__ void prefetch_l2(const void* p) {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
        #endif
        }

        // Asks L2 for this block's share of `bytes` of weights from p (contiguous slices of 128-byte lines,
        // one per block of the launch), for a product that comes later: a latency-bound kernel (a decode
        // step's attention) leaves memory idle, and the weights it asks for are then read from L2.
        // A hint only; sm_80 and later (the emulator counts and checks them).
        __device__ __forceinline__ void prefetch_line(const char* p) {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
            asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
        #elif defined(CUDA_EMULATOR)
            emu_prefetch(p);
        #endif
        }
        // `size` bytes from p (a multiple of 16, p 16-byte aligned) asked of L2 by the copy engine in one
        // instruction (cp.async.bulk.prefetch, sm_90); kind 2 marks the lines evict-last, so that the
        // step's other reads evict them last. The emulator counts and checks each line of the range.
        __device__ __forceinline__ void prefetch_bulk(const char* p, u32 size, int kind) {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            if (kind == 2) {
                u64 policy;
                asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
                asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" :: "l"(p), "r"(size), "l"(policy)
                             : "memory");
            } else {
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(p), "r"(size) : "memory");
            }
        #elif defined(CUDA_EMULATOR)
            for (u32 o = 0; o < size; o += 128) emu_prefetch(p + o);
        #endif
        }

        // 16 bytes from global to shared memory without a register (cp.async, sm_80 and later; a plain
        // copy elsewhere), and the wait for all of this thread's such copies.
        __device__ __forceinline__ void copy16_to_shared(void* smem, const void* gmem) {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
            u32 to;
            asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(to) : "l"(smem));
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(to), "l"(gmem) : "memory");
        #elif defined(CUDA_EMULATOR)
            emu_copy_async(smem, gmem);  // lands at the thread's wait for it, as on a GPU
        #else
            *(uint4*)smem = *(const uint4*)gmem;
        #endif
        }
        __device__ __forceinline__ void copies_to_shared_done() {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
            asm volatile("cp.async.wait_all;" ::: "memory");
        #elif defined(CUDA_EMULATOR)
            emu_copies_wait_all();
        #endif
        }

        // Block b of `blocks` (a launch's own, or a persistent kernel's share of a phase): its slice of
        // the lines of `bytes` from p. bulk 0: a prefetch a line from every thread, through the same
        // load path as the block's own loads (a 512 KiB slice is 4096 of them, 16 a thread); 1 or 2
        // (sm_90 and the emulator; the kind prefetch_bulk takes): the slice in instructions of
        // PREFETCH_BULK_LINES lines (16 KiB), one a thread, 32 for 512 KiB. bytes a multiple of 16
        // (whole rows of bf16 weights).
        #define PREFETCH_BULK_LINES 128
        __device__ __forceinline__ void prefetch_ahead(const char* p, u64 bytes, u64 b, u64 blocks, int bulk = 0) {
            u64 lines = (bytes + 127) >> 7;
            u64 first = lines * b / blocks, last = lines * (b + 1) / blocks;
        #if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(CUDA_EMULATOR)
            if (bulk) {
                u64 end = last << 7, whole = bytes & ~(u64)15;
                if (end > whole) end = whole;
                for (u64 l = first + (u64)threadIdx.x * PREFETCH_BULK_LINES; (l << 7) < end; l += (u64)blockDim.x * PREFETCH_BULK_LINES) {
                    u64 stop = (l + PREFETCH_BULK_LINES) << 7;
                    prefetch_bulk(p + (l << 7), (u32)((stop < end ? stop : end) - (l << 7)), bulk);
                }
                return;
            }
        #endif
            for (u64 l = first + threadIdx.x; l < last; l += blockDim.x) prefetch_line(p + (l << 7));
        }

        __device__ __forceinline__ float warp_sum(float v) {
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            return v;
        }

        __device__ __forceinline__ u32 warp_min_u32(u32 v) {
            for (int o = 16; o > 0; o >>= 1) {
                u32 other = __shfl_xor_sync(0xffffffffu, v, o);
                v = other < v ? other : v;
            }
            return v;
        }

        __device__ __forceinline__ u32 warp_max_u32(u32 v) {
            for (int o = 16; o > 0; o >>= 1) {
                u32 other = __shfl_xor_sync(0xffffffffu, v, o);
                v = other > v ? other : v;
            }
            return v;
        }

        // Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
        __device__ float block_sum(float v) {
            __shared__ float partial[32];
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            v = warp_sum(v);
            __syncthreads();
            if (lane == 0) partial[warp] = v;
            __syncthreads();
            int warps = (blockDim.x + 31) >> 5;
            v = (threadIdx.x < warps) ? partial[threadIdx.x] : 0.0f;
            if (warp == 0) v = warp_sum(v);
            if (threadIdx.x == 0) partial[0] = v;
            __syncthreads();
            float result = partial[0];
            __syncthreads();  // partial may be reused by the next call
            return result;
        }

        __device__ float block_max(float v) {
            __shared__ float partial[32];
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
            __syncthreads();
            if (lane == 0) partial[warp] = v;
            __syncthreads();
            int warps = (blockDim.x + 31) >> 5;
            v = (threadIdx.x < warps) ? partial[threadIdx.x] : NEG_INF;
            if (warp == 0)
                for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
            if (threadIdx.x == 0) partial[0] = v;
            __syncthreads();
            float result = partial[0];
            __syncthreads();
            return result;
        }

        // out[t, :] = table[ids[t], :] * scale. Grid: tokens.
        __device__ __forceinline__ void embed_row(const bf16* table, int id, float* out, int hidden, float scale) {
            const bf16* row = table + (u64)id * hidden;
            float* o = out + (u64)blockIdx.x * hidden;
            for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = bf16_to_f32(row[i]) * scale;
        }
        extern "C" __global__ void embed_rows(const bf16* table, const int* ids, float* out, int hidden, float scale) {
            grid_release();
            grid_wait();
            embed_row(table, ids[blockIdx.x], out, hidden, scale);
        }

        // embed_rows for the tokens a step before drew on the device (a pipelined decode step, whose
        // inputs the host has not read yet): out[t, :] = table[ids[rows[t]], :] * scale. Grid: tokens.
        extern "C" __global__ void embed_drawn(const bf16* table, const int* ids, const int* rows, float* out, int hidden,
                                               float scale) {
            grid_release();
            grid_wait();
            embed_row(table, ids[rows[blockIdx.x]], out, hidden, scale);
        }

        // out[r, :] = x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * w, w holding Gemma's 1 + w. Grid: rows
        // (tokens, or tokens x heads for the q/k norms, whose weight is per head dimension). out may be x.
        extern "C" __global__ void __launch_bounds__(1024) rms_norm(const float* x, const float* w, float* out, int n, float eps) {
            grid_release();
            grid_wait();
            const float* xr = x + (u64)blockIdx.x * n;
            float* orow = out + (u64)blockIdx.x * n;
            float s = 0.0f;
            for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
            float inv = rsqrtf(block_sum(s) / n + eps);
            for (int i = threadIdx.x; i < n; i += blockDim.x) orow[i] = (xr[i] * inv) * w[i];
        }

        // residual[r, :] = source[r, :] + x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * w: Gemma's
        // post-attention and post-feedforward norms with the residual add that follows them (source
        // may be residual: in place). Grid: rows.
        extern "C" __global__ void __launch_bounds__(1024) rms_norm_add(const float* x, const float* w, const float* source,
                                                                       float* residual, int n, float eps) {
            grid_release();
            grid_wait();
            const float* xr = x + (u64)blockIdx.x * n;
            const float* sr = source + (u64)blockIdx.x * n;
            float* rr = residual + (u64)blockIdx.x * n;
            float s = 0.0f;
            for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
            float inv = rsqrtf(block_sum(s) / n + eps);
            for (int i = threadIdx.x; i < n; i += blockDim.x) rr[i] = sr[i] + (xr[i] * inv) * w[i];
        }

        // A block's post norm, its residual add and the next block's input norm for one row of n columns,
        // over the block's threads (thread i holds columns i, i + blockDim.x, ..., at most NORM_PER_THREAD):
        // rv = residual + x * rsqrt(mean(x^2) + eps) * w, then ov = rv * rsqrt(mean(rv^2) + eps) * next.
        // wv and nv hold the norm weights' columns (norm_weights: loaded before grid_wait, since no step
        // writes them); x and the residual are loaded at once (a decode step's norm is a chain of load
        // latencies). rms_norm_add_norm and the gemv kernels that fuse the norm share it, so a row's
        // normed values are the same bits either way for the same block size (the backend gives
        // rms_norm_add_norm the gemv kernels' 256 threads up to NORM_FUSED_MAX columns).
        #define NORM_PER_THREAD 8
        #define NORM_FUSED_MAX (256 * NORM_PER_THREAD)
        __device__ __forceinline__ void norm_weights(const float* w, const float* next, int n, float* wv, float* nv) {
            for (int j = 0; j < NORM_PER_THREAD; j++) {
                int i = threadIdx.x + j * blockDim.x;
                wv[j] = i < n ? w[i] : 0.0f;
                nv[j] = i < n ? next[i] : 0.0f;
            }
        }
        __device__ __forceinline__ void residual_norm(const float* xr, const float* rr, const float* wv, const float* nv, int n,
                                                      float eps, float* rv, float* ov) {
            float xv[NORM_PER_THREAD];
            for (int j = 0; j < NORM_PER_THREAD; j++) {
                int i = threadIdx.x + j * blockDim.x;
                xv[j] = i < n ? xr[i] : 0.0f;
                rv[j] = i < n ? rr[i] : 0.0f;
            }
            float s = 0.0f;
            for (int j = 0; j < NORM_PER_THREAD; j++) s += xv[j] * xv[j];
            float inv = rsqrtf(block_sum(s) / n + eps);
            float s2 = 0.0f;
            for (int j = 0; j < NORM_PER_THREAD; j++) {
                rv[j] = rv[j] + (xv[j] * inv) * wv[j];
                s2 += rv[j] * rv[j];
            }
            float inv2 = rsqrtf(block_sum(s2) / n + eps);
            for (int j = 0; j < NORM_PER_THREAD; j++) ov[j] = (rv[j] * inv2) * nv[j];
        }

        // rms_norm_add, then out[r, :] = the new residual[r, :] * rsqrt(mean(residual[r, :]^2) + eps) * next:
        // a block's post norm and residual add with the next block's input norm, one launch instead of
        // two. Each thread keeps its own columns in registers throughout, so out may be x.
        // n <= NORM_PER_THREAD * blockDim.x. Grid: rows.
        extern "C" __global__ void __launch_bounds__(1024) rms_norm_add_norm(const float* x, const float* w, const float* source,
                                                                            float* residual, const float* next, float* out, int n,
                                                                            float eps) {
            grid_release();
            float wv[NORM_PER_THREAD], nv[NORM_PER_THREAD], rv[NORM_PER_THREAD], ov[NORM_PER_THREAD];
            norm_weights(w, next, n, wv, nv);
            grid_wait();
            float* rr = residual + (u64)blockIdx.x * n;
            float* orow = out + (u64)blockIdx.x * n;
            residual_norm(x + (u64)blockIdx.x * n, source + (u64)blockIdx.x * n, wv, nv, n, eps, rv, ov);
            for (int j = 0; j < NORM_PER_THREAD; j++) {
                int i = threadIdx.x + j * blockDim.x;
                if (i < n) {
                    rr[i] = rv[j];
                    orow[i] = ov[j];
                }
            }
        }

        // The residual norm of a one-token gemv launch (gemv_norm_bf16, gemv_gelu_norm_bf16), which saves
        // a decode step of one sequence the norm's own launch: every block computes the row's norm
        // itself, into xs (shared memory) for its rows to read, from x and the residual before the add
        // (`source`). Where the new residual goes over `source`, or the normed row over x, a block
        // could write what another has yet to read: then only the last block to have read them,
        // counted on `ticket` (a zeroed word, zeroed again by that block), writes the new residual
        // and the normed row. Its count comes after block_sum's barriers, which every thread reaches
        // only with its loads of x and the residual returned. Otherwise (ticket null) block 0 writes
        // them at once (the model keeps the residual in two buffers and the products' outputs apart
        // from the normed row, so that no block waits on the count). n <= NORM_FUSED_MAX; the
        // launch's blocks take 256 threads.
        struct ResidualNorm {
            const float* w; const float* next; const float* source; float* residual; float* normed; float eps; u32* ticket;
        };
        __device__ __forceinline__ void fused_residual_norm(const float* x, const ResidualNorm& norm, const float* wv,
                                                            const float* nv, int n, float* xs) {
            __shared__ int last;
            float rv[NORM_PER_THREAD], ov[NORM_PER_THREAD];
            residual_norm(x, norm.source, wv, nv, n, norm.eps, rv, ov);
            for (int j = 0; j < NORM_PER_THREAD; j++) {
                int i = threadIdx.x + j * blockDim.x;
                if (i < n) xs[i] = ov[j];
            }
            // The fences order this block's reads before its count, and the last block's count before
            // its writes, for the whole GPU (the barrier alone orders them within the block). No
            // ticket: no block of the launch reads what it writes (the residual read from `source`,
            // written elsewhere; the normed row not x), and block 0 writes them at once.
            if (threadIdx.x == 0) {
                if (norm.ticket) {
                    __threadfence();
                    last = atomicAdd(norm.ticket, 1u) == gridDim.x - 1;
                    __threadfence();
                } else {
                    last = blockIdx.x == 0;
                }
            }
            __syncthreads();  // xs and last, for every thread
            if (last) {
                for (int j = 0; j < NORM_PER_THREAD; j++) {
                    int i = threadIdx.x + j * blockDim.x;
                    if (i < n) {
                        norm.residual[i] = rv[j];
                        norm.normed[i] = ov[j];
                    }
                }
                if (threadIdx.x == 0 && norm.ticket) *norm.ticket = 0u;
            }
        }

        // The 8 bf16 of a 16-byte run of a weight row, widened.
        __device__ __forceinline__ void unpack8(uint4 packed, float* w) {
            u32 words[4] = {packed.x, packed.y, packed.z, packed.w};
            for (int j = 0; j < 4; j++) {
                w[2 * j] = __uint_as_float(words[j] << 16);
                w[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
            }
        }

        // w . (u, v): one expression for every gemv, so a row's sum is the same in each kernel.
        __device__ __forceinline__ float dot8(const float* w, float4 u, float4 v) {
            return w[0] * u.x + w[1] * u.y + w[2] * u.z + w[3] * u.w + w[4] * v.x + w[5] * v.y + w[6] * v.z + w[7] * v.w;
        }

        // One 16-byte run of a weight row (8 bf16, chunk c) times the same 8 columns of each token's x.
        #define GEMV_MAX_TOKENS 16
        template <int T>
        __device__ __forceinline__ void gemv_chunk(uint4 packed, const float* x, int k, int c, int tokens, float* acc) {
            float w[8];
            unpack8(packed, w);
            for (int t = 0; t < T; t++) {
                if (t < tokens) {
                    const float4* xv = (const float4*)(x + (u64)t * k + 8 * c);
                    acc[t] += dot8(w, xv[0], xv[1]);
                }
            }
        }

        // The lines of one weight row that gemv_part (or gemv_part2) will read for this warp part,
        // asked of L2 before grid_wait: one lane in 8 (8 lanes' 16-byte loads share a line).
        __device__ __forceinline__ void gemv_prefetch(const bf16* row, int k, int splits, int part) {
            const uint4* wr = (const uint4*)row;
            int chunks = k >> 3, stride = 32 * splits, lane = threadIdx.x & 31;
            if (lane & 7) return;
            for (int c = part * 32 + lane; c < chunks; c += stride) prefetch_l2(wr + c);
        }

        // This warp's part of one weight row (k bf16) times each token's x, added to acc: every
        // splits-th run of 32 chunks of 8 bf16 (16 bytes a lane), four loads in flight per lane
        // before any arithmetic (one warp per row waiting on one 16-byte load at a time left a
        // decode step nothing but waits).
        template <int T>
        __device__ __forceinline__ void gemv_part(const bf16* row, const float* x, int k, int tokens, int splits, int part,
                                                  float* acc) {
            const uint4* wr = (const uint4*)row;
            int chunks = k >> 3, stride = 32 * splits, c = part * 32 + (threadIdx.x & 31);
            for (; c + 3 * stride < chunks; c += 4 * stride) {
                uint4 p0 = wr[c], p1 = wr[c + stride], p2 = wr[c + 2 * stride], p3 = wr[c + 3 * stride];
                gemv_chunk<T>(p0, x, k, c, tokens, acc);
                gemv_chunk<T>(p1, x, k, c + stride, tokens, acc);
                gemv_chunk<T>(p2, x, k, c + 2 * stride, tokens, acc);
                gemv_chunk<T>(p3, x, k, c + 3 * stride, tokens, acc);
            }
            for (; c < chunks; c += stride) gemv_chunk<T>(wr[c], x, k, c, tokens, acc);
        }

        // gemv_chunk for the same chunk of two rows: each x value loaded once for both (a step of
        // several tokens is bound by these loads, not by the weights).
        template <int T>
        __device__ __forceinline__ void gemv_chunk2(uint4 pa, uint4 pb, const float* x, int k, int c, int tokens, float* a,
                                                    float* b) {
            float wa[8], wb[8];
            unpack8(pa, wa);
            unpack8(pb, wb);
            for (int t = 0; t < T; t++) {
                if (t < tokens) {
                    const float4* xv = (const float4*)(x + (u64)t * k + 8 * c);
                    float4 u = xv[0], v = xv[1];
                    a[t] += dot8(wa, u, v);
                    b[t] += dot8(wb, u, v);
                }
            }
        }

        // gemv_part for two rows at once, the chunks of each row taken in the same order as
        // gemv_part takes them, so each row's sum is the same bit for bit.
        template <int T>
        __device__ __forceinline__ void gemv_part2(const bf16* rowA, const bf16* rowB, const float* x, int k, int tokens,
                                                   int splits, int part, float* a, float* b) {
            const uint4* wa = (const uint4*)rowA;
            const uint4* wb = (const uint4*)rowB;
            int chunks = k >> 3, stride = 32 * splits, c = part * 32 + (threadIdx.x & 31);
            for (; c + stride < chunks; c += 2 * stride) {
                uint4 a0 = wa[c], b0 = wb[c], a1 = wa[c + stride], b1 = wb[c + stride];
                gemv_chunk2<T>(a0, b0, x, k, c, tokens, a, b);
                gemv_chunk2<T>(a1, b1, x, k, c + stride, tokens, a, b);
            }
            for (; c < chunks; c += stride) gemv_chunk2<T>(wa[c], wb[c], x, k, c, tokens, a, b);
        }

        // The rows' totals: warp w holds part w % splits of the block's row w / splits; lane t of each
        // row's first warp gets token t's sum of the parts, added in order (so a result does not
        // depend on which warp finished first); other lanes get 0. Every thread of the block calls it.
        template <int T>
        __device__ __forceinline__ float gemv_total(const float* acc, int tokens, int splits) {
            __shared__ float partial[8][T];
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            if (splits == 1) {
                // A warp holds whole rows: no parts to meet, no barrier (the same for the whole block).
                float mine = 0.0f;
                for (int t = 0; t < T; t++) {
                    if (t < tokens) {
                        float s = warp_sum(acc[t]);
                        if (lane == t) mine = s;
                    }
                }
                return mine;
            }
            for (int t = 0; t < T; t++) {
                if (t < tokens) {
                    float s = warp_sum(acc[t]);
                    if (lane == 0) partial[warp][t] = s;
                }
            }
            __syncthreads();
            float s = 0.0f;
            if (warp % splits == 0 && lane < tokens)
                for (int j = 0; j < splits; j++) s += partial[warp + j][lane];
            __syncthreads();  // partial is used again by the next call
            return s;
        }

        // Row r of a launch over up to three matrices of the same k (a layer's query, key and value
        // projections), counted across them: row r of w0, then of w1, then of w2. Sets the matrix, its
        // output and rows, and the row within it (>= m past the last matrix).
        __device__ __forceinline__ void gemv_locate(int r, const bf16* w0, const bf16* w1, const bf16* w2, float* o0,
                                                    float* o1, float* o2, int m0, int m1, int m2, const bf16*& w,
                                                    float*& out, int& m, int& row) {
            w = w0; out = o0; m = m0; row = r;
            if (row >= m0) {
                row -= m0; w = w1; out = o1; m = m1;
                if (row >= m1) { row -= m1; w = w2; out = o2; m = m2; }
            }
        }

        // The rows block b of a one-row-per-warp-part gemv takes (gemv_rows), asked of L2.
        __device__ __forceinline__ void gemv_rows_prefetch(const bf16* w0, const bf16* w1, const bf16* w2, int m0, int m1,
                                                           int m2, int k, int splits, int b) {
            int warp = threadIdx.x >> 5;
            const bf16* w;
            float* out;
            int m, r;
            gemv_locate(b * (8 / splits) + warp / splits, w0, w1, w2, 0, 0, 0, m0, m1, m2, w, out, m, r);
            if (r < m) gemv_prefetch(w + (u64)r * k, k, splits, warp % splits);
        }

        // Block b's rows of gemv_rows once x is there: 8 / splits rows, `splits` warps to a row.
        template <int T>
        __device__ __forceinline__ void gemv_rows_block(const bf16* w0, const bf16* w1, const bf16* w2, float* o0, float* o1,
                                                        float* o2, int m0, int m1, int m2, const float* x, int k, int tokens,
                                                        int splits, int b) {
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            const bf16* w;
            float* out;
            int m, r;
            gemv_locate(b * (8 / splits) + warp / splits, w0, w1, w2, o0, o1, o2, m0, m1, m2, w, out, m, r);
            float acc[T];
            for (int t = 0; t < T; t++) acc[t] = 0.0f;
            if (r < m) gemv_part<T>(w + (u64)r * k, x, k, tokens, splits, warp % splits, acc);
            float s = gemv_total<T>(acc, tokens, splits);
            if (warp % splits == 0 && r < m && lane < tokens) out[(u64)lane * m + r] = s;
        }

        // grid_wait, then the x a gemv reads: x itself, or (NORM) the normed row of x after `norm`, which
        // fused_residual_norm leaves in shared memory (float4: the chunks' 16-byte loads); the norm's
        // weights are loaded before the wait (no step writes them).
        template <bool NORM>
        __device__ __forceinline__ const float* wait_for_x(const float* x, const ResidualNorm& norm, int k) {
            if constexpr (NORM) {
                __shared__ float4 normed[NORM_FUSED_MAX / 4];
                float wv[NORM_PER_THREAD], nv[NORM_PER_THREAD];
                norm_weights(norm.w, norm.next, k, wv, nv);
                grid_wait();
                fused_residual_norm(x, norm, wv, nv, k, (float*)normed);
                return (const float*)normed;
            } else {
                grid_wait();
                return x;
            }
        }

        // One row per warp part (a step of one token: as many warps as possible). NORM: x is the row
        // before `norm` (fused_residual_norm), and the product reads its normed values.
        template <int T, bool NORM>
        __device__ __forceinline__ void gemv_rows(const bf16* w0, const bf16* w1, const bf16* w2, float* o0, float* o1,
                                                  float* o2, int m0, int m1, int m2, const float* x, int k, int tokens,
                                                  int splits, const ResidualNorm& norm) {
            grid_release();
            gemv_rows_prefetch(w0, w1, w2, m0, m1, m2, k, splits, blockIdx.x);
            x = wait_for_x<NORM>(x, norm, k);
            gemv_rows_block<T>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, tokens, splits, blockIdx.x);
        }

        // Two rows per warp part (a step of several tokens: each x value loaded once for both).
        template <int T>
        __device__ __forceinline__ void gemv_pairs(const bf16* w0, const bf16* w1, const bf16* w2, float* o0, float* o1,
                                                   float* o2, int m0, int m1, int m2, const float* x, int k, int tokens,
                                                   int splits) {
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            int first = 2 * (blockIdx.x * (8 / splits) + warp / splits);
            const bf16 *wa, *wb;
            float *oa, *ob;
            int ma, mb, ra, rb;
            gemv_locate(first, w0, w1, w2, o0, o1, o2, m0, m1, m2, wa, oa, ma, ra);
            gemv_locate(first + 1, w0, w1, w2, o0, o1, o2, m0, m1, m2, wb, ob, mb, rb);
            // No prefetch: with several tokens the kernel is bound by its activation loads, and asking
            // L2 for the weights first made it slower (1B, 16 tokens, H100: down 49 -> 58 us).
            grid_release();
            grid_wait();
            float a[T], b[T];
            for (int t = 0; t < T; t++) { a[t] = 0.0f; b[t] = 0.0f; }
            if (ra < ma && rb < mb) gemv_part2<T>(wa + (u64)ra * k, wb + (u64)rb * k, x, k, tokens, splits, warp % splits, a, b);
            else if (ra < ma) gemv_part<T>(wa + (u64)ra * k, x, k, tokens, splits, warp % splits, a);
            float sa = gemv_total<T>(a, tokens, splits);
            float sb = gemv_total<T>(b, tokens, splits);
            if (warp % splits == 0 && lane < tokens) {
                if (ra < ma) oa[(u64)lane * ma + ra] = sa;
                if (rb < mb) ob[(u64)lane * mb + rb] = sb;
            }
        }

        // out_i[t, r] = w_i[r, :] . x[t, :] for up to three matrices (m1 = m2 = 0 for one), each weight
        // read once for all tokens; x stays f32. gemv_bf16 takes one token, a row per warp part;
        // gemv_pairs_bf16 up to 16, two rows per warp part (a kernel of its own: its registers
        // would lower the one-token kernel's occupancy). A block's 8 warps take 8 / splits rows (or
        // pairs), `splits` warps to a row, so that rows few and long (the down projection: 1152 rows
        // of 6912) still give the GPU enough loads in flight. splits: 1, 2, 4 or 8, chosen from the
        // shape alone, and both kernels take each row's chunks in the same order, so a token's sum
        // is the same whatever the batch. k a multiple of 8. Grid: ceil((m0 + m1 + m2) * splits / 8)
        // for gemv_bf16, / 16 for gemv_pairs_bf16; block: 256.
        extern "C" __global__ void __launch_bounds__(256) gemv_bf16(const bf16* w0, const bf16* w1, const bf16* w2,
                                                                   float* o0, float* o1, float* o2, int m0, int m1,
                                                                   int m2, const float* x, int k, int tokens, int splits) {
            gemv_rows<1, false>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, 1, splits, ResidualNorm{});
        }

        // gemv_bf16 after rms_norm_add_norm's work on x (one row of k columns, k <= NORM_FUSED_MAX): the
        // new residual and normed row are written as that kernel writes them, and the product reads
        // the normed row. A decode step of one sequence: the norm's launch is saved. gemv_bf16's
        // arguments (tokens is 1), then the norm's.
        extern "C" __global__ void __launch_bounds__(256) gemv_norm_bf16(const bf16* w0, const bf16* w1, const bf16* w2,
                                                                        float* o0, float* o1, float* o2, int m0, int m1,
                                                                        int m2, const float* x, int k, int tokens, int splits,
                                                                        const float* w, const float* next, const float* source, float* residual,
                                                                        float* normed, float eps, u32* ticket) {
            gemv_rows<1, true>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, 1, splits,
                               ResidualNorm{w, next, source, residual, normed, eps, ticket});
        }

        extern "C" __global__ void __launch_bounds__(256) gemv_pairs_bf16(const bf16* w0, const bf16* w1, const bf16* w2,
                                                                         float* o0, float* o1, float* o2, int m0, int m1,
                                                                         int m2, const float* x, int k, int tokens,
                                                                         int splits) {
            if (tokens <= 4) gemv_pairs<4>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, tokens, splits);
            else if (tokens <= 8) gemv_pairs<8>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, tokens, splits);
            else gemv_pairs<GEMV_MAX_TOKENS>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, tokens, splits);
        }

        // GELU (tanh approximation) of g, times u: the MLP's gate.
        __device__ __forceinline__ float gelu_tanh_times(float g, float u) {
            float v = 0.7978845608028654f * (g + 0.044715f * g * g * g);
            return g / (1.0f + expf(-2.0f * v)) * u;
        }

        // The rows of group g (8 / splits rows, `splits` warps to a row) of gate and up, asked of L2.
        __device__ __forceinline__ void gemv_gelu_prefetch(const bf16* gate, const bf16* up, int m, int k, int splits, int g) {
            int warp = threadIdx.x >> 5, r = g * (8 / splits) + warp / splits;
            if (r < m) {
                gemv_prefetch(gate + (u64)r * k, k, splits, warp % splits);
                gemv_prefetch(up + (u64)r * k, k, splits, warp % splits);
            }
        }

        // Group g's rows of out = gelu_tanh(gate . x) * (up . x), once x is there.
        template <int T>
        __device__ __forceinline__ void gemv_gelu_group(const bf16* gate, const bf16* up, const float* x, float* out, int m,
                                                        int k, int tokens, int splits, int g) {
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = g * (8 / splits) + warp / splits;
            float gv[T], uv[T];
            for (int t = 0; t < T; t++) { gv[t] = 0.0f; uv[t] = 0.0f; }
            if (r < m) gemv_part2<T>(gate + (u64)r * k, up + (u64)r * k, x, k, tokens, splits, warp % splits, gv, uv);
            float gs = gemv_total<T>(gv, tokens, splits);
            float us = gemv_total<T>(uv, tokens, splits);
            if (warp % splits == 0 && r < m && lane < tokens) out[(u64)lane * m + r] = gelu_tanh_times(gs, us);
        }

        // GROUPS: how many groups of 8 / splits rows a block takes, one after another (the rows of
        // group j are those a block of the one-group grid numbered blockIdx.x * GROUPS + j takes), so
        // that each row's sums are the same whatever GROUPS is. Every group's rows are asked of L2
        // before the wait.
        template <int T, bool NORM, int GROUPS>
        __device__ __forceinline__ void gemv_gelu_rows(const bf16* gate, const bf16* up, const float* x, float* out, int m,
                                                       int k, int tokens, int splits, const ResidualNorm& norm) {
            grid_release();
            if (tokens == 1)  // one token only, as in gemv_pairs
                for (int j = 0; j < GROUPS; j++) gemv_gelu_prefetch(gate, up, m, k, splits, blockIdx.x * GROUPS + j);
            x = wait_for_x<NORM>(x, norm, k);
            for (int j = 0; j < GROUPS; j++) gemv_gelu_group<T>(gate, up, x, out, m, k, tokens, splits, blockIdx.x * GROUPS + j);
        }

        // The MLP's first half in one pass: out[t, r] = gelu_tanh(gate[r, :] . x[t, :]) * (up[r, :] . x[t, :]),
        // a warp (or `splits` warps) taking row r of both matrices, each x value loaded once for both;
        // sums as gemv_bf16's. Grid: ceil(m * splits / 8); block: 256.
        extern "C" __global__ void __launch_bounds__(256) gemv_gelu_bf16(const bf16* gate, const bf16* up, const float* x,
                                                                        float* out, int m, int k, int tokens, int splits) {
            ResidualNorm none{};
            if (tokens == 1) gemv_gelu_rows<1, false, 1>(gate, up, x, out, m, k, tokens, splits, none);
            else if (tokens <= 4) gemv_gelu_rows<4, false, 1>(gate, up, x, out, m, k, tokens, splits, none);
            else if (tokens <= 8) gemv_gelu_rows<8, false, 1>(gate, up, x, out, m, k, tokens, splits, none);
            else gemv_gelu_rows<GEMV_MAX_TOKENS, false, 1>(gate, up, x, out, m, k, tokens, splits, none);
        }

        // gemv_gelu_bf16 of one token after rms_norm_add_norm's work on x, as gemv_norm_bf16, each
        // block taking two groups of rows (grid: ceil(m * splits / 16)) in at most 64 registers (4
        // blocks an SM), so that the whole grid is resident at once and asks L2 for its rows while
        // the launch before drains: at 77 registers, 3 blocks an SM took the 1B's 864 blocks in
        // 2.2 waves (Nsight Compute on an H100: 38% of DRAM bandwidth). At 64 registers, one group a
        // block was within 0.025 ms a 1B step of two (either faster in one of two sweeps on an H100),
        // three or more 0.1 ms slower; the one-token products (gemv_rows) with two or four groups a
        // block were 0.19 and 0.6 ms slower, and every product without its L2 prefetch 0.05-0.09 ms.
        #define GELU_NORM_GROUPS 2
        extern "C" __global__ void __launch_bounds__(256, 4) gemv_gelu_norm_bf16(const bf16* gate, const bf16* up, const float* x,
                                                                                float* out, int m, int k, int splits,
                                                                                const float* w, const float* next,
                                                                                const float* source, float* residual,
                                                                                float* normed, float eps, u32* ticket) {
            gemv_gelu_rows<1, true, GELU_NORM_GROUPS>(gate, up, x, out, m, k, 1, splits,
                                                      ResidualNorm{w, next, source, residual, normed, eps, ticket});
        }

        // Staged weights (one-token products whose whole grid the GPU holds at once): before grid_wait
        // each thread copies the chunks of its weight row it will take into shared memory (cp.async: no
        // registers held while they come) instead of only asking L2 for their lines, so that once x is
        // there the product reads shared memory rather than going to L2 in several round trips. Lane
        // private: the i-th chunk a thread takes is at stage[i * 256 + threadIdx.x], written and read by
        // that thread alone (cp.async.wait_all, no block barrier). Up to `most` chunks are staged; the
        // lines of the rest are asked of L2 (gemv_prefetch's lanes) and read as gemv_part reads them.
        // The chunks are taken in gemv_part's order, so each sum is the same bits as gemv_bf16's.
        #define STAGE_CHUNKS 8
        __device__ __forceinline__ void stage_part(uint4* stage, const bf16* row, int k, int splits, int part, int most) {
            const uint4* wr = (const uint4*)row;
            int chunks = k >> 3, stride = 32 * splits, lane = threadIdx.x & 31, c = part * 32 + lane;
            for (int i = 0; i < most && c < chunks; i++, c += stride) copy16_to_shared(stage + i * 256 + threadIdx.x, wr + c);
            if (lane & 7) return;
            for (; c < chunks; c += stride) prefetch_l2(wr + c);
        }

        // gemv_part of one token over a row stage_part staged (with the same `most`), once its copies are done.
        __device__ __forceinline__ void gemv_part_staged(const uint4* stage, const bf16* row, const float* x, int k,
                                                         int splits, int part, int most, float* acc) {
            const uint4* wr = (const uint4*)row;
            int chunks = k >> 3, stride = 32 * splits, c = part * 32 + (threadIdx.x & 31);
            for (int i = 0; i < most && c < chunks; i++, c += stride) gemv_chunk<1>(stage[i * 256 + threadIdx.x], x, k, c, 1, acc);
            for (; c < chunks; c += stride) gemv_chunk<1>(wr[c], x, k, c, 1, acc);
        }

        // gemv_rows of one token with its weights staged: gemv_bf16's (NORM: gemv_norm_bf16's) results.
        template <bool NORM>
        __device__ __forceinline__ void gemv_rows_staged(const bf16* w0, const bf16* w1, const bf16* w2, float* o0, float* o1,
                                                         float* o2, int m0, int m1, int m2, const float* x, int k,
                                                         int splits, const ResidualNorm& norm) {
            __shared__ uint4 stage[STAGE_CHUNKS * 256];
            grid_release();
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            const bf16* w;
            float* out;
            int m, r;
            gemv_locate(blockIdx.x * (8 / splits) + warp / splits, w0, w1, w2, o0, o1, o2, m0, m1, m2, w, out, m, r);
            if (r < m) stage_part(stage, w + (u64)r * k, k, splits, warp % splits, STAGE_CHUNKS);
            x = wait_for_x<NORM>(x, norm, k);
            copies_to_shared_done();
            float acc[1] = {0.0f};
            if (r < m) gemv_part_staged(stage, w + (u64)r * k, x, k, splits, warp % splits, STAGE_CHUNKS, acc);
            float s = gemv_total<1>(acc, 1, splits);
            if (warp % splits == 0 && r < m && lane == 0) out[r] = s;
        }

        // gemv_bf16 and gemv_norm_bf16 (one token) with staged weights: the same arguments and grid.
        extern "C" __global__ void __launch_bounds__(256) gemv_staged_bf16(const bf16* w0, const bf16* w1, const bf16* w2,
                                                                          float* o0, float* o1, float* o2, int m0, int m1,
                                                                          int m2, const float* x, int k, int tokens,
                                                                          int splits) {
            gemv_rows_staged<false>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, splits, ResidualNorm{});
        }
        extern "C" __global__ void __launch_bounds__(256) gemv_norm_staged_bf16(const bf16* w0, const bf16* w1, const bf16* w2,
                                                                               float* o0, float* o1, float* o2, int m0,
                                                                               int m1, int m2, const float* x, int k,
                                                                               int tokens, int splits, const float* w,
                                                                               const float* next, const float* source, float* residual,
                                                                               float* normed, float eps, u32* ticket) {
            gemv_rows_staged<true>(w0, w1, w2, o0, o1, o2, m0, m1, m2, x, k, splits,
                                   ResidualNorm{w, next, source, residual, normed, eps, ticket});
        }

        // gemv_gelu_norm_bf16 with gate's and up's rows streamed through shared memory. A thread's
        // items are the 16-byte chunks it takes of its rows, group by group, gate's and up's chunk c
        // in turn (gemv_part2's order: the same bits); they pass through a ring of GELU_RING slots of
        // its own (slot s at ring[s * 256 + threadIdx.x]) by cp.async, GELU_RING copies in flight from
        // before the wait to the end: the first GELU_RING copied while the kernel before runs (the
        // lines of the rest asked of L2), and each item taken replaced at once by the one GELU_RING
        // later. After the wait a thread then waits on a round trip about once every GELU_RING
        // chunks, where gemv_part2 waits on every four loads and the group's tail (three round trips
        // a group for the 1B's rows of 144 chunks). The same arguments, grid and bits.
        #define GELU_RING 8
        // The next item's copy is one group of this thread's cp.async copies (empty past its items:
        // the count of groups stays one an item), and the wait for all but the N latest groups.
        __device__ __forceinline__ void copies_commit() {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
            asm volatile("cp.async.commit_group;" ::: "memory");
        #elif defined(CUDA_EMULATOR)
            emu_copies_commit();
        #endif
        }
        template <int N>
        __device__ __forceinline__ void copies_pending_at_most() {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
            asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
        #elif defined(CUDA_EMULATOR)
            emu_copies_wait(N);
        #endif
        }
        // An item of a thread of gemv_gelu_norm_staged_bf16: its block's group g, its i-th chunk of the
        // row, gate's (u 0) or up's (u 1); stepped through in order without a division (per item,
        // divisions by n would cost more instructions than the chunk's arithmetic).
        struct GeluItem { int g, i, u; };
        __device__ __forceinline__ void gelu_next(GeluItem& t, int n) {
            if (t.u) {
                t.u = 0;
                if (++t.i == n) { t.i = 0; t.g++; }
            } else {
                t.u = 1;
            }
        }
        // Item t's chunk c of its row of gate or up (the warp's row `row` in the block's first group,
        // `rows` rows a group; the lane's first chunk `column`), or null past m or the row's end.
        __device__ __forceinline__ const uint4* gelu_item(const bf16* gate, const bf16* up, int m, int k, int stride, int row,
                                                          int rows, int column, GeluItem t, int& c) {
            int r = row + t.g * rows;
            c = column + t.i * stride;
            if (r >= m || c >= (k >> 3)) return 0;
            return (const uint4*)((t.u ? up : gate) + (u64)r * k) + c;
        }
        extern "C" __global__ void __launch_bounds__(256, 4) gemv_gelu_norm_staged_bf16(const bf16* gate, const bf16* up,
                                                                                       const float* x, float* out, int m,
                                                                                       int k, int splits, const float* w,
                                                                                       const float* next, const float* source,
                                                                                       float* residual, float* normed,
                                                                                       float eps, u32* ticket) {
            __shared__ uint4 ring[GELU_RING * 256];
            grid_release();
            int warp = threadIdx.x >> 5, rows = 8 / splits, stride = 32 * splits, n = ((k >> 3) + stride - 1) / stride;
            int row = blockIdx.x * GELU_NORM_GROUPS * rows + warp / splits, column = (warp % splits) * 32 + (threadIdx.x & 31);
            int items = GELU_NORM_GROUPS * 2 * n, c;
            GeluItem ahead = {0, 0, 0};  // the next item to copy
            for (int j = 0; j < GELU_RING; j++, gelu_next(ahead, n)) {
                const uint4* p = j < items ? gelu_item(gate, up, m, k, stride, row, rows, column, ahead, c) : 0;
                if (p) copy16_to_shared(ring + j * 256 + threadIdx.x, p);
                copies_commit();
            }
            if ((threadIdx.x & 7) == 0) {
                GeluItem t = ahead;
                for (int j = GELU_RING; j < items; j++, gelu_next(t, n)) {
                    const uint4* p = gelu_item(gate, up, m, k, stride, row, rows, column, t, c);
                    if (p) prefetch_l2(p);
                }
            }
            x = wait_for_x<true>(x, ResidualNorm{w, next, source, residual, normed, eps, ticket}, k);
            float gv[1] = {0.0f}, uv[1] = {0.0f};
            GeluItem now = {0, 0, 0};
            for (int j = 0; j < items; j++, gelu_next(now, n), gelu_next(ahead, n)) {
                copies_pending_at_most<GELU_RING - 1>();  // item j's copy is there
                uint4* slot = ring + (j % GELU_RING) * 256 + threadIdx.x;
                int r = row + now.g * rows, chunk = column + now.i * stride;  // item j's (gelu_item's r and c)
                if (r < m && chunk < (k >> 3)) {
                    if (now.u) gemv_chunk<1>(*slot, x, k, chunk, 1, uv);
                    else gemv_chunk<1>(*slot, x, k, chunk, 1, gv);
                }
                // The slot's chunk is in this thread's sums before its next copy is asked for.
                const uint4* p = j + GELU_RING < items ? gelu_item(gate, up, m, k, stride, row, rows, column, ahead, c) : 0;
                if (p) copy16_to_shared(slot, p);
                copies_commit();
                if (now.u && now.i == n - 1) {  // the group's last item: its rows' totals, as gemv_gelu_group's
                    float gs = gemv_total<1>(gv, 1, splits);
                    float us = gemv_total<1>(uv, 1, splits);
                    if (warp % splits == 0 && r < m && (threadIdx.x & 31) == 0) out[r] = gelu_tanh_times(gs, us);
                    gv[0] = 0.0f;
                    uv[0] = 0.0f;
                }
            }
        }

        // out[t, r] = w[r, :] . x[t, :] for many tokens (prefill without cuBLAS): 64 weight rows × 64
        // tokens per block, 32 columns at a time through shared memory (the weights widened to f32),
        // each thread 4 × 4 outputs; so a weight is read once per 64 tokens instead of once per 16.
        // k a multiple of 32. Grid: (ceil(m / 64), ceil(tokens / 64)); block: 256.
        #define GEMM_TILE 64
        #define GEMM_DEPTH 32
        extern "C" __global__ void __launch_bounds__(256) gemm_bf16(const bf16* w, const float* x, float* out, int m, int k,
                                                                   int tokens) {
            grid_release();
            grid_wait();
            __shared__ float ws[GEMM_TILE][GEMM_DEPTH + 1];
            __shared__ float xs[GEMM_TILE][GEMM_DEPTH + 1];
            int r0 = blockIdx.x * GEMM_TILE, t0 = blockIdx.y * GEMM_TILE;
            int tr = threadIdx.x / 16, tt = threadIdx.x % 16;  // this thread: rows tr*4.., tokens tt*4..
            int lr = threadIdx.x / 4, lc = (threadIdx.x % 4) * 8;  // what it loads: a row (or token), 8 columns
            float acc[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
            for (int k0 = 0; k0 < k; k0 += GEMM_DEPTH) {
                if (r0 + lr < m) {
                    uint4 packed = *(const uint4*)(w + (u64)(r0 + lr) * k + k0 + lc);
                    u32 words[4] = {packed.x, packed.y, packed.z, packed.w};
                    for (int j = 0; j < 4; j++) {
                        ws[lr][lc + 2 * j] = __uint_as_float(words[j] << 16);
                        ws[lr][lc + 2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
                    }
                } else {
                    for (int j = 0; j < 8; j++) ws[lr][lc + j] = 0.0f;
                }
                if (t0 + lr < tokens) {
                    const float4* xv = (const float4*)(x + (u64)(t0 + lr) * k + k0 + lc);
                    float4 a = xv[0], b = xv[1];
                    xs[lr][lc] = a.x; xs[lr][lc + 1] = a.y; xs[lr][lc + 2] = a.z; xs[lr][lc + 3] = a.w;
                    xs[lr][lc + 4] = b.x; xs[lr][lc + 5] = b.y; xs[lr][lc + 6] = b.z; xs[lr][lc + 7] = b.w;
                } else {
                    for (int j = 0; j < 8; j++) xs[lr][lc + j] = 0.0f;
                }
                __syncthreads();
                for (int kk = 0; kk < GEMM_DEPTH; kk++) {
                    float a[4], b[4];
                    for (int i = 0; i < 4; i++) a[i] = ws[tr * 4 + i][kk];
                    for (int j = 0; j < 4; j++) b[j] = xs[tt * 4 + j][kk];
                    for (int i = 0; i < 4; i++)
                        for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
                }
                __syncthreads();
            }
            for (int i = 0; i < 4; i++) {
                int r = r0 + tr * 4 + i;
                if (r >= m) continue;
                for (int j = 0; j < 4; j++) {
                    int t = t0 + tt * 4 + j;
                    if (t < tokens) out[(u64)t * m + r] = acc[i][j];
                }
            }
        }

        // d += a · b for one m16n8k16 tile on the tensor cores (mma.sync, bf16 in, f32 accumulation):
        // a warp-wide operation, each lane holding the PTX ISA's fragments ("Matrix Fragments for
        // mma.m16n8k16 with floating point type"): with g = lane / 4 and q = lane % 4, a[0..3] are A's
        // (row g, columns 2q, 2q+1), (g + 8, 2q..), (g, 2q + 8..), (g + 8, 2q + 8..); b[0..1] are B's
        // (rows 2q, 2q+1, column g) and (2q + 8.., g); d[0..3] are D's (g, 2q), (g, 2q+1), (g + 8, 2q),
        // (g + 8, 2q+1). Each 32-bit word holds two bf16, the lower column (or row of B) in the low
        // half. Only sm_80 and later have it; the backend launches gemm_mma_bf16 nowhere else. The
        // emulator computes the same tile from every lane's fragments.
        __device__ __forceinline__ void mma_bf16_16816(float* d, const u32* a, const u32* b) {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
        #elif defined(__CUDA_ARCH__)
            __trap();
        #else
            emu_mma_bf16_16816(d, a, b);
        #endif
        }

        // What is left of v past its bf16 part h: 0 where h is not finite, so an infinite v stays
        // infinite instead of becoming inf - inf = NaN.
        __device__ __forceinline__ float split_rest(float v, bf16 h) {
            return ((u32)h & 0x7f80u) == 0x7f80u ? 0.0f : v - bf16_to_f32(h);
        }

        // Two f32 as a word of two bf16 parts: hi = bf16(v), lo = bf16(v - hi). hi + lo keeps about 16
        // bits of v where hi alone keeps 8.
        __device__ __forceinline__ void split_pair(float v0, float v1, u32& hi, u32& lo) {
            bf16 h0 = f32_to_bf16(v0), h1 = f32_to_bf16(v1);
            bf16 l0 = f32_to_bf16(split_rest(v0, h0)), l1 = f32_to_bf16(split_rest(v1, h1));
            hi = (u32)h0 | ((u32)h1 << 16);
            lo = (u32)l0 | ((u32)l1 << 16);
        }

        // out[t, r] = w[r, :] . x[t, :] for many tokens on the tensor cores (prefill without cuBLAS:
        // Cloud Run images). 64 rows x 64 tokens per block of 4 warps, each warp 32 rows x 32 tokens
        // (2 x 4 mma tiles), 32 columns at a time through shared memory. The f32 activations are split
        // into two bf16 parts (split_pair) and both are multiplied, so a product keeps about 16 bits of
        // each activation, near the f32 kernels, where cuBLAS's bf16 activations keep 8; the weights
        // are bf16 already. Shared rows are MMA_ROW words (16 of data, 4 of padding), so the 32 lanes'
        // fragment loads fall in 32 different banks. k a multiple of 32.
        // Grid: (ceil(m / 64), ceil(tokens / 64)); block: 128.
        #define MMA_ROW 20
        extern "C" __global__ void __launch_bounds__(128) gemm_mma_bf16(const bf16* w, const float* x, float* out, int m, int k,
                                                                       int tokens) {
            grid_release();
            grid_wait();
            __shared__ uint4 wtile[64 * MMA_ROW / 4], xhi[64 * MMA_ROW / 4], xlo[64 * MMA_ROW / 4];
            const u32* ws = (const u32*)wtile;
            const u32* xh = (const u32*)xhi;
            const u32* xl = (const u32*)xlo;
            int r0 = blockIdx.x * 64, t0 = blockIdx.y * 64;
            int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
            int wr = (warp >> 1) * 32, wt = (warp & 1) * 32;  // this warp's rows and tokens in the tile
            float acc[2][4][4];
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 4; j++)
                    for (int c = 0; c < 4; c++) acc[i][j][c] = 0.0f;
            for (int k0 = 0; k0 < k; k0 += 32) {
                // 256 runs of 8 columns each for w and for x: thread i stages runs i and i + 128.
                for (int run = threadIdx.x; run < 256; run += 128) {
                    int row = run >> 2, part = run & 3, at = row * (MMA_ROW / 4) + part;
                    uint4 wv = {0u, 0u, 0u, 0u}, hv = {0u, 0u, 0u, 0u}, lv = {0u, 0u, 0u, 0u};
                    if (r0 + row < m) wv = *(const uint4*)(w + (u64)(r0 + row) * k + k0 + part * 8);
                    if (t0 + row < tokens) {
                        const float4* xv = (const float4*)(x + (u64)(t0 + row) * k + k0 + part * 8);
                        float4 a = xv[0], b = xv[1];
                        split_pair(a.x, a.y, hv.x, lv.x);
                        split_pair(a.z, a.w, hv.y, lv.y);
                        split_pair(b.x, b.y, hv.z, lv.z);
                        split_pair(b.z, b.w, hv.w, lv.w);
                    }
                    wtile[at] = wv;
                    xhi[at] = hv;
                    xlo[at] = lv;
                }
                __syncthreads();
                for (int kk = 0; kk < 16; kk += 8) {  // two k16 steps, in words of two columns
                    u32 a[2][4];
                    for (int i = 0; i < 2; i++) {
                        int row = wr + 16 * i + g;
                        a[i][0] = ws[row * MMA_ROW + kk + q];
                        a[i][1] = ws[(row + 8) * MMA_ROW + kk + q];
                        a[i][2] = ws[row * MMA_ROW + kk + 4 + q];
                        a[i][3] = ws[(row + 8) * MMA_ROW + kk + 4 + q];
                    }
                    for (int j = 0; j < 4; j++) {
                        int token = wt + 8 * j + g;
                        u32 lo[2] = {xl[token * MMA_ROW + kk + q], xl[token * MMA_ROW + kk + 4 + q]};
                        u32 hi[2] = {xh[token * MMA_ROW + kk + q], xh[token * MMA_ROW + kk + 4 + q]};
                        for (int i = 0; i < 2; i++) {
                            mma_bf16_16816(acc[i][j], a[i], lo);
                            mma_bf16_16816(acc[i][j], a[i], hi);
                        }
                    }
                }
                __syncthreads();
            }
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 4; j++)
                    for (int c = 0; c < 4; c++) {
                        int r = r0 + wr + 16 * i + g + 8 * (c >> 1), t = t0 + wt + 8 * j + 2 * q + (c & 1);
                        if (r < m && t < tokens) out[(u64)t * m + r] = acc[i][j][c];
                    }
        }

        // out = bf16(x) over `count` values: the activations cuBLAS multiplies.
        extern "C" __global__ void to_bf16(const float* x, bf16* out, int count) {
            grid_release();
            grid_wait();
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < count) out[i] = f32_to_bf16(x[i]);
        }

        // Rotary embedding as Hugging Face's rotate_half: dimension i pairs with i + dim/2. table row t
        // holds cos (dim/2) then sin (dim/2) of token t's angles. x: (tokens, heads, dim), in place.
        // Grid: (tokens, heads); block: at least dim/2.
        extern "C" __global__ void rope(float* x, const float* table, int heads, int dim) {
            grid_release();
            grid_wait();
            int i = threadIdx.x, half = dim >> 1;
            if (i >= half) return;
            float* v = x + ((u64)blockIdx.x * heads + blockIdx.y) * dim;
            const float* angles = table + (u64)blockIdx.x * dim;
            float c = angles[i], s = angles[half + i];
            float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }

        // Attention of one query row against keys lo..hi (positions) of a ring-buffer cache: position p
        // lives in cache row p % capacity. Query head h reads kv head kvh (GQA). Each warp runs an online
        // softmax over its share of the keys, then the warps' partial results are merged. The result goes
        // to o (normalised) or, when partial is not null, to partial as (max, sum, unnormalised values):
        // a share of a row's keys, merged later by attention_combine. The block's threads share the call.
        // Lane i holds dimensions 8i..8i+7 (one 16-byte load of a bf16 row), so dim is a multiple of 8,
        // at most 256; blockDim.x <= 256.
        #define ATT_MAX_DIM 256
        #define ATT_WARPS 8
        #define ATT_GROUP 4
        // The KV cache holds f32 or bf16 (the backend's choice, `KVCacheType`).
        __device__ __forceinline__ void kv_put(float* p, float v) { *p = v; }
        __device__ __forceinline__ void kv_put(bf16* p, float v) { *p = f32_to_bf16(v); }
        __device__ __forceinline__ void kv_load8(const float* p, float* out) {
            float4 a = ((const float4*)p)[0], b = ((const float4*)p)[1];
            out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
            out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
        }
        __device__ __forceinline__ void kv_load8(const bf16* p, float* out) { unpack8(*(const uint4*)p, out); }

        // q_norm / k_norm then RoPE of one head held by one warp as attend holds a row: lane i has
        // dimensions 8i..8i+7 in v (zeros past dim). The RMS over the head, times the lane's weights wv
        // (head_weights), then dimension d < dim/2 rotated with d + dim/2, which sits dim/16 lanes
        // further, by the lane's cos c and sin s (head_angles of a table row: cos (dim/2) then sin
        // (dim/2)). norm_rope and the attention that fuses it (attention_rows) both go through here,
        // so a head's numbers are the same bits either way; the weights and angles are loaded apart
        // so that a decode step's attention can load them before it waits. Every lane of the warp
        // calls it (shuffles). dim a multiple of 16, at most 256.
        __device__ __forceinline__ void head_norm_rope_with(float* v, const float* wv, const float* c, const float* s, int dim,
                                                            float eps) {
            int lane = threadIdx.x & 31, d0 = 8 * lane, half = dim >> 1;
            bool active = d0 < dim, low = d0 < half;
            float squares = 0.0f;
            for (int j = 0; j < 8; j++) squares += v[j] * v[j];
            float inv = rsqrtf(warp_sum(squares) / dim + eps);
            float x[8];
            for (int j = 0; j < 8; j++) x[j] = active ? (v[j] * inv) * wv[j] : 0.0f;
            int partner = !active ? lane : (low ? lane + (half >> 3) : lane - (half >> 3));
            for (int j = 0; j < 8; j++) {
                float other = __shfl_sync(0xffffffffu, x[j], partner);
                if (active) v[j] = low ? x[j] * c[j] - other * s[j] : x[j] * c[j] + other * s[j];
            }
        }
        // What head_norm_rope_with takes in this lane: the norm's weights w[8i..8i+7] (zeros past dim)...
        __device__ __forceinline__ void head_weights(const float* w, int dim, float* wv) {
            int d0 = 8 * (threadIdx.x & 31);
            for (int j = 0; j < 8; j++) wv[j] = d0 < dim ? w[d0 + j] : 0.0f;
        }
        // ... and the cos and sin of its dimensions' pair (`angles`: the row's table row).
        __device__ __forceinline__ void head_angles(const float* angles, int dim, float* c, float* s) {
            int d0 = 8 * (threadIdx.x & 31), half = dim >> 1;
            int d = d0 < half ? d0 : d0 - half;  // the pair's index into the cos and sin halves
            for (int j = 0; j < 8; j++) {
                c[j] = d0 < dim ? angles[d + j] : 0.0f;
                s[j] = d0 < dim ? angles[half + d + j] : 0.0f;
            }
        }
        __device__ __forceinline__ void head_norm_rope(float* v, const float* w, const float* angles, int dim, float eps) {
            float wv[8], c[8], s[8];
            head_weights(w, dim, wv);
            head_angles(angles, dim, c, s);
            head_norm_rope_with(v, wv, c, s, dim, eps);
        }

        // q_norm / k_norm then RoPE, in place, one head of one token per block (head_norm_rope):
        // heads 0..heads-1 of the query row, then kvHeads of the key row. table row t: cos (dim/2)
        // then sin (dim/2). Grid: (tokens, heads + kvHeads); block: 32.
        extern "C" __global__ void norm_rope(float* q, float* k, const float* qw, const float* kw, const float* table,
                                             int heads, int kvHeads, int dim, float eps) {
            grid_release();
            grid_wait();
            int h = blockIdx.y, d0 = 8 * (threadIdx.x & 31);
            bool isQuery = h < heads;
            float* v = isQuery ? q + ((u64)blockIdx.x * heads + h) * dim : k + ((u64)blockIdx.x * kvHeads + (h - heads)) * dim;
            float x[8];
            if (d0 < dim) kv_load8(v + d0, x);
            else for (int j = 0; j < 8; j++) x[j] = 0.0f;
            head_norm_rope(x, isQuery ? qw : kw, table + (u64)blockIdx.x * dim, dim, eps);
            if (d0 < dim)
                for (int j = 0; j < 8; j++) v[d0 + j] = x[j];
        }

        // The keys and values of keys base..min(base + ATT_GROUP - 1, hi) for this lane (a key past hi
        // repeats base's), zeros in lanes past dim, and zeros for key position `fresh`, whose key and
        // value the step itself writes (attend fills them in from the step's own).
        template <typename T>
        __device__ __forceinline__ void attend_keys(const T* kcache, const T* vcache, int base, int hi, int fresh, u64 column,
                                                    int width, int capacity, bool active, float kr[ATT_GROUP][8],
                                                    float vr[ATT_GROUP][8]) {
            int count = hi - base + 1 < ATT_GROUP ? hi - base + 1 : ATT_GROUP;
            for (int u = 0; u < ATT_GROUP; u++) {
                int key = base + (u < count ? u : 0);
                u64 row = (u64)(key % capacity) * width + column;
                if (active && key != fresh) {
                    kv_load8(kcache + row, kr[u]);
                    kv_load8(vcache + row, vr[u]);
                } else {
                    for (int j = 0; j < 8; j++) { kr[u][j] = 0.0f; vr[u][j] = 0.0f; }
                }
            }
        }

        // Key position `fresh` (-1: none) is read from kfresh and vfresh (the step's own f32 key and value
        // of this kv head, rounded as the cache would hold them) rather than from the cache, which
        // another block of the same launch is storing it into.
        // qw not null: the query and the fresh key are as the qkv product left them, and get q_norm
        // (qw) / k_norm (kw) and RoPE (`angles`, the row's table row) here (head_norm_rope), as
        // norm_rope would have given them.
        // early: the caller has not waited for the kernel before (grid_wait); attend loads what no
        // kernel of the step writes first (the head norms' weights, the row's angles, its warp's
        // first keys and values but the fresh ones: rows earlier steps stored), then waits, so that
        // a decode step's attention has those loads done while the qkv product drains.
        template <typename T>
        __device__ void attend(const float* qv, const T* kcache, const T* vcache, float* o, float* partial,
                               int lo, int hi, int kvh, int kvHeads, int dim, int capacity, float scale,
                               const float* kfresh, const float* vfresh, int fresh,
                               const float* qw, const float* kw, const float* angles, float eps, bool early) {
            __shared__ float warp_m[ATT_WARPS], warp_l[ATT_WARPS];
            __shared__ float warp_acc[ATT_WARPS][ATT_MAX_DIM];
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
            int width = kvHeads * dim, d0 = 8 * lane;
            bool active = d0 < dim;
            u64 column = (u64)kvh * dim + d0;
            float qwv[8], kwv[8], c[8], s[8];
            if (qw) {
                head_weights(qw, dim, qwv);
                head_weights(kw, dim, kwv);
                head_angles(angles, dim, c, s);
            }
            // Four keys per warp per iteration, their keys' and values' loads all issued before any
            // arithmetic: a decode step (one query row, a handful of blocks) is bound by load latency.
            int base = lo + ATT_GROUP * warp;
            float kr[ATT_GROUP][8], vr[ATT_GROUP][8];
            if (base <= hi) attend_keys(kcache, vcache, base, hi, fresh, column, width, capacity, active, kr, vr);
            if (early) grid_wait();
            float q[8], acc[8];
            for (int j = 0; j < 8; j++) acc[j] = 0.0f;
            if (active) kv_load8(qv + d0, q);
            else for (int j = 0; j < 8; j++) q[j] = 0.0f;
            if (qw) head_norm_rope_with(q, qwv, c, s, dim, eps);
            float kf[8], vf[8];  // the fresh key and value, as the cache holds them
            if (fresh >= 0) {
                if (active) {
                    kv_load8(kfresh + d0, kf);
                    kv_load8(vfresh + d0, vf);
                } else {
                    for (int j = 0; j < 8; j++) { kf[j] = 0.0f; vf[j] = 0.0f; }
                }
                if (qw) head_norm_rope_with(kf, kwv, c, s, dim, eps);
                if (sizeof(T) == 2)
                    for (int j = 0; j < 8; j++) {
                        kf[j] = bf16_to_f32(f32_to_bf16(kf[j]));
                        vf[j] = bf16_to_f32(f32_to_bf16(vf[j]));
                    }
            }
            float m = NEG_INF, l = 0.0f;
            while (base <= hi) {
                int count = hi - base + 1 < ATT_GROUP ? hi - base + 1 : ATT_GROUP;  // the same in every lane
                if (active)
                    for (int u = 0; u < ATT_GROUP; u++)
                        if (base + (u < count ? u : 0) == fresh)
                            for (int j = 0; j < 8; j++) { kr[u][j] = kf[j]; vr[u][j] = vf[j]; }
                float score[ATT_GROUP];
                float next = m;
                for (int u = 0; u < ATT_GROUP; u++) {
                    float dot = 0.0f;
                    for (int j = 0; j < 8; j++) dot += q[j] * kr[u][j];
                    score[u] = u < count ? warp_sum(dot) * scale : NEG_INF;
                    next = fmaxf(next, score[u]);
                }
                float correction = expf(m - next);
                l *= correction;
                for (int j = 0; j < 8; j++) acc[j] *= correction;
                for (int u = 0; u < count; u++) {
                    float weight = expf(score[u] - next);
                    l += weight;
                    for (int j = 0; j < 8; j++) acc[j] += weight * vr[u][j];
                }
                m = next;
                base += ATT_GROUP * warps;
                if (base <= hi) attend_keys(kcache, vcache, base, hi, fresh, column, width, capacity, active, kr, vr);
            }
            if (lane == 0) { warp_m[warp] = m; warp_l[warp] = l; }
            if (active) for (int j = 0; j < 8; j++) warp_acc[warp][d0 + j] = acc[j];
            __syncthreads();
            float total_m = NEG_INF;
            for (int w = 0; w < warps; w++) total_m = fmaxf(total_m, warp_m[w]);
            float total_l = 0.0f;
            for (int w = 0; w < warps; w++) total_l += (warp_m[w] == NEG_INF) ? 0.0f : warp_l[w] * expf(warp_m[w] - total_m);
            for (int i = threadIdx.x; i < dim; i += blockDim.x) {
                float v = 0.0f;
                for (int w = 0; w < warps; w++)
                    if (warp_m[w] != NEG_INF) v += warp_acc[w][i] * expf(warp_m[w] - total_m);
                if (partial) partial[2 + i] = v;
                else o[i] = total_l > 0.0f ? v / total_l : 0.0f;
            }
            if (partial && threadIdx.x == 0) { partial[0] = total_m; partial[1] = total_l; }
        }

        // The first key a query at `position` sees: position - window + 1 with a window (0: none).
        __device__ __forceinline__ int oldest_key(int position, int window) {
            return (window > 0 && position - window + 1 > 0) ? position - window + 1 : 0;
        }

        // Causal attention of query rows at positions first..first+rows-1 of one sequence.
        // q, out: (rows, heads, dim); caches: (capacity, kvHeads, dim). Grid: (rows, heads); block: 256.
        extern "C" __global__ void attention(const float* q, const float* kcache, const float* vcache, float* out,
                                             int first, int heads, int kvHeads, int dim, int capacity, int window,
                                             float scale) {
            grid_release();
            grid_wait();
            int t = blockIdx.x, h = blockIdx.y, position = first + t;
            u64 at = ((u64)t * heads + h) * dim;
            attend(q + at, kcache, vcache, out + at, 0, oldest_key(position, window), position, h / (heads / kvHeads),
                   kvHeads, dim, capacity, scale, 0, 0, -1, 0, 0, 0, 0.0f, false);
        }

        // Several sequences in one step: row r belongs to the sequence whose layer cache, position and
        // ring are rows[r] (the backend uploads this table once per layer).
        struct SegmentRow { u64 keys; u64 values; int position; int capacity; int window; int unused; };

        // Each row's new key and value into its sequence's ring, at position % capacity. Grid: rows.
        template <typename T>
        __device__ void store_row(const float* k, const float* v, const SegmentRow& r, int width, int row) {
            T* kc = (T*)r.keys;
            T* vc = (T*)r.values;
            u64 to = (u64)(r.position % r.capacity) * width, from = (u64)row * width;
            for (int i = threadIdx.x; i < width; i += blockDim.x) {
                kv_put(kc + to + i, k[from + i]);
                kv_put(vc + to + i, v[from + i]);
            }
        }

        // store_row with k_norm and RoPE applied to the keys on the way (head_norm_rope, kw and
        // the row's table row `angles`): one warp a kv head.
        template <typename T>
        __device__ void store_row_normed(const float* k, const float* v, const SegmentRow& r, int kvHeads, int dim,
                                         const float* kw, const float* angles, float eps, int row) {
            T* kc = (T*)r.keys;
            T* vc = (T*)r.values;
            int width = kvHeads * dim, d0 = 8 * (threadIdx.x & 31);
            u64 to = (u64)(r.position % r.capacity) * width, from = (u64)row * width;
            for (int kh = threadIdx.x >> 5; kh < kvHeads; kh += blockDim.x >> 5) {
                float x[8];
                if (d0 < dim) kv_load8(k + from + (u64)kh * dim + d0, x);
                else for (int j = 0; j < 8; j++) x[j] = 0.0f;
                head_norm_rope(x, kw, angles, dim, eps);
                if (d0 < dim)
                    for (int j = 0; j < 8; j++) kv_put(kc + to + (u64)kh * dim + d0 + j, x[j]);
            }
            for (int i = threadIdx.x; i < width; i += blockDim.x) kv_put(vc + to + i, v[from + i]);
        }

        // half != 0: the caches hold bf16 (rounded to nearest even), else f32.
        extern "C" __global__ void kv_store_rows(const float* k, const float* v, const SegmentRow* rows, int width,
                                                 int half) {
            grid_release();
            grid_wait();
            SegmentRow r = rows[blockIdx.x];
            if (half) store_row<bf16>(k, v, r, width, blockIdx.x);
            else store_row<float>(k, v, r, width, blockIdx.x);
        }

        // Block (row, h, z) of attention_rows, once the step's writes are there, or (early, with store)
        // before: attend waits once it has loaded what no kernel of the step writes (the rows table,
        // staged ahead of the step's launches, is one), and the block writes nothing before it waits.
        // Trimmed: the row stored by its last share's block (empty until the row's keys fill the
        // others), the new key loaded and normed only by the share that holds it, and a share past
        // the row's keys writes only the header by which attention_combine skips it (what attend
        // would leave), so that the block is soon free. The row's key and value are stored last.
        __device__ void attention_block(const float* q, const SegmentRow* rows, float* out, float* partials, int heads,
                                        int kvHeads, int dim, float scale, int splits, int share, int half, const float* k,
                                        const float* v, int store, const float* qw, const float* kw, const float* table,
                                        float eps, int row, int h, int z, int trims, bool early) {
            SegmentRow r = rows[row];
            int kvh = h / (heads / kvHeads), width = kvHeads * dim;
            u64 at = ((u64)row * heads + h) * dim;
            int lo = oldest_key(r.position, r.window), hi = r.position;
            float* partial = 0;
            if (splits > 1) {
                lo += z * share;
                if (lo + share - 1 < hi) hi = lo + share - 1;
                partial = partials + (((u64)row * heads + h) * splits + z) * (dim + 2);
            }
            const float* kfresh = store ? k + (u64)row * width + (u64)kvh * dim : 0;
            const float* vfresh = store ? v + (u64)row * width + (u64)kvh * dim : 0;
            const float* angles = qw ? table + (u64)row * dim : 0;
            int storer = trims ? splits - 1 : 0, fresh = store ? r.position : -1;
            if (trims && (fresh < lo || fresh > hi)) fresh = -1;
            if (trims && partial && lo > hi) {
                if (early) grid_wait();
                if (threadIdx.x == 0) { partial[0] = NEG_INF; partial[1] = 0.0f; }
            } else if (half)
                attend(q + at, (const bf16*)r.keys, (const bf16*)r.values, out + at, partial, lo, hi, kvh, kvHeads, dim,
                       r.capacity, scale, kfresh, vfresh, fresh, qw, kw, angles, eps, early);
            else
                attend(q + at, (const float*)r.keys, (const float*)r.values, out + at, partial, lo, hi, kvh, kvHeads, dim,
                       r.capacity, scale, kfresh, vfresh, fresh, qw, kw, angles, eps, early);
            if (store && h == 0 && z == storer) {
                if (qw && half) store_row_normed<bf16>(k, v, r, kvHeads, dim, kw, angles, eps, row);
                else if (qw) store_row_normed<float>(k, v, r, kvHeads, dim, kw, angles, eps, row);
                else if (half) store_row<bf16>(k, v, r, width, row);
                else store_row<float>(k, v, r, width, row);
            }
        }

        // Each row's attention against its own sequence's ring (bf16 when half != 0). With splits > 1 the row's keys are cut
        // into contiguous shares of `share` keys, one block each, so that even one sequence keeps many
        // SMs busy (flash-decoding): each share goes to partials (rows, heads, splits, dim + 2) and
        // attention_combine merges them; a row with fewer keys leaves its last shares empty.
        // store != 0 (every row the one new token of its own sequence, as in a decode step): the rows'
        // keys and values k, v are stored here, by one block of the row, instead of by kv_store_rows
        // in a launch before; the new key is read from k and v, so none reads the cache row being
        // stored, and the slot it replaces is past every row's window. trims != 0: that block is the
        // row's last share's (empty until the row's keys fill the others), only the share that holds
        // the new key loads and norms it, and a share past the row's keys writes only the header by
        // which attention_combine skips it: none lengthens a busy block's chain of loads. Else block
        // (r, 0, 0) stores, and every share works through attend (the same bits).
        // aheadN, bytesN: up to three ranges of the weights the products after it read, asked of L2
        // (prefetch_ahead, `bulk` as it says) before grid_wait, since no step writes them (bytes 0: none).
        // qw not null (with store): q and k are as the qkv product left them; q_norm (qw), k_norm (kw)
        // and RoPE (table, a row per row) are applied here, as norm_rope would (one launch fewer).
        // early != 0 (with store): each block loads the rows table, its first keys and values and the
        // head norms' weights and angles before it waits (attention_block): none is written by a
        // kernel of this step (the tables are copied ahead of the step's first product, and a step
        // stores only its own key), and a one-sequence step's attention is a chain of waits on loads.
        // In at most 128 registers (some 50 bytes spilled; 159 unbounded): a block then fits on an SM
        // beside two of the qkv product's (64 registers), so more blocks start, and load early, while
        // its last blocks run. So bounded, the early loads took 0.09 ms off a 1B step on an H100; a
        // version at 160 registers had been 0.03-0.06 ms slower than loading after the wait.
        // Grid: (rows, heads, splits); block: 256.
        extern "C" __global__ void __launch_bounds__(256, 2) attention_rows(const float* q, const SegmentRow* rows, float* out,
                                                                           float* partials, int heads, int kvHeads, int dim,
                                                                           float scale, int splits, int share, int half,
                                                                           const float* k, const float* v, int store,
                                                                           const char* ahead0, u64 bytes0, const char* ahead1,
                                                                           u64 bytes1, const char* ahead2, u64 bytes2,
                                                                           const float* qw, const float* kw, const float* table,
                                                                           float eps, int trims, int early, int bulk) {
            grid_release();
            u64 b = blockIdx.x + (u64)gridDim.x * (blockIdx.y + (u64)gridDim.y * blockIdx.z);
            u64 blocks = (u64)gridDim.x * gridDim.y * gridDim.z;
            prefetch_ahead(ahead0, bytes0, b, blocks, bulk);
            prefetch_ahead(ahead1, bytes1, b, blocks, bulk);
            prefetch_ahead(ahead2, bytes2, b, blocks, bulk);
            bool waitHere = !(store && early);
            if (waitHere) grid_wait();
            attention_block(q, rows, out, partials, heads, kvHeads, dim, scale, splits, share, half, k, v, store, qw, kw, table,
                            eps, blockIdx.x, blockIdx.y, blockIdx.z, trims, !waitHere);
        }

        // Merges the shares of attention_rows: out = sum_z acc_z * e^(m_z - M) / sum_z l_z * e^(m_z - M).
        // Every share's numbers are loaded at once, then added in share order (a decode step's merge is
        // a wait on loads). splits <= ATT_MAX_SPLITS, dim <= blockDim.x. Grid: (rows, heads); block: 256.
        #define ATT_MAX_SPLITS 32
        // Column threadIdx.x (< dim; any value past it) of head h of row `row`, merged from its shares.
        __device__ __forceinline__ float combine_value(const float* partials, int heads, int dim, int splits, int row, int h) {
            const float* p = partials + ((u64)row * heads + h) * splits * (dim + 2);
            int i = threadIdx.x;
            float mz[ATT_MAX_SPLITS], lz[ATT_MAX_SPLITS], vz[ATT_MAX_SPLITS];
            for (int z = 0; z < ATT_MAX_SPLITS; z++) {
                bool here = z < splits;
                mz[z] = here ? p[z * (dim + 2)] : NEG_INF;
                lz[z] = here ? p[z * (dim + 2) + 1] : 0.0f;
                vz[z] = here && i < dim ? p[z * (dim + 2) + 2 + i] : 0.0f;
            }
            float total_m = NEG_INF;
            for (int z = 0; z < ATT_MAX_SPLITS; z++) total_m = fmaxf(total_m, mz[z]);
            float total_l = 0.0f, v = 0.0f;
            for (int z = 0; z < ATT_MAX_SPLITS; z++) {
                if (mz[z] != NEG_INF) {
                    float e = expf(mz[z] - total_m);
                    total_l += lz[z] * e;
                    v += vz[z] * e;
                }
            }
            return total_l > 0.0f ? v / total_l : 0.0f;
        }
        // Head h of row `row` of attention_combine.
        __device__ __forceinline__ void combine_head(const float* partials, float* out, int heads, int dim, int splits, int row,
                                                     int h) {
            float value = combine_value(partials, heads, dim, splits, row, h);
            if (threadIdx.x < dim) out[((u64)row * heads + h) * dim + threadIdx.x] = value;
        }

        extern "C" __global__ void attention_combine(const float* partials, float* out, int heads, int dim, int splits) {
            grid_release();
            grid_wait();
            combine_head(partials, out, heads, dim, splits, blockIdx.x, blockIdx.y);
        }

        // A barrier for every thread of a grid whose blocks are all resident at once (a persistent
        // kernel: the backend sizes its grid from the occupancy the driver reports). bar[0] counts the
        // blocks arrived; the last to arrive zeroes it (ready for the next barrier and the next launch)
        // and then bumps the generation bar[1], which the others wait on. Each block reads the
        // generation before it arrives, so it waits for this barrier's bump, not an earlier one. The
        // fences make every block's writes before the barrier visible to every block after it. Shared
        // memory does not carry across it (the CUDA emulator runs other blocks in between). A block
        // that has waited two seconds (by the GPU's clock: a grid not all resident, which the
        // occupancy the driver reported should rule out) traps, so the launch fails instead of hanging.
        __device__ __forceinline__ u32 load_acquire(const u32* p) {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
            u32 v;
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
            return v;
        #else
            return *(volatile const u32*)p;
        #endif
        }
        // The GPU's clock, in nanoseconds (sm_70 and later).
        __device__ __forceinline__ u64 global_nanoseconds() {
            u64 now = 0;
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        #endif
            return now;
        }
        __device__ __forceinline__ void grid_spin(u64& since) {
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
            asm volatile("nanosleep.u32 32;");
            u64 now = global_nanoseconds();
            if (since == 0) since = now;
            else if (now - since > 2000000000ull) __trap();
        #elif defined(CUDA_EMULATOR)
            (void)since;
            emu_spin();
        #endif
        }
        // The time (the GPU's nanosecond clock; in the emulator a count of stamps) at which block
        // blockIdx.x reached point k of a persistent kernel, into stamps[block * 16 + k] (none when
        // stamps is null): gpu-check's view of where a persistent layer's time goes.
        __device__ __forceinline__ void stamp(u64* stamps, int k) {
            if (!stamps || threadIdx.x != 0) return;
        #if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
            stamps[(u64)blockIdx.x * 16 + k] = global_nanoseconds();
        #elif defined(CUDA_EMULATOR)
            stamps[(u64)blockIdx.x * 16 + k] = emu_clock();
        #endif
        }

        // Thread 0's part of a barrier of `count` blocks (a count and a generation at bar), once its
        // block's threads are all there: the last to arrive resets the count and bumps the generation,
        // the others wait for the bump.
        __device__ __forceinline__ void barrier_arrive_and_wait(u32* bar, u32 count) {
            u32 generation = load_acquire(bar + 1);
            __threadfence();
            if (atomicAdd(bar, 1u) == count - 1) {
                atomicExch(bar, 0u);
                __threadfence();
                atomicAdd(bar + 1, 1u);
            } else {
                u64 since = 0;
                while (load_acquire(bar + 1) == generation) grid_spin(since);
            }
            __threadfence();
        }

        // Stamps point k as the block arrives (its threads all done) and k + 1 as it leaves.
        __device__ void grid_barrier(u32* bar, u64* stamps, int k) {
            __syncthreads();
            stamp(stamps, k);
            if (threadIdx.x == 0) barrier_arrive_and_wait(bar, gridDim.x);
            __syncthreads();
            stamp(stamps, k + 1);
        }

        // A load another block of the launch wrote (past a barrier between them): from L2, not L1.
        __device__ __forceinline__ float load_global(const float* p) {
        #if defined(__CUDA_ARCH__)
            return __ldcg(p);
        #else
            return *(volatile const float*)p;
        #endif
        }
        // A barrier for `count` blocks of a launch (count and generation at bar, as grid_barrier's), all
        // resident at once: the caller makes sure of it.
        __device__ void blocks_barrier(u32* bar, u32 count) {
            __syncthreads();
            if (threadIdx.x == 0) barrier_arrive_and_wait(bar, count);
            __syncthreads();
        }
        // Whether this block is the last of the `count` blocks counting on `ticket` to get here; the
        // last sets it back to zero for the next launch. The fences order each block's writes before
        // its count, and the last block's count before its reads, for the whole GPU (the barriers,
        // within the block). Every thread of the block calls it.
        __device__ __forceinline__ bool last_to_count(u32* ticket, u32 count) {
            __shared__ int last;
            __syncthreads();
            if (threadIdx.x == 0) {
                __threadfence();
                last = atomicAdd(ticket, 1u) == count - 1;
                __threadfence();
                if (last) *ticket = 0u;
            }
            __syncthreads();
            return last;
        }

        // A one-token step's whole MLP in one launch, after its residual norm (as gemv_gelu_norm_bf16):
        // h = gelu_tanh(gate . x) * (up . x), then out = down . h, split over the intermediate rows.
        // The rows come in slices of MLP_SLICE (256), each taken by MLP_SLICE_BLOCKS (16) blocks of 16
        // rows (two groups of gemv_gelu_group: each h the same bits as gemv_gelu_norm_bf16's). Block
        // (s, i) also owns chunk i of the hidden outputs (k / 16 of them) and, before it waits, copies
        // down's rows of that chunk over slice s's columns into shared memory (no kernel of the step
        // writes the weights; rows of 512 bytes, 32 copies of 16 bytes each, down[i * chunk + j][s * 256
        // + c] to slice[j][c]): down's reads come with gate's and up's instead of after them in a launch
        // of their own. Once its slice's blocks have written their h (a barrier of 16 blocks, which the
        // backend launches only where the whole grid is resident at once), it adds its chunk's outputs
        // over the slice's 256 columns into partials[s][chunk], and the last of the chunk's blocks (a
        // ticket) adds the slices' partials in slice order into out: the same bits whatever order
        // the blocks run in (not gemv_bf16's: its sums run over the columns in another order).
        // Scratch: partials (m / 256 × k floats); bars (16 + 2 × m / 256 u32, zero before the first
        // launch): the chunks' tickets, then each slice's barrier; each launch leaves the tickets and
        // counts at zero (the generations count on), so a model of fewer slices may follow.
        // m a multiple of 256, k a multiple of 16 up to MLP_MAX_HIDDEN, one warp a gate/up row
        // (gemvSplits 1). Grid: m / 16; block: 256.
        #define MLP_SLICE 256
        #define MLP_SLICE_BLOCKS 16
        #define MLP_MAX_HIDDEN 1152
        __device__ __forceinline__ void copy_down_slice(uint4* slice, const bf16* down, int m, int s, int i, int chunk) {
            for (int q = threadIdx.x; q < chunk * (MLP_SLICE / 8); q += blockDim.x) {
                int j = q / (MLP_SLICE / 8), c = q % (MLP_SLICE / 8);
                copy16_to_shared(slice + q, down + (u64)(i * chunk + j) * m + (u64)s * MLP_SLICE + 8 * c);
            }
        }
        extern "C" __global__ void __launch_bounds__(256, 4) mlp_fused_bf16(const bf16* gate, const bf16* up, const bf16* down,
                                                                           const float* x, float* h, float* out, int m, int k,
                                                                           float* partials, u32* bars, const float* w,
                                                                           const float* next, const float* source, float* residual, float* normed,
                                                                           float eps, u32* ticket) {
            __shared__ uint4 slice[MLP_MAX_HIDDEN / MLP_SLICE_BLOCKS * MLP_SLICE / 8];
            __shared__ float4 xs[MLP_MAX_HIDDEN / 4];
            __shared__ float4 hs[MLP_SLICE / 4];
            grid_release();
            int b = blockIdx.x, s = b / MLP_SLICE_BLOCKS, i = b % MLP_SLICE_BLOCKS, chunk = k / MLP_SLICE_BLOCKS;
            gemv_gelu_prefetch(gate, up, m, k, 1, 2 * b);
            gemv_gelu_prefetch(gate, up, m, k, 1, 2 * b + 1);
            copy_down_slice(slice, down, m, s, i, chunk);
            float wv[NORM_PER_THREAD], nv[NORM_PER_THREAD];
            norm_weights(w, next, k, wv, nv);
            grid_wait();
            fused_residual_norm(x, ResidualNorm{w, next, source, residual, normed, eps, ticket}, wv, nv, k, (float*)xs);
            int slices = m / MLP_SLICE, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            gemv_gelu_group<1>(gate, up, (const float*)xs, h, m, k, 1, 1, 2 * b);
            gemv_gelu_group<1>(gate, up, (const float*)xs, h, m, k, 1, 1, 2 * b + 1);
            blocks_barrier(bars + MLP_SLICE_BLOCKS + 2 * s, MLP_SLICE_BLOCKS);
            float* hv = (float*)hs;
            hv[threadIdx.x] = load_global(h + (u64)s * MLP_SLICE + threadIdx.x);
            copies_to_shared_done();
            __syncthreads();
            // Row j of the chunk: lane l takes columns 8l to 8l + 7, the warp's sum in lane 0.
            float4 u = hs[2 * lane], v = hs[2 * lane + 1];
            for (int j = warp; j < chunk; j += 8) {
                float wr[8];
                unpack8(slice[j * (MLP_SLICE / 8) + lane], wr);
                float sum = warp_sum(dot8(wr, u, v));
                if (lane == 0) partials[(u64)s * k + i * chunk + j] = sum;
            }
            if (!last_to_count(bars + i, (u32)slices)) return;  // the chunks' tickets
            for (int j = threadIdx.x; j < chunk; j += blockDim.x) {
                float total = 0.0f;
                for (int z = 0; z < slices; z++) total += load_global(partials + (u64)z * k + i * chunk + j);
                out[i * chunk + j] = total;
            }
        }

        // attention_combine and the output projection in one launch, for a one-token step whose
        // attention took shares (one seam a layer fewer): block (g, h) merges head h's shares as
        // attention_combine does, into shared memory, and multiplies them by head h's columns of the
        // OUT_ROWS rows of wo from g * OUT_ROWS (OUT_ROWS / 8 rows a warp, a lane's chunk of each
        // copied into shared memory before the wait: no step writes the weights). Its sums go to
        // parts[h * m + r]; the last of the row group's `heads` blocks (counted on tickets[g], zeroed
        // again by it) adds the heads' parts in head order into out: the same bits whatever order
        // the blocks run in, not the two launches' (whose sums run over the columns in another
        // order). dim <= ATT_MAX_DIM, a multiple of 8. Grid: (ceil(m / OUT_ROWS), heads); block: 256.
        #define OUT_ROWS 32
        extern "C" __global__ void __launch_bounds__(256) attention_output_bf16(const float* partials, const bf16* wo,
                                                                               float* parts, float* out, u32* tickets,
                                                                               int m, int heads, int dim, int splits) {
            __shared__ uint4 stage[OUT_ROWS / 8 * 256];
            __shared__ float4 merged[ATT_MAX_DIM / 4];
            grid_release();
            int g = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, first = g * OUT_ROWS + (threadIdx.x >> 5) * (OUT_ROWS / 8);
            bool mine = lane < (dim >> 3);
            for (int j = 0; j < OUT_ROWS / 8; j++)
                if (first + j < m && mine)
                    copy16_to_shared(stage + j * 256 + threadIdx.x, wo + (u64)(first + j) * heads * dim + (u64)h * dim + 8 * lane);
            grid_wait();
            float value = combine_value(partials, heads, dim, splits, 0, h);
            if (threadIdx.x < dim) ((float*)merged)[threadIdx.x] = value;
            __syncthreads();
            copies_to_shared_done();
            for (int j = 0; j < OUT_ROWS / 8; j++) {
                float acc[1] = {0.0f};
                if (first + j < m && mine) gemv_chunk<1>(stage[j * 256 + threadIdx.x], (const float*)merged, 0, lane, 1, acc);
                float sum = warp_sum(acc[0]);
                if (first + j < m && lane == 0) parts[(u64)h * m + first + j] = sum;
            }
            if (!last_to_count(tickets + g, (u32)heads)) return;
            int r = g * OUT_ROWS + threadIdx.x;
            if (threadIdx.x < OUT_ROWS && r < m) {
                float total = 0.0f;
                for (int z = 0; z < heads; z++) total += load_global(parts + (u64)z * m + r);
                out[r] = total;
            }
        }

        // A decode step's layer for one sequence (one token) in one launch of a persistent grid, its
        // phases behind grid barriers instead of launches, so the step has no seams between them (on
        // an H100 a 1B step's launches summed 1.10-1.16 ms alone and 1.41-1.44 ms in the graph; but
        // each barrier cost as much as a seam, and every mode was slower: see CUDABackend's
        // persistentLayers):
        //   1. q, k, v: gemv_norm_bf16 (gemv_bf16's when nw is null: x is normed already);
        //   2. attention: attention_rows storing the key and value, with the head norms inside;
        //   3. merging its shares: attention_combine (none when asplits is 1);
        //   4. the output projection: gemv_bf16;
        //   5. the post-attention norm with gate, up and GELU: gemv_gelu_norm_bf16;
        //   6. down: gemv_bf16.
        // A phase's blocks are those of the launch it replaces, numbered alike and taken in turn by the
        // grid's blocks, so every number is the same bits as theirs. Before each barrier a block asks
        // L2 for the weight rows it takes after it; it lets the next launch start (grid_release) in
        // its last phase. The fused norms count the grid's blocks on `ticket`, once each (null: the
        // residual is not written where it is read, nor the normed row over x: block 0 writes them).
        // The residual: phase 1 reads residual2 and writes residual, phase 5 reads residual and
        // writes residual2 (the model's two buffers; one in place).
        // decode_layer runs phases 1-6, decode_attention 1-4, decode_mlp 5-6. stamps (null: none): each
        // block's times (`stamp`) after the wait (0), at and after each barrier (1-2 after q/k/v,
        // 3-4 after attention, 5-6 after the merge, 7-8 after the output projection, 9-10 after
        // gate/up) and at its end (7 or 11); decode_mlp stamps 8 after its wait.
        // Grid: up to every block the GPU holds at once (no more); block: 256.
        #define DECODE_LAYER_PARAMETERS \
            u32* barrier, \
            const bf16* wq, const bf16* wk, const bf16* wv, float* q, float* k, float* v, int mq, int mk, int mv, \
            const float* x, int hidden, int splits1, const float* nw, const float* nnext, float* residual, float* residual2, \
            float* normed, float eps1, u32* ticket, \
            const SegmentRow* rows, float* att, float* partials, int heads, int kvHeads, int dim, float scale, int asplits, \
            int share, int half, const float* qw, const float* kw, const float* table, float eps2, \
            const char* ahead0, u64 bytes0, const char* ahead1, u64 bytes1, const char* ahead2, u64 bytes2, \
            const bf16* wo, float* o, int mo, int ko, int splits4, \
            const bf16* gate, const bf16* up, float* g, int mg, int splits5, const float* pw, const float* pnext, float eps3, \
            const bf16* wd, float* d, int md, int splits6, u64* stamps
        #define DECODE_LAYER_ARGUMENTS \
            barrier, wq, wk, wv, q, k, v, mq, mk, mv, x, hidden, splits1, nw, nnext, residual, residual2, normed, eps1, ticket, rows, \
            att, partials, heads, kvHeads, dim, scale, asplits, share, half, qw, kw, table, eps2, ahead0, bytes0, ahead1, bytes1, \
            ahead2, bytes2, wo, o, mo, ko, splits4, gate, up, g, mg, splits5, pw, pnext, eps3, wd, d, md, splits6, stamps

        // ATTENTION: phases 1-4; MLP: phases 5 and 6. xs: shared memory for a fused norm's row.
        template <bool ATTENTION, bool MLP>
        __device__ __forceinline__ void decode_layer_phases(float* xs, DECODE_LAYER_PARAMETERS) {
            int b = blockIdx.x, blocks = gridDim.x;
            float wn[NORM_PER_THREAD], nn[NORM_PER_THREAD];
            if constexpr (ATTENTION) {
                int n1 = ((mq + mk + mv) * splits1 + 7) / 8;
                for (int i = b; i < n1; i += blocks) gemv_rows_prefetch(wq, wk, wv, mq, mk, mv, hidden, splits1, i);
                if (nw) norm_weights(nw, nnext, hidden, wn, nn);
                grid_wait();
                stamp(stamps, 0);
                const float* x1 = x;
                if (nw) {
                    fused_residual_norm(x, ResidualNorm{nw, nnext, residual2, residual, normed, eps1, ticket}, wn, nn, hidden, xs);
                    x1 = xs;
                }
                for (int i = b; i < n1; i += blocks) gemv_rows_block<1>(wq, wk, wv, q, k, v, mq, mk, mv, x1, hidden, 1, splits1, i);
                // attention_rows' L2 prefetches of the weights after it, while the grid meets.
                prefetch_ahead(ahead0, bytes0, b, blocks);
                prefetch_ahead(ahead1, bytes1, b, blocks);
                prefetch_ahead(ahead2, bytes2, b, blocks);
                grid_barrier(barrier, stamps, 1);

                for (int i = b; i < heads * asplits; i += blocks) {
                    attention_block(q, rows, att, partials, heads, kvHeads, dim, scale, asplits, share, half, k, v, 1, qw, kw,
                                    table, eps2, 0, i % heads, i / heads, 1, false);
                    __syncthreads();  // attend's shared memory, for the next share
                }
                int n4 = (mo * splits4 + 7) / 8;
                for (int i = b; i < n4; i += blocks) gemv_rows_prefetch(wo, 0, 0, mo, 0, 0, ko, splits4, i);
                grid_barrier(barrier, stamps, 3);
                if (asplits > 1) {
                    for (int i = b; i < heads; i += blocks) combine_head(partials, att, heads, dim, asplits, 0, i);
                    grid_barrier(barrier, stamps, 5);
                }
                if (!MLP) grid_release();
                for (int i = b; i < n4; i += blocks) gemv_rows_block<1>(wo, 0, 0, o, 0, 0, mo, 0, 0, att, ko, 1, splits4, i);
                if (!MLP && stamps) {
                    __syncthreads();
                    stamp(stamps, 7);
                }
            }
            if constexpr (MLP) {
                int n5 = (mg * splits5 + 7) / 8;
                for (int i = b; i < n5; i += blocks) gemv_gelu_prefetch(gate, up, mg, hidden, splits5, i);
                norm_weights(pw, pnext, hidden, wn, nn);
                if (ATTENTION) {
                    grid_barrier(barrier, stamps, 7);
                } else {
                    grid_wait();
                    stamp(stamps, 8);
                }
                fused_residual_norm(o, ResidualNorm{pw, pnext, residual, residual2, normed, eps3, ticket}, wn, nn, hidden, xs);
                for (int i = b; i < n5; i += blocks) gemv_gelu_group<1>(gate, up, xs, g, mg, hidden, 1, splits5, i);
                int n6 = (md * splits6 + 7) / 8;
                for (int i = b; i < n6; i += blocks) gemv_rows_prefetch(wd, 0, 0, md, 0, 0, mg, splits6, i);
                grid_barrier(barrier, stamps, 9);
                grid_release();
                for (int i = b; i < n6; i += blocks) gemv_rows_block<1>(wd, 0, 0, d, 0, 0, md, 0, 0, g, mg, 1, splits6, i);
                if (stamps) {
                    __syncthreads();
                    stamp(stamps, 11);
                }
            }
        }

        // Each a kernel of its own, so that each gets its own registers (one kernel taking either
        // phases 1-6 or 1-4 spilled twice as much).
        extern "C" __global__ void __launch_bounds__(256, 2) decode_layer(DECODE_LAYER_PARAMETERS) {
            __shared__ float4 xs[NORM_FUSED_MAX / 4];
            decode_layer_phases<true, true>((float*)xs, DECODE_LAYER_ARGUMENTS);
        }
        extern "C" __global__ void __launch_bounds__(256, 2) decode_attention(DECODE_LAYER_PARAMETERS) {
            __shared__ float4 xs[NORM_FUSED_MAX / 4];
            decode_layer_phases<true, false>((float*)xs, DECODE_LAYER_ARGUMENTS);
        }
        // In at most 64 registers: twice the blocks an SM of the others, which attention's registers
        // hold to two.
        extern "C" __global__ void __launch_bounds__(256, 4) decode_mlp(DECODE_LAYER_PARAMETERS) {
            __shared__ float4 xs[NORM_FUSED_MAX / 4];
            decode_layer_phases<false, true>((float*)xs, DECODE_LAYER_ARGUMENTS);
        }

        // out = gelu_tanh(gate) * up, elementwise over `count` values, as x / (1 + exp(-2u)), which has
        // no cancellation near 0 (the CPU backend's form). out may be gate.
        extern "C" __global__ void gelu_tanh_mul(const float* gate, const float* up, float* out, int count) {
            grid_release();
            grid_wait();
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i >= count) return;
            out[i] = gelu_tanh_times(gate[i], up[i]);
        }

        // x += y over `count` values.
        extern "C" __global__ void add_rows(float* x, const float* y, int count) {
            grid_release();
            grid_wait();
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < count) x[i] += y[i];
        }

        // Softmax of each row of `n` in place, the maximum subtracted first. Grid: rows; block: 1024.
        extern "C" __global__ void __launch_bounds__(1024) softmax_rows(float* x, int n) {
            grid_release();
            grid_wait();
            float* row = x + (u64)blockIdx.x * n;
            float m = NEG_INF;
            for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, row[i]);
            m = block_max(m);
            float s = 0.0f;
            for (int i = threadIdx.x; i < n; i += blockDim.x) { float e = expf(row[i] - m); row[i] = e; s += e; }
            float inv = 1.0f / block_sum(s);
            for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] *= inv;
        }

        // The block's largest value and its index (the lowest index on ties), left in thread 0's.
        __device__ void block_argmax_reduce(float& best, int& index) {
            __shared__ float values[32];
            __shared__ int indices[32];
            int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, best, o);
                int oi = __shfl_xor_sync(0xffffffffu, index, o);
                if (ov > best || (ov == best && oi < index)) { best = ov; index = oi; }
            }
            if (lane == 0) { values[warp] = best; indices[warp] = index; }
            __syncthreads();
            if (threadIdx.x == 0) {
                int warps = (blockDim.x + 31) >> 5;
                for (int w = 1; w < warps; w++)
                    if (values[w] > best || (values[w] == best && indices[w] < index)) { best = values[w]; index = indices[w]; }
            }
        }

        __device__ void block_argmax(float best, int index, int* out) {
            block_argmax_reduce(best, index);
            if (threadIdx.x == 0) *out = index;
        }

        // Block y's share of a row of n cut into gridDim.y slices (the last may be short or empty):
        // [lo, hi). argmax_rows, the draws and the logprobs cut a row alike.
        __device__ __forceinline__ void slice_bounds(int n, int& lo, int& hi) {
            int size = (n + gridDim.y - 1) / gridDim.y;
            lo = blockIdx.y * size;
            hi = lo + size < n ? lo + size : n;
        }

        // Each row's largest value in `gridDim.y` slices, one block each: the value and its index
        // (as float bits) per slice into parts (rows, slices, 2), for argmax_finish: one block a row
        // left the other SMs idle while it read 262144 logits. Grid: (rows, slices); block: 256.
        extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* logits, float* parts, int n) {
            grid_release();
            grid_wait();
            const float* row = logits + (u64)blockIdx.x * n;
            int lo, hi;
            slice_bounds(n, lo, hi);
            float best = NEG_INF;
            int index = lo;  // a slice of only -inf or NaN offers its first index: a row of them gives 0
            for (int i = lo + threadIdx.x; i < hi; i += blockDim.x)
                if (row[i] > best) { best = row[i]; index = i; }
            block_argmax_reduce(best, index);
            if (threadIdx.x == 0) {
                float* out = parts + ((u64)blockIdx.x * gridDim.y + blockIdx.y) * 2;
                out[0] = best;
                out[1] = __int_as_float(index);
            }
        }

        // The slices' winners merged, the lowest index on ties: out[row]. Grid: rows; block: 32.
        extern "C" __global__ void argmax_finish(const float* parts, int* out, int slices) {
            grid_release();
            grid_wait();
            const float* p = parts + (u64)blockIdx.x * slices * 2;
            float best = NEG_INF;
            int index = 0x7fffffff;
            for (int z = threadIdx.x; z < slices; z += blockDim.x) {
                float v = p[2 * z];
                int i = __float_as_int(p[2 * z + 1]);
                if (v > best || (v == best && i < index)) { best = v; index = i; }
            }
            block_argmax(best, index, out + blockIdx.x);
        }

        // A draw's parameters (TokenDraw.write): see sample_rows.
        struct SampleRow {
            float temperature;  // <= 0: the argmax
            float top_p;        // 1: off
            float min_p;        // 0: off
            int top_k;          // <= 0: off
            u64 seed;
        };

        __device__ __forceinline__ u64 mix64(u64 z) {
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            return z ^ (z >> 31);
        }

        // Larger floats give larger keys; NaN is taken as -inf.
        __device__ __forceinline__ u32 order_key(float f) {
            u32 u = __float_as_uint(f);
            if ((u & 0x7fffffffu) > 0x7f800000u) u = 0xff800000u;
            return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
        }

        // The value whose order_key is `key` (NaN's is -inf's).
        __device__ __forceinline__ float key_value(u32 key) {
            return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
        }

        __device__ __forceinline__ float capped(float v, float softcap) {
            if (v != v) return NEG_INF;
            return softcap > 0.0f ? tanhf(v / softcap) * softcap : v;
        }

        // (logit - max) / T, with the best exactly 0 even when it is +inf (inf - inf would be NaN).
        __device__ __forceinline__ float scaled(float v, float maximum, float inverse_t) {
            return v == maximum ? 0.0f : (v - maximum) * inverse_t;
        }

        // Penalties before a draw, as the host Sampler applies them (TokenPenalties): with a soft cap,
        // every value of the row is capped first (sample_rows then gets no cap). Each row's entries
        // are (token id, times generated << 1 | in prompt or output, bias as f32 bits), one per id;
        // the bias is added before the penalties, as vLLM's logit processors run first.
        // pending_rows not null (a step queued before the host knew the token each row generated
        // last): row r's entries do not count token pending_ids[pending_rows[r]] yet, which is
        // counted here as the host's Sampler.accept would (TokenPenalties.accepting): its entry's
        // count one more and, with a repetition penalty, seen; or, without an entry, one of its own.
        // Grid: rows; block: 256.
        struct PenaltyRow { u32 first; u32 count; float presence; float frequency; float repetition; u32 unused; };

        __device__ __forceinline__ void penalize(float* row, u32 id, u32 count, bool seen, float bias, const PenaltyRow& p) {
            float v = row[id];
            if (bias != 0.0f) v = __fadd_rn(v, bias);
            // Each operation rounded on its own, as the host rounds (never fused into a multiply-add).
            if (p.repetition != 1.0f && seen) v = v > 0.0f ? __fdiv_rn(v, p.repetition) : __fmul_rn(v, p.repetition);
            if ((p.presence != 0.0f || p.frequency != 0.0f) && count > 0)
                v = __fsub_rn(v, __fadd_rn(p.presence, __fmul_rn(p.frequency, (float)count)));
            row[id] = v;
        }

        extern "C" __global__ void apply_penalties(float* logits, int n, float softcap, const PenaltyRow* rows,
                                                   const u32* entries, const int* pending_ids, const int* pending_rows) {
            grid_release();
            grid_wait();
            __shared__ int listed;
            float* row = logits + (u64)blockIdx.x * n;
            if (softcap > 0.0f) {
                for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = capped(row[i], softcap);
            }
            if (threadIdx.x == 0) listed = 0;
            __syncthreads();  // the capped row and `listed`, for every thread
            PenaltyRow p = rows[blockIdx.x];
            u32 pending = pending_rows ? (u32)pending_ids[pending_rows[blockIdx.x]] : 0xffffffffu;
            for (u32 e = threadIdx.x; e < p.count; e += blockDim.x) {
                u32 id = entries[3 * (p.first + e)], packed = entries[3 * (p.first + e) + 1];
                float bias = __uint_as_float(entries[3 * (p.first + e) + 2]);
                if (id >= (u32)n) continue;
                u32 count = packed >> 1;
                bool seen = packed & 1u;
                if (id == pending) {
                    listed = 1;
                    count += 1;
                    seen = seen || p.repetition != 1.0f;
                }
                penalize(row, id, count, seen, bias, p);
            }
            __syncthreads();  // `listed`, and the listed entries' writes
            if (threadIdx.x == 0 && pending < (u32)n && !listed) penalize(row, pending, 1, p.repetition != 1.0f, 0.0f, p);
        }

        // sample_rows' block: 512 threads, 16 warps (the per-warp histograms fill 32 KB of shared memory).
        #define SAMPLE_WARPS 16

        // Adds each active lane's w to bin `bin` of its warp's histogram, the lanes of one bin together:
        // one atomic per distinct bin instead of up to 32 on one address (most keys share a few top
        // bins, and those atomics were nearly all of a sampled step's time: 1.7 ms on an H200).
        // Counts (mass false, w 1) come from the group's size; masses are summed by shuffles over the
        // active lanes, only where two lanes share a bin. Every lane of the warp calls it.
        __device__ __forceinline__ void warp_histogram_add(u64* histogram, bool active, u32 bin, u64 w, bool mass) {
            u32 lanes = __ballot_sync(0xffffffffu, active);
            if (lanes == 0) return;
            int lane = threadIdx.x & 31;
            u32 peers = __match_any_sync(0xffffffffu, active ? bin : 0xffffffffu);
            bool leader = active && lane == __ffs(peers) - 1;
            if (!mass) {
                if (leader) atomicAdd(&histogram[bin], (u64)__popc(peers));
                return;
            }
            if (__ballot_sync(0xffffffffu, active && __popc(peers) > 1) == 0) {
                if (active) atomicAdd(&histogram[bin], w);
                return;
            }
            u64 total = 0;
            for (u32 rest = lanes; rest != 0; rest &= rest - 1) {
                int source = __ffs(rest) - 1;
                u64 other = __shfl_sync(0xffffffffu, w, source);
                if ((peers >> source) & 1u) total += other;
            }
            if (leader) atomicAdd(&histogram[bin], total);
        }

        // Where a draw reads its row: the logits themselves, capped as read (FullRow, a slice of them
        // for sample_candidates), or the candidates sample_candidates kept (CandidateRow: already
        // capped, each with its token id; unused places read as -inf). Both give count(), value(j), id(j).
        struct FullRow {
            const float* row;
            int n;
            float softcap;
            int first;  // the token id of row[0]
            __device__ __forceinline__ int count() const { return n; }
            __device__ __forceinline__ float value(int j) const { return capped(row[j], softcap); }
            __device__ __forceinline__ int id(int j) const { return first + j; }
        };
        #define SAMPLE_CANDIDATES 512      // places per slice
        #define SAMPLE_CANDIDATE_TOP_K 256  // the largest top_k drawn from candidates
        struct CandidateRow {
            const float* values;  // (slices, SAMPLE_CANDIDATES)
            const int* ids;
            const int* counts;    // per slice
            int slices;
            __device__ __forceinline__ int count() const { return slices * SAMPLE_CANDIDATES; }
            __device__ __forceinline__ float value(int j) const {
                return (j % SAMPLE_CANDIDATES) < counts[j / SAMPLE_CANDIDATES] ? values[j] : NEG_INF;
            }
            __device__ __forceinline__ int id(int j) const {
                return (j % SAMPLE_CANDIDATES) < counts[j / SAMPLE_CANDIDATES] ? ids[j] : 0x7fffffff;
            }
        };
        // The candidates that can still be drawn, gathered into shared memory by sample_rows. With
        // radix_select's histograms and the slices' listed keys that is about 47 KB of sample_rows'
        // 48 KB of static shared memory: there is no room for more.
        #define SAMPLE_GATHERED 1536
        #define SAMPLE_SLICE_TOPS 8  // per slice, toward sample_rows' cut; 64 slices x 8 <= its 512 threads
        struct GatheredRow {
            const float* values;
            const int* ids;
            int n;
            __device__ __forceinline__ int count() const { return n; }
            __device__ __forceinline__ float value(int j) const { return values[j]; }
            __device__ __forceinline__ int id(int j) const { return ids[j]; }
        };

        // The largest key K with weight(keys >= K) >= target, where weight is a count (mass == 0) or
        // the fixed-point probability; only keys >= floor take part. Every thread gets K. histogram:
        // the caller's shared SAMPLE_WARPS x 256 (one per warp: summed per bin in warp order).
        // blockDim.x >= 256 (the bins' running sum takes a thread each); the callers launch 512.
        template <typename Row>
        __device__ u32 radix_select(const Row& src, float maximum, float inverse_t, u32 floor, u64 target, bool mass,
                                    u64 (*histogram)[256]) {
            __shared__ u32 chosen_prefix;
            __shared__ u64 chosen_remaining;
            __shared__ u64 warp_totals[8];
            int warp = threadIdx.x >> 5, warps = blockDim.x >> 5, n = src.count();
            u32 prefix = 0, mask = 0;
            u64 remaining = target;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int b = threadIdx.x; b < SAMPLE_WARPS * 256; b += blockDim.x) histogram[b >> 8][b & 255] = 0;
                __syncthreads();
                // Whole warps go round together (blockDim.x is a multiple of 32): the adds are warp-wide.
                for (int base = 0; base < n; base += blockDim.x) {
                    int i = base + threadIdx.x;
                    bool active = false;
                    u32 bin = 0;
                    u64 w = 0;
                    if (i < n) {
                        float v = src.value(i);
                        u32 key = order_key(v);
                        if (key >= floor && (key & mask) == prefix) {
                            w = mass ? (u64)(expf(scaled(v, maximum, inverse_t)) * 1099511627776.0f) : 1ull;
                            active = w != 0;
                            bin = (key >> shift) & 255u;
                        }
                    }
                    warp_histogram_add(histogram[warp], active, bin, w, mass);
                }
                __syncthreads();
                for (int b = threadIdx.x; b < 256; b += blockDim.x) {
                    u64 sum = 0;
                    for (int w = 0; w < warps; w++) sum += histogram[w][b];
                    histogram[0][b] = sum;
                }
                __syncthreads();
                // The highest bin b whose weight with every bin above it reaches `remaining` (bin 0
                // if none does), and the weight above it: a running sum over the bins from the top,
                // 256 threads at once (warp scans, then the warps' totals), where one thread's loop
                // over the bins took a few microseconds a pass.
                u64 through = 0;  // thread t: the weight of bins 255 - t and above
                if (threadIdx.x < 256) {
                    int lane = threadIdx.x & 31;
                    through = histogram[0][255 - threadIdx.x];
                    for (int o = 1; o < 32; o <<= 1) {
                        u64 below = __shfl_up_sync(0xffffffffu, through, o);
                        if (lane >= o) through += below;
                    }
                    if (lane == 31) warp_totals[warp] = through;
                }
                __syncthreads();
                if (threadIdx.x < 256) {
                    for (int w = 0; w < warp; w++) through += warp_totals[w];
                    int b = 255 - (int)threadIdx.x;
                    u64 above = through - histogram[0][b];
                    // Exactly one thread: the first bin from the top that reaches it, or bin 0.
                    bool reaches = through >= remaining || b == 0;
                    bool before = above >= remaining && b < 255;  // a bin above already reached it
                    if (reaches && !before) {
                        chosen_prefix = prefix | ((u32)b << shift);
                        chosen_remaining = remaining > above ? remaining - above : 1ull;
                    }
                }
                __syncthreads();
                prefix = chosen_prefix;
                remaining = chosen_remaining;
                mask |= 255u << shift;
                __syncthreads();
            }
            return prefix;
        }

        // A token's probability before normalizing, in 2^-40 units (top-p's fixed-point masses).
        __device__ __forceinline__ u64 token_mass(float v, float maximum, float inverse_t) {
            return (u64)(expf(scaled(v, maximum, inverse_t)) * 1099511627776.0f);
        }

        // The Gumbel-max over src's keys at or above `floor` (min-p applied): each thread's best
        // (g, id), the lowest id on ties; block_argmax_reduce then gives the block's.
        template <typename Row>
        __device__ __forceinline__ void gumbel_best(const Row& src, const SampleRow& p, float maximum, float inverse_t,
                                                    u32 floor, float& best, int& index) {
            u64 key = mix64(p.seed);
            best = NEG_INF;
            index = 0x7fffffff;
            for (int i = threadIdx.x; i < src.count(); i += blockDim.x) {
                float v = src.value(i);
                if (order_key(v) < floor || v == NEG_INF) continue;
                float e = scaled(v, maximum, inverse_t);
                if (p.min_p > 0.0f && expf(e) < p.min_p) continue;
                int id = src.id(i);
                // 23 random bits: u stays strictly inside (0, 1) (24 could round up to 1.0), and
                // logf, not __logf, whose error near 1 exceeds -log(u) itself.
                float u = ((float)(mix64(key + (u64)id) >> 41) + 0.5f) * (1.0f / 8388608.0f);
                float g = e - logf(-logf(u));
                if (index == 0x7fffffff || g > best || (g == best && id < index)) { best = g; index = id; }
            }
        }

        // One row's draw (see sample_rows) over `src`, into *out. whole_mass (0: none): src is part of
        // a row with no top-k cut, whose mass is whole_mass, holding every value of the row at or
        // above some key and at least top_p of that mass there (so top-p's cut is the same in both).
        template <typename Row>
        __device__ void draw_row(const Row& src, const SampleRow& p, int* out, u64 (*histogram)[256],
                                 u64 whole_mass = 0) {
            int n = src.count();
            float maximum = NEG_INF;
            int index = 0x7fffffff;
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                float v = src.value(i);
                int id = src.id(i);
                if (v > maximum || (v == maximum && id < index)) { maximum = v; index = id; }
            }
            if (p.temperature <= 0.0f) {
                block_argmax(maximum, index, out);
                if (threadIdx.x == 0 && *out == 0x7fffffff) *out = 0;  // only -inf or NaN: token 0
                return;
            }
            maximum = block_max(maximum);
            float inverse_t = 1.0f / p.temperature;
            u32 floor = 0;
            if (p.top_k > 0 && p.top_k < n) floor = radix_select(src, maximum, inverse_t, 0u, (u64)p.top_k, false, histogram);
            if (p.top_p < 1.0f) {
                // The mass top-k kept, as a count of 2^-40 units: top_p applies to it renormalized.
                __shared__ u64 kept;
                if (whole_mass == 0) {
                    if (threadIdx.x == 0) kept = 0;
                    __syncthreads();
                    u64 mine = 0;
                    for (int i = threadIdx.x; i < n; i += blockDim.x) {
                        float v = src.value(i);
                        if (order_key(v) >= floor) mine += token_mass(v, maximum, inverse_t);
                    }
                    atomicAdd(&kept, mine);
                    __syncthreads();
                }
                u64 mass = whole_mass ? whole_mass : kept;
                // Nothing measurable kept (an infinite logit): top-p leaves the cut as it is.
                if (mass > 0) {
                    u64 target = (u64)ceil((double)p.top_p * (double)mass);
                    if (target == 0) target = 1;
                    floor = radix_select(src, maximum, inverse_t, floor, target, true, histogram);
                }
            }
            float best;
            gumbel_best(src, p, maximum, inverse_t, floor, best, index);
            block_argmax(best, index, out);
            // A row of only -inf or NaN keeps nothing: token 0, as the argmax (thread 0 wrote it).
            if (threadIdx.x == 0 && *out == 0x7fffffff) *out = 0;
        }

        // A row with no top-k cut (and a temperature): drawn from its whole vocabulary.
        __device__ __forceinline__ bool uncut(const SampleRow& p, int n) {
            return p.temperature > 0.0f && !(p.top_k > 0 && p.top_k < n);
        }

        // Each slice's largest capped value, for rows without a top-k cut, which sample_candidates
        // then draws from the whole row on many blocks at once instead of on one: maxima[row, slice].
        // Launched only in steps with such rows. Grid: (rows, slices); block: 512.
        extern "C" __global__ void __launch_bounds__(512) sample_maxima(const float* logits, int n, float softcap,
                                                                       const SampleRow* parameters, float* maxima) {
            grid_release();
            grid_wait();
            SampleRow p = parameters[blockIdx.x];
            if (!uncut(p, n)) return;
            int slices = gridDim.y, lo, hi;
            slice_bounds(n, lo, hi);
            const float* row = logits + (u64)blockIdx.x * n;
            float m = NEG_INF;
            for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) m = fmaxf(m, capped(row[i], softcap));
            m = block_max(m);
            if (threadIdx.x == 0) maxima[(u64)blockIdx.x * slices + blockIdx.y] = m;
        }

        // Stage one of a draw with a top-k cut (1 <= top_k <= SAMPLE_CANDIDATE_TOP_K, below n): each
        // slice of a row, one block each, keeps its own top-k (ties at its cut included), capped,
        // with their ids. The row's top-k is among them, and the rest of the draw (top-p, min-p, the
        // Gumbel-max) depends on the top-k alone, so sample_rows then reads thousands of candidates
        // instead of the whole vocabulary on one SM (1.6 ms a step on an H200). counts[row, slice]:
        // how many; -1 for a row drawn from the whole row (no such cut, or a slice over capacity).
        // With `maxima` (sample_maxima's), a row with no top-k cut whose largest value is finite is
        // drawn on the slices too. Without top-p: each slice's own Gumbel-max (the argmax over the
        // row is the argmax of the slices', and the maximum the draw subtracts is the row's), as
        // (g, id) in its first place, count 1 (0: nothing drawable). With top-p: each slice's top
        // SAMPLE_CANDIDATE_TOP_K as for a cut, and its whole mass in masses[row, slice].
        // Grid: (rows, slices); block: 512.
        extern "C" __global__ void __launch_bounds__(512) sample_candidates(const float* logits, int n, float softcap,
                                                                           const SampleRow* parameters, float* values,
                                                                           int* ids, int* counts, const float* maxima,
                                                                           u64* masses) {
            grid_release();
            grid_wait();
            __shared__ u64 histogram[SAMPLE_WARPS][256];
            __shared__ int kept;
            __shared__ u64 slice_mass;
            SampleRow p = parameters[blockIdx.x];
            int slices = gridDim.y, s = blockIdx.y;
            int* count = counts + (u64)blockIdx.x * slices + s;
            bool cut = p.temperature > 0.0f && p.top_k > 0 && p.top_k <= SAMPLE_CANDIDATE_TOP_K && p.top_k < n;
            bool whole_row = maxima && uncut(p, n);
            float maximum = NEG_INF;
            if (whole_row) {
                for (int j = 0; j < slices; j++) maximum = fmaxf(maximum, maxima[(u64)blockIdx.x * slices + j]);
                // Else (an infinite value, or only -inf and NaN) the one-block draw, as the host's.
                whole_row = (__float_as_uint(maximum) & 0x7f800000u) != 0x7f800000u;
            }
            if (!cut && !whole_row) {
                if (threadIdx.x == 0) *count = -1;
                return;
            }
            int lo, hi;
            slice_bounds(n, lo, hi);
            FullRow src = {logits + (u64)blockIdx.x * n + lo, hi > lo ? hi - lo : 0, softcap, lo};
            u64 at = ((u64)blockIdx.x * slices + s) * SAMPLE_CANDIDATES;
            float inverse_t = 1.0f / p.temperature;
            if (whole_row && p.top_p >= 1.0f) {
                float best;
                int index;
                gumbel_best(src, p, maximum, inverse_t, 0u, best, index);
                block_argmax_reduce(best, index);
                if (threadIdx.x == 0) {
                    values[at] = best;
                    ids[at] = index;
                    *count = index == 0x7fffffff ? 0 : 1;
                }
                return;
            }
            int k = cut ? p.top_k : SAMPLE_CANDIDATE_TOP_K;
            u32 floor = 0;
            if (src.count() > k) floor = radix_select(src, 0.0f, 1.0f, 0u, (u64)k, false, histogram);
            if (threadIdx.x == 0) { kept = 0; slice_mass = 0; }
            __syncthreads();
            u64 mine = 0;
            for (int j = threadIdx.x; j < src.count(); j += blockDim.x) {
                float v = src.value(j);
                if (whole_row) mine += token_mass(v, maximum, inverse_t);
                if (order_key(v) < floor) continue;
                int place = atomicAdd(&kept, 1);
                if (place < SAMPLE_CANDIDATES) {
                    values[at + place] = v;
                    ids[at + place] = src.id(j);
                }
            }
            if (whole_row) atomicAdd(&slice_mass, mine);
            __syncthreads();
            if (threadIdx.x == 0) {
                *count = kept <= SAMPLE_CANDIDATES ? kept : -1;
                if (whole_row) masses[(u64)blockIdx.x * slices + s] = slice_mass;
            }
        }

        // A token per row from softmax(logits / temperature) restricted to the top-k tokens, then to
        // the smallest most likely set holding top_p of their mass, then to tokens at least min_p as
        // likely as the most likely one (vLLM's order), drawn by the Gumbel-max trick: the argmax of
        // (logit - max) / T - log(-log(u)) over the kept tokens, u hashed from (the row's seed, token
        // id), so a seed reproduces its token. Only the id comes back to the host.
        // The top-k and top-p cuts are found by radix selection over order-preserving keys of the
        // logits, 8 bits a pass: counts for top-k, and for top-p each token's probability in fixed
        // point (2^-40 units), so the sums, and with them the tokens, do not depend on the order of
        // the atomic additions. Tokens tied with a cut are all kept. A row whose every slice kept its
        // candidates (sample_candidates, counts) is drawn from them; others from the whole row.
        // `TokenDraw` (Inference) is the same algorithm on the host; the checks compare them.
        // Grid: rows; block: 512 (SAMPLE_WARPS warps).
        extern "C" __global__ void __launch_bounds__(512) sample_rows(const float* logits, int* out, int n, float softcap,
                                                                     const SampleRow* parameters, const float* values,
                                                                     const int* ids, const int* counts, int slices,
                                                                     const float* maxima, const u64* masses) {
            grid_release();
            grid_wait();
            __shared__ u64 histogram[SAMPLE_WARPS][256];
            __shared__ int whole;
            SampleRow p = parameters[blockIdx.x];
            const int* row_counts = counts + (u64)blockIdx.x * slices;
            if (threadIdx.x == 0) {
                whole = slices == 0;
                for (int s = 0; s < slices; s++)
                    if (row_counts[s] < 0) whole = 1;
            }
            __syncthreads();
            bool nucleus = maxima && uncut(p, n);  // no top-k cut, drawn on the slices (sample_candidates)
            u64 at = (u64)blockIdx.x * slices * SAMPLE_CANDIDATES;
            if (whole) {
                FullRow src = {logits + (u64)blockIdx.x * n, n, softcap, 0};
                draw_row(src, p, out + blockIdx.x, histogram);
            } else if (nucleus && p.top_p >= 1.0f) {
                // No cut at all: the row's Gumbel-max is the best of its slices' (the lowest id on
                // ties), a slice a thread (slices <= 64).
                float best = NEG_INF;
                int index = 0x7fffffff;
                if (threadIdx.x < slices && row_counts[threadIdx.x] > 0) {
                    best = values[at + (u64)threadIdx.x * SAMPLE_CANDIDATES];
                    index = ids[at + (u64)threadIdx.x * SAMPLE_CANDIDATES];
                }
                block_argmax(best, index, out + blockIdx.x);
                if (threadIdx.x == 0 && out[blockIdx.x] == 0x7fffffff) out[blockIdx.x] = 0;
            } else {
                CandidateRow src = {values + at, ids + at, row_counts, slices};
                // A candidate below the row's final cut is never drawn, nor counted by a cut, so the
                // draw reads only those at or above a cut known to be at most that one, gathered into
                // shared memory, instead of every slice's 512 places each pass.
                // With a top-k cut, two such cuts (keys), the larger taken: the largest of the slices'
                // own top-k cuts (that slice alone holds k at or above it), and the k-th largest of the
                // slices' 8 largest distinct keys each (k of the row's values are at or above it). The
                // second is the row's k-th largest itself unless one slice holds more than 8 of the
                // row's top k; the first alone let thousands through when k spans slices (1B, k 64:
                // over SAMPLE_GATHERED, so every pass read the places, 170 µs a draw on an H100).
                // With top-p and no top-k (nucleus): the largest key whose listed keys at or above it
                // hold top_p of the row's mass (masses), and the largest slice cut, below which a
                // slice's values are not among the candidates. The gathered values are then every
                // value of the row at or above the cut; if they hold top_p of its mass, the row's
                // top-p cut is among them. Else, if the candidates at or above the largest slice cut
                // hold it (a nucleus too wide to gather), the draw reads the slices' places; else
                // the whole row, on this block. The same token either way.
                int k = nucleus ? SAMPLE_CANDIDATE_TOP_K : p.top_k;
                __shared__ u32 slice_cut[64];  // per slice: its smallest kept key, if it kept k
                __shared__ u32 tops[64 * SAMPLE_SLICE_TOPS];  // per slice: its largest distinct keys, 0 past them
                __shared__ u32 tight;
                __shared__ int gathered;
                __shared__ u64 gathered_mass, wide_mass;
                __shared__ float gathered_values[SAMPLE_GATHERED];
                __shared__ int gathered_ids[SAMPLE_GATHERED];
                int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
                if (threadIdx.x == 0) { gathered = 0; gathered_mass = 0; wide_mass = 0; tight = 0u; }
                for (int sl = warp; sl < slices; sl += warps) {
                    int c = row_counts[sl];
                    const float* sv = values + at + (u64)sl * SAMPLE_CANDIDATES;
                    u32 keys[SAMPLE_CANDIDATES / 32];  // a lane's places: lane, lane + 32, ...
                    u32 smallest = 0xffffffffu;
                    for (int i = 0; i < SAMPLE_CANDIDATES / 32; i++) {
                        int j = lane + 32 * i;
                        keys[i] = j < c ? order_key(sv[j]) : 0u;  // no value's key is 0 (order_key)
                        if (j < c) smallest = keys[i] < smallest ? keys[i] : smallest;
                    }
                    smallest = warp_min_u32(smallest);
                    if (lane == 0) slice_cut[sl] = c >= k ? smallest : 0u;
                    u32 below = 0xffffffffu;  // each round: the largest key under the last round's
                    for (int t = 0; t < SAMPLE_SLICE_TOPS; t++) {
                        u32 best = 0u;
                        for (int i = 0; i < SAMPLE_CANDIDATES / 32; i++)
                            if (keys[i] < below && keys[i] > best) best = keys[i];
                        best = warp_max_u32(best);
                        if (lane == 0) tops[sl * SAMPLE_SLICE_TOPS + t] = best;
                        below = best;
                    }
                }
                float maximum = NEG_INF, inverse_t = 1.0f / p.temperature;
                u64 whole_mass = 0, target = 0;
                if (nucleus) {
                    for (int sl = 0; sl < slices; sl++) {
                        maximum = fmaxf(maximum, maxima[(u64)blockIdx.x * slices + sl]);
                        whole_mass += masses[(u64)blockIdx.x * slices + sl];
                    }
                    target = (u64)ceil((double)p.top_p * (double)whole_mass);  // as draw_row's
                    if (target == 0) target = 1;
                }
                __syncthreads();
                u32 cut = 0;
                for (int sl = 0; sl < slices; sl++) cut = slice_cut[sl] > cut ? slice_cut[sl] : cut;
                int listed = slices * SAMPLE_SLICE_TOPS;  // <= blockDim.x
                // The listed keys' masses, in the histogram's first 512 places (free until the draw).
                u64* listed_mass = &histogram[0][0];
                if (nucleus && threadIdx.x < listed) {
                    u32 key = tops[threadIdx.x];
                    listed_mass[threadIdx.x] = key ? token_mass(key_value(key), maximum, inverse_t) : 0;
                }
                __syncthreads();
                if (threadIdx.x < listed) {
                    u32 mine = tops[threadIdx.x];
                    if (nucleus) {
                        u64 above = 0;
                        for (int j = 0; j < listed; j++) above += tops[j] >= mine ? listed_mass[j] : 0;
                        if (mine != 0u && above >= target) atomicMax(&tight, mine);
                    } else {
                        int at_least = 0;
                        for (int j = 0; j < listed; j++) at_least += tops[j] >= mine;
                        if (mine != 0u && at_least >= k) atomicMax(&tight, mine);
                    }
                }
                __syncthreads();
                u32 widest = cut;  // the largest slice cut: every value of the row above it is a candidate
                if (tight > cut) cut = tight;
                u64 mine = 0, mine_wide = 0;
                for (int sl = warp; sl < slices; sl += warps) {
                    int c = row_counts[sl];
                    u64 from = at + (u64)sl * SAMPLE_CANDIDATES;
                    for (int j = lane; j < c; j += 32) {
                        float v = values[from + j];
                        u32 key = order_key(v);
                        if (nucleus && key >= widest) {
                            u64 w = token_mass(v, maximum, inverse_t);
                            mine_wide += w;
                            if (key >= cut) mine += w;
                        }
                        if (key < cut) continue;
                        int place = atomicAdd(&gathered, 1);
                        if (place < SAMPLE_GATHERED) {
                            gathered_values[place] = v;
                            gathered_ids[place] = ids[from + j];
                        }
                    }
                }
                if (nucleus) {
                    atomicAdd(&gathered_mass, mine);
                    atomicAdd(&wide_mass, mine_wide);
                }
                __syncthreads();
                GatheredRow kept = {gathered_values, gathered_ids, gathered};
                if (nucleus) {
                    if (gathered <= SAMPLE_GATHERED && gathered_mass >= target) {
                        draw_row(kept, p, out + blockIdx.x, histogram, whole_mass);
                    } else if (wide_mass >= target) {
                        draw_row(src, p, out + blockIdx.x, histogram, whole_mass);
                    } else {
                        FullRow row = {logits + (u64)blockIdx.x * n, n, softcap, 0};
                        draw_row(row, p, out + blockIdx.x, histogram);  // past the candidates
                    }
                } else if (gathered <= SAMPLE_GATHERED) {
                    draw_row(kept, p, out + blockIdx.x, histogram);
                } else {
                    draw_row(src, p, out + blockIdx.x, histogram);  // many ties at the cut
                }
            }
        }

        // Logprobs as the host reports them (`Logprobs.token`): the log-softmax of the soft-capped
        // logits before any penalty or temperature (NaN counts as -inf). Row r is rows[r] (logits, or a
        // copy taken before penalties changed them); its token is tokens[source[r]]. Two launches, so
        // that a row spreads over many SMs (on one block each, a row of 262,144 took 0.43 ms a step on
        // an H100): logprob_slices, one block per slice of a row, finds the slice's maximum, its sum of
        // exponentials from that maximum, how many of its values are at least the token's (its rank
        // is how many in all, as vLLM counts it) and its own `top` most likely tokens, largest first and
        // the lower id first on ties; logprob_merge adds the sums up from the row's maximum and merges
        // the slices' lists by `top` block argmaxes over their heads. So the ids and ranks are the host's
        // exactly, and the logprobs within f32 rounding of its sum.
        // parts (rows, slices, LOGPROB_PART): [maximum, sum, count, (id as bits, value) x top].
        // out row r: [token logprob, rank as int bits, (id as bits, logprob) x top].
        #define LOGPROBS_MAX_TOP 20
        #define LOGPROB_PART (3 + 2 * LOGPROBS_MAX_TOP)
        __device__ __forceinline__ bool ranks_before(float v, int i, float w, int j) {
            return v > w || (v == w && i < j);
        }

        // The value of row r's token, capped (NaN when the token is out of range, as the host's).
        __device__ __forceinline__ float token_value(const float* row, int n, float softcap, const int* source,
                                                     const int* tokens, bool& valid) {
            int token = tokens[source[blockIdx.x]];
            valid = token >= 0 && token < n;
            return valid ? capped(row[token], softcap) : __int_as_float(0x7fc00000);
        }

        // Grid: (rows, slices); block: 512.
        extern "C" __global__ void __launch_bounds__(512) logprob_slices(const u64* rows, int n, float softcap,
                                                                         const int* source, const int* tokens, int top,
                                                                         float* parts) {
            grid_release();
            grid_wait();
            __shared__ int picked;
            const float* row = (const float*)rows[blockIdx.x];
            int slices = gridDim.y, lo, hi;
            slice_bounds(n, lo, hi);
            top = top < 0 ? 0 : (top > LOGPROBS_MAX_TOP ? LOGPROBS_MAX_TOP : top);
            float* o = parts + ((u64)blockIdx.x * slices + blockIdx.y) * LOGPROB_PART;
            float values[LOGPROBS_MAX_TOP];
            int ids[LOGPROBS_MAX_TOP];
            int count = 0;
            float last = NEG_INF;  // values[top - 1] once the list is full
            float maximum = NEG_INF;
            for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                float v = capped(row[i], softcap);
                maximum = fmaxf(maximum, v);
                // i grows, so a tie never displaces an earlier (lower) id: only a larger value enters a full list.
                if (top == 0 || (count == top && !(v > last))) continue;
                int p = count < top ? count++ : top - 1;
                while (p > 0 && ranks_before(v, i, values[p - 1], ids[p - 1])) {
                    values[p] = values[p - 1];
                    ids[p] = ids[p - 1];
                    p--;
                }
                values[p] = v;
                ids[p] = i;
                if (count == top) last = values[top - 1];
            }
            maximum = block_max(maximum);
            bool valid;
            float target = token_value(row, n, softcap, source, tokens, valid);
            float s = 0.0f, at_least = 0.0f;  // a count in f32: exact up to 2^24, past any vocabulary
            for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
                float v = capped(row[i], softcap);
                if (maximum != NEG_INF) s += expf(v - maximum);  // a slice of only -inf adds nothing
                if (v >= target) at_least += 1.0f;
            }
            s = block_sum(s);
            at_least = block_sum(at_least);
            if (threadIdx.x == 0) { o[0] = maximum; o[1] = s; o[2] = at_least; }
            int head = 0;  // this thread's first entry not yet taken
            for (int j = 0; j < top; j++) {
                block_argmax(head < count ? values[head] : NEG_INF, head < count ? ids[head] : n, &picked);
                __syncthreads();
                int chosen = picked;
                __syncthreads();  // picked is written again by the next merge
                if (chosen >= n) {  // fewer than `top` tokens in the slice
                    if (threadIdx.x == 0) { o[3 + 2 * j] = __int_as_float(n); o[4 + 2 * j] = NEG_INF; }
                    continue;
                }
                if (head < count && ids[head] == chosen) {  // ids are distinct: exactly one thread
                    o[3 + 2 * j] = __int_as_float(chosen);
                    o[4 + 2 * j] = values[head];
                    head++;
                }
            }
        }

        // Grid: rows; block: 512 (slices <= 512).
        extern "C" __global__ void __launch_bounds__(512) logprob_merge(const u64* rows, int n, float softcap,
                                                                        const int* source, const int* tokens, int top,
                                                                        const float* parts, int slices, float* out) {
            grid_release();
            grid_wait();
            __shared__ int picked;
            const float* row = (const float*)rows[blockIdx.x];
            top = top < 0 ? 0 : (top > LOGPROBS_MAX_TOP ? LOGPROBS_MAX_TOP : top);
            const float* part = parts + (u64)blockIdx.x * slices * LOGPROB_PART;
            float* o = out + (u64)blockIdx.x * (2 + 2 * top);
            float maximum = NEG_INF;
            for (int sl = 0; sl < slices; sl++) maximum = fmaxf(maximum, part[sl * LOGPROB_PART]);
            float s = 0.0f, rank = 0.0f;
            for (int sl = 0; sl < slices; sl++) {
                float m = part[sl * LOGPROB_PART];
                if (m != NEG_INF) s += part[sl * LOGPROB_PART + 1] * expf(m - maximum);
                rank += part[sl * LOGPROB_PART + 2];
            }
            float lse = maximum + logf(s);
            bool valid;
            float target = token_value(row, n, softcap, source, tokens, valid);
            if (threadIdx.x == 0) {
                o[0] = valid ? target - lse : __int_as_float(0x7fc00000);
                o[1] = __int_as_float((int)rank);
            }
            // Thread t holds slice t's list; its head is the slice's best not yet taken.
            const float* list = part + (u64)threadIdx.x * LOGPROB_PART + 3;
            int head = 0;
            for (int j = 0; j < top; j++) {
                float v = NEG_INF;
                int id = n;
                if (threadIdx.x < slices && head < top) {
                    id = __float_as_int(list[2 * head]);
                    v = id < n ? list[2 * head + 1] : NEG_INF;
                }
                block_argmax(v, id, &picked);
                __syncthreads();
                int chosen = picked;
                __syncthreads();  // picked is written again by the next merge
                if (chosen >= n) {  // fewer than `top` tokens in the row
                    if (threadIdx.x == 0) { o[2 + 2 * j] = __int_as_float(-1); o[3 + 2 * j] = NEG_INF; }
                    continue;
                }
                if (threadIdx.x < slices && head < top && id == chosen) {  // ids are distinct: exactly one thread
                    o[2 + 2 * j] = __int_as_float(chosen);
                    o[3 + 2 * j] = v - lse;
                    head++;
                }
            }
        }
        """#
}
