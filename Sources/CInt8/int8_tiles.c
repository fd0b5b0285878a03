// See int8_tiles.h for the layout. Only the functions marked VNNI are compiled for AVX-512; the
// rest is compiled for haswell (AVX2, FMA, F16C), as the Swift engine is (Package.swift).
#include "int8_tiles.h"

#include <immintrin.h>
#include <string.h>

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

int int8_tiles_available(void) {
    __builtin_cpu_init();
    // __builtin_cpu_supports also checks (through XGETBV) that the OS saves the AVX-512 state.
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

static float half_to_float(const uint8_t *p) {
    _Float16 h;
    memcpy(&h, p, 2);
    return (float)h;
}

// Writes one row's values (int8 as stored: value + 128) and scales into its lane of every block.
static void put_row(uint8_t *group, long lane, long blocks, const int8_t *values, const float *scales) {
    for (long b = 0; b < blocks; b++) {
        uint8_t *tile = group + b * INT8_TILE_BYTES;
        for (int c = 0; c < 8; c++)
            for (int j = 0; j < 4; j++) tile[64 * c + 4 * lane + j] = (uint8_t)(values[32 * b + 4 * c + j] + 128);
        memcpy(tile + 512 + 4 * lane, &scales[b], 4);
    }
}

typedef void (*row_reader)(const uint8_t *row, long blocks, int8_t *values, float *scales);

static void read_q8_0(const uint8_t *row, long blocks, int8_t *values, float *scales) {
    for (long b = 0; b < blocks; b++) {
        const uint8_t *p = row + 34 * b;
        scales[b] = half_to_float(p);
        memcpy(values + 32 * b, p + 2, 32);
    }
}

static void read_q5_0(const uint8_t *row, long blocks, int8_t *values, float *scales) {
    for (long b = 0; b < blocks; b++) {
        const uint8_t *p = row + 22 * b;
        scales[b] = half_to_float(p);
        uint32_t qh;
        memcpy(&qh, p + 2, 4);
        for (int j = 0; j < 32; j++) {
            int nibble = j < 16 ? (p[6 + j] & 0x0F) : (p[6 + j - 16] >> 4);
            int fifth = (qh >> j) & 1;
            values[32 * b + j] = (int8_t)((nibble | fifth << 4) - 16);
        }
    }
}

static void pack(row_reader read, const void *source, long rowBytes, long rows, long columns, long r0, long r1,
                 void *packed) {
    long blocks = columns / 32;
    int8_t values[columns];
    float scales[blocks];
    for (long r = r0; r < r1; r++) {
        if (r < rows) {
            read((const uint8_t *)source + r * rowBytes, blocks, values, scales);
        } else {
            memset(values, 0, sizeof values);
            memset(scales, 0, sizeof scales);
        }
        uint8_t *group = (uint8_t *)packed + (r / 16) * blocks * INT8_TILE_BYTES;
        put_row(group, r % 16, blocks, values, scales);
    }
}

void int8_tiles_pack_q8_0(const void *source, long rowBytes, long rows, long columns, long r0, long r1, void *packed) {
    pack(read_q8_0, source, rowBytes, rows, columns, r0, r1, packed);
}

void int8_tiles_pack_q5_0(const void *source, long rowBytes, long rows, long columns, long r0, long r1, void *packed) {
    pack(read_q5_0, source, rowBytes, rows, columns, r0, r1, packed);
}

void int8_tiles_quantize(const float *x, long n, long k, int8_t *values, float *scales, int32_t *bias) {
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
        __m256 inverse = _mm256_set1_ps(scale == 0 ? 0 : 1 / scale);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inverse)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inverse)),
                i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inverse)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inverse));
        __m256i total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
        scales[i] = scale;
        bias[i] = -128 * _mm_cvtsi128_si32(t);
        // The packs work within 128-bit lanes; the permutation puts the 32 bytes back in order.
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)(values + 32 * i), _mm256_permutevar8x32_epi32(packed, order));
    }
}

// One group of 16 rows against T tokens (T constant after inlining: the accumulators stay in
// registers). Per block: 8 vpdpbusd per token (16 rows x 32 columns), then the integer sums are
// scaled by the rows' block scales and the token's block scale.
#define TILE(T)                                                                                                  \
    VNNI static void tile##T(const uint8_t *group, long blocks, const int8_t *x, long k, const float *xs,         \
                             const int32_t *xb, float *out, long ldo, __mmask16 valid) {                         \
        __m512 sum[T];                                                                                           \
        for (int t = 0; t < T; t++) sum[t] = _mm512_setzero_ps();                                                \
        for (long b = 0; b < blocks; b++) {                                                                      \
            const uint8_t *tile = group + b * INT8_TILE_BYTES;                                                   \
            __m512i acc[T];                                                                                      \
            for (int t = 0; t < T; t++) acc[t] = _mm512_set1_epi32(xb[t * blocks + b]);                          \
            for (int c = 0; c < 8; c++) {                                                                        \
                __m512i w = _mm512_load_si512((const void *)(tile + 64 * c));                                    \
                for (int t = 0; t < T; t++) {                                                                    \
                    int32_t four;                                                                                \
                    memcpy(&four, x + t * k + 32 * b + 4 * c, 4);                                                \
                    acc[t] = _mm512_dpbusd_epi32(acc[t], w, _mm512_set1_epi32(four));                            \
                }                                                                                                \
            }                                                                                                    \
            __m512 ds = _mm512_load_ps((const void *)(tile + 512));                                              \
            for (int t = 0; t < T; t++)                                                                          \
                sum[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[t]), ds),                          \
                                         _mm512_set1_ps(xs[t * blocks + b]), sum[t]);                            \
        }                                                                                                        \
        for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(out + t * ldo, valid, sum[t]);                         \
    }

TILE(1)
TILE(2)
TILE(3)
TILE(4)
TILE(5)
TILE(6)
TILE(7)
TILE(8)

VNNI void int8_tiles_product(const void *packed, long rows, long columns, long g0, long g1, const int8_t *values,
                             const float *scales, const int32_t *bias, long n, float *out, long ldo) {
    long blocks = columns / 32;
    for (long g = g0; g < g1; g++) {
        const uint8_t *group = (const uint8_t *)packed + g * blocks * INT8_TILE_BYTES;
        long left = rows - 16 * g;
        __mmask16 valid = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        float *o = out + 16 * g;
        for (long t = 0; t < n; t += 8) {
            const int8_t *x = values + t * columns;
            const float *xs = scales + t * blocks;
            const int32_t *xb = bias + t * blocks;
            float *ot = o + t * ldo;
            switch (n - t < 8 ? n - t : 8) {
            case 1: tile1(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            case 2: tile2(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            case 3: tile3(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            case 4: tile4(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            case 5: tile5(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            case 6: tile6(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            case 7: tile7(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            default: tile8(group, blocks, x, columns, xs, xb, ot, ldo, valid); break;
            }
        }
    }
}
