#ifndef EMBER_CKERNELS_H
#define EMBER_CKERNELS_H
#include <stdint.h>

/// Whether this CPU has AVX-512 VNNI (with BW and VL), which the integer products need.
int ember_has_vnni(void);

/// Integer dot products of quantized weight rows with 8-bit activation rows.
/// weights: rows `r0 ..< r1` of a matrix stored as GGML blocks (`type` 0 = q4_0, 1 = q4_1, 2 = q8_0),
///   `row_bytes` apart; `blocks` blocks of 32 per row.
/// activations: `m` rows of `blocks` * 32 int8 values (`xq`), per block their scale repeated 8
///   times (`xe`, `blocks` * 8 floats per row) and scale times value sum (`xs`).
/// y[i * y_stride + r] = Σ_b (wd_b · xd_b · Σ_j wq_j·xq_j) + wm_b · xs_b   (q4_0 values are offset by −8).
/// Every output is formed in the same order whatever m is.
void ember_quantized_products(int type, const uint8_t *weights, long row_bytes, int r0, int r1, int blocks,
                              const int8_t *xq, const float *xe, const float *xs, int m, float *y, long y_stride);
#endif
