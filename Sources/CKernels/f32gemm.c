/* f32 matrix products with AVX-512F: the same three loops around a register-tiled micro-kernel as
   the bf16 products, with f32 panels and one fused multiply-add per element pair. A 12 × 32 tile
   of C lives in 24 zmm registers; each k step loads two vectors of the B panel and broadcasts
   twelve values of the A panel. Used where the CPU has AVX-512F, in place of a BLAS whose kernels
   stop at AVX2. */
#include "ckernels.h"
#include "gemm_common.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

enum { MR = TILE_ROWS, NR = TILE_COLUMNS, KC = 512, MC = 48, NC = 4096 };

int ember_has_avx512f(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f");
    }
    return known;
}

/* Panels of `width` indices i0 ..< i0 + count (columns of op(B), or rows of op(A)) by k0 ..< k0 + kc:
   [panel][k][width] floats, zero past the matrix (`limit` indices). Element (i, k) is x[i * ld + k]
   when `index_major`, else x[k * ld + i]. */
__attribute__((target("avx512f")))
static void pack(const float *x, long ld, int index_major, int i0, int count, int k0, int kc, int limit, int width, float *out) {
    for (int p = 0; p < count; p += width) {
        float *panel = out + (long)p * kc;
        int valid = count - p < width ? count - p : width;
        if (limit - (i0 + p) < valid) valid = limit - (i0 + p);
        if (index_major) {
            /* 16 indices × 16 k at a time, transposed in registers. */
            for (int r0 = 0; r0 < width; r0 += 16) {
                const int block = width - r0 < 16 ? width - r0 : 16;
                const int inside = ember_clamp(valid - r0, 0, block);  /* rows of this block inside the matrix */
                const __mmask16 store = (__mmask16)((1u << block) - 1);
                for (int q0 = 0; q0 < kc; q0 += 16) {
                    const int kn = kc - q0 < 16 ? kc - q0 : 16;
                    const __mmask16 load = (__mmask16)((1u << kn) - 1);
                    __m512 v[16];
                    for (int t = 0; t < 16; t++)
                        v[t] = t < inside ? _mm512_maskz_loadu_ps(load, x + (long)(i0 + p + r0 + t) * ld + k0 + q0) : _mm512_setzero_ps();
                    ember_transpose16(v);
                    for (int j = 0; j < 16; j++) if (j < kn) _mm512_mask_storeu_ps(panel + (long)(q0 + j) * width + r0, store, v[j]);
                }
            }
        } else {
            for (int q = 0; q < kc; q++) {
                const float *src = x + (long)(k0 + q) * ld + i0 + p;
                for (int c = 0; c < width; c += 16) {
                    const int n = valid - c >= 16 ? 16 : valid - c <= 0 ? 0 : valid - c;
                    const int store = width - c >= 16 ? 16 : width - c;
                    _mm512_mask_storeu_ps(panel + (long)q * width + c, (__mmask16)(store == 16 ? 0xffff : (1u << store) - 1),
                                          _mm512_maskz_loadu_ps((__mmask16)(n == 16 ? 0xffff : (1u << n) - 1), src + c));
                }
            }
        }
    }
}

/* c[MR][NR] (row stride ldc) += alpha · Apanel · Bpanel over kc steps (= with `overwrite`); rows ≥
   rows and columns ≥ cols are not written. */
__attribute__((target("avx512f")))
static void micro_kernel(const float *ap, const float *bp, int kc, float alpha, float *c, long ldc, int rows, int cols, int overwrite) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int q = 0; q < kc; q++) {
        const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
        for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(ap[r]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
        ap += MR;
        bp += NR;
    }
    ember_store_tile(acc, alpha, c, ldc, rows, cols, overwrite);
}

int ember_gemm_f32(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, long lda, const float *b, long ldb,
                   float beta, float *c, long ldc) {
    if (!ember_has_avx512f()) return -1;
    if (m <= 0 || n <= 0) return 0;
    /* Panels as large as this product needs (attention's are small), rounded to whole cache lines. */
    const size_t kcap = (size_t)(k < KC ? k : KC), ncap = (size_t)((n < NC ? n : NC) + NR - 1) / NR * NR;
    const size_t mcap = (size_t)((m < MC ? m : MC) + MR - 1) / MR * MR;
    float *bp = k > 0 ? aligned_alloc(64, (sizeof(float) * kcap * ncap + 63) / 64 * 64) : NULL;
    float *ap = k > 0 ? aligned_alloc(64, (sizeof(float) * kcap * mcap + 63) / 64 * 64) : NULL;
    if (k > 0 && (!bp || !ap)) { free(bp); free(ap); return -2; }
    /* With beta 0, the first block of k writes C instead of adding to it. */
    const int overwrite = beta == 0 && k > 0 && alpha != 0;
    ember_scale_c(m, n, beta, c, ldc, overwrite);
    if (k <= 0 || alpha == 0) { free(bp); free(ap); return 0; }
    for (int jc = 0; jc < n; jc += NC) {
        const int nc = n - jc < NC ? n - jc : NC;
        for (int pc = 0; pc < k; pc += KC) {
            const int kc = k - pc < KC ? k - pc : KC;
            pack(b, ldb, trans_b, jc, nc, pc, kc, n, NR, bp);
            for (int ic = 0; ic < m; ic += MC) {
                const int mc = m - ic < MC ? m - ic : MC;
                pack(a, lda, !trans_a, ic, mc, pc, kc, m, MR, ap);
                for (int jr = 0; jr < nc; jr += NR) {
                    const int cols = nc - jr < NR ? nc - jr : NR;
                    for (int ir = 0; ir < mc; ir += MR) {
                        const int rows = mc - ir < MR ? mc - ir : MR;
                        micro_kernel(ap + (long)ir * kc, bp + (long)jr * kc, kc, alpha, c + (long)(ic + ir) * ldc + jc + jr, ldc, rows, cols,
                                     overwrite && pc == 0);
                    }
                }
            }
        }
    }
    free(bp);
    free(ap);
    return 0;
}
