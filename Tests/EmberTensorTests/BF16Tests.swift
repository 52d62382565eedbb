import EmberTensor
import Foundation
import Testing

/// bf16 rounding and products against PyTorch (scripts/fixtures/bf16-reference.py), on every path
/// this CPU runs: AVX-512 BF16 where it has it, and the SGEMM over rounded copies everywhere.
@Suite struct BF16Tests {
    static let paths: [Bool] = hasBF16Instructions ? [true, false] : [false]

    @Test func roundingMatchesPyTorch() throws {
        let r = try Fixtures.json("Tests/Fixtures/bf16.json")["rounding"] as! [String: Any]
        let x = (r["x"] as! [Int]).map { Float(bitPattern: UInt32($0)) }, bits = r["bits"] as! [Int]
        let ours = x.map { Int(roundedToBF16($0).bitPattern >> 16) }
        let wrong = zip(x, zip(ours, bits)).filter { $1.0 != $1.1 }
        print("bf16 rounding: \(x.count - wrong.count) of \(x.count) values as PyTorch rounds them")
        #expect(wrong.isEmpty, "\(wrong.prefix(5))")
    }

    @Test(arguments: paths)
    func productMatchesPyTorch(instructions: Bool) throws {
        let p = try Fixtures.json("Tests/Fixtures/bf16.json")["product"] as! [String: Any]
        let m = p["m"] as! Int, n = p["n"] as! Int, k = p["k"] as! Int
        let a = (p["a"] as! [Double]).map(Float.init), b = (p["b"] as! [Double]).map(Float.init), expected = (p["out"] as! [Double]).map(Float.init)
        var c = [Float](repeating: .nan, count: m * n)
        gemmBF16(transA: false, transB: true, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, beta: 0, c: &c, ldc: n, instructions: instructions)
        let difference = maxDifference(c, expected)
        print("bf16 product \(m)×\(k)·\(k)×\(n), \(instructions ? "AVX-512 BF16" : "SGEMM on rounded operands"): max |Δ| against PyTorch \(difference)")
        #expect(difference < 1e-4)
    }

    /// Every transpose, shapes that cross the kernel's blocks (K 512, N 4096, M 96, tiles of 12 × 32),
    /// alpha and beta (0 and not), against the SGEMM over rounded copies.
    @Test func everyLayoutAgreesWithTheRoundedSGEMM() throws {
        guard hasBF16Instructions else {
            print("skipped: this CPU has no AVX-512 BF16, so only the SGEMM path runs (tested above)")
            return
        }
        var draws = SeededFloats(state: 7)
        func random(_ n: Int) -> [Float] { draws.next(n) }
        var worst: Float = 0
        for (m, n, k) in [(130, 530, 301), (1, 33, 2), (197, 31, 513), (12, 32, 256), (13, 4100, 35)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    let a = random(m * k), b = random(k * n), start = random(m * n)
                    let lda = transA ? m : k, ldb = transB ? k : n
                    var fast = start, reference = start
                    let beta: Float = transB ? 0 : 0.25  // 0: the first block of k overwrites C
                    gemmBF16(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                             c: &fast, ldc: n, instructions: true)
                    gemmBF16(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                             c: &reference, ldc: n, instructions: false)
                    let difference = maxDifference(fast, reference)
                    worst = max(worst, difference)
                    #expect(difference < 1e-4, "m \(m) n \(n) k \(k) transA \(transA) transB \(transB): max |Δ| \(difference)")
                }
            }
        }
        print("bf16 products in every layout: AVX-512 BF16 against SGEMM on rounded operands, max |Δ| \(worst)")
    }
}
