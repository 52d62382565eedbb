/// Activations quantized to 8 bits per block of 32, the way llama.cpp quantizes the input of a
/// matrix multiply whose weights are q4_0, q4_1 or q8_0 (its q8_0 / q8_1 "vec_dot" types):
///
///     d = max|x| / 127, stored as f16          q_j = roundeven(x_j · 127 / max|x|)
///     s = d · Σ q_j, stored as f16 (q8_1 only; pairs with q4_1's minimum)
///
/// The values are kept as f32 in *lane order*: within a block, `lanes[8k + i]` is element `4i + k`, the
/// layout `DecodedRow` decodes weights into, so a block's dot product is four 8-wide multiply-adds.
public struct Q8Activations {
    public let rows: Int
    public let columns: Int
    public private(set) var lanes: [Float]   // [rows, columns], lane order within each block of 32
    public private(set) var scales: [Float]  // [rows, columns / 32]
    public private(set) var sums: [Float]    // [rows, columns / 32]

    public init(quantizing x: UnsafePointer<Float>, rows: Int, columns: Int) {
        precondition(columns % 32 == 0)
        self.rows = rows
        self.columns = columns
        let blocks = rows * columns / 32
        var lanes = [Float](repeating: 0, count: rows * columns)
        var scales = [Float](repeating: 0, count: blocks)
        var sums = [Float](repeating: 0, count: blocks)
        lanes.withUnsafeMutableBufferPointer { q in
            for b in 0..<blocks {
                (scales[b], sums[b]) = quantizeBlock(x + 32 * b) { j, v in q[32 * b + 8 * (j % 4) + j / 4] = Float(v) }
            }
        }
        self.lanes = lanes
        self.scales = scales
        self.sums = sums
    }
}

/// Rounds activations to the 16-bit type of f16 / bf16 weights, as llama.cpp converts the input of such a product.
public func roundActivations(_ x: UnsafeMutablePointer<Float>, count: Int, to type: DType) {
    switch type {
    case .f16: for i in 0..<count { x[i] = halfToFloat(floatToHalf(x[i])) }
    case .bf16: for i in 0..<count { x[i] = bfloat16ToFloat(floatToBFloat16(x[i])) }
    default: break
    }
}

/// llama.cpp's 8-bit quantization of one block of 32 activations: each value rounded to a multiple of
/// max|x|/127 and passed to `store(index, value)`; returns the block's scale and scale × value sum,
/// both rounded through f16 as llama.cpp stores them.
@inline(__always)
func quantizeBlock(_ xb: UnsafePointer<Float>, _ store: (Int, Int32) -> Void) -> (scale: Float, sum: Float) {
    var maximum: Float = 0
    for j in 0..<32 { maximum = max(maximum, abs(xb[j])) }
    let d = maximum / 127
    let inverse: Float = maximum != 0 ? 127 / maximum : 0
    var total: Int32 = 0
    for j in 0..<32 {
        let v = Int32((xb[j] * inverse).rounded(.toNearestOrEven))
        store(j, v)
        total += v
    }
    return (Float(Float16(d)), Float(Float16(d * Float(total))))
}
