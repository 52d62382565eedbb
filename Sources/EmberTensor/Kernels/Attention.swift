import Foundation

/// Masks for scaled dot-product attention, as additive [queries, keys] matrices of 0 / −∞.
public enum AttentionMask {
    /// Query `t` (at absolute position `offset + t`) sees keys `0...offset + t`.
    public static func causal(queries: Int, keys: Int, offset: Int) -> Tensor {
        var m = Tensor(zeros: [queries, keys])
        for t in 0..<queries {
            for s in 0..<keys where s > offset + t { m.storage[t * keys + s] = -.infinity }
        }
        return m
    }

    /// Keys at or past `validKeys` are padding and invisible to every query.
    public static func padding(queries: Int, keys: Int, validKeys: Int) -> Tensor {
        var m = Tensor(zeros: [queries, keys])
        for t in 0..<queries {
            for s in validKeys..<max(validKeys, keys) { m.storage[t * keys + s] = -.infinity }
        }
        return m
    }
}

/// Scaled dot-product attention with grouped-query heads, in f32 throughout: the reference form
/// checked against PyTorch (KernelTests). Inference uses `cachedAttentionForward` (contiguous f16
/// cache) and `pagedAttentionForward` (paged cache); training uses `causalAttentionForward` and its
/// backward.
///
/// Shapes (row-major):
///   q    [T, H, D]      queries of T tokens at absolute positions `offset ..< offset + T`
///   k, v [S, Hkv, D]    keys and values for positions `0 ..< S` (S ≥ offset + T), row stride `kvStride`
///   out  [T, H, D]
///   mask optional additive [T, S]; without one the mask is causal
/// Query head h reads key/value head h / (H / Hkv).
public func attentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                             out: UnsafeMutablePointer<Float>, tokens T: Int, keys S: Int, offset: Int,
                             heads H: Int, kvHeads: Int, headDim D: Int, kvStride: Int? = nil,
                             mask: UnsafePointer<Float>? = nil, pool: ThreadPool = .shared) {
    let group = H / kvHeads
    let stride = kvStride ?? kvHeads * D
    let scaleFactor = 1 / Float(D).squareRoot()
    pool.parallelFor(T * H) { job in
        let t = job / H, h = job % H
        let kvh = h / group
        let visible = mask == nil ? min(S, offset + t + 1) : S
        let qv = q + (t * H + h) * D
        let o = out + (t * H + h) * D
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(visible, 1)) { buffer in
            let scores = buffer.baseAddress!
            for s in 0..<visible {
                scores[s] = dot(qv, k + s * stride + kvh * D, D) * scaleFactor
                if let mask { scores[s] += mask[t * S + s] }
            }
            softmaxForward(scores, count: visible)
            for i in 0..<D { o[i] = 0 }
            for s in 0..<visible where scores[s] != 0 {
                axpy(scores[s], v + s * stride + kvh * D, o, D)
            }
        }
    }
}
