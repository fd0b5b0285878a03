// See bf16_tiles.h. Only the functions marked BF16 are compiled for AVX-512.
#include "bf16_tiles.h"
#include "avx512.h"

#include <immintrin.h>
#include <string.h>

#define BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

int bf16_tiles_available(void) { return avx512_base_available() && __builtin_cpu_supports("avx512bf16"); }

void bf16_tiles_pack(const void *source, long rows, long columns, long r0, long r1, void *packed) {
    long blocks = columns / 32;
    for (long r = r0; r < r1; r++) {
        uint8_t *group = (uint8_t *)packed + (r / 16) * blocks * 1024;
        long lane = r % 16;
        for (long b = 0; b < blocks; b++) {
            uint8_t *tile = group + b * 1024;
            for (int c = 0; c < 16; c++) {
                uint32_t pair = 0;
                // Bytes: a safetensors tensor may start at any byte.
                if (r < rows) memcpy(&pair, (const uint8_t *)source + 2 * (r * columns + 32 * b + 2 * c), 4);
                memcpy(tile + 64 * c + 4 * lane, &pair, 4);
            }
        }
    }
}

BF16 void bf16_tiles_convert(const float *x, long n, long k, uint16_t *high, uint16_t *low) {
    long stride = bf16_tiles_stride(k);
    for (long t = 0; t < n; t++) {
        for (long i = 0; i < k; i += 16) {
            __mmask16 m = k - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - i)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, x + t * k + i);
            __m256bh h = _mm512_cvtneps_pbh(v);
            // h back in f32 (a bf16 is the top half of an f32), and what it leaves of v.
            __m512 hv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
            __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, hv));
            _mm256_mask_storeu_epi16(high + t * stride + i, m, (__m256i)h);
            _mm256_mask_storeu_epi16(low + t * stride + i, m, (__m256i)l);
        }
    }
}

long bf16_tiles_stride(long k) {
    // Rows 4 KB apart (k = 2048) or 2 KB (1024) would put a tile's 8 tokens in the same L1 sets,
    // more than its 8 ways hold: such products ran at half the speed of k = 640. 64 bytes more
    // spread them.
    return k + 32;
}

INLINE BF16 __m512bh broadcast2(const uint16_t *p) {
    int32_t pair;
    memcpy(&pair, p, 4);
    return (__m512bh)_mm512_set1_epi32(pair);
}

// One group of 16 rows against T tokens (constant after inlining), x's rows `stride` apart. Two
// sums per token, of the high and of the low parts of x, so that even one token keeps two
// vdpbf16ps in flight.
INLINE BF16 void tile(const int T, const uint8_t *group, long blocks, const uint16_t *x, const uint16_t *xlow,
                      long stride, float *out, long ldo, __mmask16 valid, const uint8_t *ahead) {
    __m512 high[8], low[8];
    for (int t = 0; t < T; t++) high[t] = low[t] = _mm512_setzero_ps();
    for (long b = 0; b < blocks; b++) {
        const uint8_t *tile = group + b * 1024;
        const uint16_t *xb = x + 32 * b, *xl = xlow + 32 * b;
        for (int c = 0; c < 16; c += 2) {
            if (ahead) {
                _mm_prefetch((const char *)(ahead + b * 1024 + 64 * c), _MM_HINT_T0);
                _mm_prefetch((const char *)(ahead + b * 1024 + 64 * c + 64), _MM_HINT_T0);
            }
            __m512bh w0 = (__m512bh)_mm512_load_si512((const void *)(tile + 64 * c));
            __m512bh w1 = (__m512bh)_mm512_load_si512((const void *)(tile + 64 * c + 64));
            for (int t = 0; t < T; t++) {
                high[t] = _mm512_dpbf16_ps(high[t], w0, broadcast2(xb + t * stride + 2 * c));
                low[t] = _mm512_dpbf16_ps(low[t], w0, broadcast2(xl + t * stride + 2 * c));
                high[t] = _mm512_dpbf16_ps(high[t], w1, broadcast2(xb + t * stride + 2 * c + 2));
                low[t] = _mm512_dpbf16_ps(low[t], w1, broadcast2(xl + t * stride + 2 * c + 2));
            }
        }
    }
    for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(out + t * ldo, valid, _mm512_add_ps(high[t], low[t]));
}

#define TOKENS(T)                                                                                               \
    BF16 static void tile##T(const uint8_t *g, long blocks, const uint16_t *x, const uint16_t *xl, long stride, \
                             float *out, long ldo, __mmask16 valid, const uint8_t *ahead) {                    \
        if (ahead)                                                                                              \
            tile(T, g, blocks, x, xl, stride, out, ldo, valid, ahead);                                          \
        else                                                                                                    \
            tile(T, g, blocks, x, xl, stride, out, ldo, valid, 0);                                              \
    }

TOKENS(1)
TOKENS(2)
TOKENS(3)
TOKENS(4)
TOKENS(5)
TOKENS(6)
TOKENS(7)
TOKENS(8)

BF16 void bf16_tiles_product(const void *packed, long rows, long columns, long g0, long g1, const uint16_t *x,
                             const uint16_t *xlow, long n, float *out, long ldo) {
    long blocks = columns / 32, stride = bf16_tiles_stride(columns);
    for (long g = g0; g < g1; g++) {
        const uint8_t *group = (const uint8_t *)packed + g * blocks * 1024;
        long left = rows - 16 * g;
        __mmask16 valid = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (long t = 0; t < n; t += 8) {
            // With more than 8 tokens, the first pass over a group fetches the next one: the
            // hardware's prefetch fell behind there (a 16-token product waited on these loads a third
            // of its time; 47 -> 41 ms a 270M step), where with fewer it is ahead (1 token: 13 -> 18 ms
            // with the prefetches).
            const uint8_t *ahead = n > 8 && t == 0 && g + 1 < g1 ? group + blocks * 1024 : 0;
            const uint16_t *xt = x + t * stride, *xl = xlow + t * stride;
            float *o = out + t * ldo + 16 * g;
            switch (n - t < 8 ? n - t : 8) {
            case 1: tile1(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            case 2: tile2(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            case 3: tile3(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            case 4: tile4(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            case 5: tile5(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            case 6: tile6(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            case 7: tile7(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            default: tile8(group, blocks, xt, xl, stride, o, ldo, valid, ahead); break;
            }
        }
    }
}

BF16 float bf16_tiles_peak(long iterations, const void *seed) {
    __m512bh w = (__m512bh)_mm512_loadu_si512(seed);
    __m512 chain[12], all = _mm512_setzero_ps();
    // Chains that start apart, so that the compiler cannot merge them into one (latency-bound) chain.
    for (int j = 0; j < 12; j++) chain[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iterations; i++)
        for (int j = 0; j < 12; j++) chain[j] = _mm512_dpbf16_ps(chain[j], w, w);
    for (int j = 0; j < 12; j++) all = _mm512_add_ps(all, chain[j]);
    return _mm512_reduce_add_ps(all);
}
