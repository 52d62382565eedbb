import CKernels

/// Cross-entropy of the logits h · wᵀ, taken a chunk of rows at a time so that the logits of all
/// rows are never held at once. Shapes: h [N, C], w [V, C] (the output projection), targets [N]
/// (negative: not scored). Each chunk's logits [chunk, V] are reduced to its loss and, when `dh` or
/// `dw` is given, turned at once into the gradient of the summed loss, softmax − onehot, which is
/// multiplied out while the chunk is at hand:
///   dh[chunk] = dlogits · w   (written; dh [N, C]),   dw += dlogitsᵀ · h[chunk]   (dw [V, C])
/// A caller scales both by d(loss)/d(sum) afterwards, so no logits are recomputed in the backward.
/// Chunks hold at most `chunkFloats` logits (64 MiB by default; at least one row). The products run
/// in `precision`; the softmax and the loss in f32.
/// Returns the summed loss over the scored rows and their count.
public func linearCrossEntropy(h: UnsafePointer<Float>, w: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
                               dh: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?,
                               rows N: Int, columns C: Int, vocabulary V: Int, chunkFloats: Int = 16 << 20,
                               precision: Precision = .f32, pool: ThreadPool = .shared) -> (sum: Double, count: Int) {
    let chunk = max(1, min(N, chunkFloats / max(V, 1)))
    let logits = UnsafeMutablePointer<Float>.allocate(capacity: chunk * V)
    let logSumExps = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
    defer { logits.deallocate(); logSumExps.deallocate() }
    dh?.update(repeating: 0, count: N * C)
    var sum = 0.0, count = 0
    for start in stride(from: 0, to: N, by: chunk) {
        let R = min(chunk, N - start), t = targets + start
        matmulLarge(h + start * C, w, logits, m: R, n: V, k: C, precision: precision, pool: pool)
        let part = crossEntropyForward(logits: logits, targets: t, logSumExps: logSumExps, rows: R, vocabulary: V, pool: pool)
        sum += part.sum
        count += part.count
        guard dh != nil || dw != nil else { continue }
        // The logits become d(summed loss)/d(logits) in place: softmax − onehot, 0 on rows not scored.
        pool.parallelRanges(R) { range in
            for r in range {
                let row = logits + r * V
                if t[r] < 0 { row.update(repeating: 0, count: V); continue }
                _ = ember_exp_sum(row, logSumExps[r], row, V)
                row[Int(t[r])] -= 1
            }
        }
        matmulBackward(dy: logits, x: h + start * C, w: w, dx: dh.map { $0 + start * C }, dw: dw, m: R, n: V, k: C, precision: precision, pool: pool)
    }
    return (sum, count)
}
