#include "ckernels.h"
#include <immintrin.h>
#include <string.h>

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
