// See int8_tiles.h for the layout. Only the functions marked VNNI are compiled for AVX-512; the
// rest is compiled for haswell (AVX2, FMA, F16C), as the Swift engine is (Package.swift).
#include "int8_tiles.h"
#include "avx512.h"

#include <immintrin.h>
#include <string.h>

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

int int8_tiles_available(void) { return avx512_base_available() && __builtin_cpu_supports("avx512vnni"); }

long int8_tiles_tile_bytes(enum int8_tiles_format format) {
    switch (format) {
    case INT8_TILES_Q4_K: return 256 + 2 * 64;
    case INT8_TILES_Q6_K: return 512 + 2 * 64;
    case INT8_TILES_Q5_0: return 256 + 64 + 32;
    default: return 512 + 32;
    }
}

// ---- Packing: each row is read into bytes as stored, scales per 16 columns and minimums per 32,
// ---- then written into its lane of every tile of its group.

static float half_to_float(const uint8_t *p) {
    _Float16 h;
    memcpy(&h, p, 2);
    return (float)h;
}

static void read_q8_0(const uint8_t *row, long columns, uint8_t *stored, float *scale16, float *minimum) {
    for (long b = 0; b < columns / 32; b++) {
        const uint8_t *p = row + 34 * b;
        scale16[2 * b] = scale16[2 * b + 1] = half_to_float(p);
        minimum[b] = 0;
        for (int j = 0; j < 32; j++) stored[32 * b + j] = (uint8_t)((int8_t)p[2 + j] + 128);
    }
}

// Q5_0: { half d; uint8 qh[4]; uint8 qs[16] }: q = nibble | fifth bit << 4 (stored as is, 0...31),
// value = d * (q - 16).
static void read_q5_0(const uint8_t *row, long columns, uint8_t *stored, float *scale16, float *minimum) {
    for (long b = 0; b < columns / 32; b++) {
        const uint8_t *p = row + 22 * b;
        scale16[2 * b] = scale16[2 * b + 1] = half_to_float(p);
        minimum[b] = 0;
        uint32_t qh;
        memcpy(&qh, p + 2, 4);
        for (int j = 0; j < 32; j++) {
            int nibble = j < 16 ? (p[6 + j] & 0x0F) : (p[6 + j - 16] >> 4);
            stored[32 * b + j] = (uint8_t)(nibble | (int)((qh >> j) & 1) << 4);
        }
    }
}

// Q4_K: { half d, dmin; uint8 scales[12]; uint8 qs[128] } per 256: sub-block j (32 values) is the
// low (j even) or high (j odd) nibbles of qs[32 (j / 2) ...], value = d * sc[j] * q - dmin * m[j],
// with six-bit sc and m packed as ggml's get_scale_min_k4 reads them.
static void read_q4_K(const uint8_t *row, long columns, uint8_t *stored, float *scale16, float *minimum) {
    for (long s = 0; s < columns / 256; s++) {
        const uint8_t *p = row + 144 * s;
        float d = half_to_float(p), dmin = half_to_float(p + 2);
        const uint8_t *packed = p + 4;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            if (j < 4) {
                sc = packed[j] & 63;
                m = packed[j + 4] & 63;
            } else {
                sc = (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4);
                m = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
            }
            long b = 8 * s + j;
            scale16[2 * b] = scale16[2 * b + 1] = d * (float)sc;
            minimum[b] = dmin * (float)m;
            const uint8_t *q = p + 16 + 32 * (j / 2);
            for (int i = 0; i < 32; i++) stored[32 * b + i] = (j % 2 == 0) ? (q[i] & 0x0F) : (q[i] >> 4);
        }
    }
}

// Q6_K: { uint8 ql[128], qh[64]; int8 scales[16]; half d } per 256, as ggml's dequantize_row_q6_K:
// per 128 values, group g (32 values) takes a nibble of ql and two bits of qh; value =
// d * sc[8h + 2g + i / 16] * (q - 32).
static void read_q6_K(const uint8_t *row, long columns, uint8_t *stored, float *scale16, float *minimum) {
    for (long s = 0; s < columns / 256; s++) {
        const uint8_t *p = row + 210 * s;
        float d = half_to_float(p + 208);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = p + 64 * h, *qh = p + 128 + 32 * h;
            const int8_t *sc = (const int8_t *)(p + 192 + 8 * h);
            for (int g = 0; g < 4; g++) {
                long b = 8 * s + 4 * h + g;
                minimum[b] = 0;
                scale16[2 * b] = d * (float)sc[2 * g];
                scale16[2 * b + 1] = d * (float)sc[2 * g + 1];
                for (int i = 0; i < 32; i++) {
                    int low = (g % 2 == 0 ? ql[i] : ql[i + 32]);
                    low = g < 2 ? (low & 0x0F) : (low >> 4);
                    int high = (qh[i] >> (2 * g)) & 3;
                    stored[32 * b + i] = (uint8_t)(low | high << 4);
                }
            }
        }
    }
}

// A scale that came from a half in the file, back to its half (exact).
static void put_half(uint8_t *to, float value) {
    _Float16 h = (_Float16)value;
    memcpy(to, &h, 2);
}

// Row `lane` of a group into every tile of the group.
static void put_row(enum int8_tiles_format format, uint8_t *group, long lane, long columns, const uint8_t *stored,
                    const float *scale16, const float *minimum) {
    long bytes = int8_tiles_tile_bytes(format);
    for (long b = 0; b < columns / 32; b++) {
        uint8_t *tile = group + b * bytes;
        const uint8_t *v = stored + 32 * b;
        if (format == INT8_TILES_Q4_K || format == INT8_TILES_Q5_0) {
            for (int c = 0; c < 4; c++)
                for (int j = 0; j < 4; j++)
                    tile[64 * c + 4 * lane + j] = (uint8_t)((v[4 * c + j] & 0x0F) | (v[16 + 4 * c + j] & 0x0F) << 4);
            if (format == INT8_TILES_Q4_K) {
                memcpy(tile + 256 + 4 * lane, &scale16[2 * b], 4);
                memcpy(tile + 320 + 4 * lane, &minimum[b], 4);
            } else {
                // Chunk c's fifth bits: bit 4 lane + j of mask c (c < 4: columns 4c + j; else 16 + 4(c - 4) + j).
                for (int c = 0; c < 8; c++) {
                    uint64_t mask;
                    memcpy(&mask, tile + 256 + 8 * c, 8);
                    for (int j = 0; j < 4; j++) {
                        uint64_t bit = (uint64_t)1 << (4 * lane + j);
                        mask = (v[4 * c + j] & 0x10) ? (mask | bit) : (mask & ~bit);
                    }
                    memcpy(tile + 256 + 8 * c, &mask, 8);
                }
                put_half(tile + 320 + 2 * lane, scale16[2 * b]);
            }
        } else {
            for (int c = 0; c < 8; c++)
                for (int j = 0; j < 4; j++) tile[64 * c + 4 * lane + j] = v[4 * c + j];
            if (format == INT8_TILES_Q6_K) {
                memcpy(tile + 512 + 4 * lane, &scale16[2 * b], 4);
                memcpy(tile + 576 + 4 * lane, &scale16[2 * b + 1], 4);
            } else {
                put_half(tile + 512 + 2 * lane, scale16[2 * b]);
            }
        }
    }
}

void int8_tiles_pack(enum int8_tiles_format format, const void *source, long rowBytes, long rows, long columns,
                     long r0, long r1, void *packed) {
    long bytes = int8_tiles_tile_bytes(format);
    uint8_t stored[columns];
    float scale16[columns / 16];
    float minimum[columns / 32];
    for (long r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)source + r * rowBytes;
        if (r >= rows) {
            // Padding: zero weights (zero scales and minimums make the lane's sums zero).
            memset(stored, 0, sizeof stored);
            memset(scale16, 0, sizeof scale16);
            memset(minimum, 0, sizeof minimum);
        } else if (format == INT8_TILES_Q8_0) {
            read_q8_0(row, columns, stored, scale16, minimum);
        } else if (format == INT8_TILES_Q5_0) {
            read_q5_0(row, columns, stored, scale16, minimum);
        } else if (format == INT8_TILES_Q4_K) {
            read_q4_K(row, columns, stored, scale16, minimum);
        } else {
            read_q6_K(row, columns, stored, scale16, minimum);
        }
        uint8_t *group = (uint8_t *)packed + (r / 16) * (columns / 32) * bytes;
        put_row(format, group, r % 16, columns, stored, scale16, minimum);
    }
}

void int8_tiles_quantize(const float *x, long n, long k, int8_t *values, float *scales, int32_t *sums) {
    // As Int8Product.Activations in Swift: cvtps2dq rounds to nearest even.
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (long i = 0; i < n * (k / 32); i++) {
        const float *v = x + 32 * i;
        __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
               v3 = _mm256_loadu_ps(v + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float scale = _mm_cvtss_f32(h) / 127;
        // Below FLT_MIN, 1 / scale would overflow to inf and the block's integers be garbage: such a
        // block is all but zero, and is taken as zero.
        if (scale < 1.17549435e-38f) scale = 0;
        __m256 inverse = _mm256_set1_ps(scale == 0 ? 0 : 1 / scale);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inverse)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inverse)),
                i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inverse)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inverse));
        // The two halves' sums: lanes of (i0 + i1) and of (i2 + i3), added across.
        __m256i low = _mm256_add_epi32(i0, i1), high = _mm256_add_epi32(i2, i3);
        __m256i halves = _mm256_hadd_epi32(low, high);   // per 128-bit lane: l0+l1, l2+l3, h0+h1, h2+h3
        halves = _mm256_hadd_epi32(halves, halves);       // per 128-bit lane: l, h, l, h (partial)
        __m128i both = _mm_add_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1));
        scales[i] = scale;
        sums[2 * i] = _mm_cvtsi128_si32(both);
        sums[2 * i + 1] = _mm_extract_epi32(both, 1);
        // The packs work within 128-bit lanes; the permutation puts the 32 bytes back in order.
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)(values + 32 * i), _mm256_permutevar8x32_epi32(packed, order));
    }
}

// ---- The product: one group of 16 rows against T tokens, T and the format constant after
// ---- inlining so that the accumulators stay in registers. Per block and token: 8 vpdpbusd (16 rows
// ---- x 32 columns), then the integer sums scaled by the rows' scales and the token's scale.

INLINE VNNI __m512i broadcast4(const int8_t *p) {
    int32_t four;
    memcpy(&four, p, 4);
    return _mm512_set1_epi32(four);
}

INLINE VNNI void tile(const enum int8_tiles_format format, const int T, const uint8_t *group, long blocks,
                      const int8_t *x, long k, const float *xs, const int32_t *xsum, float *out, long ldo,
                      __mmask16 valid) {
    const long bytes = format == INT8_TILES_Q4_K ? 384
                       : format == INT8_TILES_Q6_K ? 640
                       : format == INT8_TILES_Q5_0 ? 352
                                                   : 544;
    __m512 sum[8];
    for (int t = 0; t < T; t++) sum[t] = _mm512_setzero_ps();
    for (long b = 0; b < blocks; b++) {
        const uint8_t *tile = group + b * bytes;
        const int8_t *xb = x + 32 * b;
        if (format == INT8_TILES_Q4_K) {
            // q is unsigned already: no offset. The minimums take each token's block sum of x.
            __m512i acc[8];
            for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_si512();
            const __m512i low4 = _mm512_set1_epi8(0x0F);
            for (int c = 0; c < 4; c++) {
                __m512i v = _mm512_load_si512((const void *)(tile + 64 * c));
                __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                for (int t = 0; t < T; t++) {
                    acc[t] = _mm512_dpbusd_epi32(acc[t], lo, broadcast4(xb + t * k + 4 * c));
                    acc[t] = _mm512_dpbusd_epi32(acc[t], hi, broadcast4(xb + t * k + 16 + 4 * c));
                }
            }
            __m512 scale = _mm512_load_ps((const void *)(tile + 256));
            __m512 minimum = _mm512_load_ps((const void *)(tile + 320));
            for (int t = 0; t < T; t++) {
                const int32_t *s = xsum + t * 2 * blocks + 2 * b;
                __m512 offset = _mm512_mul_ps(minimum, _mm512_set1_ps((float)(s[0] + s[1])));
                __m512 v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(acc[t]), scale, offset);
                sum[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(xs[t * blocks + b]), sum[t]);
            }
        } else if (format == INT8_TILES_Q6_K) {
            // Two scales a block (columns 0..<16 and 16..<32): two sums, each started at -32 times
            // its half's sum of x, which takes the 32 off q.
            __m512i lo[8], hi[8];
            for (int t = 0; t < T; t++) {
                const int32_t *s = xsum + t * 2 * blocks + 2 * b;
                lo[t] = _mm512_set1_epi32(-32 * s[0]);
                hi[t] = _mm512_set1_epi32(-32 * s[1]);
            }
            for (int c = 0; c < 4; c++) {
                __m512i w = _mm512_load_si512((const void *)(tile + 64 * c));
                for (int t = 0; t < T; t++) lo[t] = _mm512_dpbusd_epi32(lo[t], w, broadcast4(xb + t * k + 4 * c));
            }
            for (int c = 4; c < 8; c++) {
                __m512i w = _mm512_load_si512((const void *)(tile + 64 * c));
                for (int t = 0; t < T; t++) hi[t] = _mm512_dpbusd_epi32(hi[t], w, broadcast4(xb + t * k + 4 * c));
            }
            __m512 first = _mm512_load_ps((const void *)(tile + 512));
            __m512 second = _mm512_load_ps((const void *)(tile + 576));
            for (int t = 0; t < T; t++) {
                __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[t]), first,
                                           _mm512_mul_ps(_mm512_cvtepi32_ps(hi[t]), second));
                sum[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(xs[t * blocks + b]), sum[t]);
            }
        } else if (format == INT8_TILES_Q5_0) {
            // q = nibble + 16 where the chunk's mask has the lane's bit, value = scale * (q - 16): each
            // sum starts at -16 times the token's block sum of x. Tiles of 352 bytes: unaligned loads.
            __m512i acc[8];
            for (int t = 0; t < T; t++) {
                const int32_t *s = xsum + t * 2 * blocks + 2 * b;
                acc[t] = _mm512_set1_epi32(-16 * (s[0] + s[1]));
            }
            const __m512i low4 = _mm512_set1_epi8(0x0F), fifth = _mm512_set1_epi8(0x10);
            for (int c = 0; c < 4; c++) {
                __m512i v = _mm512_loadu_si512((const void *)(tile + 64 * c));
                __mmask64 mlo, mhi;
                memcpy(&mlo, tile + 256 + 8 * c, 8);
                memcpy(&mhi, tile + 256 + 8 * (c + 4), 8);
                __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
                lo = _mm512_mask_add_epi8(lo, mlo, lo, fifth);
                hi = _mm512_mask_add_epi8(hi, mhi, hi, fifth);
                for (int t = 0; t < T; t++) {
                    acc[t] = _mm512_dpbusd_epi32(acc[t], lo, broadcast4(xb + t * k + 4 * c));
                    acc[t] = _mm512_dpbusd_epi32(acc[t], hi, broadcast4(xb + t * k + 16 + 4 * c));
                }
            }
            __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(tile + 320)));
            for (int t = 0; t < T; t++)
                sum[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[t]), scale),
                                         _mm512_set1_ps(xs[t * blocks + b]), sum[t]);
        } else {
            // Q8_0: bytes are value + 128: each sum starts at -128 times the token's block sum of x.
            // Tiles of 544 bytes: unaligned loads.
            __m512i acc[8];
            for (int t = 0; t < T; t++) {
                const int32_t *s = xsum + t * 2 * blocks + 2 * b;
                acc[t] = _mm512_set1_epi32(-128 * (s[0] + s[1]));
            }
            for (int c = 0; c < 8; c++) {
                __m512i w = _mm512_loadu_si512((const void *)(tile + 64 * c));
                for (int t = 0; t < T; t++) acc[t] = _mm512_dpbusd_epi32(acc[t], w, broadcast4(xb + t * k + 4 * c));
            }
            __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(tile + 512)));
            for (int t = 0; t < T; t++)
                sum[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[t]), scale),
                                         _mm512_set1_ps(xs[t * blocks + b]), sum[t]);
        }
    }
    for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(out + t * ldo, valid, sum[t]);
}

// One function per format and token count (1...8), each with its loops fully known.
#define TILES(NAME, FORMAT)                                                                                     \
    VNNI static void NAME(long T, const uint8_t *g, long blocks, const int8_t *x, long k, const float *xs,       \
                          const int32_t *xsum, float *out, long ldo, __mmask16 valid) {                         \
        switch (T) {                                                                                            \
        case 1: tile(FORMAT, 1, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                              \
        case 2: tile(FORMAT, 2, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                              \
        case 3: tile(FORMAT, 3, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                              \
        case 4: tile(FORMAT, 4, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                              \
        case 5: tile(FORMAT, 5, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                              \
        case 6: tile(FORMAT, 6, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                              \
        case 7: tile(FORMAT, 7, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                              \
        default: tile(FORMAT, 8, g, blocks, x, k, xs, xsum, out, ldo, valid); break;                             \
        }                                                                                                       \
    }

TILES(tiles_q8, INT8_TILES_Q8_0)
TILES(tiles_q5, INT8_TILES_Q5_0)
TILES(tiles_q4_K, INT8_TILES_Q4_K)
TILES(tiles_q6_K, INT8_TILES_Q6_K)

VNNI void int8_tiles_product(enum int8_tiles_format format, const void *packed, long rows, long columns, long g0,
                             long g1, const int8_t *values, const float *scales, const int32_t *sums, long n,
                             float *out, long ldo) {
    long blocks = columns / 32;
    long bytes = int8_tiles_tile_bytes(format);
    for (long g = g0; g < g1; g++) {
        const uint8_t *group = (const uint8_t *)packed + g * blocks * bytes;
        long left = rows - 16 * g;
        __mmask16 valid = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (long t = 0; t < n; t += 8) {
            long T = n - t < 8 ? n - t : 8;
            const int8_t *x = values + t * columns;
            const float *xs = scales + t * blocks;
            const int32_t *xsum = sums + t * 2 * blocks;
            float *o = out + t * ldo + 16 * g;
            switch (format) {
            case INT8_TILES_Q4_K: tiles_q4_K(T, group, blocks, x, columns, xs, xsum, o, ldo, valid); break;
            case INT8_TILES_Q6_K: tiles_q6_K(T, group, blocks, x, columns, xs, xsum, o, ldo, valid); break;
            case INT8_TILES_Q5_0: tiles_q5(T, group, blocks, x, columns, xs, xsum, o, ldo, valid); break;
            default: tiles_q8(T, group, blocks, x, columns, xs, xsum, o, ldo, valid); break;
            }
        }
    }
}

VNNI int int8_tiles_peak(long iterations, const void *seed) {
    __m512i w = _mm512_loadu_si512(seed), chain[12], all = _mm512_setzero_si512();
    // Chains that start apart, so that the compiler cannot merge them into one (latency-bound) chain.
    for (int j = 0; j < 12; j++) chain[j] = _mm512_add_epi32(w, _mm512_set1_epi32(j));
    for (long i = 0; i < iterations; i++)
        for (int j = 0; j < 12; j++) chain[j] = _mm512_dpbusd_epi32(chain[j], w, w);
    for (int j = 0; j < 12; j++) all = _mm512_add_epi32(all, chain[j]);
    return _mm512_reduce_add_epi32(all);
}
