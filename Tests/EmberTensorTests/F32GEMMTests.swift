import EmberTensor
import Foundation
import Testing

/// Ember's AVX-512F f32 products (`ember_gemm_f32`) against OpenBLAS's SGEMM and against sums in
/// double precision: every transpose, shapes that cross the kernel's blocks (K 512, N 4096, M 48,
/// tiles of 12 × 32), strides wider than the rows, alpha and beta.
@Suite struct F32GEMMTests {
    @Test func everyLayoutAgreesWithSGEMMAndExactSums() throws {
        guard hasAVX512F else {
            print("skipped: this CPU has no AVX-512F, so training's f32 products run OpenBLAS's SGEMM")
            return
        }
        var draws = SeededFloats(state: 11)
        func random(_ n: Int) -> [Float] { draws.next(n) }
        var worstSGEMM: Float = 0, worstExact = 0.0
        for (m, n, k, pad) in [(130, 530, 301, 0), (1, 33, 2, 3), (197, 31, 513, 0), (12, 32, 256, 0), (13, 4100, 35, 5), (145, 64, 600, 7)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    let lda = (transA ? m : k) + pad, ldb = (transB ? k : n) + pad, ldc = n + pad
                    let a = random((transA ? k : m) * lda), b = random((transB ? n : k) * ldb), start = random(m * ldc)
                    let alpha: Float = 0.5, beta: Float = transB ? 0 : 0.25  // 0: the first block of k overwrites C
                    var ours = start, sgemm = start
                    gemmF32(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                            c: &ours, ldc: ldc, ownKernel: true)
                    gemmF32(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                            c: &sgemm, ldc: ldc, ownKernel: false)
                    var exactDifference = 0.0
                    for i in 0..<m {
                        for j in 0..<ldc {
                            guard j < n else {  // past the n columns: untouched
                                #expect(ours[i * ldc + j] == start[i * ldc + j])
                                continue
                            }
                            var sum = 0.0
                            for p in 0..<k {
                                let x = transA ? a[p * lda + i] : a[i * lda + p], y = transB ? b[j * ldb + p] : b[p * ldb + j]
                                sum += Double(x) * Double(y)
                            }
                            let exact = Double(alpha) * sum + Double(beta) * Double(start[i * ldc + j])
                            exactDifference = max(exactDifference, abs(Double(ours[i * ldc + j]) - exact))
                        }
                    }
                    let difference = maxDifference(ours, sgemm)
                    worstSGEMM = max(worstSGEMM, difference)
                    worstExact = max(worstExact, exactDifference)
                    let context = "m \(m) n \(n) k \(k) pad \(pad) transA \(transA) transB \(transB)"
                    #expect(difference < 2e-5 * Float(k).squareRoot(), "\(context): max |Δ| against SGEMM \(difference)")
                    #expect(exactDifference < 2e-5 * Double(k).squareRoot(), "\(context): max |Δ| against exact sums \(exactDifference)")
                }
            }
        }
        print("f32 products in every layout: AVX-512F kernel against SGEMM max |Δ| \(worstSGEMM), against double-precision sums \(worstExact)")
    }

    /// A NaN or infinity in an operand reaches the product, as in SGEMM.
    @Test func nonFiniteOperandsPropagate() {
        guard hasAVX512F else {
            print("skipped: this CPU has no AVX-512F")
            return
        }
        var a = [Float](repeating: 1, count: 20 * 40), b = [Float](repeating: 1, count: 40 * 50)
        a[3 * 40 + 7] = .nan
        b[9 * 40 + 2] = .infinity  // b stored [n, k]
        var c = [Float](repeating: 0, count: 20 * 50)
        gemmF32(transA: false, transB: true, m: 20, n: 50, k: 40, a: a, lda: 40, b: b, ldb: 40, beta: 0, c: &c, ldc: 50, ownKernel: true)
        #expect(c[3 * 50 + 11].isNaN && c[5 * 50 + 9] == .infinity && c[0] == 40)
    }
}
