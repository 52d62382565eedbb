import CKernels
import Foundation

/// exp(x) as llama.cpp's vectorised CPU kernels compute it (a degree-5 polynomial after range
/// reduction, ≤ 1.5 ulp from the true value), reproduced bit for bit so that activations that are
/// later quantized round the same way in both.
@inline(__always)
public func vectorExp(_ x: Float) -> Float {
    let shift: Float = 0x1.8p23
    let z = shift.addingProduct(x, 0x1.715476p+0)
    let n = z - shift
    let b = x.addingProduct(-n, 0x1.62e4p-1).addingProduct(-n, 0x1.7f7d1cp-20)
    if abs(n) > 192 { return n <= 0 ? 0 : .infinity }
    let u = b * b
    let p = Float(0x1.573e2ep-5).addingProduct(0x1.0e4020p-7, b)
    let q = Float(0x1.fffdb6p-2).addingProduct(0x1.555e66p-3, b)
    let j = Float(1).addingProduct(0x1.ffffecp-1, b).addingProduct(q.addingProduct(p, u), u)
    return Float(sign: .plus, exponent: Int(n), significand: j)
}

/// SwiGLU gating. Shapes: gate, up, out [n].   out = silu(gate) · up,  silu(x) = x / (1 + exp(−x))
/// with `vectorExp`'s polynomial (computed in C, eight lanes at a time).
public func swigluForward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count n: Int) {
    ember_swiglu_forward(gate, up, out, n)
}

/// The gradients of `swigluForward`, added into dgate and dup [n]:
///   dgate += dout · up · σ(g) · (1 + g · (1 − σ(g))),   dup += dout · silu(g)
public func swigluBackward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dout: UnsafePointer<Float>,
                           dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, count n: Int) {
    ember_swiglu_backward(gate, up, dout, dgate, dup, n)
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

/// GELU in its tanh form (GPT-2's gelu_new, PyTorch's approximate="tanh"):
///   gelu(x) = x/2 · (1 + tanh(u)),  u = √(2/π) · (x + 0.044715 x³)
public func geluForward(_ x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count n: Int) {
    for i in 0..<n {
        let v = x[i]
        out[i] = 0.5 * v * (1 + tanhf(0.7978845608028654 * (v + 0.044715 * v * v * v)))
    }
}

/// dx += dout · gelu′(x),  gelu′(x) = (1 + tanh u)/2 + x/2 · (1 − tanh² u) · √(2/π) · (1 + 3 · 0.044715 x²)
public func geluBackward(_ x: UnsafePointer<Float>, dout: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count n: Int) {
    for i in 0..<n {
        let v = x[i], t = tanhf(0.7978845608028654 * (v + 0.044715 * v * v * v))
        let slope = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * v * v)
        dx[i] += dout[i] * slope
    }
}
