#include "ckernels.h"
#include <immintrin.h>
#include <string.h>

int ember_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

#define TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

TARGET static inline float half_to_float(uint16_t h) {
    return _cvtsh_ss(h);
}

/// The 32 weight values of a block as unsigned bytes (q4: nibbles, low half first) or signed (q8).
TARGET static inline __m256i load_weights(int type, const uint8_t *block) {
    if (type == 2) return _mm256_loadu_si256((const __m256i *)(block + 2));
    const uint8_t *qs = block + (type == 1 ? 4 : 2);
    __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    __m128i low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
    __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
    return _mm256_set_m128i(high, low);
}

TARGET void ember_quantized_products(int type, const uint8_t *weights, long row_bytes, int r0, int r1, int blocks,
                                     const int8_t *xq, const float *xd, const float *xs, int m, float *y, long y_stride) {
    const long block_bytes = type == 0 ? 18 : type == 1 ? 20 : 34;
    const long x_stride = (long)blocks * 32;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = weights + (long)r * row_bytes;
        int i = 0;
        for (; i + 4 <= m; i += 4) {
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
            float off0 = 0, off1 = 0, off2 = 0, off3 = 0;
            for (int b = 0; b < blocks; b++) {
                const uint8_t *block = row + b * block_bytes;
                const float wd = half_to_float(*(const uint16_t *)block);
                const float wm = type == 1 ? half_to_float(*(const uint16_t *)(block + 2)) : 0;
                __m256i w = load_weights(type, block);
                __m256i wu = w;  // unsigned operand
                const int8_t *x = xq + (long)i * x_stride + b * 32;
                __m256i x0 = _mm256_loadu_si256((const __m256i *)x);
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + x_stride));
                __m256i x2 = _mm256_loadu_si256((const __m256i *)(x + 2 * x_stride));
                __m256i x3 = _mm256_loadu_si256((const __m256i *)(x + 3 * x_stride));
                if (type == 2) {  // signed weights: |w| times x with w's sign
                    wu = _mm256_abs_epi8(w);
                    x0 = _mm256_sign_epi8(x0, w); x1 = _mm256_sign_epi8(x1, w);
                    x2 = _mm256_sign_epi8(x2, w); x3 = _mm256_sign_epi8(x3, w);
                }
                __m256i s0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, x0);
                __m256i s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, x1);
                __m256i s2 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, x2);
                __m256i s3 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, x3);
                if (type == 0) {  // q4_0 values are nibble − 8: subtract 8·Σx per lane group
                    __m256i ones = _mm256_set1_epi8(8);
                    s0 = _mm256_sub_epi32(s0, _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, x0));
                    s1 = _mm256_sub_epi32(s1, _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, x1));
                    s2 = _mm256_sub_epi32(s2, _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, x2));
                    s3 = _mm256_sub_epi32(s3, _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, x3));
                }
                const float *d = xd + (long)i * blocks + b;
                acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_set1_ps(wd * d[0]), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_set1_ps(wd * d[blocks]), acc1);
                acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s2), _mm256_set1_ps(wd * d[2 * blocks]), acc2);
                acc3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s3), _mm256_set1_ps(wd * d[3 * blocks]), acc3);
                if (type == 1) {
                    const float *s = xs + (long)i * blocks + b;
                    off0 += wm * s[0]; off1 += wm * s[blocks]; off2 += wm * s[2 * blocks]; off3 += wm * s[3 * blocks];
                }
            }
            __m256 accs[4] = {acc0, acc1, acc2, acc3};
            float offs[4] = {off0, off1, off2, off3};
            for (int k = 0; k < 4; k++) {
                float lanes[8];
                _mm256_storeu_ps(lanes, accs[k]);
                y[(long)(i + k) * y_stride + r] = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])) + offs[k];
            }
        }
        for (; i < m; i++) {
            __m256 acc = _mm256_setzero_ps();
            float off = 0;
            for (int b = 0; b < blocks; b++) {
                const uint8_t *block = row + b * block_bytes;
                const float wd = half_to_float(*(const uint16_t *)block);
                const float wm = type == 1 ? half_to_float(*(const uint16_t *)(block + 2)) : 0;
                __m256i w = load_weights(type, block), wu = w;
                __m256i x = _mm256_loadu_si256((const __m256i *)(xq + (long)i * x_stride + b * 32));
                if (type == 2) { wu = _mm256_abs_epi8(w); x = _mm256_sign_epi8(x, w); }
                __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, x);
                if (type == 0) s = _mm256_sub_epi32(s, _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(8), x));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(wd * xd[(long)i * blocks + b]), acc);
                if (type == 1) off += wm * xs[(long)i * blocks + b];
            }
            float lanes[8];
            _mm256_storeu_ps(lanes, acc);
            y[(long)i * y_stride + r] = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])) + off;
        }
    }
}
