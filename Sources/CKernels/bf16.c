/* Matrix products in bf16 with f32 accumulation (AVX-512 BF16's vdpbf16ps): the f32 operands are
   rounded to bf16 (to nearest, ties to even) as they are packed, and every sum is kept in f32.
   Blocking follows the usual three loops around a register-tiled micro-kernel: panels of B
   (KC × NC) and of A (MC × KC) are packed once per block, pairs of k side by side, because
   vdpbf16ps multiplies two bf16 pairs per 32-bit lane and adds both products to the lane's f32. */
#include "ckernels.h"
#include "gemm_common.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

enum { MR = TILE_ROWS, NR = TILE_COLUMNS, KC = 512, MC = 96, NC = 4096 };

uint16_t ember_bf16_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* NaN stays a quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

int ember_has_bf16(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    }
    return known;
}

/* Packs indices i0 ..< i0 + count (rows of op(A), or columns of op(B)) by k0 ..< k0 + kc as panels
   of `width` (≤ 32) indices: [panel][k pair][width] 32-bit bf16 pairs, zero past the matrix (`limit`
   indices, k values of k). Element (i, k) is x[i * ld + k] when `index_major`, else x[k * ld + i].
   vcvtne2ps2bf16 rounds to nearest even (and, unlike `ember_bf16_from_f32`, takes subnormal inputs
   as zero). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void pack(const float *x, long ld, int index_major, int i0, int count, int k0, int kc, int limit, int k, int width, uint32_t *out) {
    const int pairs = (kc + 1) / 2, kend = k0 + kc < k ? k0 + kc : k;
    /* Interleaves the low 16 bf16 (from the first operand's rows ka) with the high 16 (rows kb). */
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int p = 0; p < count; p += width) {
        uint32_t *panel = out + (long)(p / width) * pairs * width;
        int valid = count - p < width ? count - p : width;  /* indices of this panel inside the matrix */
        if (limit - (i0 + p) < valid) valid = limit - (i0 + p);
        if (index_major) {
            /* 16 indices × 16 k pairs at a time: converted row by row, then transposed in registers. */
            for (int r0 = 0; r0 < width; r0 += 16) {
                const int block = width - r0 < 16 ? width - r0 : 16;
                const int inside = ember_clamp(valid - r0, 0, block);  /* rows of this block inside the matrix */
                const __mmask16 store = (__mmask16)((1u << block) - 1);
                for (int q0 = 0; q0 < pairs; q0 += 16) {
                    const int ka = k0 + 2 * q0, left = kend - ka;  /* values of each row left from ka */
                    const __mmask16 lo = (__mmask16)(left >= 16 ? 0xffff : left <= 0 ? 0 : (1u << left) - 1);
                    const __mmask16 hi = (__mmask16)(left >= 32 ? 0xffff : left <= 16 ? 0 : (1u << (left - 16)) - 1);
                    __m512 v[16];
                    for (int t = 0; t < 16; t++) {
                        if (t >= inside) { v[t] = _mm512_setzero_ps(); continue; }
                        const float *src = x + (long)(i0 + p + r0 + t) * ld + ka;
                        v[t] = (__m512)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + 16), _mm512_maskz_loadu_ps(lo, src));
                    }
                    ember_transpose16(v);
                    const int pn = pairs - q0 < 16 ? pairs - q0 : 16;
                    for (int j = 0; j < 16; j++) if (j < pn) _mm512_mask_storeu_epi32(panel + (q0 + j) * width + r0, store, (__m512i)v[j]);
                }
            }
        } else {
            for (int q = 0; q < pairs; q++) {
                const long ka = k0 + 2 * q, kb = ka + 1;
                for (int c = 0; c < width; c += 16) {
                    const int n = valid - c >= 16 ? 16 : valid - c <= 0 ? 0 : valid - c;
                    const __mmask16 m = (__mmask16)(n == 16 ? 0xffff : (1u << n) - 1);
                    const __m512 a = ka < kend ? _mm512_maskz_loadu_ps(m, x + ka * ld + i0 + p + c) : _mm512_setzero_ps();
                    const __m512 b = kb < kend ? _mm512_maskz_loadu_ps(m, x + kb * ld + i0 + p + c) : _mm512_setzero_ps();
                    const __m512i pairs16 = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(b, a));
                    const int store = width - c >= 16 ? 16 : width - c;
                    _mm512_mask_storeu_epi32(panel + q * width + c, (__mmask16)(store == 16 ? 0xffff : (1u << store) - 1), pairs16);
                }
            }
        }
    }
}

/* Rows i0 ..< i0 + count of x (element (i, k) at x[i * ld + k]), k0 ..< k0 + kc, as bf16 pairs
   row by row: [row][pair], the rows padded with zeros to a multiple of MR. No transpose: the
   micro-kernel broadcasts each row's pairs from here. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void pack_rows(const float *x, long ld, int i0, int count, int k0, int kc, int limit, int k, uint32_t *out) {
    const int pairs = (kc + 1) / 2, kend = k0 + kc < k ? k0 + kc : k;
    const int valid = count < limit - i0 ? count : limit - i0, padded = (count + MR - 1) / MR * MR;
    for (int r = 0; r < padded; r++) {
        uint32_t *dst = out + (long)r * pairs;
        const float *src = x + (long)(i0 + r) * ld;
        for (int q = 0; q < pairs; q += 16) {
            const int ka = k0 + 2 * q, left = r < valid ? kend - ka : 0;
            const __mmask16 lo = (__mmask16)(left >= 16 ? 0xffff : left <= 0 ? 0 : (1u << left) - 1);
            const __mmask16 hi = (__mmask16)(left >= 32 ? 0xffff : left <= 16 ? 0 : (1u << (left - 16)) - 1);
            const __m512 a = _mm512_maskz_loadu_ps(lo, src + ka), b = _mm512_maskz_loadu_ps(hi, src + ka + 16);
            const int n = pairs - q >= 16 ? 16 : pairs - q;
            _mm512_mask_storeu_epi32(dst + q, (__mmask16)(n == 16 ? 0xffff : (1u << n) - 1), (__m512i)_mm512_cvtne2ps_pbh(b, a));
        }
    }
}

/* c[MR][NR] (row stride ldc) += alpha · Apanel · Bpanel over `pairs` k pairs (= with `overwrite`),
   the pair q of row r of A at ap[q * a_pair + r * a_row]; rows ≥ rows and columns ≥ cols are not
   written. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void micro_kernel(const uint32_t *ap, long a_pair, long a_row, const uint32_t *bp, int pairs, float alpha, float *c, long ldc,
                         int rows, int cols, int overwrite) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int q = 0; q < pairs; q++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp), b1 = (__m512bh)_mm512_loadu_si512(bp + 16);
        for (int r = 0; r < MR; r++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)ap[r * a_row]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
        ap += a_pair;
        bp += NR;
    }
    ember_store_tile(acc, alpha, c, ldc, rows, cols, overwrite);
}

int ember_gemm_bf16(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, long lda, const float *b, long ldb,
                    float beta, float *c, long ldc) {
    if (!ember_has_bf16()) return -1;
    if (m <= 0 || n <= 0) return 0;
    /* Panels as large as this product needs, rounded to whole cache lines. */
    const size_t pcap = (size_t)((k < KC ? k : KC) + 1) / 2, ncap = (size_t)((n < NC ? n : NC) + NR - 1) / NR * NR;
    const size_t mcap = (size_t)((m < MC ? m : MC) + MR - 1) / MR * MR;
    uint32_t *bp = k > 0 ? aligned_alloc(64, (sizeof(uint32_t) * pcap * ncap + 63) / 64 * 64) : NULL;
    uint32_t *ap = k > 0 ? aligned_alloc(64, (sizeof(uint32_t) * pcap * mcap + 63) / 64 * 64) : NULL;
    if (k > 0 && (!bp || !ap)) { free(bp); free(ap); return -2; }
    /* With beta 0, the first block of k writes C instead of adding to it. */
    const int overwrite = beta == 0 && k > 0 && alpha != 0;
    ember_scale_c(m, n, beta, c, ldc, overwrite);
    if (k <= 0 || alpha == 0) { free(bp); free(ap); return 0; }
    for (int jc = 0; jc < n; jc += NC) {
        const int nc = n - jc < NC ? n - jc : NC;
        for (int pc = 0; pc < k; pc += KC) {
            const int kc = k - pc < KC ? k - pc : KC, pairs = (kc + 1) / 2;
            pack(b, ldb, trans_b, jc, nc, pc, kc, n, k, NR, bp);
            for (int ic = 0; ic < m; ic += MC) {
                const int mc = m - ic < MC ? m - ic : MC;
                /* Untransposed, A's rows are contiguous in k and are converted row by row;
                   transposed, its columns are gathered into pair-major panels. */
                if (trans_a) pack(a, lda, 0, ic, mc, pc, kc, m, k, MR, ap);
                else pack_rows(a, lda, ic, mc, pc, kc, m, k, ap);
                const long a_pair = trans_a ? MR : 1, a_row = trans_a ? 1 : pairs;
                for (int jr = 0; jr < nc; jr += NR) {
                    const int cols = nc - jr < NR ? nc - jr : NR;
                    for (int ir = 0; ir < mc; ir += MR) {
                        const int rows = mc - ir < MR ? mc - ir : MR;
                        micro_kernel(ap + (long)ir * pairs, a_pair, a_row, bp + (long)jr * pairs, pairs, alpha, c + (long)(ic + ir) * ldc + jc + jr, ldc, rows, cols,
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
