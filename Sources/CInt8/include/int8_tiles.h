// Int8 weight tiles for AVX-512 VNNI: the engine's products of Q8_0 and Q5_0 weights with int8
// activations, written in C because Swift cannot reach these instructions (`_mm512_dpbusd_epi32`
// is a macro over a builtin Swift does not import) and because the rest of the engine is compiled
// for haswell: only the functions below are compiled for AVX-512, and callers check
// `int8_tiles_available()` before calling the product.
//
// Layout of a packed matrix (rows padded to a multiple of 16 with zero weights): for each group of
// 16 rows, for each 32-column block, 576 bytes:
//   values: 8 chunks of 64 bytes; chunk c holds, for lane l = 0..15, the 4 bytes of row 16g + l at
//           columns 32b + 4c ..< 32b + 4c + 4, each stored as (int8 value + 128), an unsigned byte,
//           so that one `vpdpbusd` multiplies 16 rows by 4 columns of one token;
//   scales: 16 floats, the block scale of each of the 16 rows.
// A group's blocks follow each other, so a group is one sequential stream of bytes.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    INT8_TILE_ROWS = 16,
    INT8_TILE_BLOCK = 32,
    INT8_TILE_BYTES = 16 * 32 + 16 * 4,
};

/// 1 when this CPU and its operating system run AVX-512 F, BW, VL and VNNI instructions.
int int8_tiles_available(void);

/// Packs rows [r0, r1) of a Q8_0 matrix (34-byte blocks: fp16 scale, 32 int8) or a Q5_0 matrix
/// (22-byte blocks: fp16 scale, 32 fifth bits, 16 bytes of nibbles; value = q - 16). r0 is a
/// multiple of 16; rows past `rows` up to r1 are padding (zero weights). `packed` is the whole
/// packed matrix.
void int8_tiles_pack_q8_0(const void *source, long rowBytes, long rows, long columns, long r0, long r1, void *packed);
void int8_tiles_pack_q5_0(const void *source, long rowBytes, long rows, long columns, long r0, long r1, void *packed);

/// Quantizes n rows of k floats (k a multiple of 32) per 32-value block, as Q8_0: values in
/// -127...127, scale = max |x| / 127, rounded to nearest even. `bias` gets -128 times each block's
/// sum of values (what the +128 of the packed weights adds to the integer sums).
void int8_tiles_quantize(const float *x, long n, long k, int8_t *values, float *scales, int32_t *bias);

/// out[t * ldo + r] = sum over j of W[r, j] * x[t, j], for the rows of groups [g0, g1) that exist
/// (r < rows) and t < n; x given by `int8_tiles_quantize`. Needs `int8_tiles_available()`.
void int8_tiles_product(
    const void *packed, long rows, long columns, long g0, long g1, const int8_t *values, const float *scales,
    const int32_t *bias, long n, float *out, long ldo);

#ifdef __cplusplus
}
#endif
