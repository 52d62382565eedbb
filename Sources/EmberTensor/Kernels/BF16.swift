import CBLAS
import CKernels

/// Whether this CPU multiplies bf16 in hardware (AVX-512 BF16's vdpbf16ps).
public let hasBF16Instructions = ember_has_bf16() != 0

/// `x` rounded to the nearest bf16 (ties to even), as an f32.
@inline(__always)
public func roundedToBF16(_ x: Float) -> Float { Float(bitPattern: UInt32(ember_bf16_from_f32(x)) << 16) }

/// cblas_sgemm's row-major product, C [m, n] = alpha · op(A) · op(B) + beta · C, with the operands
/// rounded to bf16 and every sum in f32: op(A) [m, k] (A stored [k, m] when `transA`), op(B) [k, n]
/// (B stored [n, k] when `transB`). With `instructions` (where the CPU has them) it runs
/// `ember_gemm_bf16`; otherwise SGEMM over bf16-rounded copies of the operands, which gives the
/// same products summed in another order. Single-threaded, as the callers split the work.
public func gemmBF16(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                     b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                     instructions: Bool = hasBF16Instructions) {
    if instructions, ember_gemm_bf16(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, lda, b, ldb, beta, c, ldc) == 0 {
        return
    }
    BLASCore.prepare()
    /// The stored extent of an operand of `rows` × `columns` (as stored) with row stride `ld`, rounded.
    func rounded(_ x: UnsafePointer<Float>, rows: Int, columns: Int, ld: Int) -> [Float] {
        rows == 0 ? [] : (0..<(rows - 1) * ld + columns).map { roundedToBF16(x[$0]) }
    }
    let ra = rounded(a, rows: transA ? k : m, columns: transA ? m : k, ld: lda)
    let rb = rounded(b, rows: transB ? n : k, columns: transB ? k : n, ld: ldb)
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                alpha, ra, Int32(lda), rb, Int32(ldb), beta, c, Int32(ldc))
}
