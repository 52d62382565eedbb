import CBLAS
import CKernels

/// Causal self-attention over a batch of equally long sequences, for training, with grouped-query
/// heads. Shapes (token-major, as the projections produce them):
///   q, out [B·T, H·D];  k, v [B·T, Hkv·D];  probabilities [B, H, T, T] (kept for the backward)
///   S = q_h · k_gᵀ / √D  (g = h / (H / Hkv)),  P = softmax(S + causal mask),  out_h = P · v_g
/// Each (sequence, key/value head) is one job; its query heads run one after another, so the
/// backward can add into the shared dk and dv without races. Queries go in chunks of
/// `causalChunk` rows, each meeting only the keys it can see, so the products skip most of the
/// masked half. Products are single-threaded SGEMM; entries past the diagonal are stored as 0.
///
/// Packed sequences: with `segmentStarts` [B·T], query i of a row sees only the keys from
/// `segmentStarts[i]` (an index within its row, ≤ i) to i, a block-diagonal causal mask; the
/// masked probabilities are stored as 0, so `causalAttentionBackward` needs nothing more. A
/// sliding `window` (Mistral) likewise limits query i to the keys after i − window.
public func causalAttentionForward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                   out: UnsafeMutablePointer<Float>, probabilities: UnsafeMutablePointer<Float>,
                                   batch B: Int, tokens T: Int, heads H: Int, kvHeads: Int, headDim D: Int,
                                   segmentStarts: UnsafePointer<Int32>? = nil, window: Int? = nil, pool: ThreadPool = .shared) {
    BLASCore.prepare()
    let groups = H / kvHeads, qStride = H * D, kvStride = kvHeads * D
    let scale = 1 / Float(D).squareRoot()
    pool.parallelFor(B * kvHeads) { job in
        let b = job / kvHeads, g = job % kvHeads
        let kg = k + b * T * kvStride + g * D, vg = v + b * T * kvStride + g * D
        for h in g * groups..<(g + 1) * groups {
            let qh = q + b * T * qStride + h * D, oh = out + b * T * qStride + h * D, p = probabilities + (b * H + h) * T * T
            for rows in causalChunks(T) {
                let m = Int32(rows.count), n = Int32(rows.upperBound)  // the keys these queries see
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, Int32(D), scale, qh + rows.lowerBound * qStride, Int32(qStride),
                            kg, Int32(kvStride), 0, p + rows.lowerBound * T, Int32(T))
                for i in rows {
                    let row = p + i * T
                    let first = max(segmentStarts.map { Int($0[b * T + i]) } ?? 0, window.map { i - $0 + 1 } ?? 0)
                    var maximum = -Float.infinity
                    for j in first...i where row[j] > maximum { maximum = row[j] }
                    let inverse = Float(1 / ember_exp_sum(row + first, maximum, row + first, i + 1 - first))
                    for j in first...i { row[j] *= inverse }
                    row.update(repeating: 0, count: first)
                    (row + i + 1).update(repeating: 0, count: T - i - 1)
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, Int32(D), n, 1, p + rows.lowerBound * T, Int32(T),
                            vg, Int32(kvStride), 0, oh + rows.lowerBound * qStride, Int32(qStride))
            }
        }
    }
}

/// The gradients of `causalAttentionForward`, added into dq, dk and dv (same shapes as q, k, v):
///   dP = dout_h · v_gᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),
///   dq_h += dS · k_g / √D,  dk_g += dSᵀ · q_h / √D,  dv_g += Pᵀ · dout_h
/// in the forward's query chunks, each against the keys it sees.
public func causalAttentionBackward(dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                    probabilities: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                    dv: UnsafeMutablePointer<Float>, batch B: Int, tokens T: Int, heads H: Int, kvHeads: Int, headDim D: Int,
                                    pool: ThreadPool = .shared) {
    BLASCore.prepare()
    let groups = H / kvHeads, qStride = H * D, kvStride = kvHeads * D
    let scale = 1 / Float(D).squareRoot()
    pool.parallelFor(B * kvHeads) { job in
        let b = job / kvHeads, g = job % kvHeads
        let kg = k + b * T * kvStride + g * D, vg = v + b * T * kvStride + g * D
        let dkg = dk + b * T * kvStride + g * D, dvg = dv + b * T * kvStride + g * D
        let dS = UnsafeMutablePointer<Float>.allocate(capacity: min(T, causalChunk) * T)
        defer { dS.deallocate() }
        for h in g * groups..<(g + 1) * groups {
            let offset = b * T * qStride + h * D
            let p = probabilities + (b * H + h) * T * T
            for rows in causalChunks(T) {
                let m = Int32(rows.count), n = Int32(rows.upperBound)
                let pc = p + rows.lowerBound * T, doc = dout + offset + rows.lowerBound * qStride
                // dv_g[0..<n] += P[rows, 0..<n]ᵀ · dout_h[rows]
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, Int32(D), m, 1, pc, Int32(T),
                            doc, Int32(qStride), 1, dvg, Int32(kvStride))
                // dP = dout_h[rows] · v_g[0..<n]ᵀ, then dS in place
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, Int32(D), 1, doc, Int32(qStride),
                            vg, Int32(kvStride), 0, dS, Int32(T))
                for i in rows {
                    let pr = p + i * T, dr = dS + (i - rows.lowerBound) * T
                    var total: Float = 0
                    for j in 0...i { total += pr[j] * dr[j] }
                    for j in 0...i { dr[j] = pr[j] * (dr[j] - total) }
                    (dr + i + 1).update(repeating: 0, count: rows.upperBound - i - 1)
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, Int32(D), n, scale, dS, Int32(T),
                            kg, Int32(kvStride), 1, dq + offset + rows.lowerBound * qStride, Int32(qStride))
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, Int32(D), m, scale, dS, Int32(T),
                            q + offset + rows.lowerBound * qStride, Int32(qStride), 1, dkg, Int32(kvStride))
            }
        }
    }
}

/// Query rows per chunk in the training attention.
let causalChunk = 64

/// 0..<T in chunks of `causalChunk` rows.
func causalChunks(_ T: Int) -> [Range<Int>] {
    stride(from: 0, to: T, by: causalChunk).map { $0..<min(T, $0 + causalChunk) }
}
