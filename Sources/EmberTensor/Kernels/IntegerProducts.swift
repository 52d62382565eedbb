import CKernels
import Synchronization

/// Activations quantized to 8 bits for the integer products, in natural order, the way llama.cpp
/// quantizes the input of a product for the weight type:
/// - `blocks32` (q8_0 / q8_1, for q4_0, q4_1, q8_0, q5_0, q5_1 and iq4_nl weights): per block of 32,
///   d = max|x| / 127 rounded through f16, q = roundeven(x / d);
/// - `superBlocks` (q8_K, for the K-quants and iq4_xs): per 256, with m the value of largest
///   magnitude (the first such), q = min(127, roundeven(x · −127 / m)) and d = m / −127 in f32.
/// Kept per block of 32 either way: the scale, the integer value sum and scale × value sum (rounded
/// through f16 for blocks of 32, as q8_1 stores it); and per half block of 16 the integer sum and
/// scale × that sum in f32, for the weight types with a scale or minimum per 16.
final class Int8Activations {
    enum Blocking { case blocks32, superBlocks }

    let values: UnsafeMutablePointer<Int8>
    let scales: UnsafeMutablePointer<Float>
    let integerSums: UnsafeMutablePointer<Int32>
    let sums: UnsafeMutablePointer<Float>
    let halfIntegerSums: UnsafeMutablePointer<Int32>
    let halfSums: UnsafeMutablePointer<Float>

    init(quantizing x: UnsafePointer<Float>, rows: Int, columns: Int, blocking: Blocking = .blocks32) {
        precondition(columns % (blocking == .blocks32 ? 32 : 256) == 0)
        let blocks = rows * columns / 32
        values = .allocate(capacity: rows * columns)
        scales = .allocate(capacity: blocks)
        integerSums = .allocate(capacity: blocks)
        sums = .allocate(capacity: blocks)
        halfIntegerSums = .allocate(capacity: 2 * blocks)
        halfSums = .allocate(capacity: 2 * blocks)
        if blocking == .superBlocks {
            for s in 0..<blocks / 8 {
                let xs = x + 256 * s
                var largest: Float = 0, magnitude: Float = 0
                for j in 0..<256 where abs(xs[j]) > magnitude {
                    magnitude = abs(xs[j])
                    largest = xs[j]
                }
                let inverse: Float = magnitude == 0 ? 0 : -127 / largest
                for j in 0..<256 { values[256 * s + j] = Int8(min(127, (inverse * xs[j]).rounded(.toNearestOrEven))) }
                for b in 8 * s..<8 * s + 8 { scales[b] = magnitude == 0 ? 0 : 1 / inverse }
            }
        }
        for b in 0..<blocks {
            var halves: (Int32, Int32) = (0, 0)
            if blocking == .blocks32 {
                (scales[b], sums[b]) = quantizeBlock(x + 32 * b) { j, v in values[32 * b + j] = Int8(v) }
            }
            for j in 0..<32 {
                if j < 16 { halves.0 += Int32(values[32 * b + j]) } else { halves.1 += Int32(values[32 * b + j]) }
            }
            integerSums[b] = halves.0 + halves.1
            if blocking == .superBlocks { sums[b] = scales[b] * Float(integerSums[b]) }
            halfIntegerSums[2 * b] = halves.0
            halfIntegerSums[2 * b + 1] = halves.1
            halfSums[2 * b] = scales[b] * Float(halves.0)
            halfSums[2 * b + 1] = scales[b] * Float(halves.1)
        }
    }

    deinit {
        values.deallocate()
        scales.deallocate()
        integerSums.deallocate()
        sums.deallocate()
        halfIntegerSums.deallocate()
        halfSums.deallocate()
    }
}

/// The instruction set the integer products run on, chosen at run time from the CPU's features.
/// Every tier gives the same bits (the block sums are exact integers and each output's float steps
/// are the same), so a tier only changes the speed.
public enum KernelTier: Int, Sendable, CaseIterable, Comparable {
    /// No integer products: the quantized products run on the float path.
    case none = 0
    /// AVX2 with FMA and F16C (pairs of bytes multiplied and added in 16 bits).
    case avx2 = 1
    /// 256-bit VNNI: AVX-VNNI, or AVX-512 VNNI on 256-bit vectors.
    case avxVNNI = 2
    /// AVX-512 VNNI with BW, DQ and VL.
    case avx512VNNI = 3

    /// The name EMBER_KERNEL_TIER takes: "avx512-vnni", "avx-vnni", "avx2", "none".
    public var name: String { String(cString: ember_tier_name(Int32(rawValue))) }

    /// The best tier this CPU runs.
    public static let best = KernelTier(rawValue: Int(ember_best_tier())) ?? .none

    /// The tier of this process: the best one, lowered (never raised) by the environment variable
    /// EMBER_KERNEL_TIER.
    public static let configured = KernelTier(rawValue: Int(ember_kernel_tier())) ?? .none

    /// Runs the products of the current task on another tier (never above `best`): tests compare
    /// every tier this CPU has in one process.
    @TaskLocal public static var override: KernelTier?

    /// The tier the next product runs on.
    public static var current: KernelTier { min(override ?? configured, best) }

    /// The tiers this CPU runs, lowest first.
    public static var supported: [KernelTier] { allCases.filter { $0 <= best } }

    public static func < (a: KernelTier, b: KernelTier) -> Bool { a.rawValue < b.rawValue }
}

/// A quantized matrix's rows repacked sixteen at a time for the integer products (the layout is
/// described in ckernels.h), made on first use and shared by every copy of the `WeightMatrix`.
final class PackedRows: @unchecked Sendable {
    let data: UnsafeMutableRawPointer
    let groups: Int

    init(_ weight: WeightMatrix) {
        let type = weight.type, code = PackedRows.code(type), blocks = weight.columns / 32
        groups = (weight.rows + 15) / 16
        let blockBytes = ember_packed_block_bytes(code), bytes = groups * blocks * blockBytes
        data = .allocate(byteCount: bytes, alignment: 64)
        guard type.hasIntegerSubBlocks else {
            ember_pack_rows(code, weight.data.assumingMemoryBound(to: UInt8.self), weight.rowBytes, Int32(weight.rows), Int32(blocks),
                            data.assumingMemoryBound(to: UInt8.self))
            return
        }
        // The integer types: each 32-element sub-block decoded to its integers, scales and minimums.
        data.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        let perBlock = type.blockSize / 32
        let packed = data.assumingMemoryBound(to: UInt8.self)
        for r in 0..<weight.rows {
            let row = weight.row(r)
            for b in 0..<blocks {
                var sub = integerSubBlock(type, row + (b / perBlock) * type.blockBytes, b % perBlock)
                withUnsafeBytes(of: &sub.values) { values in
                    withUnsafeBytes(of: &sub.scales) { scales in
                        withUnsafeBytes(of: &sub.minimums) { minimums in
                            ember_pack_sub_block(code, packed + ((r / 16) * blocks + b) * blockBytes, Int32(r % 16),
                                                 values.baseAddress!.assumingMemoryBound(to: Int8.self),
                                                 scales.baseAddress!.assumingMemoryBound(to: Float.self),
                                                 minimums.baseAddress!.assumingMemoryBound(to: Float.self))
                        }
                    }
                }
            }
        }
    }

    deinit { data.deallocate() }

    static func code(_ type: DType) -> Int32 {
        switch type {
        case .q4_0: Int32(EMBER_Q4_0)
        case .q4_1: Int32(EMBER_Q4_1)
        case .q8_0: Int32(EMBER_Q8_0)
        case .q4_K: Int32(EMBER_I4_MIN)  // 4-bit values: nibbles, half the bytes of the byte form
        default: Int32(type.hasHalfScales ? (type.hasMinimums ? EMBER_I8_HALVES_MIN : EMBER_I8_HALVES) : (type.hasMinimums ? EMBER_I8_MIN : EMBER_I8))
        }
    }

    /// Holds the packed rows of one matrix once they are made.
    final class Slot: Sendable {
        private let packed = Mutex<PackedRows?>(nil)
        func rows(of weight: WeightMatrix) -> PackedRows {
            packed.withLock { value in
                if let value { return value }
                let made = PackedRows(weight)
                value = made
                return made
            }
        }
    }
}

extension WeightMatrix {
    /// Whether the 8-bit integer products run (a kernel tier above none).
    public static var integerProductsAvailable: Bool { KernelTier.current != .none }

    /// Repacks the rows for the integer products now rather than on the first product.
    public func preparePackedRows() {
        if type.isQuantized { _ = packedRows.rows(of: self) }
    }

    /// Like `multiply(_:m:by:)`, with integer products for the quantized weights: x is quantized once,
    /// and the row groups of all the quantized products share one parallel pass.
    public static func multiplyByIntegers(_ x: UnsafePointer<Float>, m: Int, by products: [(weight: WeightMatrix, output: UnsafeMutablePointer<Float>)],
                                          pool: ThreadPool = .shared) {
        let quantized = products.filter { $0.weight.type.isQuantized }
        for (weight, output) in products where !weight.type.isQuantized { weight.multiply(x, output, m: m, pool: pool) }
        guard let first = quantized.first else { return }
        // One quantization of x for each form the weight types take.
        var forms: [Int8Activations.Blocking: Int8Activations] = [:]
        let activations = quantized.map { product in
            let blocking = product.weight.type.blockSize == 256 ? Int8Activations.Blocking.superBlocks : .blocks32
            if forms[blocking] == nil { forms[blocking] = Int8Activations(quantizing: x, rows: m, columns: first.weight.columns, blocking: blocking) }
            return forms[blocking]!
        }
        let packed = quantized.map { $0.weight.packedRows.rows(of: $0.weight) }
        var offsets = [0]
        for p in packed { offsets.append(offsets.last! + p.groups) }
        let tier = Int32(KernelTier.current.rawValue)
        pool.parallelRanges(offsets.last!) { range in
            for (k, (weight, output)) in quantized.enumerated() {
                let lower = max(range.lowerBound, offsets[k]), upper = min(range.upperBound, offsets[k + 1])
                guard lower < upper else { continue }
                ember_packed_products(tier, PackedRows.code(weight.type), packed[k].data.assumingMemoryBound(to: UInt8.self),
                                      Int32(lower - offsets[k]), Int32(upper - offsets[k]), Int32(weight.rows), Int32(weight.columns / 32),
                                      activations[k].values, activations[k].scales, activations[k].integerSums, activations[k].sums,
                                      activations[k].halfIntegerSums, activations[k].halfSums, Int32(m), output, weight.rows)
            }
        }
    }
}
