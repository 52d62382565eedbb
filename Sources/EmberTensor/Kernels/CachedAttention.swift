import Foundation

/// Causal attention over an f16 key/value cache, computed as llama.cpp's CPU flash attention computes it.
///
/// Shapes: q [T, H, D] at positions `offset ..< offset + T`; k, v [offset + T, Hkv, D] (f16); out [T, H, D].
///
/// Two schedules, chosen by the number of queries exactly as llama.cpp chooses:
/// - T ≥ 64 (prompt processing), *tiled*: queries of one head in tiles of 64 meet keys in tiles of 64;
///   scores are f32 (each a sequential FMA over D), the softmax is online across key tiles with the
///   vectorised exp, and values accumulate in f32.
/// - T < 64 (decoding, short prompts), *per query*: the query is rounded to f16, keys are visited one at
///   a time with an online softmax, and the weighted values accumulate in an f16 vector.
/// Both give a plain softmax(q·kᵀ/√D)·v up to rounding; following llama.cpp's rounding keeps Ember's
/// activations identical to its own, so the next layer's 8-bit quantization rounds the same way.
public func cachedAttentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float16>, v: UnsafePointer<Float16>,
                                   out: UnsafeMutablePointer<Float>, tokens T: Int, offset: Int,
                                   heads H: Int, kvHeads: Int, headDim D: Int, options: AttentionOptions = AttentionOptions(),
                                   pool: ThreadPool = .shared) {
    let scale = options.scale ?? 1 / Float(D).squareRoot()
    if T >= attentionTile {
        let tiles = (T + attentionTile - 1) / attentionTile
        pool.parallelFor(H * tiles) { job in
            let h = job / tiles, first = (job % tiles) * attentionTile
            tiledAttention(q: q, k: k, v: v, out: out, queries: first..<min(T, first + attentionTile), offset: offset,
                           head: h, heads: H, kvHeads: kvHeads, headDim: D, scale: scale, options: options)
        }
    } else {
        pool.parallelFor(T * H) { job in
            let t = job / H, h = job % H
            sequentialAttention(q: q + (t * H + h) * D, k: k, v: v, out: out + (t * H + h) * D,
                                keys: options.firstKey(offset + t)..<(offset + t + 1),
                                kvOffset: (h / (H / kvHeads)) * D, kvStride: kvHeads * D, headDim: D, scale: scale, softcap: options.softcap)
        }
    }
}

/// Queries and keys per tile in the tiled schedule.
let attentionTile = 64

private func tiledAttention(q: UnsafePointer<Float>, k: UnsafePointer<Float16>, v: UnsafePointer<Float16>,
                            out: UnsafeMutablePointer<Float>, queries: Range<Int>, offset: Int,
                            head h: Int, heads H: Int, kvHeads: Int, headDim D: Int, scale: Float, options: AttentionOptions) {
    let B = attentionTile, lanes = B / 16
    let kvStride = kvHeads * D, kvOffset = (h / (H / kvHeads)) * D
    let rows = queries.count
    let keysT = UnsafeMutablePointer<Float>.allocate(capacity: D * B)      // [D, B]: key tile, transposed
    let values = UnsafeMutablePointer<Float>.allocate(capacity: B * D)     // [B, D]
    let scores = UnsafeMutablePointer<Float>.allocate(capacity: B)
    let accumulators = UnsafeMutablePointer<Float>.allocate(capacity: rows * D)
    var maxima = [Float](repeating: -.infinity, count: rows)
    var sums = [Float](repeating: 0, count: rows)
    defer { keysT.deallocate(); values.deallocate(); scores.deallocate(); accumulators.deallocate() }
    accumulators.initialize(repeating: 0, count: rows * D)

    let visibleKeys = offset + queries.upperBound
    for start in stride(from: options.firstKey(offset + queries.lowerBound) / B * B, to: visibleKeys, by: B) {
        let count = min(B, visibleKeys - start)
        for tk in 0..<B {
            for d in 0..<D {
                let inside = tk < count
                keysT[d * B + tk] = inside ? Float(k[(start + tk) * kvStride + kvOffset + d]) : 0
                values[tk * D + d] = inside ? Float(v[(start + tk) * kvStride + kvOffset + d]) : 0
            }
        }
        for (r, t) in queries.enumerated() {
            let visible = offset + t + 1 - start, first = options.firstKey(offset + t) - start  // keys of this tile the query may see
            if visible <= 0 || first >= min(visible, count) { continue }
            attentionTileStep(query: q + (t * H + h) * D, keysT: keysT, values: values, scores: scores, count: min(visible, count), first: first,
                              accumulator: accumulators + r * D, maximum: &maxima[r], sum: &sums[r], headDim: D, scale: scale, softcap: options.softcap)
        }
    }
    for (r, t) in queries.enumerated() {
        let inverse = sums[r] == 0 ? 0 : 1 / sums[r]
        let o = out + (t * H + h) * D
        for d in 0..<D { o[d] = accumulators[r * D + d] * inverse }
    }
}

private func sequentialAttention(q: UnsafePointer<Float>, k: UnsafePointer<Float16>, v: UnsafePointer<Float16>,
                                 out: UnsafeMutablePointer<Float>, keys: Range<Int>, kvOffset: Int, kvStride: Int,
                                 headDim D: Int, scale: Float, softcap: Float?) {
    withUnsafeTemporaryAllocation(of: Float16.self, capacity: 2 * D) { buffer in
        let query = buffer.baseAddress!, acc = query + D
        for d in 0..<D { query[d] = Float16(q[d]); acc[d] = 0 }
        var maximum = -Float.infinity
        var sum: Float = 0
        for s in keys {
            let key = k + s * kvStride + kvOffset, value = v + s * kvStride + kvOffset
            var score = halfDot(key, query, D) * scale
            if let softcap { score = softcap * tanhf(score / softcap) }
            var ms: Float = 1, vs: Float = 1
            if score > maximum {
                ms = expf(maximum - score)
                maximum = score
                for d in 0..<D { acc[d] = Float16(Float(acc[d]) * ms) }
            } else {
                vs = expf(score - maximum)
            }
            for d in 0..<D { acc[d] = Float16(Float(acc[d]).addingProduct(Float(value[d]), vs)) }
            sum = vs.addingProduct(sum, ms)
        }
        let inverse = 1 / sum
        for d in 0..<D { out[d] = Float(acc[d]) * inverse }
    }
}

/// Σ x·y over f16 vectors the way llama.cpp's AVX-512 f16 dot product sums them: four 16-lane FMA
/// accumulators over blocks of 64, folded (0+2, 1+3, then together), a 16-lane tree, and the tail in double.
@inline(__always)
func halfDot(_ x: UnsafePointer<Float16>, _ y: UnsafePointer<Float16>, _ n: Int) -> Float {
    var s0 = SIMD16<Float>(), s1 = SIMD16<Float>(), s2 = SIMD16<Float>(), s3 = SIMD16<Float>()
    let full = n & ~63
    func load(_ p: UnsafePointer<Float16>, _ i: Int) -> SIMD16<Float> {
        SIMD16<Float>(UnsafeRawPointer(p + i).loadUnaligned(as: SIMD16<Float16>.self))
    }
    var i = 0
    while i < full {
        s0.addProduct(load(x, i), load(y, i))
        s1.addProduct(load(x, i + 16), load(y, i + 16))
        s2.addProduct(load(x, i + 32), load(y, i + 32))
        s3.addProduct(load(x, i + 48), load(y, i + 48))
        i += 64
    }
    var total = Double(horizontalSum((s0 + s2) + (s1 + s3)))
    while i < n { total += Double(Float(x[i]) * Float(y[i])); i += 1 }
    return Float(total)
}
