import CBLAS
import CKernels
import Foundation

/// Causal self-attention over a batch of equally long sequences, for training, with grouped-query
/// heads. Shapes (token-major, as the projections produce them):
///   q, out [B·T, H·D];  k, v [B·T, Hkv·D];  logSumExp [B, H, T] (kept for the backward)
///   S = q_h · k_gᵀ / √D  (g = h / (H / Hkv)),  P = softmax(S + causal mask),  out_h = P · v_g
/// Each (sequence, key/value head) is one job; its query heads run one after another, so the
/// backward can add into the shared dk and dv without races. Queries go in chunks of
/// `causalChunk` rows, each meeting only the keys it can see, so the products skip most of the
/// masked half. Products are single-threaded SGEMM.
///
/// Memory is O(T), as in FlashAttention-2: no T×T probabilities are kept. Each job holds the
/// scores of one chunk of queries ([`causalChunk`, T]), and the forward saves only each row's
/// log-sum-exp, from which the backward recomputes the chunk's probabilities exactly.
///
/// Packed sequences: with `segmentStarts` [B·T], query i of a row sees only the keys from
/// `segmentStarts[i]` (an index within its row, ≤ i) to i, a block-diagonal causal mask. A sliding
/// `window` (Mistral) likewise limits query i to the keys after i − window. The backward takes the
/// same mask.
public func causalAttentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                   out: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>,
                                   batch B: Int, tokens T: Int, heads H: Int, kvHeads: Int, headDim D: Int,
                                   segmentStarts: UnsafePointer<Int32>? = nil, window: Int? = nil, pool: ThreadPool = .shared) {
    BLASCore.prepare()
    let groups = H / kvHeads, qStride = H * D, kvStride = kvHeads * D
    let scale = 1 / Float(D).squareRoot()
    pool.parallelFor(B * kvHeads) { job in
        let b = job / kvHeads, g = job % kvHeads
        let kg = k + b * T * kvStride + g * D, vg = v + b * T * kvStride + g * D
        let p = UnsafeMutablePointer<Float>.allocate(capacity: min(T, causalChunk) * T)
        defer { p.deallocate() }
        for h in g * groups..<(g + 1) * groups {
            let qh = q + b * T * qStride + h * D, oh = out + b * T * qStride + h * D, lse = logSumExp + (b * H + h) * T
            for rows in causalChunks(T) {
                let m = rows.count, n = rows.upperBound  // the keys these queries see
                gemmF32(transA: false, transB: true, m: m, n: n, k: D, alpha: scale, a: qh + rows.lowerBound * qStride, lda: qStride,
                        b: kg, ldb: kvStride, beta: 0, c: p, ldc: T)
                for i in rows {
                    let row = p + (i - rows.lowerBound) * T
                    let first = firstVisibleKey(i, row: b * T, tokens: T, segmentStarts: segmentStarts, window: window)
                    var maximum = -Float.infinity
                    for j in first...i where row[j] > maximum { maximum = row[j] }
                    let sum = ember_exp_sum(row + first, maximum, row + first, i + 1 - first)
                    let inverse = Float(1 / sum)
                    for j in first...i { row[j] *= inverse }
                    lse[i] = maximum + Float(log(sum))
                    row.update(repeating: 0, count: first)
                    (row + i + 1).update(repeating: 0, count: rows.upperBound - i - 1)
                }
                gemmF32(transA: false, transB: false, m: m, n: D, k: n, alpha: 1, a: p, lda: T,
                        b: vg, ldb: kvStride, beta: 0, c: oh + rows.lowerBound * qStride, ldc: qStride)
            }
        }
    }
}

/// The gradients of `causalAttentionForward`, added into dq, dk and dv (same shapes as q, k, v).
/// Per chunk of queries, the probabilities are recomputed from the saved log-sum-exp,
///   P = exp(q_h · k_gᵀ / √D − lse),  dP = dout_h · v_gᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),
///   dq_h += dS · k_g / √D,  dk_g += dSᵀ · q_h / √D,  dv_g += Pᵀ · dout_h,
/// each against the keys the chunk sees, with the forward's mask.
public func causalAttentionBackward(dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                    logSumExp: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                    dv: UnsafeMutablePointer<Float>, batch B: Int, tokens T: Int, heads H: Int, kvHeads: Int, headDim D: Int,
                                    segmentStarts: UnsafePointer<Int32>? = nil, window: Int? = nil, pool: ThreadPool = .shared) {
    BLASCore.prepare()
    let groups = H / kvHeads, qStride = H * D, kvStride = kvHeads * D
    let scale = 1 / Float(D).squareRoot()
    pool.parallelFor(B * kvHeads) { job in
        let b = job / kvHeads, g = job % kvHeads
        let kg = k + b * T * kvStride + g * D, vg = v + b * T * kvStride + g * D
        let dkg = dk + b * T * kvStride + g * D, dvg = dv + b * T * kvStride + g * D
        let chunk = min(T, causalChunk) * T
        let p = UnsafeMutablePointer<Float>.allocate(capacity: 2 * chunk), dS = p + chunk
        defer { p.deallocate() }
        for h in g * groups..<(g + 1) * groups {
            let offset = b * T * qStride + h * D, lse = logSumExp + (b * H + h) * T
            for rows in causalChunks(T) {
                let m = rows.count, n = rows.upperBound
                let qc = q + offset + rows.lowerBound * qStride, doc = dout + offset + rows.lowerBound * qStride
                // P[rows, 0..<n], recomputed
                gemmF32(transA: false, transB: true, m: m, n: n, k: D, alpha: scale, a: qc, lda: qStride,
                        b: kg, ldb: kvStride, beta: 0, c: p, ldc: T)
                var firsts = [Int](repeating: 0, count: rows.count)
                for i in rows {
                    let row = p + (i - rows.lowerBound) * T
                    let first = firstVisibleKey(i, row: b * T, tokens: T, segmentStarts: segmentStarts, window: window)
                    firsts[i - rows.lowerBound] = first
                    _ = ember_exp_sum(row + first, lse[i], row + first, i + 1 - first)
                    row.update(repeating: 0, count: first)
                    (row + i + 1).update(repeating: 0, count: rows.upperBound - i - 1)
                }
                // dv_g[0..<n] += P[rows, 0..<n]ᵀ · dout_h[rows]
                gemmF32(transA: true, transB: false, m: n, n: D, k: m, alpha: 1, a: p, lda: T,
                        b: doc, ldb: qStride, beta: 1, c: dvg, ldc: kvStride)
                // dP = dout_h[rows] · v_g[0..<n]ᵀ, then dS in place
                gemmF32(transA: false, transB: true, m: m, n: n, k: D, alpha: 1, a: doc, lda: qStride,
                        b: vg, ldb: kvStride, beta: 0, c: dS, ldc: T)
                for i in rows {
                    let r = i - rows.lowerBound, first = firsts[r]
                    let pr = p + r * T, dr = dS + r * T
                    var total: Float = 0
                    for j in first...i { total += pr[j] * dr[j] }
                    for j in first...i { dr[j] = pr[j] * (dr[j] - total) }
                    dr.update(repeating: 0, count: first)
                    (dr + i + 1).update(repeating: 0, count: rows.upperBound - i - 1)
                }
                gemmF32(transA: false, transB: false, m: m, n: D, k: n, alpha: scale, a: dS, lda: T,
                        b: kg, ldb: kvStride, beta: 1, c: dq + offset + rows.lowerBound * qStride, ldc: qStride)
                gemmF32(transA: true, transB: false, m: n, n: D, k: m, alpha: scale, a: dS, lda: T,
                        b: qc, ldb: qStride, beta: 1, c: dkg, ldc: kvStride)
            }
        }
    }
}

/// The first key query `i` sees: its segment's start (packed sequences) or the window's edge.
@inline(__always)
private func firstVisibleKey(_ i: Int, row: Int, tokens: Int, segmentStarts: UnsafePointer<Int32>?, window: Int?) -> Int {
    max(segmentStarts.map { Int($0[row + i]) } ?? 0, window.map { i - $0 + 1 } ?? 0)
}

/// Query rows per chunk in the training attention.
let causalChunk = 64

/// 0..<T in chunks of `causalChunk` rows.
func causalChunks(_ T: Int) -> [Range<Int>] {
    stride(from: 0, to: T, by: causalChunk).map { $0..<min(T, $0 + causalChunk) }
}
