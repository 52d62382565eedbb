#include "ckernels.h"
#include <immintrin.h>
#include <string.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

void ember_keep_freed_memory(void) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  /* glibc's largest */
    mallopt(M_TRIM_THRESHOLD, 0x7fffffff);
}

/* ---- Integer products of packed rows: run-time kernel tiers ----------------------------------- */

static pthread_once_t best_once = PTHREAD_ONCE_INIT, tier_once = PTHREAD_ONCE_INIT;
static int best_tier = EMBER_TIER_NONE, kernel_tier = EMBER_TIER_NONE;
static int has_avx_vnni;  /* tier 2 runs VEX-encoded (AVX-VNNI) rather than EVEX-encoded (AVX512_VNNI + VL) */

static void find_best_tier(void) {
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const int evex = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    has_avx_vnni = avx2 && __builtin_cpu_supports("avxvnni");
    if (avx2 && evex && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) best_tier = EMBER_TIER_AVX512_VNNI;
    else if (avx2 && (evex || has_avx_vnni)) best_tier = EMBER_TIER_AVX_VNNI;
    else if (avx2) best_tier = EMBER_TIER_AVX2;
    else best_tier = EMBER_TIER_NONE;
}

int ember_best_tier(void) {
    pthread_once(&best_once, find_best_tier);
    return best_tier;
}

const char *ember_tier_name(int tier) {
    switch (tier) {
    case EMBER_TIER_AVX512_VNNI: return "avx512-vnni";
    case EMBER_TIER_AVX_VNNI: return "avx-vnni";
    case EMBER_TIER_AVX2: return "avx2";
    case EMBER_TIER_NONE: return "none";
    default: return "unknown";
    }
}

static void find_kernel_tier(void) {
    int tier = ember_best_tier();
    const char *value = getenv("EMBER_KERNEL_TIER");
    if (value && *value) {
        int requested = -1;
        for (int t = EMBER_TIER_NONE; t <= EMBER_TIER_AVX512_VNNI; t++)
            if (strcasecmp(value, ember_tier_name(t)) == 0) requested = t;
        if (requested < 0)
            fprintf(stderr, "ember: ignoring EMBER_KERNEL_TIER=%s (expected avx512-vnni, avx-vnni, avx2 or none)\n", value);
        else if (requested < tier)
            tier = requested;  /* lowered, never raised */
    }
    kernel_tier = tier;
}

int ember_kernel_tier(void) {
    pthread_once(&tier_once, find_kernel_tier);
    return kernel_tier;
}

/* The packed types: q4_0, q4_1 and q8_0 keep GGML's blocks of 32 with f16 scales; the integer
   types (EMBER_I8*) hold any block type's 32-element sub-blocks as signed bytes with f32 scales and,
   as the type needs, minimums and a second scale and minimum for elements 16..31; EMBER_I4_MIN holds
   4-bit values (q4_K's) as nibbles with an f32 scale and minimum. */
static inline int int8_values(int type) { return type == EMBER_Q8_0 || (type >= EMBER_I8 && type != EMBER_I4_MIN); }
static inline int f32_scales(int type) { return type >= EMBER_I8; }
static inline int has_halves(int type) { return type == EMBER_I8_HALVES || type == EMBER_I8_HALVES_MIN; }
static inline int has_minimums(int type) { return type == EMBER_Q4_1 || type == EMBER_I8_MIN || type == EMBER_I8_HALVES_MIN || type == EMBER_I4_MIN; }
/* Nibbles stored as they are (0..15, with a minimum): no offset to correct. */
static inline int unsigned_nibbles(int type) { return type == EMBER_Q4_1 || type == EMBER_I4_MIN; }

/* Sizes and offsets, in one place: one GGML block, and one packed block of 16 rows: the 16 scales
   (f16, or f32 for the integer types), [their second scales], [minimums], [second minimums], then
   the values: 16 nibble bytes or 32 value bytes per row. */
static inline long ggml_block_bytes(int type) { return type == EMBER_Q4_0 ? 18 : type == EMBER_Q4_1 ? 20 : 34; }
static inline long packed_scale_bytes(int type) { return f32_scales(type) ? 64 : 32; }
static inline long packed_second_scales_offset(int type) { return packed_scale_bytes(type); }
static inline long packed_minimums_offset(int type) { return packed_scale_bytes(type) * (1 + has_halves(type)); }
static inline long packed_second_minimums_offset(int type) { return packed_minimums_offset(type) + packed_scale_bytes(type); }
static inline long packed_quants_offset(int type) { return packed_minimums_offset(type) * (1 + has_minimums(type)); }
static inline long packed_block_bytes(int type) { return packed_quants_offset(type) + (int8_values(type) ? 512 : 256); }
long ember_packed_block_bytes(int type) { return packed_block_bytes(type); }

/* Value j of a row (lane) at its place in a packed block's value bytes. */
static inline long packed_value_offset(int lane, int j) { return 64 * (j / 4) + 4 * lane + j % 4; }

void ember_pack_rows(int type, const uint8_t *weights, long row_bytes, int rows, int blocks, uint8_t *packed) {
    const long block_bytes = ggml_block_bytes(type), packed_bytes = packed_block_bytes(type);
    const int groups = (rows + 15) / 16;
    memset(packed, 0, (size_t)groups * blocks * packed_bytes);
    for (int r = 0; r < rows; r++) {
        const int g = r / 16, lane = r % 16;
        for (int b = 0; b < blocks; b++) {
            const uint8_t *source = weights + (long)r * row_bytes + b * block_bytes;
            uint8_t *target = packed + ((long)g * blocks + b) * packed_bytes;
            memcpy(target + 2 * lane, source, 2);                                   // scale (f16)
            if (type == EMBER_Q4_1) memcpy(target + 32 + 2 * lane, source + 2, 2);  // minimum (f16)
            uint8_t *quants = target + packed_quants_offset(type);
            if (type == EMBER_Q8_0) {
                for (int j = 0; j < 32; j++) quants[packed_value_offset(lane, j)] = source[2 + j] ^ 0x80;
            } else {
                const uint8_t *nibbles = source + (type == EMBER_Q4_1 ? 4 : 2);
                for (int j = 0; j < 16; j++) quants[packed_value_offset(lane, j)] = nibbles[j];
            }
        }
    }
}

void ember_pack_sub_block(int type, uint8_t *block, int lane, const int8_t *values, const float *scales, const float *minimums) {
    memcpy(block + 4 * lane, &scales[0], 4);
    if (has_halves(type)) memcpy(block + packed_second_scales_offset(type) + 4 * lane, &scales[1], 4);
    if (has_minimums(type)) {
        memcpy(block + packed_minimums_offset(type) + 4 * lane, &minimums[0], 4);
        if (has_halves(type)) memcpy(block + packed_second_minimums_offset(type) + 4 * lane, &minimums[1], 4);
    }
    uint8_t *quants = block + packed_quants_offset(type);
    if (type == EMBER_I4_MIN) {  /* 4-bit values: byte j holds values j and j + 16, as q4_1 keeps them */
        for (int j = 0; j < 16; j++) quants[packed_value_offset(lane, j)] = (uint8_t)(values[j] | values[j + 16] << 4);
        return;
    }
    for (int j = 0; j < 32; j++) quants[packed_value_offset(lane, j)] = (uint8_t)values[j] ^ 0x80;
}

#define INLINE static inline __attribute__((always_inline))
#define T512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#define T256_EVEX __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define T256_VEX __attribute__((target("avx2,fma,f16c,avxvnni")))
#define T256_AVX2 __attribute__((target("avx2,fma,f16c")))

/* Four activation values as one int32 (to broadcast). */
INLINE int32_t four(const int8_t *x) {
    int32_t v;
    memcpy(&v, x, 4);
    return v;
}

/* Tier 3. R activation rows against one group of 16 packed weight rows: for each block, eight VNNI
   steps take four values of all 16 rows against four broadcast activation values, so one vector holds
   the block's exact integer sums for the 16 rows (for the types with halves, steps 0..3 and 4..7 give
   the two halves' sums); those are corrected for the stored offset (q4_0: 8, the byte types: 128),
   scaled by weight scale × activation scale and added up block by block. The types with minimums add
   minimum × (activation scale × activation sum) per block or half. Each output is formed the same way
   whatever R is. The other tiers form every output lane with the same float operations in the same
   order, so all tiers give the same bits. */
#define PACKED512(R)                                                                                                   \
    T512 INLINE void packed512_##R(const int type, const uint8_t *group, int blocks, const int8_t *xq, const float *xd, \
                                   const int32_t *xsum, const float *xs, const int32_t *xsum16, const float *xs16,     \
                                   __m512 *result) {                                                                   \
        const long packed_bytes = packed_block_bytes(type), x_stride = (long)blocks * 32;                              \
        const int offset = type == EMBER_Q4_0 ? 8 : 128;                                                               \
        __m512 acc[R];                                                                                                 \
        for (int k = 0; k < R; k++) acc[k] = _mm512_setzero_ps();                                                      \
        for (int b = 0; b < blocks; b++) {                                                                             \
            const uint8_t *block = group + b * packed_bytes;                                                           \
            __m512 dw, dh = _mm512_setzero_ps(), mw = _mm512_setzero_ps(), mh = _mm512_setzero_ps();                   \
            if (f32_scales(type)) {                                                                                    \
                dw = _mm512_loadu_ps(block);                                                                           \
                if (has_halves(type)) dh = _mm512_loadu_ps(block + packed_second_scales_offset(type));                 \
                if (has_minimums(type)) mw = _mm512_loadu_ps(block + packed_minimums_offset(type));                    \
                if (has_halves(type) && has_minimums(type)) mh = _mm512_loadu_ps(block + packed_second_minimums_offset(type)); \
            } else {                                                                                                   \
                dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)block));                                      \
                if (has_minimums(type)) mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(block + 32)));       \
            }                                                                                                          \
            const uint8_t *quants = block + packed_quants_offset(type);                                                \
            __m512i w[8];                                                                                              \
            if (int8_values(type)) {                                                                                   \
                for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)(quants + 64 * j));                \
            } else {                                                                                                   \
                const __m512i low = _mm512_set1_epi8(0x0F);                                                            \
                for (int p = 0; p < 4; p++) {                                                                          \
                    const __m512i nibbles = _mm512_loadu_si512((const void *)(quants + 64 * p));                       \
                    w[p] = _mm512_and_si512(nibbles, low);                                                             \
                    w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(nibbles, 4), low);                                   \
                }                                                                                                      \
            }                                                                                                          \
            for (int k = 0; k < R; k++) {                                                                              \
                const int8_t *x = xq + k * x_stride + b * 32;                                                          \
                const __m512 xdk = _mm512_set1_ps(xd[(long)k * blocks + b]);                                           \
                if (has_halves(type)) {                                                                                \
                    const long h = (long)k * 2 * blocks + 2 * b;                                                       \
                    __m512i lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], _mm512_set1_epi32(four(x)));        \
                    __m512i hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[4], _mm512_set1_epi32(four(x + 16)));   \
                    for (int j = 1; j < 4; j++) {                                                                      \
                        lo = _mm512_dpbusd_epi32(lo, w[j], _mm512_set1_epi32(four(x + 4 * j)));                        \
                        hi = _mm512_dpbusd_epi32(hi, w[j + 4], _mm512_set1_epi32(four(x + 16 + 4 * j)));               \
                    }                                                                                                  \
                    lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(128 * xsum16[h]));                                     \
                    hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(128 * xsum16[h + 1]));                                 \
                    acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(dw, xdk), acc[k]);                  \
                    acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(dh, xdk), acc[k]);                  \
                    if (has_minimums(type)) {                                                                          \
                        acc[k] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs16[h]), acc[k]);                                 \
                        acc[k] = _mm512_fmadd_ps(mh, _mm512_set1_ps(xs16[h + 1]), acc[k]);                             \
                    }                                                                                                  \
                    continue;                                                                                          \
                }                                                                                                      \
                __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], _mm512_set1_epi32(four(x)));             \
                for (int j = 1; j < 8; j++) s = _mm512_dpbusd_epi32(s, w[j], _mm512_set1_epi32(four(x + 4 * j)));     \
                if (!unsigned_nibbles(type)) s = _mm512_sub_epi32(s, _mm512_set1_epi32(offset * xsum[(long)k * blocks + b])); \
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, xdk), acc[k]);                       \
                if (has_minimums(type)) acc[k] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[(long)k * blocks + b]), acc[k]); \
            }                                                                                                          \
        }                                                                                                              \
        for (int k = 0; k < R; k++) result[k] = acc[k];                                                                \
    }
PACKED512(8)
PACKED512(4)
PACKED512(1)

/* The activation arguments of a kernel, for rows i.. of the activations. */
#define X_ARGS(i) xq + (long)(i) * x_stride, xd + (long)(i) * blocks, xsum + (long)(i) * blocks, xs + (long)(i) * blocks, \
                  xsum16 + (long)(i) * 2 * blocks, xs16 + (long)(i) * 2 * blocks
#define X_PARAMS const int8_t *xq, const float *xd, const int32_t *xsum, const float *xs, const int32_t *xsum16, const float *xs16

T512 INLINE void avx512_groups(const int type, const uint8_t *packed, int g0, int g1, int rows, int blocks, X_PARAMS,
                               int m, float *y, long y_stride) {
    const long group_bytes = (long)blocks * packed_block_bytes(type), x_stride = (long)blocks * 32;
    __m512 out[8];
    for (int g = g0; g < g1; g++) {
        const uint8_t *group = packed + g * group_bytes;
        const int valid = rows - 16 * g < 16 ? rows - 16 * g : 16;
        const __mmask16 mask = (__mmask16)((1u << valid) - 1);
        int i = 0;
        for (; i + 8 <= m; i += 8) {
            packed512_8(type, group, blocks, X_ARGS(i), out);
            for (int k = 0; k < 8; k++) _mm512_mask_storeu_ps(y + (long)(i + k) * y_stride + 16 * g, mask, out[k]);
        }
        for (; i + 4 <= m; i += 4) {
            packed512_4(type, group, blocks, X_ARGS(i), out);
            for (int k = 0; k < 4; k++) _mm512_mask_storeu_ps(y + (long)(i + k) * y_stride + 16 * g, mask, out[k]);
        }
        for (; i < m; i++) {
            packed512_1(type, group, blocks, X_ARGS(i), out);
            _mm512_mask_storeu_ps(y + (long)i * y_stride + 16 * g, mask, out[0]);
        }
    }
}

/* Tiers 2 and 1: the same work on 256-bit vectors, a group as two halves of 8 rows (bytes 0..31 and
   32..63 of each 64-byte vector of the layout). The integer sums of steps j0..<j1 for 8 rows: */

/* avx-vnni, VEX-encoded (Alder Lake and later) */
T256_VEX INLINE __m256i sums_vex(const int type, const __m256i *w, const int8_t *x, int j0, int j1) {
    (void)type;
    __m256i s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w[j0], _mm256_set1_epi32(four(x + 4 * j0)));
    for (int j = j0 + 1; j < j1; j++) s = _mm256_dpbusd_avx_epi32(s, w[j], _mm256_set1_epi32(four(x + 4 * j)));
    return s;
}

/* avx-vnni, EVEX-encoded with AVX512_VNNI + AVX512VL (e.g. Zen 4, Ice Lake, which lack AVX-VNNI) */
T256_EVEX INLINE __m256i sums_evex(const int type, const __m256i *w, const int8_t *x, int j0, int j1) {
    (void)type;
    __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w[j0], _mm256_set1_epi32(four(x + 4 * j0)));
    for (int j = j0 + 1; j < j1; j++) s = _mm256_dpbusd_epi32(s, w[j], _mm256_set1_epi32(four(x + 4 * j)));
    return s;
}

/* avx2: maddubs (u8 × s8 pairs, saturating to int16) and madd with ones. q4 values 0..15 against
   |x| ≤ 128: pairs ≤ 3840, two pairs added ≤ 7680, no saturation. The byte types arrive here as signed
   values (see SIGNED_Q8): maddubs(|w|, sign(x, w)) with |w| ≤ 128, |x| ≤ 127: pairs ≤ 32512, no
   saturation (x = −128 would not survive the sign trick; the activations are quantized to −127..127). */
T256_AVX2 INLINE __m256i sums_avx2(const int type, const __m256i *w, const int8_t *x, int j0, int j1) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i s = _mm256_setzero_si256();
    if (int8_values(type)) {
        for (int j = j0; j < j1; j++) {
            const __m256i xb = _mm256_set1_epi32(four(x + 4 * j));
            const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w[j]), _mm256_sign_epi8(xb, w[j]));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(pairs, ones));
        }
    } else {
        for (int j = j0; j < j1; j += 2) {
            const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w[j], _mm256_set1_epi32(four(x + 4 * j))),
                                                   _mm256_maddubs_epi16(w[j + 1], _mm256_set1_epi32(four(x + 4 * j + 4))));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(pairs, ones));
        }
    }
    return s;
}

/* R activation rows against half `half` of a group. SIGNED_Q8: the byte types' values are turned back
   into signed bytes and the sums need no offset correction (the same integers: Σ (w + 128)·x − 128·Σx). */
#define PACKED256(NAME, TGT, SUMS, SIGNED_Q8, R)                                                                       \
    TGT INLINE void NAME##_##R(const int type, const uint8_t *group, const int half, int blocks, X_PARAMS,             \
                               __m256 *result) {                                                                       \
        const long packed_bytes = packed_block_bytes(type), x_stride = (long)blocks * 32;                              \
        const int offset = type == EMBER_Q4_0 ? 8 : 128;                                                               \
        const int corrected = type == EMBER_Q4_0 || (int8_values(type) && !(SIGNED_Q8));                              \
        __m256 acc[R];                                                                                                 \
        for (int k = 0; k < R; k++) acc[k] = _mm256_setzero_ps();                                                      \
        for (int b = 0; b < blocks; b++) {                                                                             \
            const uint8_t *block = group + b * packed_bytes;                                                           \
            __m256 dw, dh = _mm256_setzero_ps(), mw = _mm256_setzero_ps(), mh = _mm256_setzero_ps();                   \
            if (f32_scales(type)) {                                                                                    \
                dw = _mm256_loadu_ps((const float *)(block + 32 * half));                                              \
                if (has_halves(type)) dh = _mm256_loadu_ps((const float *)(block + packed_second_scales_offset(type) + 32 * half)); \
                if (has_minimums(type)) mw = _mm256_loadu_ps((const float *)(block + packed_minimums_offset(type) + 32 * half)); \
                if (has_halves(type) && has_minimums(type))                                                            \
                    mh = _mm256_loadu_ps((const float *)(block + packed_second_minimums_offset(type) + 32 * half));    \
            } else {                                                                                                   \
                dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 16 * half)));                           \
                if (has_minimums(type)) mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(block + 32 + 16 * half))); \
            }                                                                                                          \
            const uint8_t *quants = block + packed_quants_offset(type) + 32 * half;                                    \
            __m256i w[8];                                                                                              \
            if (int8_values(type)) {                                                                                   \
                for (int j = 0; j < 8; j++) w[j] = _mm256_loadu_si256((const __m256i *)(quants + 64 * j));             \
                if (SIGNED_Q8)                                                                                         \
                    for (int j = 0; j < 8; j++) w[j] = _mm256_xor_si256(w[j], _mm256_set1_epi8((char)0x80));          \
            } else {                                                                                                   \
                const __m256i low = _mm256_set1_epi8(0x0F);                                                            \
                for (int p = 0; p < 4; p++) {                                                                          \
                    const __m256i nibbles = _mm256_loadu_si256((const __m256i *)(quants + 64 * p));                    \
                    w[p] = _mm256_and_si256(nibbles, low);                                                             \
                    w[p + 4] = _mm256_and_si256(_mm256_srli_epi16(nibbles, 4), low);                                   \
                }                                                                                                      \
            }                                                                                                          \
            for (int k = 0; k < R; k++) {                                                                              \
                const int8_t *x = xq + k * x_stride + b * 32;                                                          \
                const __m256 xdk = _mm256_set1_ps(xd[(long)k * blocks + b]);                                           \
                if (has_halves(type)) {                                                                                \
                    const long h = (long)k * 2 * blocks + 2 * b;                                                       \
                    __m256i lo = SUMS(type, w, x, 0, 4), hi = SUMS(type, w, x, 4, 8);                                  \
                    if (corrected) {                                                                                   \
                        lo = _mm256_sub_epi32(lo, _mm256_set1_epi32(128 * xsum16[h]));                                 \
                        hi = _mm256_sub_epi32(hi, _mm256_set1_epi32(128 * xsum16[h + 1]));                             \
                    }                                                                                                  \
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(dw, xdk), acc[k]);                  \
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(dh, xdk), acc[k]);                  \
                    if (has_minimums(type)) {                                                                          \
                        acc[k] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs16[h]), acc[k]);                                 \
                        acc[k] = _mm256_fmadd_ps(mh, _mm256_set1_ps(xs16[h + 1]), acc[k]);                             \
                    }                                                                                                  \
                    continue;                                                                                          \
                }                                                                                                      \
                __m256i s = SUMS(type, w, x, 0, 8);                                                                    \
                if (corrected) s = _mm256_sub_epi32(s, _mm256_set1_epi32(offset * xsum[(long)k * blocks + b]));        \
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, xdk), acc[k]);                       \
                if (has_minimums(type)) acc[k] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[(long)k * blocks + b]), acc[k]); \
            }                                                                                                          \
        }                                                                                                              \
        for (int k = 0; k < R; k++) result[k] = acc[k];                                                                \
    }

/* Stores the first `valid` of 8 outputs. */
__attribute__((target("avx2"))) INLINE void store8(float *y, int valid, __m256i mask, __m256 v) {
    if (valid >= 8) _mm256_storeu_ps(y, v);
    else _mm256_maskstore_ps(y, mask, v);
}

/* The row groups with one 256-bit kernel; WIDE: also 8 activation rows at once (32 vector registers). */
#define GROUPS256(NAME, TGT, SUMS, SIGNED_Q8, WIDE)                                                                    \
    PACKED256(NAME, TGT, SUMS, SIGNED_Q8, 8)                                                                           \
    PACKED256(NAME, TGT, SUMS, SIGNED_Q8, 4)                                                                           \
    PACKED256(NAME, TGT, SUMS, SIGNED_Q8, 1)                                                                           \
    TGT INLINE void NAME##_groups(const int type, const uint8_t *packed, int g0, int g1, int rows, int blocks,          \
                                  X_PARAMS, int m, float *y, long y_stride) {                                          \
        const long group_bytes = (long)blocks * packed_block_bytes(type), x_stride = (long)blocks * 32;                \
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                                               \
        __m256 out[8];                                                                                                 \
        for (int g = g0; g < g1; g++) {                                                                                \
            const uint8_t *group = packed + g * group_bytes;                                                           \
            for (int half = 0; half < 2; half++) {                                                                     \
                const int valid = rows - 16 * g - 8 * half;                                                            \
                if (valid <= 0) break;                                                                                 \
                const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lanes);                              \
                float *yh = y + 16L * g + 8 * half;                                                                    \
                int i = 0;                                                                                             \
                if (WIDE)                                                                                              \
                    for (; i + 8 <= m; i += 8) {                                                                       \
                        NAME##_8(type, group, half, blocks, X_ARGS(i), out);                                           \
                        for (int k = 0; k < 8; k++) store8(yh + (long)(i + k) * y_stride, valid, mask, out[k]);        \
                    }                                                                                                  \
                for (; i + 4 <= m; i += 4) {                                                                           \
                    NAME##_4(type, group, half, blocks, X_ARGS(i), out);                                               \
                    for (int k = 0; k < 4; k++) store8(yh + (long)(i + k) * y_stride, valid, mask, out[k]);            \
                }                                                                                                      \
                for (; i < m; i++) {                                                                                   \
                    NAME##_1(type, group, half, blocks, X_ARGS(i), out);                                               \
                    store8(yh + (long)i * y_stride, valid, mask, out[0]);                                              \
                }                                                                                                      \
            }                                                                                                          \
        }                                                                                                              \
    }
GROUPS256(vex, T256_VEX, sums_vex, 0, 0)
GROUPS256(evex, T256_EVEX, sums_evex, 0, 1)
GROUPS256(avx2, T256_AVX2, sums_avx2, 1, 0)

/* One entry per kernel, with the type a constant in each copy. */
#define CASE(NAME, T) case T: NAME##_groups(T, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, xsum16, xs16, m, y, y_stride); break;
#define PRODUCTS(NAME, TGT)                                                                                            \
    TGT static void NAME##_products(int type, const uint8_t *packed, int g0, int g1, int rows, int blocks, X_PARAMS,   \
                                    int m, float *y, long y_stride) {                                                  \
        switch (type) {                                                                                                \
            CASE(NAME, EMBER_Q4_0)                                                                                     \
            CASE(NAME, EMBER_Q4_1)                                                                                     \
            CASE(NAME, EMBER_I8)                                                                                       \
            CASE(NAME, EMBER_I8_MIN)                                                                                   \
            CASE(NAME, EMBER_I8_HALVES)                                                                                \
            CASE(NAME, EMBER_I8_HALVES_MIN)                                                                            \
            CASE(NAME, EMBER_I4_MIN)                                                                                   \
            default: NAME##_groups(EMBER_Q8_0, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, xsum16, xs16, m, y, y_stride); break; \
        }                                                                                                              \
    }
PRODUCTS(avx512, T512)
PRODUCTS(vex, T256_VEX)
PRODUCTS(evex, T256_EVEX)
PRODUCTS(avx2, T256_AVX2)

/* f16 → f32, exactly (as vcvtph2ps). */
static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits;
    float f;
    if (exponent == 0x1F) {
        bits = sign | 0x7F800000u | (mantissa << 13) | (mantissa ? 0x00400000u : 0);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else {
        f = (float)mantissa * 0x1p-24f;  /* zero or subnormal: exact */
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    memcpy(&f, &bits, 4);
    return f;
}

/* A packed scale or minimum: f16 or f32 by type, at `offset` in the block, for one row (lane). */
static inline float packed_float(int type, const uint8_t *block, long offset, int lane) {
    if (!f32_scales(type)) return half_to_float(block + offset + 2 * lane);
    float v;
    memcpy(&v, block + offset + 4 * lane, 4);
    return v;
}

/* Below every tier (called with tier 0, or on a CPU without AVX2): plain C, one output at a time,
   the same integers and the same float operations in the same order as the vector lanes. Slow; a
   safety net and a reference, not a production path. */
static void scalar_products(int type, const uint8_t *packed, int g0, int g1, int rows, int blocks, X_PARAMS,
                            int m, float *y, long y_stride) {
    const long packed_bytes = packed_block_bytes(type), x_stride = (long)blocks * 32;
    const int offset = type == EMBER_Q4_0 ? 8 : 128;
    for (int g = g0; g < g1; g++) {
        const uint8_t *group = packed + (long)g * blocks * packed_bytes;
        const int valid = rows - 16 * g < 16 ? rows - 16 * g : 16;
        for (int i = 0; i < m; i++) {
            for (int lane = 0; lane < valid; lane++) {
                float acc = 0;
                for (int b = 0; b < blocks; b++) {
                    const uint8_t *block = group + b * packed_bytes;
                    const uint8_t *quants = block + packed_quants_offset(type) + 4 * lane;
                    const int8_t *x = xq + i * x_stride + b * 32;
                    int32_t s[2] = {0, 0};
                    for (int v = 0; v < 32; v++) {
                        int u;
                        if (int8_values(type)) {
                            u = quants[64 * (v / 4) + v % 4];
                        } else {
                            const int c = v % 16, byte = quants[64 * (c / 4) + c % 4];
                            u = v < 16 ? byte & 0x0F : byte >> 4;
                        }
                        s[has_halves(type) ? v / 16 : 0] += u * x[v];
                    }
                    const float xdk = xd[(long)i * blocks + b], dw = packed_float(type, block, 0, lane);
                    if (has_halves(type)) {
                        const long h = (long)i * 2 * blocks + 2 * b;
                        s[0] -= 128 * xsum16[h];
                        s[1] -= 128 * xsum16[h + 1];
                        acc = fmaf((float)s[0], dw * xdk, acc);
                        acc = fmaf((float)s[1], packed_float(type, block, packed_second_scales_offset(type), lane) * xdk, acc);
                        if (has_minimums(type)) {
                            acc = fmaf(packed_float(type, block, packed_minimums_offset(type), lane), xs16[h], acc);
                            acc = fmaf(packed_float(type, block, packed_second_minimums_offset(type), lane), xs16[h + 1], acc);
                        }
                        continue;
                    }
                    if (!unsigned_nibbles(type)) s[0] -= offset * xsum[(long)i * blocks + b];
                    acc = fmaf((float)s[0], dw * xdk, acc);
                    if (has_minimums(type)) acc = fmaf(packed_float(type, block, packed_minimums_offset(type), lane), xs[(long)i * blocks + b], acc);
                }
                y[(long)i * y_stride + 16L * g + lane] = acc;
            }
        }
    }
}

void ember_packed_products(int tier, int type, const uint8_t *packed, int g0, int g1, int rows, int blocks, X_PARAMS,
                           int m, float *y, long y_stride) {
    const int best = ember_best_tier();
    if (tier > best) tier = best;
    switch (tier) {
    case EMBER_TIER_AVX512_VNNI: avx512_products(type, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, xsum16, xs16, m, y, y_stride); break;
    case EMBER_TIER_AVX_VNNI:
        if (has_avx_vnni) vex_products(type, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, xsum16, xs16, m, y, y_stride);
        else evex_products(type, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, xsum16, xs16, m, y, y_stride);
        break;
    case EMBER_TIER_AVX2: avx2_products(type, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, xsum16, xs16, m, y, y_stride); break;
    default: scalar_products(type, packed, g0, g1, rows, blocks, xq, xd, xsum, xs, xsum16, xs16, m, y, y_stride); break;
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
