import Foundation

/// Rotary position embedding.
///
/// Dimension pair `i` of a head (i < ropeDim/2) is rotated by the angle `p · base^(−2i/ropeDim) / scale`
/// at position `p`. Which two elements form the pair depends on the checkpoint's convention:
/// - `.interleaved`: elements (2i, 2i+1), as GGUF LLaMA weights expect (llama.cpp's "norm" mode);
/// - `.neox`: elements (i, i + ropeDim/2), as Hugging Face LLaMA weights expect ("rotate_half").
/// Elements past `ropeDim` are left alone (partial rotary).
public enum RopeMode: String, Sendable {
    case interleaved, neox
}

public struct RopeParameters: Sendable, Equatable {
    public var dimensions: Int
    public var base: Float
    /// Linear position scaling: positions are divided by this factor.
    public var linearScale: Float
    public var mode: RopeMode

    public init(dimensions: Int, base: Float, linearScale: Float = 1, mode: RopeMode) {
        self.dimensions = dimensions
        self.base = base
        self.linearScale = linearScale
        self.mode = mode
    }

    /// The per-pair inverse frequencies θ_i = base^(−2i/d) / scale.
    public var inverseFrequencies: [Float] {
        (0..<dimensions / 2).map { i in powf(base, -2 * Float(i) / Float(dimensions)) / linearScale }
    }
}

/// Shapes: x [tokens, heads, headDim] rotated in place; positions [tokens];
/// inverseFrequencies [ropeDim / 2] (from `RopeParameters.inverseFrequencies`).
public func ropeForward(_ x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, tokens: Int, heads: Int, headDim: Int,
                        parameters: RopeParameters, inverseFrequencies: UnsafePointer<Float>) {
    let half = parameters.dimensions / 2
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * half) { table in
        let cosines = table.baseAddress!, sines = cosines + half
        for t in 0..<tokens {
            let p = Float(positions[t])
            for i in 0..<half {
                let angle = p * inverseFrequencies[i]
                cosines[i] = cosf(angle)
                sines[i] = sinf(angle)
            }
            for h in 0..<heads {
                let v = x + (t * heads + h) * headDim
                for i in 0..<half {
                    let (a, b) = parameters.mode == .interleaved ? (2 * i, 2 * i + 1) : (i, i + half)
                    let x0 = v[a], x1 = v[b]
                    v[a] = x0 * cosines[i] - x1 * sines[i]
                    v[b] = x0 * sines[i] + x1 * cosines[i]
                }
            }
        }
    }
}
