// bf16 weight tiles for AVX-512 BF16 (`vdpbf16ps`: 32 bf16 products summed pairwise into 16 f32
// lanes in one instruction), in C for the reason int8_tiles.h gives: products of a checkpoint's
// bf16 weights with f32 activations, each split into two bf16 parts (high = bf16(x), low =
// bf16(x - high)) that are both multiplied, so that a product keeps about 16 bits of x (rounding x
// to bf16 alone, as llama.cpp does, moved the 270M's logits by up to 0.2 from transformers' f32;
// the GPU's tensor-core kernel splits x the same way). Every sum is kept in f32.
//
// A packed matrix is its rows in groups of 16 (the last padded with zeros), each group its
// 32-column blocks in order, one 1024-byte tile per block: 16 chunks of 64 bytes, chunk c holding,
// for lane l = 0..15, the 2 bf16 of row 16g + l at columns 32b + 2c and 32b + 2c + 1. A group is one
// sequential stream of bytes (read row by row, 16 interleaved rows read at half the speed here).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when this CPU and its operating system run AVX-512 F, BW, VL and BF16 instructions.
int bf16_tiles_available(void);

/// Packs rows [r0, r1) of a bf16 matrix (rows `columns` elements apart; columns a multiple of 32);
/// r0 is a multiple of 16, rows past `rows` up to r1 are padding. `packed` is the whole packed matrix.
void bf16_tiles_pack(const void *source, long rows, long columns, long r0, long r1, void *packed);

/// Elements from one token's row of `high` (or `low`) to the next: a little more than k.
long bf16_tiles_stride(long k);

/// x (n x k floats) split into bf16 `high` (x rounded to nearest even) and `low` (x - high, rounded),
/// each n rows `bf16_tiles_stride(k)` elements apart. Needs `bf16_tiles_available()`.
void bf16_tiles_convert(const float *x, long n, long k, uint16_t *high, uint16_t *low);

/// out[t * ldo + r] = sum over j of W[r, j] * x[t, j], for the rows of groups [g0, g1) that exist
/// (r < rows) and t < n; x as `bf16_tiles_convert` gives it (`high`, `low`). Needs `bf16_tiles_available()`.
void bf16_tiles_product(
    const void *packed, long rows, long columns, long g0, long g1, const uint16_t *high, const uint16_t *low, long n,
    float *out, long ldo);

/// Runs `iterations` rounds of 12 independent `vdpbf16ps` chains on 512-bit registers (32
/// multiply-adds each) and returns a checksum: the peak of the instruction, for benchmarks.
float bf16_tiles_peak(long iterations, const void *seed);

#ifdef __cplusplus
}
#endif
