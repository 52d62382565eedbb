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
            let xb = x + 32 * b
            var maximum: Float = 0
            for j in 0..<32 { maximum = max(maximum, abs(xb[j])) }
            let inverse: Float = maximum != 0 ? 127 / maximum : 0
            var total: Int32 = 0
            for j in 0..<32 {
                let v = Int32((xb[j] * inverse).rounded(.toNearestOrEven))
                values[32 * b + j] = Int8(v)
                total += v
            }
            let d = maximum / 127
            for l in 0..<8 { scales[8 * b + l] = Float(Float16(d)) }
            sums[b] = Float(Float16(d * Float(total)))
        }
        self.values = values
        self.scales = scales
        self.sums = sums
    }
}

extension WeightMatrix {
    /// Whether this CPU runs the 8-bit integer products (AVX-512 VNNI).
    public static let integerProductsAvailable = ember_has_vnni() != 0

    /// y [m, rows] = x · Wᵀ with integer dot products per block (quantized weights only): exact block
    /// sums, combined in one fixed order for every row count, so a row's result never depends on m.
    func multiplyByIntegers(_ x: Int8Activations, _ y: UnsafeMutablePointer<Float>, m: Int, pool: ThreadPool) {
        let code: Int32 = type == .q4_0 ? 0 : type == .q4_1 ? 1 : 2
        let blocks = columns / 32
        let base = data.assumingMemoryBound(to: UInt8.self)
        x.values.withUnsafeBufferPointer { q in
            x.scales.withUnsafeBufferPointer { d in
                x.sums.withUnsafeBufferPointer { s in
                    pool.parallelRanges(rows, minimumChunk: 16) { range in
                        ember_quantized_products(code, base, rowBytes, Int32(range.lowerBound), Int32(range.upperBound), Int32(blocks),
                                                 q.baseAddress!, d.baseAddress!, s.baseAddress!, Int32(m), y, rows)
                    }
                }
            }
        }
    }

    /// Like `multiply(_:m:by:)`, with integer products for the quantized weights (one quantization of x).
    public static func multiplyByIntegers(_ x: UnsafePointer<Float>, m: Int, by products: [(weight: WeightMatrix, output: UnsafeMutablePointer<Float>)],
                                          pool: ThreadPool = .shared) {
        var quantized: Int8Activations?
        for (weight, output) in products {
            guard weight.type.isQuantized else {
                weight.multiply(x, output, m: m, pool: pool)
                continue
            }
            if quantized == nil { quantized = Int8Activations(quantizing: x, rows: m, columns: weight.columns) }
            weight.multiplyByIntegers(quantized!, output, m: m, pool: pool)
        }
    }
}
