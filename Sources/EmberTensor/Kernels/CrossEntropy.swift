import CKernels
import Foundation

/// Cross-entropy over the vocabulary fused with its softmax. Shapes: logits [N, V]; targets [N],
/// where a negative target (PyTorch's −100) marks a position that is not scored;
/// logSumExps [N] (kept for the backward). Returns the sum of −log softmax(logits)[target] over the
/// scored rows and how many there were; the mean loss is sum / count.
public func crossEntropyForward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, logSumExps: UnsafeMutablePointer<Float>,
                                rows N: Int, vocabulary V: Int, pool: ThreadPool = .shared) -> (sum: Double, count: Int) {
    let losses = UnsafeMutablePointer<Double>.allocate(capacity: max(N, 1))
    defer { losses.deallocate() }
    pool.parallelRanges(N) { range in
        for r in range {
            let lse = logSumExpFast(logits + r * V, count: V)
            logSumExps[r] = lse
            losses[r] = targets[r] < 0 ? 0 : Double(lse - logits[r * V + Int(targets[r])])
        }
    }
    var sum = 0.0, count = 0
    for r in 0..<N where targets[r] >= 0 {
        sum += losses[r]
        count += 1
    }
    return (sum, count)
}

/// The gradient of `scale ·` (the summed cross-entropy), added into dlogits [N, V]:
///   dlogits_r += scale · (softmax(logits_r) − onehot(target_r)) for each scored row r.
/// For the mean loss, scale = dloss / count.
public func crossEntropyBackward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, logSumExps: UnsafePointer<Float>,
                                 dlogits: UnsafeMutablePointer<Float>, scale: Float, rows N: Int, vocabulary V: Int, pool: ThreadPool = .shared) {
    pool.parallelRanges(N) { range in
        let p = UnsafeMutablePointer<Float>.allocate(capacity: V)
        defer { p.deallocate() }
        for r in range where targets[r] >= 0 {
            let dr = dlogits + r * V
            _ = ember_exp_sum(logits + r * V, logSumExps[r], p, V)
            for j in 0..<V { dr[j] += scale * p[j] }
            dr[Int(targets[r])] -= scale
        }
    }
}

/// Per-token log-probabilities log softmax(logits_r)[target_r] (0 where the target is negative),
/// with logSumExps [N] kept for the backward.
public func tokenLogProbabilitiesForward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, out: UnsafeMutablePointer<Float>,
                                         logSumExps: UnsafeMutablePointer<Float>, rows N: Int, vocabulary V: Int, pool: ThreadPool = .shared) {
    pool.parallelRanges(N) { range in
        for r in range {
            let lse = logSumExpFast(logits + r * V, count: V)
            logSumExps[r] = lse
            out[r] = targets[r] < 0 ? 0 : logits[r * V + Int(targets[r])] - lse
        }
    }
}

/// The gradient of `tokenLogProbabilitiesForward`, added into dlogits:
///   dlogits_r += dout_r · (onehot(target_r) − softmax(logits_r))
public func tokenLogProbabilitiesBackward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, logSumExps: UnsafePointer<Float>,
                                          dout: UnsafePointer<Float>, dlogits: UnsafeMutablePointer<Float>, rows N: Int, vocabulary V: Int,
                                          pool: ThreadPool = .shared) {
    pool.parallelRanges(N) { range in
        let p = UnsafeMutablePointer<Float>.allocate(capacity: V)
        defer { p.deallocate() }
        for r in range where targets[r] >= 0 && dout[r] != 0 {
            let dr = dlogits + r * V, g = dout[r]
            _ = ember_exp_sum(logits + r * V, logSumExps[r], p, V)
            for j in 0..<V { dr[j] -= g * p[j] }
            dr[Int(targets[r])] += g
        }
    }
}

/// log Σ exp(x) over one row: the maximum, then the vectorised exp sum (training's losses).
@inline(__always)
func logSumExpFast(_ x: UnsafePointer<Float>, count n: Int) -> Float {
    var maximum = -Float.infinity
    for i in 0..<n where x[i] > maximum { maximum = x[i] }
    return maximum + Float(log(ember_exp_sum(x, maximum, nil, n)))
}
