// Software prefetch for the engine's matrix products. Swift does not import `_mm_prefetch` (a macro
// in Clang's headers), so the builtin is wrapped here; it inlines to one `prefetcht0`.
#pragma once

static inline void inference_prefetch(const void *address) {
    __builtin_prefetch(address, 0, 3);
}
