// Int8 weight tiles for AVX-512 VNNI: the engine's products of Q8_0, Q5_0, Q4_K and Q6_K weights
// with int8 activations, written in C because Swift cannot reach these instructions: the engine is
// compiled for haswell, so that one binary runs on every x86-64 with AVX2, and Swift has no
// per-function target attribute with which to call `_mm512_dpbusd_epi32` (an inline function of
// clang's headers that needs avx512vnni). Only the product and the peak below are compiled for
// AVX-512, and callers check `int8_tiles_available()` before calling them.
//
// A packed matrix is its rows in groups of 16 (the last padded with zero weights), each group its
// 32-column blocks in order, one tile per block, so a group is one sequential stream of bytes. A
// tile holds the 16 rows x 32 columns as 8 chunks of 64 bytes: chunk c holds, for lane l = 0..15,
// the 4 unsigned bytes of row 16g + l at columns 32b + 4c ..< 32b + 4c + 4, so that one `vpdpbusd`
// multiplies 16 rows by 4 columns of one token. What the bytes mean, by format:
//   Q8_0 (544 bytes):       value + 128, then the 16 rows' scales (f16, as the file holds them): the
//                           file's 1.0625 bytes a weight;
//   Q5_0 (352 bytes):       the low 4 bits of q (0...31, value = scale * (q - 16)) in nibbles as
//                           Q4_K's, then 8 masks of 64 bits, mask c the fifth bits of chunk c (bit
//                           4 l + j: lane l, column 4c + j), then 16 scales (f16): the file's 0.6875
//                           bytes a weight;
//   Q4_K (384 bytes):       the chunks in nibbles, chunk c low and chunk c + 4 high in 4 vectors of
//                           64 bytes (q in 0...15, value = scale * q - minimum), then 16 scales
//                           (d * sc) and 16 minimums (dmin * m);
//   Q6_K (640 bytes):       q in 0...63 (value = scale * (q - 32)), then 16 scales of columns 0..<16
//                           and 16 of columns 16..<32 (d * sc).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The weight formats packed into tiles (their GGML names).
enum int8_tiles_format {
    INT8_TILES_Q8_0 = 0,
    INT8_TILES_Q5_0 = 1,
    INT8_TILES_Q4_K = 2,
    INT8_TILES_Q6_K = 3,
};

/// 1 when this CPU and its operating system run AVX-512 F, BW, VL and VNNI instructions.
int int8_tiles_available(void);

/// Bytes of one tile (16 rows x 32 columns) of a format.
long int8_tiles_tile_bytes(enum int8_tiles_format format);

/// Packs rows [r0, r1) of a matrix in GGML's layout of `format` (`rowBytes` bytes a row; columns a
/// multiple of the format's block). r0 and r1 are multiples of 16 (whole groups: a Q5_0 tile's masks
/// are shared by its 16 rows, so two calls must not pack parts of one group at once); rows past
/// `rows` up to r1 are padding.
/// `packed` is the whole packed matrix.
void int8_tiles_pack(
    enum int8_tiles_format format, const void *source, long rowBytes, long rows, long columns, long r0, long r1,
    void *packed);

/// Quantizes n rows of k floats (k a multiple of 32) per 32-value block as Q8_0 does: values in
/// -127...127, scale = max |x| / 127, rounded to nearest even. `sums` gets the sum of the values of
/// each 16 (n x k/16).
void int8_tiles_quantize(const float *x, long n, long k, int8_t *values, float *scales, int32_t *sums);

/// out[t * ldo + r] = sum over j of W[r, j] * x[t, j], for the rows of groups [g0, g1) that exist
/// (r < rows) and t < n; x as `int8_tiles_quantize` gives it. Needs `int8_tiles_available()`.
void int8_tiles_product(
    enum int8_tiles_format format, const void *packed, long rows, long columns, long g0, long g1,
    const int8_t *values, const float *scales, const int32_t *sums, long n, float *out, long ldo);

/// Runs `iterations` rounds of 12 independent `vpdpbusd` chains on 512-bit registers (64 byte
/// multiply-adds each) and returns a checksum: the peak of the instruction, for benchmarks.
/// `seed` points to 64 bytes, so that the compiler cannot fold the work away.
int int8_tiles_peak(long iterations, const void *seed);

#ifdef __cplusplus
}
#endif
