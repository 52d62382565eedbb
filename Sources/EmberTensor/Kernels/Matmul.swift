import CBLAS

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

/// y [M, N] = x [M, K] · w [N, K]ᵀ for large products (training): the rows of x are split into one
/// part per thread, so each thread makes one SGEMM call and packs w once.
public func matmulLarge(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                        m M: Int, n N: Int, k K: Int, pool: ThreadPool = .shared) {
    BLASCore.prepare()
    pool.parallelFor(min(pool.threadCount, M)) { part in
        let rows = evenPart(part, of: M, parts: min(pool.threadCount, M))
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows.count), Int32(N), Int32(K), 1,
                    x + rows.lowerBound * K, Int32(K), w, Int32(K), 0, y + rows.lowerBound * N, Int32(N))
    }
}

/// The gradients of `matmulLarge` (y = x · wᵀ), added into dx [M, K] and dw [N, K] (either may be
/// nil), one SGEMM call per thread:
///   dx += dy · w      (rows of x split across the pool)
///   dw += dyᵀ · x     (rows of w split across the pool)
public func matmulBackward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                           dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?, m M: Int, n N: Int, k K: Int,
                           pool: ThreadPool = .shared) {
    BLASCore.prepare()
    if let dx {
        let parts = min(pool.threadCount, M)
        pool.parallelFor(parts) { part in
            let rows = evenPart(part, of: M, parts: parts)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows.count), Int32(K), Int32(N), 1,
                        dy + rows.lowerBound * N, Int32(N), w, Int32(K), 1, dx + rows.lowerBound * K, Int32(K))
        }
    }
    if let dw {
        let parts = min(pool.threadCount, N)
        pool.parallelFor(parts) { part in
            let rows = evenPart(part, of: N, parts: parts)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(rows.count), Int32(K), Int32(M), 1,
                        dy + rows.lowerBound, Int32(N), x, Int32(K), 1, dw + rows.lowerBound * K, Int32(K))
        }
    }
}

/// Part `part` of `0..<total` split into `parts` nearly equal contiguous ranges.
@inline(__always)
func evenPart(_ part: Int, of total: Int, parts: Int) -> Range<Int> {
    (part * total / parts)..<((part + 1) * total / parts)
}
