#include "ckernels.h"
#include <immintrin.h>
#include <string.h>
#include <malloc.h>
#include <math.h>

void ember_keep_freed_memory(void) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  /* glibc's largest */
    mallopt(M_TRIM_THRESHOLD, 0x7fffffff);
}

int ember_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

#define TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))

/// Bytes of one GGML block and of one packed block (16 rows) for each type code.
static long ggml_block_bytes(int type) { return type == 0 ? 18 : type == 1 ? 20 : 34; }
long ember_packed_block_bytes(int type) { return type == 0 ? 32 + 256 : type == 1 ? 64 + 256 : 32 + 512; }

void ember_pack_rows(int type, const uint8_t *weights, long row_bytes, int rows, int blocks, uint8_t *packed) {
    const long block_bytes = ggml_block_bytes(type), packed_bytes = ember_packed_block_bytes(type);
    const int groups = (rows + 15) / 16;
    memset(packed, 0, (size_t)groups * blocks * packed_bytes);
    for (int r = 0; r < rows; r++) {
        const int g = r / 16, lane = r % 16;
        for (int b = 0; b < blocks; b++) {
            const uint8_t *source = weights + (long)r * row_bytes + b * block_bytes;
            uint8_t *target = packed + ((long)g * blocks + b) * packed_bytes;
            memcpy(target + 2 * lane, source, 2);                          // scale (f16)
            if (type == 1) memcpy(target + 32 + 2 * lane, source + 2, 2);  // minimum (f16)
            uint8_t *quants = target + (type == 1 ? 64 : 32);
            if (type == 2) {
                for (int j = 0; j < 32; j++) quants[64 * (j / 4) + 4 * lane + j % 4] = source[2 + j] ^ 0x80;
            } else {
                const uint8_t *nibbles = source + (type == 1 ? 4 : 2);
                for (int j = 0; j < 16; j++) quants[64 * (j / 4) + 4 * lane + j % 4] = nibbles[j];
            }
        }
    }
}

/// R activation rows against one group of 16 packed weight rows: for each block, eight VNNI steps
/// take four values of all 16 rows against four broadcast activation values, so one vector holds the
/// block's exact integer sums for the 16 rows; those are corrected for the stored offset (q4_0: 8,
/// q8_0: 128), scaled by weight scale × activation scale and added up block by block. q4_1 adds its
/// minimum × activation sum per block. Each output is formed the same way whatever R is.
#define PACKED(R)                                                                                                \
    TARGET static inline __attribute__((always_inline)) void packed_##R(const int type, const uint8_t *group, int blocks,  \
            const int8_t *xq, const float *xd, const int32_t *xsum, const float *xs, __m512 *result) {           \
        const long packed_bytes = type == 0 ? 32 + 256 : type == 1 ? 64 + 256 : 32 + 512;                     \
        const long x_stride = (long)blocks * 32;                                                                 \
        const int offset = type == 0 ? 8 : 128;                                                                  \
        __m512 acc[R];                                                                                           \
        for (int k = 0; k < R; k++) acc[k] = _mm512_setzero_ps();                                                \
        for (int b = 0; b < blocks; b++) {                                                                       \
            const uint8_t *block = group + b * packed_bytes;                                                     \
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));                       \
            const __m512 mw = type == 1 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32))) : _mm512_setzero_ps(); \
            const uint8_t *quants = block + (type == 1 ? 64 : 32);                                               \
            __m512i w[8];                                                                                        \
            if (type == 2) {                                                                                     \
                for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)(quants + 64 * j));          \
            } else {                                                                                             \
                const __m512i low = _mm512_set1_epi8(0x0F);                                                      \
                for (int p = 0; p < 4; p++) {                                                                    \
                    const __m512i nibbles = _mm512_loadu_si512((const void *)(quants + 64 * p));                 \
                    w[p] = _mm512_and_si512(nibbles, low);                                                       \
                    w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(nibbles, 4), low);                             \
                }                                                                                                \
            }                                                                                                    \
            for (int k = 0; k < R; k++) {                                                                        \
                const int32_t *x = (const int32_t *)(xq + k * x_stride + b * 32);                                \
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], _mm512_set1_epi32(x[0]));          \
                for (int j = 1; j < 8; j++) s = _mm512_dpbusd_epi32(s, w[j], _mm512_set1_epi32(x[j]));          \
                if (type != 1) s = _mm512_sub_epi32(s, _mm512_set1_epi32(offset * xsum[(long)k * blocks + b])); \
                const __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(xd[(long)k * blocks + b]));                    \
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[k]);                                     \
                if (type == 1) acc[k] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[(long)k * blocks + b]), acc[k]);  \
            }                                                                                                    \
        }                                                                                                        \
        for (int k = 0; k < R; k++) result[k] = acc[k];                                                          \
    }
PACKED(8)
PACKED(4)
PACKED(1)

TARGET static inline __attribute__((always_inline)) void groups_of_type(const int type, const uint8_t *packed, int g0, int g1, int rows, int blocks,
                                                                        const int8_t *xq, const float *xd, const int32_t *xsum, const float *xs,
                                                                        int m, float *y, long y_stride) {
    const long group_bytes = (long)blocks * (type == 0 ? 32 + 256 : type == 1 ? 64 + 256 : 32 + 512);
    const long x_stride = (long)blocks * 32;
    __m512 out[8];
    for (int g = g0; g < g1; g++) {
        const uint8_t *group = packed + g * group_bytes;
        const int valid = rows - 16 * g < 16 ? rows - 16 * g : 16;
        const __mmask16 mask = (__mmask16)((1u << valid) - 1);
        int i = 0;
        for (; i + 8 <= m; i += 8) {
            packed_8(type, group, blocks, xq + i * x_stride, xd + (long)i * blocks, xsum + (long)i * blocks, xs + (long)i * blocks, out);
            for (int k = 0; k < 8; k++) _mm512_mask_storeu_ps(y + (long)(i + k) * y_stride + 16 * g, mask, out[k]);
        }
        for (; i + 4 <= m; i += 4) {
            packed_4(type, group, blocks, xq + i * x_stride, xd + (long)i * blocks, xsum + (long)i * blocks, xs + (long)i * blocks, out);
            for (int k = 0; k < 4; k++) _mm512_mask_storeu_ps(y + (long)(i + k) * y_stride + 16 * g, mask, out[k]);
        }
        for (; i < m; i++) {
            packed_1(type, group, blocks, xq + i * x_stride, xd + (long)i * blocks, xsum + (long)i * blocks, xs + (long)i * blocks, out);
            _mm512_mask_storeu_ps(y + (long)i * y_stride + 16 * g, mask, out[0]);
        }
    }
}

TARGET void ember_packed_products(int type, const uint8_t *packed, int g0, int g1, int rows, int blocks,
                                  const int8_t *xq, const float *xd, const int32_t *xsum, const float *xs, int m, float *y, long y_stride) {
    switch (type) {
    case 0: groups_of_type(0, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, m, y, y_stride); break;
    case 1: groups_of_type(1, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, m, y, y_stride); break;
    default: groups_of_type(2, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, m, y, y_stride); break;
    }
}

/* exp(x) with the polynomial of llama.cpp's vectorised kernels (see vectorExp in Activation.swift),
   one value: the same operations in the same order, scaled by 2^n exactly. */
static inline float exp_scalar(float x) {
    const float shift = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, shift), n = z - shift;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    if (fabsf(n) > 192) return n <= 0 ? 0 : INFINITY;
    const float u = b * b;
    const float p = fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), q = fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f);
    const float j = fmaf(fmaf(p, u, q), u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(j, (int)n);
}

/* Eight at once; valid (bit-identical to exp_scalar) where every result is a normal float. */
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift), n = _mm256_sub_ps(z, shift);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x);
    b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), b);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f));
    const __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f));
    const __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(p, u, q), u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_castps_si256(z), _mm256_castps_si256(shift)), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(j), e));
}

/* Whether all eight inputs give normal results in exp8 (n between -124 and 126). */
__attribute__((target("avx2,fma"))) static inline int exp8_safe(__m256 x) {
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-85.0f), _CMP_GE_OQ), _mm256_cmp_ps(x, _mm256_set1_ps(87.0f), _CMP_LE_OQ));
    return _mm256_movemask_ps(inside) == 0xFF;
}

__attribute__((target("avx2,fma"))) void ember_swiglu_forward(const float *gate, const float *up, float *out, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), minus = _mm256_sub_ps(_mm256_setzero_ps(), g);
        if (!exp8_safe(minus)) break;
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(minus)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) out[i] = gate[i] / (1.0f + exp_scalar(0.0f - gate[i])) * up[i];
}

__attribute__((target("avx2,fma"))) void ember_swiglu_backward(const float *gate, const float *up, const float *dout, float *dgate, float *dup, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i), minus = _mm256_sub_ps(_mm256_setzero_ps(), g);
        if (!exp8_safe(minus)) break;
        const __m256 one = _mm256_set1_ps(1.0f), sigma = _mm256_div_ps(one, _mm256_add_ps(one, exp8(minus)));
        const __m256 d = _mm256_loadu_ps(dout + i), u = _mm256_loadu_ps(up + i);
        const __m256 slope = _mm256_mul_ps(sigma, _mm256_fmadd_ps(g, _mm256_sub_ps(one, sigma), one));
        _mm256_storeu_ps(dgate + i, _mm256_fmadd_ps(_mm256_mul_ps(d, u), slope, _mm256_loadu_ps(dgate + i)));
        _mm256_storeu_ps(dup + i, _mm256_fmadd_ps(d, _mm256_mul_ps(g, sigma), _mm256_loadu_ps(dup + i)));
    }
    for (; i < n; i++) {
        const float g = gate[i], sigma = 1.0f / (1.0f + exp_scalar(0.0f - g));
        dgate[i] += dout[i] * up[i] * sigma * (1.0f + g * (1.0f - sigma));
        dup[i] += dout[i] * g * sigma;
    }
}

__attribute__((target("avx2,fma"))) double ember_exp_sum(const float *x, float shift, float *out, long n) {
    __m256 total = _mm256_setzero_ps();
    const __m256 s = _mm256_set1_ps(shift);
    double sum = 0;
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), s);
        __m256 e;
        if (exp8_safe(v)) {
            e = exp8(v);
        } else {
            float lanes[8];
            _mm256_storeu_ps(lanes, v);
            for (int k = 0; k < 8; k++) lanes[k] = exp_scalar(lanes[k]);
            e = _mm256_loadu_ps(lanes);
        }
        if (out) _mm256_storeu_ps(out + i, e);
        total = _mm256_add_ps(total, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, total);
    for (int k = 0; k < 8; k++) sum += lanes[k];
    for (; i < n; i++) {
        const float e = exp_scalar(x[i] - shift);
        if (out) out[i] = e;
        sum += e;
    }
    return sum;
}
