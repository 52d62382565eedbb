import Foundation

/// SiLU(x) = x · σ(x)
@inline(__always)
public func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

/// SwiGLU gating. Shapes: gate, up, out [n].   out = silu(gate) · up
public func swigluForward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count n: Int) {
    for i in 0..<n { out[i] = silu(gate[i]) * up[i] }
}

/// Numerically stable softmax over `n` values in place: the maximum is subtracted before `exp`,
/// so large logits never overflow. Masked entries hold `-infinity` and come out as exactly 0.
public func softmaxForward(_ x: UnsafeMutablePointer<Float>, count n: Int) {
    var maximum = -Float.infinity
    for i in 0..<n where x[i] > maximum { maximum = x[i] }
    if maximum == -.infinity {  // everything masked: define the result as all zeros
        for i in 0..<n { x[i] = 0 }
        return
    }
    var sum: Float = 0
    for i in 0..<n {
        let e = expf(x[i] - maximum)
        x[i] = e
        sum += e
    }
    let inverse = 1 / sum
    for i in 0..<n { x[i] *= inverse }
}

/// log Σ exp(x) computed stably, in double precision as perplexity scoring needs.
public func logSumExp(_ x: UnsafePointer<Float>, count n: Int) -> Double {
    var maximum = -Float.infinity
    for i in 0..<n where x[i] > maximum { maximum = x[i] }
    var sum = 0.0
    for i in 0..<n { sum += exp(Double(x[i] - maximum)) }
    return Double(maximum) + log(sum)
}
