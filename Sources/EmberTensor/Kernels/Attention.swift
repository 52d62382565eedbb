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

    /// Element-wise combination: a key is visible only if visible in both masks.
    public static func combine(_ a: Tensor, _ b: Tensor) -> Tensor {
        Tensor(shape: a.shape, storage: zip(a.storage, b.storage).map { $0 + $1 })
    }
}

/// Element types a key/value cache may hold: f32, or f16 (half the memory, as llama.cpp keeps its cache).
public protocol KVElement: Sendable {
    /// Σ q_i · k_i
    static func dot(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Self>, _ n: Int) -> Float
    /// out += a · v
    static func accumulate(_ a: Float, _ v: UnsafePointer<Self>, into out: UnsafeMutablePointer<Float>, _ n: Int)
    init(_ value: Float)
}

extension Float: KVElement {
    @inline(__always)
    public static func dot(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ n: Int) -> Float { EmberTensor.dot(q, k, n) }
    @inline(__always)
    public static func accumulate(_ a: Float, _ v: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, _ n: Int) { axpy(a, v, out, n) }
}

extension Float16: KVElement {
    @inline(__always)
    public static func dot(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float16>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            let kv = SIMD8<Float>(UnsafeRawPointer(k + i).loadUnaligned(as: SIMD8<Float16>.self))
            acc.addProduct(UnsafeRawPointer(q + i).loadUnaligned(as: SIMD8<Float>.self), kv)
            i += 8
        }
        var sum = acc.sum()
        while i < n { sum += q[i] * Float(k[i]); i += 1 }
        return sum
    }

    @inline(__always)
    public static func accumulate(_ a: Float, _ v: UnsafePointer<Float16>, into out: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let va = SIMD8<Float>(repeating: a)
        while i + 8 <= n {
            var o = UnsafeRawPointer(out + i).loadUnaligned(as: SIMD8<Float>.self)
            o.addProduct(va, SIMD8<Float>(UnsafeRawPointer(v + i).loadUnaligned(as: SIMD8<Float16>.self)))
            UnsafeMutableRawPointer(out + i).storeBytes(of: o, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { out[i] += a * Float(v[i]); i += 1 }
    }
}

/// Scaled dot-product attention with grouped-query heads.
///
/// Shapes (row-major):
///   q    [T, H, D]      queries of T tokens at absolute positions `offset ..< offset + T`
///   k, v [S, Hkv, D]    keys and values for positions `0 ..< S` (S ≥ offset + T), row stride `kvStride`
///   out  [T, H, D]
///   mask optional additive [T, S]; without one the mask is causal
/// Query head h reads key/value head h / (H / Hkv).
public func attentionForward<E: KVElement>(q: UnsafePointer<Float>, k: UnsafePointer<E>, v: UnsafePointer<E>,
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
                scores[s] = E.dot(qv, k + s * stride + kvh * D, D) * scaleFactor
                if let mask { scores[s] += mask[t * S + s] }
            }
            softmaxForward(scores, count: visible)
            for i in 0..<D { o[i] = 0 }
            for s in 0..<visible where scores[s] != 0 {
                E.accumulate(scores[s], v + s * stride + kvh * D, into: o, D)
            }
        }
    }
}
