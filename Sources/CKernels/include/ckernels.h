#ifndef EMBER_CKERNELS_H
#define EMBER_CKERNELS_H
#include <stdint.h>

/// Type codes of the packed weight types (the `type` of the functions below): GGML's q4_0, q4_1 and
/// q8_0 blocks, and the integer types, which hold any block type's 32-element sub-blocks as signed
/// bytes with f32 scales: one scale (I8), a scale and a minimum (I8_MIN), a scale for each 16
/// elements (I8_HALVES), or a scale and a minimum for each 16 (I8_HALVES_MIN).
/// EMBER_I4_MIN holds 4-bit values (0..15) as nibbles, with an f32 scale and minimum (q4_K).
enum { EMBER_Q4_0 = 0, EMBER_Q4_1 = 1, EMBER_Q8_0 = 2, EMBER_I8 = 3, EMBER_I8_MIN = 4, EMBER_I8_HALVES = 5, EMBER_I8_HALVES_MIN = 6,
       EMBER_I4_MIN = 7 };

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
/// block (of 32 elements) by block: the 16 rows' scales (f16; f32 for the integer types), for the
/// halves types their second scales, for the types with minimums their minimums (and second
/// minimums), then the values with the 16 rows interleaved four bytes at a time, one 64-byte vector
/// per four byte columns: q4 blocks keep their nibble bytes (byte j holds values j and j + 16), the
/// byte types' values are stored offset by 128 as unsigned bytes.
long ember_packed_block_bytes(int type);

/// Repacks `rows` rows of GGML blocks (`row_bytes` apart, `blocks` blocks each) into `packed`, which
/// holds ceil(rows / 16) * blocks * ember_packed_block_bytes(type) bytes.
void ember_pack_rows(int type, const uint8_t *weights, long row_bytes, int rows, int blocks, uint8_t *packed);

/// Writes one 32-element sub-block of one row (`lane` 0..<16 of its group) of an integer type into the
/// packed block at `block` (which `ember_packed_block_bytes` sizes): 32 `values` in −127...127 (0...15
/// for EMBER_I4_MIN), the
/// scales of elements 0..<16 and 16..<32 and their minimums (what the type does not have is ignored).
void ember_pack_sub_block(int type, uint8_t *block, int lane, const int8_t *values, const float *scales, const float *minimums);

/// Integer products of packed row groups `g0 ..< g1` (of a matrix of `rows` rows) with `m` rows of
/// 8-bit activations: `xq` [m, blocks * 32] values in −127...127, per block the scale `xd`, the integer
/// value sum `xsum` (which must be the sum of the block's `xq` values) and scale × value sum `xs`
/// ([m, blocks] each), and the same two sums for each half of 16 values (`xsum16`, `xs16`, [m, 2 * blocks]):
/// y[i * y_stride + r] = Σ_b wd_b · xd_b · Σ_j (wq_j − offset) · xq_j  (+ wm_b · xs_b with minimums),
/// with each half's scale and minimum for the halves types.
/// Runs the kernel of `tier` (normally ember_kernel_tier()), lowered to ember_best_tier() when above
/// it; tier 0 (or less) runs a slow portable C version. Every tier gives the same bits, and every
/// output is formed in the same order whatever m is.
void ember_packed_products(int tier, int type, const uint8_t *packed, int g0, int g1, int rows, int blocks,
                           const int8_t *xq, const float *xd, const int32_t *xsum, const float *xs, const int32_t *xsum16,
                           const float *xs16, int m, float *y, long y_stride);
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
/// Whether this CPU runs AVX-512 BF16 (with BW and VL): `ember_gemm_bf16`.
int ember_has_bf16(void);
/// x rounded to bf16 (to nearest, ties to even; a NaN stays a NaN), as its 16 bits.
uint16_t ember_bf16_from_f32(float x);
/// C [m, n] = alpha · op(A) · op(B) + beta · C, row-major as cblas_sgemm: op(A) [m, k] (A stored
/// [k, m] when trans_a), op(B) [k, n] (B stored [n, k] when trans_b). The operands are rounded to
/// bf16 as they are packed, and the products are summed in f32 by vdpbf16ps. Single-threaded.
/// Returns 0; −1 where the CPU lacks AVX-512 BF16 (C untouched: callers take their f32 path on
/// bf16-rounded operands), −2 when the packing buffers cannot be allocated.
int ember_gemm_bf16(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, long lda, const float *b, long ldb,
                    float beta, float *c, long ldc);
/// Whether this CPU runs AVX-512F: `ember_gemm_f32`.
int ember_has_avx512f(void);
/// C [m, n] = alpha · op(A) · op(B) + beta · C in f32 with AVX-512F, row-major as cblas_sgemm (same
/// arguments as `ember_gemm_bf16`). Single-threaded. Returns 0; −1 where the CPU lacks AVX-512F (C
/// untouched), −2 when the packing buffers cannot be allocated.
int ember_gemm_f32(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, long lda, const float *b, long ldb,
                   float beta, float *c, long ldc);
#endif
