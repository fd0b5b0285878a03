// What the kernel files share: the AVX-512 base every kernel needs, checked at run time.
#pragma once

#define INLINE __attribute__((always_inline)) static inline

// AVX-512 F, BW and VL, and an OS that saves their state (__builtin_cpu_supports checks XGETBV).
static inline int avx512_base_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
