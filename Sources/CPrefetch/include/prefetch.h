// Software prefetch for the engine's matrix products. Swift does not import `_mm_prefetch` (a macro
// in Clang's headers), so the builtin is wrapped here; it inlines to one `prefetcht0`.
#pragma once

static inline void inference_prefetch(const void *address) {
    __builtin_prefetch(address, 0, 3);
}

// Every cache line of [start, start + bytes): a weight row the next products will read.
static inline void inference_prefetch_range(const void *start, long bytes) {
    const char *line = (const char *)start;
    for (long offset = 0; offset < bytes; offset += 64) __builtin_prefetch(line + offset, 0, 3);
}
