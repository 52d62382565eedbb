/// RMSNorm. Shapes: x, out [rows, dim]; weight [dim]; rstd [rows] (optional, kept for the backward).
///   out = x · rstd · weight,   rstd = 1 / sqrt(mean(x²) + eps)
/// The squares are summed in double and rounded as llama.cpp rounds them, so both produce the same
/// f32 result.
public func rmsNormForward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                           rows: Int, dim: Int, epsilon: Float, rstd: UnsafeMutablePointer<Float>? = nil) {
    for r in 0..<rows {
        let xr = x + r * dim, yr = out + r * dim
        var sum = 0.0
        for i in 0..<dim { sum += Double(xr[i] * xr[i]) }
        let mean = Float(sum / Double(dim))
        let s = 1 / (mean + epsilon).squareRoot()
        rstd?[r] = s
        for i in 0..<dim { yr[i] = xr[i] * s * weight[i] }
    }
}

/// The gradients of `rmsNormForward` from the forward's `rstd`, added into dx [rows, dim] and
/// dweight [dim] (either may be nil when not wanted):
///   dweight += Σ_rows dout · x · rstd
///   dx      += rstd · (dout · w) − rstd³ / dim · x · Σ_i (dout_i · w_i · x_i)
public func rmsNormBackward(dout: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                            dx: UnsafeMutablePointer<Float>?, dweight: UnsafeMutablePointer<Float>?, rows: Int, dim: Int) {
    for r in 0..<rows {
        let xr = x + r * dim, gr = dout + r * dim, s = rstd[r]
        if let dweight {
            for i in 0..<dim { dweight[i] += gr[i] * xr[i] * s }
        }
        if let dx {
            var projection: Float = 0
            for i in 0..<dim { projection += gr[i] * weight[i] * xr[i] }
            let k = s * s * s / Float(dim) * projection
            let dr = dx + r * dim
            for i in 0..<dim { dr[i] += s * gr[i] * weight[i] - k * xr[i] }
        }
    }
}

/// LayerNorm (GPT-2, BERT): out = (x − mean) / sqrt(var + eps) · weight + bias over rows of `dim`,
/// the mean and variance summed in double. `out` may be `x`.
public func layerNormForward(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                             rows: Int, dim: Int, epsilon: Float) {
    for r in 0..<rows {
        let xr = x + r * dim, yr = out + r * dim
        let (mean, scale) = layerNormStatistics(xr, dim: dim, epsilon: epsilon)
        for i in 0..<dim { yr[i] = Float((Double(xr[i]) - mean) * scale) * weight[i] + bias[i] }
    }
}

/// A row's mean and 1 / sqrt(variance + eps), summed in double.
@inline(__always)
func layerNormStatistics(_ x: UnsafePointer<Float>, dim: Int, epsilon: Float) -> (mean: Double, rstd: Double) {
    var sum = 0.0
    for i in 0..<dim { sum += Double(x[i]) }
    let mean = sum / Double(dim)
    var squares = 0.0
    for i in 0..<dim { squares += (Double(x[i]) - mean) * (Double(x[i]) - mean) }
    return (mean, 1 / (squares / Double(dim) + Double(epsilon)).squareRoot())
}

/// The gradients of `layerNormForward`, with x̂ = (x − mean) · rstd recomputed from x, added into
/// dx [rows, dim], dweight and dbias [dim] (each may be nil when not wanted):
///   dbias += Σ_rows dout,  dweight += Σ_rows dout · x̂,
///   dx += rstd · (g − mean(g) − x̂ · mean(g · x̂)),  g = dout · weight
/// Row statistics are summed in double, as the forward sums them.
public func layerNormBackward(dout: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                              dx: UnsafeMutablePointer<Float>?, dweight: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
                              rows: Int, dim: Int, epsilon: Float) {
    for r in 0..<rows {
        let xr = x + r * dim, gr = dout + r * dim
        let (mean, rstd) = layerNormStatistics(xr, dim: dim, epsilon: epsilon)
        if let dbias { for i in 0..<dim { dbias[i] += gr[i] } }
        if let dweight { for i in 0..<dim { dweight[i] += gr[i] * Float((Double(xr[i]) - mean) * rstd) } }
        guard let dx else { continue }
        var gMean = 0.0, gxMean = 0.0
        for i in 0..<dim {
            let g = Double(gr[i] * weight[i]), xhat = (Double(xr[i]) - mean) * rstd
            gMean += g
            gxMean += g * xhat
        }
        gMean /= Double(dim)
        gxMean /= Double(dim)
        let dxr = dx + r * dim
        for i in 0..<dim {
            let xhat = (Double(xr[i]) - mean) * rstd
            dxr[i] += Float(rstd * (Double(gr[i] * weight[i]) - gMean - xhat * gxMean))
        }
    }
}
