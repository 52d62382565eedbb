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

    /// The types read through their integer form: random blocks (scales finite, some negative and
    /// subnormal) against the exact sum of the dequantized weights times activations that 8-bit
    /// quantization keeps exactly (integers with 127 the largest in each block of 32), in double.
    static let integerTypes: [DType] = DType.allCases.filter(\.hasIntegerSubBlocks)

    /// A random row-major matrix of blocks of an integer type: random bytes, with the f16 scales
    /// (and minimums) set to finite values.
    static func integerMatrix(_ type: DType, rows: Int, columns: Int, seed: UInt64) -> WeightMatrix {
        var random = SplitMix64(seed: seed)
        let blocks = rows * columns / type.blockSize
        let stored = UnsafeMutableRawPointer.allocate(byteCount: blocks * type.blockBytes, alignment: 64)
        for i in 0..<blocks * type.blockBytes { stored.storeBytes(of: UInt8(truncatingIfNeeded: random.next()), toByteOffset: i, as: UInt8.self) }
        let scaleOffsets: [Int] = switch type {
        case .q5_0, .iq4_nl, .iq4_xs: [0]
        case .q5_1, .q4_K, .q5_K: [0, 2]
        case .q2_K: [80, 82]
        case .q3_K: [108]
        case .q6_K: [208]
        default: []
        }
        for b in 0..<blocks {
            for (k, offset) in scaleOffsets.enumerated() {
                let magnitude = Float(random.next() % 1000 + 1) / (k == 0 ? 40000 : 4000)
                let value: Float = b % 7 == 3 ? 1e-7 : random.next() % 4 == 0 ? -magnitude : magnitude  // 1e-7: an f16 subnormal
                stored.storeBytes(of: Float16(value).bitPattern, toByteOffset: b * type.blockBytes + offset, as: UInt16.self)
            }
        }
        return WeightMatrix(type: type, rows: rows, columns: columns, data: stored, owner: nil)
    }

    @Test(.enabled(if: WeightMatrix.integerProductsAvailable, "no integer-product kernel tier (the CPU lacks AVX2, or EMBER_KERNEL_TIER=none)"),
          arguments: integerTypes)
    func integerTypesMatchExactSums(type: DType) throws {
        let rows = 100, columns = 512  // 100: not a multiple of the 16-row groups
        let w = Self.integerMatrix(type, rows: rows, columns: columns, seed: 11)
        let weights = dequantize(type, from: w.data, count: rows * columns)
        var single: [Float] = []
        var worst: Double = 0
        for m in [1, 3, 4, 9, 16] {
            let x: [Float] = (0..<m * columns).map { i in
                let wave = Int(sin(Double(i) * 0.37) * 1000)
                return i % 32 == 5 ? 127 : Float((wave % 255 + 255) % 255 - 127)
            }
            var y = [Float](repeating: 0, count: m * rows)
            WeightMatrix.multiplyByIntegers(x, m: m, by: [(w, UnsafeMutablePointer(mutating: &y))])
            for i in 0..<m {
                for r in 0..<rows {
                    var exact: Double = 0, magnitude: Double = 0
                    for j in 0..<columns {
                        exact += Double(weights[r * columns + j]) * Double(x[i * columns + j])
                        magnitude += abs(Double(weights[r * columns + j]) * Double(x[i * columns + j]))
                    }
                    let error = abs(Double(y[i * rows + r]) - exact) / magnitude
                    worst = max(worst, error)
                    #expect(error < 1e-6, "\(type) m=\(m) row \(i) output \(r): \(y[i * rows + r]) vs \(exact)")
                }
            }
            if single.isEmpty { single = Array(y[..<rows]) } else { #expect(Array(y[..<rows]) == single, "\(type): row 0 depends on m") }
        }
        print("\(type): integer products vs exact sums, worst |Δ| / Σ|w·x| \(worst) (m = 1, 3, 4, 9, 16)")
    }

    /// Every tier this CPU runs gives the same bits as the best one (the block sums are exact and each
    /// output lane performs the same float steps); tiers the CPU lacks are reported as skipped.
    @Test(.enabled(if: KernelTier.best >= .avx2, KernelTier.lacking(.avx2)), arguments: [DType.q4_0, .q4_1, .q8_0] + integerTypes)
    func avx2GivesTheSameBits(type: DType) { sameBits(tier: .avx2, type: type) }

    @Test(.enabled(if: KernelTier.best >= .avxVNNI, KernelTier.lacking(.avxVNNI)), arguments: [DType.q4_0, .q4_1, .q8_0] + integerTypes)
    func avxVNNIGivesTheSameBits(type: DType) { sameBits(tier: .avxVNNI, type: type) }

    @Test(.enabled(if: KernelTier.best >= .avx512VNNI, KernelTier.lacking(.avx512VNNI)), arguments: [DType.q4_0, .q4_1, .q8_0] + integerTypes)
    func avx512VNNIGivesTheSameBits(type: DType) { sameBits(tier: .avx512VNNI, type: type) }

    /// Tier none's portable C, the reference the vector tiers are written against.
    @Test(arguments: [DType.q4_0, .q4_1, .q8_0] + integerTypes)
    func portableCGivesTheSameBits(type: DType) { sameBits(tier: .none, type: type) }

    func sameBits(tier: KernelTier, type: DType) {
        let rows = 100, columns = type.blockSize == 256 ? 512 : 576
        let w = type.hasIntegerSubBlocks ? Self.integerMatrix(type, rows: rows, columns: columns, seed: 5)
                                         : Self.matrix(type, rows: rows, columns: columns, seed: 5).0
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
