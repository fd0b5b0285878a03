// A stand-in for the NVIDIA driver (libcuda.so.1) that runs the CUDA C kernels on the CPU, for
// tests on machines without a GPU. It is compiled by the test from the very kernel source the
// backend hands to NVRTC (kernels.cu, included below with CUDA's keywords defined away), and it
// implements the driver calls CUDAContext and CUDADriver make: memory is host memory, copies are
// memcpy, a module is accepted if it is an ELF (the CUBIN NVRTC really produced) and its functions
// are looked up among the emulated kernels by name.
//
// Kernels run block by block; the threads of a block are coroutines (ucontext) on one OS thread,
// switched at __syncthreads and at each warp shuffle, so block and warp barriers behave as on the
// GPU: a barrier releases when every thread of its block (or warp) that has not returned reaches
// it, and a barrier that can never release (divergence) aborts the launch with a message.
// Between barriers the threads of a block run one after another, lowest index first, or highest
// first after cudaEmulatorReverseThreads(1): a kernel that reads what another thread wrote without a
// barrier between them gets the value in one of the two orders and not in the other, so the checks
// run both (on a GPU the order is anyone's).
// A block whose live threads all wait on a grid barrier (a persistent kernel's, spinning: grid_spin)
// keeps its threads and stacks while the next block starts beside it; once every block has started,
// the waiting ones are resumed in turn, so blocks meet at grid barriers as all resident blocks of
// a GPU do (shared memory, static here, does not survive a grid barrier: other blocks ran; a
// cp.async copy issued before one lands at its thread's wait, after it, as below).
// Not emulated: races between blocks (blocks run one after another), memory coalescing, timing.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <setjmp.h>
#include <ucontext.h>
#include <utility>
#include <vector>

namespace emu {
struct dim3 { unsigned x = 1, y = 1, z = 1; };
enum State { Ready, AtBlockBarrier, AtWarpBarrier, Spinning, Done };
struct Thread {
    ucontext_t context;  // only to enter the coroutine's stack once per launch
    jmp_buf resume;      // every later switch: _setjmp/_longjmp, which make no system call
    bool started = false;
    dim3 index;
    dim3 block;  // blockIdx: the block its slot runs now
    State state = Ready;
    uint64_t slot[2] = {0, 0};  // a shuffle's value, in alternate slots for consecutive shuffles
    uint32_t fragment[2][6];    // an mma's A and B fragments, in the same alternation
    unsigned shuffles = 0;
    // Its cp.async copies not yet landed: those since its last commit, then its committed groups, oldest first.
    struct Copy { void *to; const void *from; };
    std::vector<Copy> uncommitted;
    std::deque<std::vector<Copy>> committed;
};
// Slots of a launch's block size, one after another (a deque: threads do not move as slots are added).
static std::deque<Thread> threads;
static std::vector<std::unique_ptr<char[]>> stacks;  // a slot's threads' stacks
static std::vector<size_t> stackBytes;
static const size_t stackSize = 64 * 1024;
static ucontext_t scheduler;
static jmp_buf schedulerResume;
static int current = 0;
static dim3 block, grid;

static void wait(State barrier) {
    threads[current].state = barrier;
    if (!_setjmp(threads[current].resume)) _longjmp(schedulerResume, 1);
}

// Runs thread t until it waits at a barrier or finishes its block.
static void run(int t) {
    current = t;
    if (_setjmp(schedulerResume)) return;
    if (!threads[t].started) {
        threads[t].started = true;
        swapcontext(&scheduler, &threads[t].context);  // first entry: onto its own stack
        return;
    }
    _longjmp(threads[t].resume, 1);
}
static void entry(int);
}  // namespace emu

// Aligned as CUDA's: a uint4 or float4 in shared memory is a cp.async destination.
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx (emu::threads[emu::current].index)
#define blockIdx (emu::threads[emu::current].block)
#define blockDim (emu::block)
#define gridDim (emu::grid)

static inline float __uint_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned v; memcpy(&v, &f, 4); return v; }
static inline float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
static inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// glibc declares __expf and __logf without exporting them: the kernels get expf and logf.
#define __expf(x) expf(x)
// Built without -mfma (and x86-64's baseline has no FMA), so nothing here is contracted either.
#define __fadd_rn(a, b) ((a) + (b))
#define __fsub_rn(a, b) ((a) - (b))
#define __fmul_rn(a, b) ((a) * (b))
#define __fdiv_rn(a, b) ((a) / (b))
#define __logf(x) logf(x)
static inline void __syncthreads() { emu::wait(emu::AtBlockBarrier); }
// A wait at a grid barrier (grid_spin, in the loop that reads its generation): lets other blocks run.
static inline void emu_spin() { emu::wait(emu::Spinning); }
// Blocks run one after another and threads switch only at barriers: every write is seen already.
static inline void __threadfence() {}
// Threads switch only at barriers, so a plain read-modify-write is atomic here.
template <typename T> static T atomicExch(T *address, T value) {
    T old = *address;
    *address = value;
    return old;
}
template <typename T> static T atomicAdd(T *address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}
template <typename T> static T atomicMax(T *address, T value) {
    T old = *address;
    if (value > old) *address = value;
    return old;
}

// Warp-wide exchanges: every lane writes its value into a slot, waits for the warp, then reads the
// lanes it needs. One barrier per exchange: a lane writes slot n % 2, and the barrier of exchange
// n + 1 (which every lane passes only after reading exchange n) comes before anyone writes that slot
// again. Returns the slot this exchange used.
static unsigned emu_exchange(uint64_t bits) {
    emu::Thread &self = emu::threads[emu::current];
    unsigned which = self.shuffles++ & 1;
    self.slot[which] = bits;
    emu::wait(emu::AtWarpBarrier);  // every lane has written its value
    return which;
}

// Lane `lane`'s value of exchange `which`, as a T.
template <typename T> static T emu_lane_value(int lane, unsigned which) {
    uint64_t theirs = emu::threads[(emu::current & ~31) | (lane & 31)].slot[which];
    T result;
    memcpy(&result, &theirs, sizeof(T));
    return result;
}

template <typename T> static uint64_t emu_bits(T value) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <typename T> static T __shfl_xor_sync(unsigned, T value, int mask) {
    unsigned which = emu_exchange(emu_bits(value));
    return emu_lane_value<T>((emu::current & 31) ^ mask, which);
}

template <typename T> static T __shfl_sync(unsigned, T value, int source) {
    return emu_lane_value<T>(source, emu_exchange(emu_bits(value)));
}

// Lane - delta's value; a lane below delta keeps its own (as the GPU's, width 32).
template <typename T> static T __shfl_up_sync(unsigned, T value, unsigned delta) {
    unsigned which = emu_exchange(emu_bits(value));
    int lane = emu::current & 31;
    return lane >= (int)delta ? emu_lane_value<T>(lane - (int)delta, which) : value;
}

// Lanes whose value equals `value` (match == true) or whose value is non-zero (ballot).
static unsigned emu_warp_mask(uint64_t value, bool match) {
    unsigned which = emu_exchange(value);
    unsigned mask = 0;
    int first = emu::current & ~31;
    for (int lane = 0; lane < 32 && first + lane < (int)emu::threads.size(); lane++) {
        uint64_t theirs = emu::threads[first + lane].slot[which];
        if (match ? theirs == value : theirs != 0) mask |= 1u << lane;
    }
    return mask;
}
static unsigned __ballot_sync(unsigned, int predicate) { return emu_warp_mask(predicate != 0, false); }
static unsigned __match_any_sync(unsigned, unsigned value) { return emu_warp_mask(value, true); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for the warp: every lane gives its A (4 words)
// and B (2 words) fragments, laid out as the PTX ISA says (see mma_bf16_16816 in the kernels), and
// adds its own four elements of D. One barrier, with the shuffles' alternation: the next exchange's
// barrier comes before any lane writes this slot again. The 16 products of an element are summed in
// f32 in k order (a GPU's order and rounding within the tile are its own: the checks allow for it).
static void emu_mma_bf16_16816(float *d, const unsigned *a, const unsigned *b) {
    emu::Thread &self = emu::threads[emu::current];
    unsigned which = self.shuffles++ & 1;
    for (int i = 0; i < 4; i++) self.fragment[which][i] = a[i];
    self.fragment[which][4] = b[0];
    self.fragment[which][5] = b[1];
    emu::wait(emu::AtWarpBarrier);
    int first = emu::current & ~31, lane = emu::current & 31, g = lane >> 2, q = lane & 3;
    // mma.sync.aligned needs the whole warp: a lane missing or returned would feed stale fragments.
    for (int other = first; other < first + 32; other++) {
        if (other >= (int)emu::threads.size() || emu::threads[other].state == emu::Done) {
            fprintf(stderr, "cuda emulator: mma.sync with lane %d of the warp missing or returned\n", other - first);
            abort();
        }
    }
    // The bf16 in word `word` of lane `holder`'s fragments, low half for an even column (A) or row (B).
    auto value = [&](int holder, int word, int odd) {
        uint32_t bits = emu::threads[first + holder].fragment[which][word];
        return __uint_as_float((odd ? bits >> 16 : bits & 0xffffu) << 16);
    };
    for (int i = 0; i < 4; i++) {
        int row = g + 8 * (i >> 1), column = 2 * q + (i & 1);
        float sum = 0.0f;
        for (int kk = 0; kk < 16; kk++) {
            // A(row, kk): lane (row % 8) * 4 + (kk % 8) / 2, word (row / 8) + 2 * (kk / 8).
            float av = value((row & 7) * 4 + ((kk & 7) >> 1), (row >> 3) + 2 * (kk >> 3), kk & 1);
            // B(kk, column): lane column * 4 + (kk % 8) / 2, word 4 + kk / 8.
            float bv = value(column * 4 + ((kk & 7) >> 1), 4 + (kk >> 3), kk & 1);
            sum += av * bv;
        }
        d[i] += sum;
    }
}

// The kernels' L2 prefetches (prefetch_line): counted, and each checked to fall inside memory
// cuMemAlloc gave (a real GPU would not fault on a stray one, and it would go unnoticed).
namespace emu {
static std::map<uintptr_t, size_t> allocations;  // start -> bytes
static std::mutex allocationLock;                 // the backend may allocate on another thread
static unsigned long prefetchedLines = 0, strayPrefetches = 0;
}
static void emu_prefetch(const void *p) {
    uintptr_t a = (uintptr_t)p;
    std::lock_guard<std::mutex> hold(emu::allocationLock);
    auto next = emu::allocations.upper_bound(a);
    bool inside = next != emu::allocations.begin() && a < std::prev(next)->first + std::prev(next)->second;
    emu::prefetchedLines++;
    if (!inside) emu::strayPrefetches++;
}
// The persistent kernels' stamps (`stamp`): a count, so that their order is what a test can check.
static unsigned long long emu_clock() {
    static unsigned long long count = 0;
    return ++count;
}
// cp.async (copy16_to_shared and its waits): a 16-byte copy into shared memory lands only when its
// thread waits for it (cp.async.wait_group N: all but its N latest groups; wait_all: every copy, as
// a commit and wait_group 0), and its place holds NaNs until then. So a kernel that reads a copy it
// has not waited for, a wait that leaves one group too many in flight, say, gets other numbers than
// the checks expect, where copying at once would hide it (on a GPU it gets the old bytes or the
// new, as timing has it). A block's copies still in flight when it ends are dropped.
// Each copy is also checked as a GPU would fault on it: both places 16-byte aligned, the source
// inside memory cuMemAlloc gave (a fault there would end the process that made it).
static void emu_copy_async(void *to, const void *from) {
    uintptr_t a = (uintptr_t)from;
    bool inside;
    {
        std::lock_guard<std::mutex> hold(emu::allocationLock);
        auto next = emu::allocations.upper_bound(a);
        inside = next != emu::allocations.begin() && a + 16 <= std::prev(next)->first + std::prev(next)->second;
    }
    if (((uintptr_t)to | a) % 16 != 0 || !inside) {
        fprintf(stderr, "cuda emulator: cp.async from %p to %p: %s\n", from, to, inside ? "misaligned" : "outside device memory");
        abort();
    }
    memset(to, 0xff, 16);
    emu::threads[emu::current].uncommitted.push_back({to, from});
}
static void emu_copies_commit() {
    emu::Thread &self = emu::threads[emu::current];
    self.committed.push_back(std::move(self.uncommitted));
    self.uncommitted.clear();
}
static void emu_copies_wait(size_t pending) {
    emu::Thread &self = emu::threads[emu::current];
    while (self.committed.size() > pending) {
        for (const emu::Thread::Copy &copy : self.committed.front()) memcpy(copy.to, copy.from, 16);
        self.committed.pop_front();
    }
}
static void emu_copies_wait_all() {
    emu_copies_commit();
    emu_copies_wait(0);
}
#define CUDA_EMULATOR 1
#include "kernels.cu"

namespace emu {
typedef void (*Launcher)(void **);
template <typename... A, size_t... I> static void call(void (*kernel)(A...), void **params, std::index_sequence<I...>) {
    kernel(*static_cast<A *>(params[I])...);
}
// One entry per kernel: its launcher unpacks the driver's void** parameters by the kernel's own
// signature.
template <typename... A> static constexpr auto index_for(void (*)(A...)) { return std::index_sequence_for<A...>{}; }
template <typename... A> static constexpr size_t count_for(void (*)(A...)) { return sizeof...(A); }
struct Kernel {
    Launcher launch;
    size_t parameters;
    const char *name;
};
#define KERNEL(name) {#name, Kernel{[](void **p) { call(name, p, index_for(name)); }, count_for(name), #name}},
static std::map<std::string, Kernel> registry = {
#include "registry.inc"
};

// Streams and graphs. A capturing stream records its work (a launch's arguments by value, as the
// driver copies them; an upload's host address, read when the graph runs, as the driver does), and
// a graph launch runs the recorded work in order. While a stream captures, work on the legacy
// stream and synchronizing calls are errors, as on a GPU (cudaErrorStreamCaptureImplicit and
// cudaErrorStreamCaptureUnsupported): the backend must never do them mid-capture.
struct Operation {
    enum Kind { Launch, Upload, Copy } kind;
    const Kernel *kernel = nullptr;
    dim3 grid, block;
    std::vector<uint64_t> arguments;
    uint64_t to = 0, from = 0;
    size_t bytes = 0;
};
struct Stream {
    bool capturing = false;
    std::vector<Operation> work;
};
struct Graph {
    std::vector<Operation> work;
};
static int capturing = 0;  // streams now capturing
static bool refuseCapture = false;  // cudaEmulatorRefuseCapture
static bool reverseThreads = false;  // cudaEmulatorReverseThreads
static int architecture = 90;        // cudaEmulatorSetArchitecture
static unsigned long graphLaunches = 0;

static int launch(const Kernel &kernel, dim3 g, dim3 b, void **params);
static int perform(const Operation &op) {
    switch (op.kind) {
    case Operation::Launch: {
        std::vector<void *> pointers;
        for (auto &word : op.arguments) pointers.push_back((void *)&word);
        return launch(*op.kernel, op.grid, op.block, pointers.data());
    }
    case Operation::Upload: memcpy((void *)op.to, (const void *)op.from, op.bytes); return 0;
    case Operation::Copy: memmove((void *)op.to, (void *)op.from, op.bytes); return 0;
    }
    return 1;
}
// Work queued on `stream`: recorded when it captures, else done now. Legacy-stream work while a
// capture is open is the error a GPU gives.
static int submit(void *stream, Operation op) {
    Stream *s = (Stream *)stream;
    if (s && s->capturing) {
        s->work.push_back(std::move(op));
        return 0;
    }
    if (!s && capturing) return 904;  // CUDA_ERROR_STREAM_CAPTURE_IMPLICIT
    return perform(op);
}

static Launcher pending;
static void **pendingParams;
// A coroutine's life: the kernel for each block in turn; between blocks it waits as Done until
// the scheduler readies it for the next one. Launches end with every coroutine parked here.
static void entry(int) {
    for (;;) {
        pending(pendingParams);
        wait(Done);
    }
}

// Adds a slot of `count` threads (fresh coroutines at entry) and returns its number.
static size_t addSlot(size_t count) {
    size_t slot = threads.size() / count;
    if (stacks.size() <= slot) {
        stacks.emplace_back();
        stackBytes.push_back(0);
    }
    if (stackBytes[slot] < count * stackSize) {
        stacks[slot].reset(new char[count * stackSize]);
        stackBytes[slot] = count * stackSize;
    }
    for (size_t t = 0; t < count; t++) {
        threads.emplace_back();
        Thread &thread = threads.back();
        thread.index = {(unsigned)(t % block.x), (unsigned)(t / block.x % block.y), (unsigned)(t / (block.x * block.y))};
        getcontext(&thread.context);
        thread.context.uc_stack.ss_sp = &stacks[slot][t * stackSize];
        thread.context.uc_stack.ss_size = stackSize;
        thread.context.uc_link = nullptr;
        makecontext(&thread.context, (void (*)())entry, 1, 0);
    }
    return slot;
}

// The emulated GPU's multiprocessors, and how many blocks of `threads` threads of a kernel each holds
// at once (what cuDeviceGetAttribute and cuOccupancyMaxActiveBlocksPerMultiprocessor report): decode_mlp,
// in 64 registers, four, as on a GPU, so that a persistent grid of it is twice another's; mlp_fused_bf16,
// which the backend fuses only where its whole grid fits at once, sixteen, so that the tests' grids of
// several slices (16 blocks each) fit (its blocks wait at barriers of their slice); the staged
// one-token products, which the backend stages only where the whole grid fits at once, 160, so that
// a test model's products (up to 640 blocks) are staged.
static const int multiprocessors = 4;
static int residentBlocks(const char *kernel, size_t threads) {
    if (threads > 256) return 1;
    if (strcmp(kernel, "mlp_fused_bf16") == 0) return 16;
    if (strstr(kernel, "_staged_") != nullptr) return 160;
    return strcmp(kernel, "decode_mlp") == 0 ? 4 : 2;
}

static unsigned long progress = 0;  // threads that ran to anything but another spin
enum SlotResult { Finished, Waiting, Deadlock };

// Runs the block in `slot` until it finishes, or until its live threads wait only on a grid barrier.
static SlotResult runSlot(size_t slot, size_t count) {
    size_t first = slot * count;
    dim3 at = threads[first].block;
    for (;;) {
        for (size_t k = 0; k < count; k++) {
            size_t t = first + (reverseThreads ? count - 1 - k : k);
            if (threads[t].state == Ready) {
                run((int)t);
                if (threads[t].state != Spinning) progress++;
            }
        }
        bool done = true, released = false, spinning = false;
        for (size_t t = first; t < first + count; t++) {
            done = done && threads[t].state == Done;
            spinning = spinning || threads[t].state == Spinning;
        }
        if (done) return Finished;
        // A block barrier releases when no live thread is anywhere else.
        bool barrier = true;
        for (size_t t = first; t < first + count; t++)
            barrier = barrier && (threads[t].state == Done || threads[t].state == AtBlockBarrier);
        if (barrier) {
            for (size_t t = first; t < first + count; t++) if (threads[t].state == AtBlockBarrier) threads[t].state = Ready;
            continue;
        }
        for (size_t w = first; w < first + count; w += 32) {
            bool warp = true, any = false;
            for (size_t t = w; t < w + 32 && t < first + count; t++) {
                warp = warp && (threads[t].state == Done || threads[t].state == AtWarpBarrier);
                any = any || threads[t].state == AtWarpBarrier;
            }
            if (warp && any) {
                for (size_t t = w; t < w + 32 && t < first + count; t++)
                    if (threads[t].state == AtWarpBarrier) threads[t].state = Ready;
                released = true;
            }
        }
        if (released) continue;
        if (spinning) return Waiting;
        fprintf(stderr, "cuda emulator: block (%u,%u,%u) deadlocks at a barrier some threads never reach\n", at.x, at.y, at.z);
        return Deadlock;
    }
}

static int launch(const Kernel &kernel, dim3 g, dim3 b, void **params) {
    grid = g;
    block = b;
    size_t count = (size_t)b.x * b.y * b.z;
    if (count == 0 || count > 1024) return 1;  // CUDA_ERROR_INVALID_VALUE
    threads.clear();
    pending = kernel.launch;
    pendingParams = params;
    // Reversed, the blocks run last first too: a block that reads what another block of the same
    // launch writes (no order between blocks on a GPU) then gets the other value.
    size_t blocks = (size_t)g.x * g.y * g.z, started = 0;
    std::vector<size_t> free, waiting;
    while (started < blocks || !waiting.empty()) {
        if (started < blocks) {
            if (free.empty() && threads.size() > 0 && count % 32 != 0) {
                fprintf(stderr, "cuda emulator: blocks that wait at a grid barrier must be whole warps\n");
                return 999;
            }
            size_t slot = free.empty() ? addSlot(count) : free.back();
            if (!free.empty()) free.pop_back();
            size_t linear = reverseThreads ? blocks - 1 - started : started;
            dim3 at = {(unsigned)(linear % g.x), (unsigned)(linear / g.x % g.y), (unsigned)(linear / ((size_t)g.x * g.y))};
            for (size_t t = slot * count; t < (slot + 1) * count; t++) {
                threads[t].block = at;
                threads[t].state = Ready;
                threads[t].shuffles = 0;  // every lane of a warp starts the block on the same slot
                threads[t].uncommitted.clear();
                threads[t].committed.clear();
            }
            started++;
            SlotResult result = runSlot(slot, count);
            if (result == Deadlock) return 999;
            if (result == Finished) free.push_back(slot);
            else waiting.push_back(slot);
            // A GPU holds only so many blocks at once: a grid barrier that needs more would hang.
            size_t resident = (size_t)(multiprocessors * residentBlocks(kernel.name, count));
            if (waiting.size() > resident) {
                fprintf(stderr, "cuda emulator: more blocks wait at a grid barrier than the GPU holds at once (%zu)\n", resident);
                return 999;
            }
            continue;
        }
        // Every block has started: the waiting ones go on in turn, until none makes progress.
        unsigned long before = progress;
        std::vector<size_t> still;
        for (size_t slot : waiting) {
            for (size_t t = slot * count; t < (slot + 1) * count; t++)
                if (threads[t].state == Spinning) threads[t].state = Ready;
            SlotResult result = runSlot(slot, count);
            if (result == Deadlock) return 999;
            if (result == Waiting) still.push_back(slot);
        }
        waiting = still;
        if (!waiting.empty() && progress == before) {
            fprintf(stderr, "cuda emulator: %zu blocks wait at a grid barrier that never releases\n", waiting.size());
            return 999;
        }
    }
    return 0;
}
}  // namespace emu

// The driver API, as far as the backend uses it.
typedef int CUresult;
typedef uint64_t CUdeviceptr;
struct Module { int unused; };
extern "C" {
CUresult cuInit(unsigned) { return 0; }
CUresult cuDriverGetVersion(int *v) { *v = 12040; return 0; }  // 12.4: has dependent launches
CUresult cuGetErrorName(CUresult code, const char **s) { *s = code == 500 ? "CUDA_ERROR_NOT_FOUND" : code == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : "CUDA_ERROR_EMULATED"; return 0; }
CUresult cuGetErrorString(CUresult code, const char **s) { *s = code == 500 ? "named symbol not found" : "error in the CUDA emulator"; return 0; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { *d = ordinal; return ordinal == 0 ? 0 : 101; }
CUresult cuDeviceGetName(char *name, int length, int) { snprintf(name, length, "CUDA emulator (CPU)"); return 0; }
CUresult cuDeviceTotalMem_v2(size_t *bytes, int) { *bytes = (size_t)8 << 30; return 0; }
CUresult cuDeviceGetAttribute(int *value, int attribute, int) {
    switch (attribute) {
    case 75: *value = emu::architecture / 10; break;  // compute capability: sm_90 unless a test says
    case 76: *value = emu::architecture % 10; break;
    case 16: *value = emu::multiprocessors; break;
    case 36: *value = 1000000; break;
    case 37: *value = 256; break;
    case 38: *value = 256 << 10; break;  // L2 bytes: half is less than a small test model's next products
    default: *value = 0;
    }
    return 0;
}
CUresult cuDevicePrimaryCtxRetain(void **context, int) { static int primary; *context = &primary; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int) { return 0; }
CUresult cuCtxSetCurrent(void *) { return 0; }
CUresult cuCtxSynchronize() { return emu::capturing ? 900 : 0; }
CUresult cuMemGetInfo_v2(size_t *free, size_t *total) { *free = (size_t)7 << 30; *total = (size_t)8 << 30; return 0; }
CUresult cuMemAlloc_v2(CUdeviceptr *address, size_t bytes) {
    void *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!p) return 2;
    *address = (CUdeviceptr)p;
    std::lock_guard<std::mutex> hold(emu::allocationLock);
    emu::allocations[(uintptr_t)p] = bytes;
    return 0;
}
CUresult cuMemFree_v2(CUdeviceptr address) {
    {
        std::lock_guard<std::mutex> hold(emu::allocationLock);
        emu::allocations.erase((uintptr_t)address);
    }
    free((void *)address);
    return 0;
}
CUresult cuMemsetD32_v2(CUdeviceptr address, unsigned value, size_t count) {
    for (size_t i = 0; i < count; i++) ((unsigned *)address)[i] = value;
    return 0;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr to, const void *from, size_t bytes) {
    if (emu::capturing) return 900;  // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
    memcpy((void *)to, from, bytes);
    return 0;
}
CUresult cuMemcpyDtoH_v2(void *to, CUdeviceptr from, size_t bytes) {
    if (emu::capturing) return 900;
    memcpy(to, (void *)from, bytes);
    return 0;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr to, const void *from, size_t bytes, void *stream) {
    emu::Operation op{emu::Operation::Upload};
    op.to = to;
    op.from = (uint64_t)from;
    op.bytes = bytes;
    return emu::submit(stream, op);
}
// Work runs as it is queued here, so a copy to the host is done on return and an event has always
// been reached; a capture may not take either (the backend never asks it to).
CUresult cuMemcpyDtoHAsync_v2(void *to, CUdeviceptr from, size_t bytes, void *stream) {
    if (stream && ((emu::Stream *)stream)->capturing) return 900;
    emu::Operation op{emu::Operation::Copy};
    op.to = (uint64_t)to;
    op.from = from;
    op.bytes = bytes;
    return emu::submit(stream, op);
}
CUresult cuEventCreate(void **event, unsigned) { *event = new int(0); return 0; }
CUresult cuEventRecord(void *event, void *stream) {
    if (!event || (stream && ((emu::Stream *)stream)->capturing)) return 900;
    ++*(int *)event;
    return 0;
}
CUresult cuEventSynchronize(void *event) { return event && *(int *)event > 0 ? 0 : 400; }  // 400: CUDA_ERROR_INVALID_HANDLE
CUresult cuMemAllocHost_v2(void **pointer, size_t bytes) { *pointer = malloc(bytes); return *pointer ? 0 : 2; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr to, CUdeviceptr from, size_t bytes, void *stream) {
    emu::Operation op{emu::Operation::Copy};
    op.to = to;
    op.from = from;
    op.bytes = bytes;
    return emu::submit(stream, op);
}
// A CUBIN (ELF) for this GPU's architecture exactly (the low byte of e_flags), or PTX text, which a
// driver compiles for its GPU at load, for this architecture or an earlier one (NVRTC's PTX opens
// with comments and names its ISA version and target). 200: CUDA_ERROR_INVALID_IMAGE; 209:
// CUDA_ERROR_NO_BINARY_FOR_GPU, what a driver says to a module for another GPU.
static CUresult checkModule(const void *image) {
    const char *text = (const char *)image;
    if (memcmp(image, "\x7f" "ELF", 4) == 0) {
        unsigned char sm = ((const unsigned char *)image)[48];
        return sm == emu::architecture ? 0 : 209;
    }
    if (memcmp(text, "//", 2) != 0 || strstr(text, ".version") == nullptr) return 200;
    const char *target = strstr(text, ".target sm_");
    if (target == nullptr) return 200;
    return atoi(target + strlen(".target sm_")) <= emu::architecture ? 0 : 209;
}
CUresult cuModuleLoadData(void **module, const void *image) {
    if (CUresult status = checkModule(image)) return status;
    *module = new Module();
    return 0;
}
CUresult cuModuleUnload(void *module) { delete (Module *)module; return 0; }
CUresult cuModuleGetFunction(void **function, void *, const char *name) {
    auto found = emu::registry.find(name);
    if (found == emu::registry.end()) return 500;
    *function = (void *)&found->second;
    return 0;
}
CUresult cuLaunchKernel(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned, void *stream, void **params, void **) {
    const emu::Kernel *kernel = (const emu::Kernel *)function;
    emu::Operation op{emu::Operation::Launch};
    op.kernel = kernel;
    op.grid = {gx, gy, gz};
    op.block = {bx, by, bz};
    // Every argument the backend passes is at most 8 bytes, each in its own 8-byte slot.
    for (size_t a = 0; a < kernel->parameters; a++) {
        uint64_t word = 0;
        memcpy(&word, params[a], 8);
        op.arguments.push_back(word);
    }
    return emu::submit(stream, op);
}
// cuda.h's layouts (CUDA 12), which the backend builds by hand.
struct CUlaunchAttribute { unsigned id; char pad[4]; union { char bytes[64]; int programmaticStreamSerializationAllowed; } value; };
struct CUlaunchConfig {
    unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    void *hStream;
    CUlaunchAttribute *attrs;
    unsigned numAttrs;
};
static_assert(sizeof(CUlaunchAttribute) == 72 && sizeof(CUlaunchConfig) == 56, "cuda.h's sizes");
// Blocks run one after another here, so a dependent launch is an ordinary one; it is counted, and
// any attribute but programmatic stream serialization (6), on, is refused as a real driver would
// refuse one it does not know.
static unsigned long dependentLaunches = 0;
CUresult cuLaunchKernelEx(const CUlaunchConfig *config, void *function, void **params, void **extra) {
    for (unsigned a = 0; a < config->numAttrs; a++) {
        if (config->attrs[a].id != 6 || config->attrs[a].value.programmaticStreamSerializationAllowed != 1) return 1;
        dependentLaunches++;
    }
    if (config->blockDimY != 1 || config->blockDimZ != 1) return 1;
    return cuLaunchKernel(function, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX, 1, 1,
                          config->sharedMemBytes, config->hStream, params, extra);
}
unsigned long cudaEmulatorDependentLaunches() { return dependentLaunches; }
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, void *function, int blockSize, size_t) {
    *blocks = emu::residentBlocks(((const emu::Kernel *)function)->name, (size_t)blockSize);
    return 0;
}
CUresult cuStreamCreate(void **stream, unsigned) { *stream = new emu::Stream(); return 0; }
CUresult cuStreamBeginCapture_v2(void *stream, int) {
    // For the tests of the backend's fallback: a driver that refuses to capture.
    if (emu::refuseCapture) return 801;  // CUDA_ERROR_NOT_SUPPORTED
    emu::Stream *s = (emu::Stream *)stream;
    if (!s || s->capturing) return 1;
    s->capturing = true;
    s->work.clear();
    emu::capturing++;
    return 0;
}
CUresult cuStreamEndCapture(void *stream, void **graph) {
    emu::Stream *s = (emu::Stream *)stream;
    if (!s || !s->capturing) return 1;
    s->capturing = false;
    emu::capturing--;
    *graph = new emu::Graph{std::move(s->work)};
    s->work.clear();
    return 0;
}
CUresult cuGraphInstantiateWithFlags(void **exec, void *graph, unsigned long long) {
    *exec = new emu::Graph(*(emu::Graph *)graph);
    return 0;
}
CUresult cuGraphLaunch(void *exec, void *stream) {
    emu::Stream *s = (emu::Stream *)stream;
    if ((s && s->capturing) || (!s && emu::capturing)) return 904;
    emu::graphLaunches++;
    for (auto &op : ((emu::Graph *)exec)->work) {
        CUresult status = emu::perform(op);
        if (status) return status;
    }
    return 0;
}
CUresult cuGraphDestroy(void *graph) { delete (emu::Graph *)graph; return 0; }
CUresult cuGraphExecDestroy(void *exec) { delete (emu::Graph *)exec; return 0; }
// For the tests: how many graph launches ran, and a driver that refuses to capture.
unsigned long cudaEmulatorGraphLaunches() { return emu::graphLaunches; }
void cudaEmulatorRefuseCapture(int refuse) { emu::refuseCapture = refuse != 0; }
void cudaEmulatorReverseThreads(int reverse) { emu::reverseThreads = reverse != 0; }
// The compute capability the device reports (major * 10 + minor), for a GPU NVRTC does not know.
void cudaEmulatorSetArchitecture(int sm) { emu::architecture = sm; }
// The 128-byte lines the kernels asked L2 for, and how many of them fell outside every allocation.
unsigned long cudaEmulatorPrefetchedLines() { return emu::prefetchedLines; }
unsigned long cudaEmulatorStrayPrefetches() { return emu::strayPrefetches; }
}
