/* What the f32 and bf16 products share: the 12 × 32 tile of C in registers and its write-back,
   the scaling of C by beta, and the 16 × 16 transpose their packers use. */
#ifndef EMBER_GEMM_COMMON_H
#define EMBER_GEMM_COMMON_H
#include <immintrin.h>
#include <string.h>

enum { TILE_ROWS = 12, TILE_COLUMNS = 32 };

/* x limited to lo ... hi. */
static inline int ember_clamp(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

/* c[rows][cols] (row stride ldc) = alpha · acc + (overwrite ? 0 : c); rows ≤ 12 and cols ≤ 32, the
   rest of the tile not written. */
__attribute__((target("avx512f"), always_inline))
static inline void ember_store_tile(__m512 acc[TILE_ROWS][2], float alpha, float *c, long ldc, int rows, int cols, int overwrite) {
    const __m512 va = _mm512_set1_ps(alpha);
    if (rows == TILE_ROWS && cols == TILE_COLUMNS) {
        for (int r = 0; r < TILE_ROWS; r++) {
            float *row = c + r * ldc;
            const __m512 c0 = overwrite ? _mm512_setzero_ps() : _mm512_loadu_ps(row);
            const __m512 c1 = overwrite ? _mm512_setzero_ps() : _mm512_loadu_ps(row + 16);
            _mm512_storeu_ps(row, _mm512_fmadd_ps(acc[r][0], va, c0));
            _mm512_storeu_ps(row + 16, _mm512_fmadd_ps(acc[r][1], va, c1));
        }
        return;
    }
    const __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xffff : (1u << cols) - 1);
    const __mmask16 m1 = (__mmask16)(cols >= 32 ? 0xffff : cols <= 16 ? 0 : (1u << (cols - 16)) - 1);
    for (int r = 0; r < rows; r++) {
        float *row = c + r * ldc;
        _mm512_mask_storeu_ps(row, m0, _mm512_fmadd_ps(acc[r][0], va, _mm512_maskz_loadu_ps(overwrite ? 0 : m0, row)));
        _mm512_mask_storeu_ps(row + 16, m1, _mm512_fmadd_ps(acc[r][1], va, _mm512_maskz_loadu_ps(overwrite ? 0 : m1, row + 16)));
    }
}

/* C [m, n] *= beta before the products add into it (0: zeroed), unless `overwrite` (beta 0 and
   a product to write: its first block of k writes C instead). */
static inline void ember_scale_c(int m, int n, float beta, float *c, long ldc, int overwrite) {
    for (int i = 0; i < m && !overwrite; i++) {
        float *row = c + (long)i * ldc;
        if (beta == 0) memset(row, 0, sizeof(float) * (size_t)n);
        else if (beta != 1) for (int j = 0; j < n; j++) row[j] *= beta;
    }
}

/* A 16 × 16 block of 32-bit values transposed in registers (AVX-512F): r[i] holds row i, and on
   return r[j] holds column j. Three rounds of shuffles: 32-bit pairs, 64-bit pairs, then 128-bit
   lanes twice. */
__attribute__((target("avx512f"), always_inline))
static inline void ember_transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    /* u[4g + c], lane l: column 4l + c of rows 4g ..< 4g + 4. */
    for (int g = 0; g < 4; g++) {
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; c++) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
        const __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v0, w0, 0xdd);
        r[4 + c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
    }
}
#endif
