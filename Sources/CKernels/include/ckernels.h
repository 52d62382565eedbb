#ifndef EMBER_CKERNELS_H
#define EMBER_CKERNELS_H
#include <stdint.h>

/// Type codes of the quantized weight types (the `type` of the functions below).
enum { EMBER_Q4_0 = 0, EMBER_Q4_1 = 1, EMBER_Q8_0 = 2 };

/// Kernel tiers of the integer products, each one bit-identical to the others:
/// 3 = AVX-512 VNNI (with BW, DQ, VL), 2 = 256-bit VNNI (AVX-VNNI, or AVX512_VNNI + VL, whichever the
/// CPU has), 1 = AVX2 + FMA + F16C without VNNI, 0 = none (callers use their float path).
enum { EMBER_TIER_NONE = 0, EMBER_TIER_AVX2 = 1, EMBER_TIER_AVX_VNNI = 2, EMBER_TIER_AVX512_VNNI = 3 };

/// The highest tier this CPU runs.
int ember_best_tier(void);
/// The tier in use: the best tier, lowered (never raised) by the environment variable
/// EMBER_KERNEL_TIER = avx512-vnni | avx-vnni | avx2 | none (other values are ignored, with one
/// warning on stderr). Read once.
int ember_kernel_tier(void);
/// "avx512-vnni", "avx-vnni", "avx2", "none" (the EMBER_KERNEL_TIER spellings), "unknown" otherwise.
const char *ember_tier_name(int tier);

/// Packed layout: weight rows in groups of 16 (the last group padded with zero rows); within a group,
/// block by block: the 16 rows' scales (f16), for q4_1 their minimums (f16), then the values with
/// the 16 rows interleaved four bytes at a time, one 64-byte vector per four byte columns:
/// q4 blocks keep their nibble bytes (byte j holds values j and j + 16), q8_0 values are stored
/// offset by 128 as unsigned bytes.
long ember_packed_block_bytes(int type);

/// Repacks `rows` rows of GGML blocks (`row_bytes` apart, `blocks` blocks each) into `packed`, which
/// holds ceil(rows / 16) * blocks * ember_packed_block_bytes(type) bytes.
void ember_pack_rows(int type, const uint8_t *weights, long row_bytes, int rows, int blocks, uint8_t *packed);

/// Integer products of packed row groups `g0 ..< g1` (of a matrix of `rows` rows) with `m` rows of
/// 8-bit activations: `xq` [m, blocks * 32] values in −127...127, per block the scale `xd`, the integer
/// value sum `xsum` (which must be the sum of the block's `xq` values) and scale × value sum `xs`
/// ([m, blocks] each):
/// y[i * y_stride + r] = Σ_b wd_b · xd_b · Σ_j (wq_j − offset) · xq_j  (+ wm_b · xs_b for q4_1).
/// Runs the kernel of `tier` (normally ember_kernel_tier()), lowered to ember_best_tier() when above
/// it; tier 0 (or less) runs a slow portable C version. Every tier gives the same bits, and every
/// output is formed in the same order whatever m is.
void ember_packed_products(int tier, int type, const uint8_t *packed, int g0, int g1, int rows, int blocks,
                           const int8_t *xq, const float *xd, const int32_t *xsum, const float *xs, int m, float *y, long y_stride);
/// Keeps freed memory in the heap instead of returning it to the kernel (glibc: no mmap for large
/// blocks, no trimming), so that buffers freed and allocated again each training step do not fault
/// in and zero their pages every time.
void ember_keep_freed_memory(void);
/// out = silu(gate) · up over n values, silu(x) = x / (1 + exp(−x)) with llama.cpp's vectorised exp
/// polynomial (the same results as `swigluForward`'s scalar path, eight at a time with AVX2).
void ember_swiglu_forward(const float *gate, const float *up, float *out, long n);
/// dgate += dout · up · σ(g)(1 + g(1 − σ(g))),  dup += dout · silu(g)
void ember_swiglu_backward(const float *gate, const float *up, const float *dout, float *dgate, float *dup, long n);
/// Σ exp(x_i − shift) over n values with the same exp polynomial, eight at a time (partial sums
/// in f32 lanes, added in double); the terms are also written to `out` unless it is NULL.
double ember_exp_sum(const float *x, float shift, float *out, long n);
#endif
