#ifndef EMBER_CKERNELS_H
#define EMBER_CKERNELS_H
#include <stdint.h>

/// Whether this CPU has AVX-512 VNNI (with BW and VL), which the integer products need.
int ember_has_vnni(void);

/// Type codes: 0 = q4_0, 1 = q4_1, 2 = q8_0.
///
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
/// 8-bit activations: `xq` [m, blocks * 32] values, per block the scale `xd`, the integer value sum
/// `xsum` and scale × value sum `xs` ([m, blocks] each):
/// y[i * y_stride + r] = Σ_b wd_b · xd_b · Σ_j (wq_j − offset) · xq_j  (+ wm_b · xs_b for q4_1).
/// Every output is formed in the same order whatever m is.
void ember_packed_products(int type, const uint8_t *packed, int g0, int g1, int rows, int blocks,
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
