import Foundation

/// Rotary position embedding.
///
/// Dimension pair `i` of a head (i < ropeDim/2) is rotated by the angle `p · θ^i / scale` at position
/// `p`, with θ = base^(−2/ropeDim). Which two elements form the pair depends on the checkpoint:
/// - `.interleaved`: elements (2i, 2i+1), as GGUF LLaMA weights expect (llama.cpp's "norm" mode);
/// - `.neox`: elements (i, i + ropeDim/2), as Hugging Face LLaMA weights expect ("rotate_half").
/// Elements past `ropeDim` are left alone (partial rotary).
///
/// The angles are built the way llama.cpp builds them, by repeated f32 multiplication by θ, so that
/// both give the same rotated values to the last bit.
public enum RopeMode: String, Sendable {
    case interleaved, neox
}

public struct RopeParameters: Sendable, Equatable {
    public var dimensions: Int
    public var base: Float
    /// Linear position scaling: positions are divided by this factor.
    public var linearScale: Float
    public var mode: RopeMode
    /// Per-pair divisors of the angles (LLaMA-3's frequency scaling, llama.cpp's `rope_freqs`).
    public var frequencyFactors: [Float]?

    public init(dimensions: Int, base: Float, linearScale: Float = 1, mode: RopeMode, frequencyFactors: [Float]? = nil) {
        self.dimensions = dimensions
        self.base = base
        self.linearScale = linearScale
        self.mode = mode
        self.frequencyFactors = frequencyFactors
    }
}

/// Shapes: x [tokens, heads, headDim] rotated in place; positions [tokens].
public func ropeForward(_ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, tokens: Int, heads: Int, headDim: Int,
                        parameters: RopeParameters) {
    rotate(x, positions: positions, tokens: tokens, heads: heads, headDim: headDim, parameters: parameters, direction: 1)
}

/// The gradient of `ropeForward`: a rotation is orthogonal, so the gradient rotates back by the
/// same angles. Shapes: dx [tokens, heads, headDim], rotated in place.
public func ropeBackward(_ dx: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, tokens: Int, heads: Int, headDim: Int,
                         parameters: RopeParameters) {
    rotate(dx, positions: positions, tokens: tokens, heads: heads, headDim: headDim, parameters: parameters, direction: -1)
}

private func rotate(_ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, tokens: Int, heads: Int, headDim: Int,
                    parameters: RopeParameters, direction: Float) {
    let half = parameters.dimensions / 2
    let thetaScale = powf(parameters.base, -2 / Float(parameters.dimensions))
    let frequencyScale = 1 / parameters.linearScale
    /// The cosines and (signed) sines of one position's angles, into `row` [2 × half].
    func angles(_ position: Int32, _ row: UnsafeMutablePointer<Float>) {
        var theta = Float(position)
        for i in 0..<half {
            var angle = frequencyScale * theta
            if let factors = parameters.frequencyFactors { angle /= factors[i] }
            row[i] = cosf(angle)
            row[half + i] = direction * sinf(angle)
            theta *= thetaScale
        }
    }
    // A batch repeats the same positions in every row: their angles are computed once, in a table
    // over 0 ... the largest position, unless the positions are sparse or negative.
    var largest: Int32 = -1, smallest: Int32 = 0
    for t in 0..<tokens {
        largest = max(largest, positions[t])
        smallest = min(smallest, positions[t])
    }
    let tabled = smallest >= 0 && Int(largest) < tokens
    let rows = tabled ? Int(largest) + 1 : 1
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * half * rows) { table in
        if tabled { for p in 0..<rows { angles(Int32(p), table.baseAddress! + 2 * half * p) } }
        for t in 0..<tokens {
            let row: UnsafeMutablePointer<Float>
            if tabled {
                row = table.baseAddress! + 2 * half * Int(positions[t])
            } else {
                row = table.baseAddress!
                angles(positions[t], row)
            }
            let cosines = row, sines = row + half
            for h in 0..<heads {
                let v = x + (t * heads + h) * headDim
                for i in 0..<half {
                    let (a, b) = parameters.mode == .interleaved ? (2 * i, 2 * i + 1) : (i, i + half)
                    let x0 = v[a], x1 = v[b]
                    // The first product is fused into the add, as llama.cpp's compiled kernel does.
                    v[a] = (-(x1 * sines[i])).addingProduct(x0, cosines[i])
                    v[b] = (x1 * cosines[i]).addingProduct(x0, sines[i])
                }
            }
        }
    }
}
