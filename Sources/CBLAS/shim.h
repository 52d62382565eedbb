#include <cblas.h>

/// The OpenBLAS kernel level this CPU can run: 4 = AVX-512 with BF16 (Cooperlake), 3 = AVX-512
/// F/CD/BW/DQ/VL (SkylakeX), 2 = AVX2 with FMA (Haswell), 1 = AVX (Sandybridge), 0 = older.
static inline int ember_blas_cpu_level(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                       __builtin_cpu_supports("avx512vl");
    if (avx512 && __builtin_cpu_supports("avx512bf16")) return 4;
    if (avx512) return 3;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 2;
    if (__builtin_cpu_supports("avx")) return 1;
#endif
    return 0;
}
