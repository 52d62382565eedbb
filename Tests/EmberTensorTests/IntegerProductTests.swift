import EmberTensor
import Foundation
import Testing

/// The integer (VNNI) products against the float-lane products llama.cpp's arithmetic uses: both
/// sum each block exactly, so they may differ only in how block results are added up.
@Suite struct IntegerProductTests {
    /// A random row-major matrix of GGML blocks of `type` (scales f16, nibbles or int8 values).
    static func matrix(_ type: DType, rows: Int, columns: Int, seed: UInt64) -> (WeightMatrix, [UInt8]) {
        var state = seed
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33 }
        let blocks = rows * columns / 32
        var bytes: [UInt8] = []
        for _ in 0..<blocks {
            func half(_ x: Float) -> [UInt8] { withUnsafeBytes(of: Float16(x).bitPattern.littleEndian, Array.init) }
            switch type {
            case .q4_0: bytes += half(Float(next() % 1000) / 20000 + 0.001) + (0..<16).map { _ in UInt8(next() & 0xFF) }
            case .q4_1: bytes += half(Float(next() % 1000) / 20000 + 0.001) + half(-Float(next() % 1000) / 5000) + (0..<16).map { _ in UInt8(next() & 0xFF) }
            default: bytes += half(Float(next() % 1000) / 50000 + 0.001) + (0..<32).map { _ in UInt8(next() & 0xFF) }
            }
        }
        let stored = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
        stored.copyMemory(from: bytes, byteCount: bytes.count)
        return (WeightMatrix(type: type, rows: rows, columns: columns, data: stored, owner: nil), bytes)
    }

    @Test(.enabled(if: WeightMatrix.integerProductsAvailable, "no integer-product kernel tier (the CPU lacks AVX2, or EMBER_KERNEL_TIER=none)"),
          arguments: [DType.q4_0, .q4_1, .q8_0], [576, 544])
    func integerProductsMatchFloatLanes(type: DType, columns: Int) throws {
        let rows = 100  // not a multiple of the 16-row groups
        let (w, _) = Self.matrix(type, rows: rows, columns: columns, seed: 3)
        var single: [Float] = []
        for m in [1, 3, 4, 9, 16] {
            let x = (0..<m * columns).map { i in Float(sin(Double(i) * 0.37)) * 2 }
            var reference = [Float](repeating: 0, count: m * rows), integers = reference
            w.multiply(x, &reference, m: m)
            WeightMatrix.multiplyByIntegers(x, m: m, by: [(w, UnsafeMutablePointer(mutating: &integers))])
            let scale = reference.map { abs($0) }.max()!
            let difference = zip(reference, integers).map { abs($0 - $1) }.max()!
            print("\(type) \(columns) columns m=\(m): max |Δ| \(difference) (largest |y| \(scale))")
            #expect(difference <= scale * 1e-5)
            // Row 0 of x is the same in every m: its outputs must not depend on m.
            if single.isEmpty { single = Array(integers[..<rows]) } else { #expect(Array(integers[..<rows]) == single) }
        }
    }

    /// Every tier this CPU runs gives the same bits as the best one (the block sums are exact and each
    /// output lane performs the same float steps); tiers the CPU lacks are reported as skipped.
    @Test(.enabled(if: KernelTier.best >= .avx2, KernelTier.lacking(.avx2)), arguments: [DType.q4_0, .q4_1, .q8_0])
    func avx2GivesTheSameBits(type: DType) { sameBits(tier: .avx2, type: type) }

    @Test(.enabled(if: KernelTier.best >= .avxVNNI, KernelTier.lacking(.avxVNNI)), arguments: [DType.q4_0, .q4_1, .q8_0])
    func avxVNNIGivesTheSameBits(type: DType) { sameBits(tier: .avxVNNI, type: type) }

    @Test(.enabled(if: KernelTier.best >= .avx512VNNI, KernelTier.lacking(.avx512VNNI)), arguments: [DType.q4_0, .q4_1, .q8_0])
    func avx512VNNIGivesTheSameBits(type: DType) { sameBits(tier: .avx512VNNI, type: type) }

    func sameBits(tier: KernelTier, type: DType) {
        let rows = 100, columns = 576
        let (w, _) = Self.matrix(type, rows: rows, columns: columns, seed: 5)
        for m in [1, 2, 5, 8, 13] {
            let x = (0..<m * columns).map { i in Float(cos(Double(i) * 0.29)) * 3 }
            var best = [Float](repeating: 0, count: m * rows), lowered = best
            KernelTier.$override.withValue(KernelTier.best) {
                WeightMatrix.multiplyByIntegers(x, m: m, by: [(w, UnsafeMutablePointer(mutating: &best))])
            }
            KernelTier.$override.withValue(tier) {
                WeightMatrix.multiplyByIntegers(x, m: m, by: [(w, UnsafeMutablePointer(mutating: &lowered))])
            }
            #expect(best.map(\.bitPattern) == lowered.map(\.bitPattern), "\(tier.name) differs from \(KernelTier.best.name) for \(type), m = \(m)")
        }
        print("\(type): \(tier.name) equals \(KernelTier.best.name) bit for bit (m = 1, 2, 5, 8, 13)")
    }
}

extension KernelTier {
    /// The reason a test of this tier is skipped on this CPU.
    static func lacking(_ tier: KernelTier) -> Comment { "this CPU has no \(tier.name) (best tier: \(best.name))" }
}
