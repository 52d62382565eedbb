import CKernels
import Synchronization

/// Activations quantized to 8-bit blocks of 32 in natural order, for the integer products: the
/// values and, per block, the scale (rounded through f16, as llama.cpp stores it), the integer
/// value sum, and scale × value sum.
public struct Int8Activations {
    public let rows: Int
    public let columns: Int
    var values: [Int8]
    var scales: [Float]
    var integerSums: [Int32]
    var sums: [Float]

    public init(quantizing x: UnsafePointer<Float>, rows: Int, columns: Int) {
        precondition(columns % 32 == 0)
        self.rows = rows
        self.columns = columns
        let blocks = rows * columns / 32
        var values = [Int8](repeating: 0, count: rows * columns)
        var scales = [Float](repeating: 0, count: blocks), sums = scales
        var integerSums = [Int32](repeating: 0, count: blocks)
        for b in 0..<blocks {
            var total: Int32 = 0
            (scales[b], sums[b]) = quantizeBlock(x + 32 * b) { j, v in
                values[32 * b + j] = Int8(v)
                total += v
            }
            integerSums[b] = total
        }
        self.values = values
        self.scales = scales
        self.integerSums = integerSums
        self.sums = sums
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
        let code = PackedRows.code(weight.type), blocks = Int32(weight.columns / 32)
        groups = (weight.rows + 15) / 16
        let bytes = groups * Int(blocks) * ember_packed_block_bytes(code)
        data = .allocate(byteCount: bytes, alignment: 64)
        ember_pack_rows(code, weight.data.assumingMemoryBound(to: UInt8.self), weight.rowBytes, Int32(weight.rows), blocks,
                        data.assumingMemoryBound(to: UInt8.self))
    }

    deinit { data.deallocate() }

    static func code(_ type: DType) -> Int32 { Int32(type == .q4_0 ? EMBER_Q4_0 : type == .q4_1 ? EMBER_Q4_1 : EMBER_Q8_0) }

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
        let a = Int8Activations(quantizing: x, rows: m, columns: first.weight.columns)
        let packed = quantized.map { $0.weight.packedRows.rows(of: $0.weight) }
        var offsets = [0]
        for p in packed { offsets.append(offsets.last! + p.groups) }
        a.values.withUnsafeBufferPointer { q in
            a.scales.withUnsafeBufferPointer { d in
                a.integerSums.withUnsafeBufferPointer { n in
                    a.sums.withUnsafeBufferPointer { s in
                        let tier = Int32(KernelTier.current.rawValue)
                        pool.parallelRanges(offsets.last!) { range in
                            for (k, (weight, output)) in quantized.enumerated() {
                                let lower = max(range.lowerBound, offsets[k]), upper = min(range.upperBound, offsets[k + 1])
                                guard lower < upper else { continue }
                                ember_packed_products(tier, PackedRows.code(weight.type), packed[k].data.assumingMemoryBound(to: UInt8.self),
                                                      Int32(lower - offsets[k]), Int32(upper - offsets[k]), Int32(weight.rows), Int32(weight.columns / 32),
                                                      q.baseAddress!, d.baseAddress!, n.baseAddress!, s.baseAddress!, Int32(m), output, weight.rows)
                            }
                        }
                    }
                }
            }
        }
    }
}
