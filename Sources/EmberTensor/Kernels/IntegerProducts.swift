import CKernels

/// Activations quantized to 8-bit blocks of 32 in natural order, for the integer products: the
/// values, each block's scale (rounded through f16, as llama.cpp stores it) repeated for the eight
/// lanes of a block's sums, and scale × value sum.
public struct Int8Activations {
    public let rows: Int
    public let columns: Int
    var values: [Int8]
    var scales: [Float]
    var sums: [Float]

    public init(quantizing x: UnsafePointer<Float>, rows: Int, columns: Int) {
        precondition(columns % 32 == 0)
        self.rows = rows
        self.columns = columns
        let blocks = rows * columns / 32
        var values = [Int8](repeating: 0, count: rows * columns)
        var scales = [Float](repeating: 0, count: 8 * blocks), sums = [Float](repeating: 0, count: blocks)
        for b in 0..<blocks {
            let (scale, sum) = quantizeBlock(x + 32 * b) { j, v in values[32 * b + j] = Int8(v) }
            for l in 0..<8 { scales[8 * b + l] = scale }
            sums[b] = sum
        }
        self.values = values
        self.scales = scales
        self.sums = sums
    }
}

extension WeightMatrix {
    /// Whether this CPU runs the 8-bit integer products (AVX-512 VNNI).
    public static let integerProductsAvailable = ember_has_vnni() != 0

    /// Like `multiply(_:m:by:)`, with integer products for the quantized weights: x is quantized once,
    /// and the rows of all the quantized products share one parallel pass.
    public static func multiplyByIntegers(_ x: UnsafePointer<Float>, m: Int, by products: [(weight: WeightMatrix, output: UnsafeMutablePointer<Float>)],
                                          pool: ThreadPool = .shared) {
        let quantized = products.filter { $0.weight.type.isQuantized }
        for (weight, output) in products where !weight.type.isQuantized { weight.multiply(x, output, m: m, pool: pool) }
        guard let first = quantized.first else { return }
        let a = Int8Activations(quantizing: x, rows: m, columns: first.weight.columns)
        var offsets = [0]
        for (weight, _) in quantized { offsets.append(offsets.last! + weight.rows) }
        a.values.withUnsafeBufferPointer { q in
            a.scales.withUnsafeBufferPointer { d in
                a.sums.withUnsafeBufferPointer { s in
                    pool.parallelRanges(offsets.last!, minimumChunk: 16) { range in
                        for (k, (weight, output)) in quantized.enumerated() {
                            let lower = max(range.lowerBound, offsets[k]), upper = min(range.upperBound, offsets[k + 1])
                            guard lower < upper else { continue }
                            let code: Int32 = weight.type == .q4_0 ? 0 : weight.type == .q4_1 ? 1 : 2
                            ember_quantized_products(code, weight.data.assumingMemoryBound(to: UInt8.self), weight.rowBytes,
                                                     Int32(lower - offsets[k]), Int32(upper - offsets[k]), Int32(weight.columns / 32),
                                                     q.baseAddress!, d.baseAddress!, s.baseAddress!, Int32(m), output, weight.rows)
                        }
                    }
                }
            }
        }
    }
}
