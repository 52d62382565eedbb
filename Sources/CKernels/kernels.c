#include "ckernels.h"
#include <immintrin.h>
#include <string.h>

int ember_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

#define TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))

TARGET static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

/// The 32 values of one block as bytes: q4 nibbles (low half first, unsigned), q8 signed.
TARGET static inline __m256i block_values(int type, const uint8_t *block) {
    if (type == 2) return _mm256_loadu_si256((const __m256i *)(block + 2));
    __m128i packed = _mm_loadu_si128((const __m128i *)(block + (type == 1 ? 4 : 2)));
    __m128i low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
    __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
    return _mm256_set_m128i(high, low);
}

/// Σ_b wm_b · xs_b, sixteen blocks at a time, the lanes added in a fixed tree.
TARGET static inline float minimum_terms(const float *wm, const float *xs, int blocks) {
    __m512 acc = _mm512_setzero_ps();
    int b = 0;
    for (; b + 16 <= blocks; b += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(wm + b), _mm512_loadu_ps(xs + b), acc);
    if (b < blocks) {
        __mmask16 tail = (__mmask16)((1u << (blocks - b)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, wm + b), _mm512_maskz_loadu_ps(tail, xs + b), acc);
    }
    __m256 half = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    quarter = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    quarter = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));
    return _mm_cvtss_f32(quarter);
}

/// Rows r of the weights against R activation rows starting at i, two blocks per 512-bit step:
/// integer sums per group of four products (exact), scaled per block into 16 f32 lanes, the
/// lanes added in a fixed tree at the end, plus the q4_1 minimum terms in block order. Each
/// activation row's result is formed the same way whatever R is.
#define PRODUCTS(R)                                                                                              \
    TARGET static inline __attribute__((always_inline)) void products_##R(int type, const uint8_t *row, long block_bytes, int blocks, \
                                    const float *we, const float *wm,                                            \
                                    const int8_t *xq, const float *xe, const float *xs, float *out) {           \
        __m512 acc[R];                                                                                           \
        float off[R];                                                                                            \
        for (int k = 0; k < R; k++) { acc[k] = _mm512_setzero_ps(); off[k] = 0; }                                \
        const long x_stride = (long)blocks * 32, e_stride = (long)blocks * 8;                                     \
        for (int b = 0; b + 1 < blocks; b += 2) {                                                                \
            const uint8_t *b0 = row + b * block_bytes, *b1 = b0 + block_bytes;                                   \
            __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(block_values(type, b0)), block_values(type, b1), 1); \
            __m512 wd = _mm512_loadu_ps(we + b * 8);                                                             \
            __m512i wu = type == 2 ? _mm512_abs_epi8(w) : w;                                                     \
            __mmask64 negative = type == 2 ? _mm512_movepi8_mask(w) : 0;                                         \
            for (int k = 0; k < R; k++) {                                                                        \
                __m512i x = _mm512_loadu_si512((const void *)(xq + k * x_stride + b * 32));                      \
                if (type == 2) x = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);                 \
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, x);                                  \
                if (type == 0) s = _mm512_sub_epi32(s, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), x)); \
                __m512 scale = _mm512_mul_ps(wd, _mm512_loadu_ps(xe + k * e_stride + b * 8));                    \
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[k]);                                 \
            }                                                                                                    \
        }                                                                                                        \
        if (blocks % 2) {                                                                                        \
            const int b = blocks - 1;                                                                            \
            const uint8_t *b0 = row + b * block_bytes;                                                           \
            __m512i w = _mm512_castsi256_si512(block_values(type, b0));                                          \
            w = _mm512_maskz_mov_epi64(0x0F, w);                                                                 \
            __m512 wd = _mm512_maskz_loadu_ps(0x00FF, we + b * 8);                                               \
            __m512i wu = type == 2 ? _mm512_abs_epi8(w) : w;                                                     \
            __mmask64 negative = type == 2 ? _mm512_movepi8_mask(w) : 0;                                         \
            for (int k = 0; k < R; k++) {                                                                        \
                __m512i x = _mm512_maskz_loadu_epi8(0xFFFFFFFFull, (const void *)(xq + k * x_stride + b * 32));  \
                if (type == 2) x = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);                 \
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, x);                                  \
                if (type == 0) s = _mm512_sub_epi32(s, _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), x)); \
                __m512 scale = _mm512_mul_ps(wd, _mm512_maskz_loadu_ps(0x00FF, xe + k * e_stride + b * 8));       \
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[k]);                                 \
            }                                                                                                    \
        }                                                                                                        \
        if (type == 1) {                                                                                         \
            for (int k = 0; k < R; k++) off[k] = minimum_terms(wm, xs + k * blocks, blocks);                     \
        }                                                                                                        \
        for (int k = 0; k < R; k++) {                                                                            \
            __m256 half = _mm256_add_ps(_mm512_castps512_ps256(acc[k]), _mm512_extractf32x8_ps(acc[k], 1));      \
            __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));            \
            quarter = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));                                      \
            quarter = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));                                             \
            out[k] = _mm_cvtss_f32(quarter) + off[k];                                                            \
        }                                                                                                        \
    }
PRODUCTS(8)
PRODUCTS(4)
PRODUCTS(1)

/// The loop over weight rows, specialised for one block type (TYPE is a constant in each copy).
TARGET static inline __attribute__((always_inline)) void rows_of_type(const int type, const uint8_t *weights, long row_bytes, int r0, int r1, int blocks,
                                                                      const int8_t *xq, const float *xe, const float *xs, int m, float *y, long y_stride) {
    const long block_bytes = type == 0 ? 18 : type == 1 ? 20 : 34;
    const long x_stride = (long)blocks * 32, e_stride = (long)blocks * 8;
    float out[8];
    float we[blocks * 8 + 16], wm[blocks + 16];
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = weights + (long)r * row_bytes;
        for (int b = 0; b < blocks; b++) {
            const uint8_t *block = row + b * block_bytes;
            _mm256_storeu_ps(we + 8 * b, _mm256_set1_ps(half_to_float(*(const uint16_t *)block)));
            wm[b] = type == 1 ? half_to_float(*(const uint16_t *)(block + 2)) : 0;
        }
        int i = 0;
        for (; i + 8 <= m; i += 8) {
            products_8(type, row, block_bytes, blocks, we, wm, xq + i * x_stride, xe + i * e_stride, xs + (long)i * blocks, out);
            for (int k = 0; k < 8; k++) y[(long)(i + k) * y_stride + r] = out[k];
        }
        for (; i + 4 <= m; i += 4) {
            products_4(type, row, block_bytes, blocks, we, wm, xq + i * x_stride, xe + i * e_stride, xs + (long)i * blocks, out);
            for (int k = 0; k < 4; k++) y[(long)(i + k) * y_stride + r] = out[k];
        }
        for (; i < m; i++) {
            products_1(type, row, block_bytes, blocks, we, wm, xq + i * x_stride, xe + i * e_stride, xs + (long)i * blocks, out);
            y[(long)i * y_stride + r] = out[0];
        }
    }
}

TARGET void ember_quantized_products(int type, const uint8_t *weights, long row_bytes, int r0, int r1, int blocks,
                                     const int8_t *xq, const float *xe, const float *xs, int m, float *y, long y_stride) {
    switch (type) {
    case 0: rows_of_type(0, weights, row_bytes, r0, r1, blocks, xq, xe, xs, m, y, y_stride); break;
    case 1: rows_of_type(1, weights, row_bytes, r0, r1, blocks, xq, xe, xs, m, y, y_stride); break;
    default: rows_of_type(2, weights, row_bytes, r0, r1, blocks, xq, xe, xs, m, y, y_stride); break;
    }
}
