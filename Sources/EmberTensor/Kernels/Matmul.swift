import CBLAS
import CKernels
#if canImport(Glibc)
import Glibc
#endif

/// Dense f32 matrix multiply through OpenBLAS.
///
/// Shapes: x [M, K], w [N, K] (a linear layer's weight, out × in), y [M, N].   y = x · wᵀ (+ y if `accumulate`)
/// The N dimension is split across the pool and each part runs single-threaded SGEMM, so OpenBLAS's own
/// threads never compete with the pool's.
public func matmul(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                   m M: Int, n N: Int, k K: Int, accumulate: Bool = false, pool: ThreadPool = .shared) {
    BLASCore.prepare()
    pool.parallelRanges(N, minimumChunk: 32) { range in
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(M), Int32(range.count), Int32(K),
                    1, x, Int32(K), w + range.lowerBound * K, Int32(K),
                    accumulate ? 1 : 0, y + range.lowerBound, Int32(N))
    }
}

/// A single SGEMM call on the current thread: y [M, N] = x [M, K] · w [N, K]ᵀ with row stride `ldy` for y.
@inline(__always)
func sgemmNT(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, m M: Int, n N: Int, k K: Int,
             ldy: Int, accumulate: Bool = false) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(M), Int32(N), Int32(K), 1, x, Int32(K), w, Int32(K),
                accumulate ? 1 : 0, y, Int32(ldy))
}

/// The precision of training's matrix products: f32 throughout, or bf16 operands with f32 sums
/// (`gemmBF16`). Everything else (norms, softmax, losses, the optimizer) stays f32 either way.
public enum Precision: String, Codable, Sendable, CaseIterable {
    case f32, bf16
}

/// One single-threaded row-major product C = op(A) · op(B) + beta · C in `precision`.
@inline(__always)
func gemm(_ precision: Precision, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
          b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    switch precision {
    case .f32:
        gemmF32(transA: transA, transB: transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    case .bf16:
        gemmBF16(transA: transA, transB: transB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }
}

/// Whether this CPU runs AVX-512F (`ember_gemm_f32`).
public let hasAVX512F = ember_has_avx512f() != 0

/// Whether training's f32 products run Ember's AVX-512F kernel (`ember_gemm_f32`): where the CPU has
/// AVX-512F, unless EMBER_F32_GEMM=openblas asks for OpenBLAS's SGEMM, which runs them otherwise.
/// Set it before products run (`ember bench-gemm` times both).
nonisolated(unsafe) public var usesOwnF32Kernel: Bool = hasAVX512F && getenv("EMBER_F32_GEMM").map { String(cString: $0) } != "openblas"

/// cblas_sgemm's row-major product C [m, n] = alpha · op(A) · op(B) + beta · C on one thread: with
/// `ownKernel`, `ember_gemm_f32` (AVX-512F), otherwise (or where the CPU lacks AVX-512F) SGEMM.
public func gemmF32(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                    b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                    ownKernel: Bool = usesOwnF32Kernel) {
    if ownKernel, ember_gemm_f32(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, lda, b, ldb, beta, c, ldc) == 0 {
        return
    }
    BLASCore.prepare()
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// y [M, N] = x [M, K] · w [N, K]ᵀ for large products (training): the rows of x are split into one
/// part per thread, so each thread makes one product call and packs w once.
public func matmulLarge(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                        m M: Int, n N: Int, k K: Int, precision: Precision = .f32, pool: ThreadPool = .shared) {
    BLASCore.prepare()
    pool.parallelFor(min(pool.threadCount, M)) { part in
        let rows = evenPart(part, of: M, parts: min(pool.threadCount, M))
        gemm(precision, transA: false, transB: true, m: rows.count, n: N, k: K, a: x + rows.lowerBound * K, lda: K, b: w, ldb: K,
             beta: 0, c: y + rows.lowerBound * N, ldc: N)
    }
}

/// The gradients of `matmulLarge` (y = x · wᵀ), added into dx [M, K] and dw [N, K] (either may be
/// nil), one product call per thread:
///   dx += dy · w      (rows of x split across the pool)
///   dw += dyᵀ · x     (rows of w split across the pool)
public func matmulBackward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                           dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?, m M: Int, n N: Int, k K: Int,
                           precision: Precision = .f32, pool: ThreadPool = .shared) {
    BLASCore.prepare()
    if let dx {
        let parts = min(pool.threadCount, M)
        pool.parallelFor(parts) { part in
            let rows = evenPart(part, of: M, parts: parts)
            gemm(precision, transA: false, transB: false, m: rows.count, n: K, k: N, a: dy + rows.lowerBound * N, lda: N, b: w, ldb: K,
                 beta: 1, c: dx + rows.lowerBound * K, ldc: K)
        }
    }
    if let dw {
        let parts = min(pool.threadCount, N)
        pool.parallelFor(parts) { part in
            let rows = evenPart(part, of: N, parts: parts)
            gemm(precision, transA: true, transB: false, m: rows.count, n: K, k: M, a: dy + rows.lowerBound, lda: N, b: x, ldb: K,
                 beta: 1, c: dw + rows.lowerBound * K, ldc: K)
        }
    }
}

/// Part `part` of `0..<total` split into `parts` nearly equal contiguous ranges.
@inline(__always)
func evenPart(_ part: Int, of total: Int, parts: Int) -> Range<Int> {
    (part * total / parts)..<((part + 1) * total / parts)
}
