/// RMSNorm. Shapes: x, out [rows, dim]; weight [dim].
///   out = x · rstd · weight,   rstd = 1 / sqrt(mean(x²) + eps)
/// The squares are summed in double and rounded as llama.cpp rounds them, so both produce the same
/// f32 result. The backward pass will sit here as `rmsNormBackward`, reusing the per-row `rstd`.
public func rmsNormForward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                           rows: Int, dim: Int, epsilon: Float) {
    for r in 0..<rows {
        let xr = x + r * dim, yr = out + r * dim
        var sum = 0.0
        for i in 0..<dim { sum += Double(xr[i] * xr[i]) }
        let mean = Float(sum / Double(dim))
        let rstd = 1 / (mean + epsilon).squareRoot()
        for i in 0..<dim { yr[i] = xr[i] * rstd * weight[i] }
    }
}
