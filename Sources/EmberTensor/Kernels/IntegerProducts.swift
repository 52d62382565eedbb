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

    static func code(_ type: DType) -> Int32 { type == .q4_0 ? 0 : type == .q4_1 ? 1 : 2 }

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
    /// Whether this CPU runs the 8-bit integer products (AVX-512 VNNI).
    public static let integerProductsAvailable = ember_has_vnni() != 0

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
                        pool.parallelRanges(offsets.last!) { range in
                            for (k, (weight, output)) in quantized.enumerated() {
                                let lower = max(range.lowerBound, offsets[k]), upper = min(range.upperBound, offsets[k + 1])
                                guard lower < upper else { continue }
                                ember_packed_products(PackedRows.code(weight.type), packed[k].data.assumingMemoryBound(to: UInt8.self),
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
