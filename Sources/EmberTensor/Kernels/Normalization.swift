/// RMSNorm. Shapes: x, out [rows, dim]; weight [dim].
///   out = x / sqrt(mean(x²) + eps) · weight
/// The backward pass will sit here as `rmsNormBackward`, reusing the per-row `rstd` it can cache.

public func rmsNormForward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                           rows: Int, dim: Int, epsilon: Float) {
    for r in 0..<rows {
        let xr = x + r * dim, yr = out + r * dim
        let meanSquare = dot(xr, xr, dim) / Float(dim)
        let rstd = 1 / (meanSquare + epsilon).squareRoot()
        for i in 0..<dim { yr[i] = xr[i] * rstd * weight[i] }
    }
}
