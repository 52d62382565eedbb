import Foundation

/// One sequence's part of a paged attention batch: query rows `rows` (of q and out) at positions
/// `start ..< start + rows.count`, with keys and values at positions 0 … (last query) found through
/// `blocks` (position p lives in slot `blocks[p / blockSize] * blockSize + p % blockSize`).
public struct PagedSequence: Sendable {
    public var rows: Range<Int>
    public var start: Int
    public var blocks: [Int32]
    public init(rows: Range<Int>, start: Int, blocks: [Int32]) {
        self.rows = rows
        self.start = start
        self.blocks = blocks
    }
}

/// Causal attention for a ragged batch over a paged f16 KV pool (keys and values [slots, Hkv·D]).
///
/// Every query is computed the same way whatever batch or chunk it arrives in, so a sequence gives
/// the same numbers alone or among others: keys are visited in tiles of 64 positions on a fixed
/// grid (scores as sequential FMAs over D, the tile's maximum, the vectorised exp, the tile's sum
/// in double, values accumulated in f32), with an online softmax across tiles.
///
/// Flash-Decoding: a query that sees more than `splitKeys` keys splits them into partitions of
/// `splitKeys` positions; each partition runs as its own job and the partial results merge by their
/// log-sum-exp: out = Σᵢ accᵢ·e^(mᵢ−M) / Σᵢ sᵢ·e^(mᵢ−M). Decoding a long context then uses every
/// thread even for one sequence. `splitKeys: nil` never splits.
public func pagedAttentionForward(q: UnsafePointer<Float>, keys: UnsafePointer<Float16>, values: UnsafePointer<Float16>,
                                  out: UnsafeMutablePointer<Float>, sequences: [PagedSequence], blockSize: Int,
                                  heads H: Int, kvHeads: Int, headDim D: Int, splitKeys: Int? = 2048,
                                  pool: ThreadPool = .shared) {
    let tile = attentionTile
    precondition(splitKeys.map { $0 % tile == 0 && $0 > 0 } ?? true, "splitKeys must be a positive multiple of \(tile)")
    // Jobs: (sequence, head, up to 64 query rows, key partition).
    struct Job { let sequence: Int, head: Int, rows: Range<Int>, partition: Int, partitions: Int }
    var jobs: [Job] = []
    var merges: [(sequence: Int, head: Int, row: Int, partitions: Int, firstJob: Int)] = []
    for (s, seq) in sequences.enumerated() {
        for h in 0..<H {
            var first = seq.rows.lowerBound
            while first < seq.rows.upperBound {
                let rows = first..<min(seq.rows.upperBound, first + tile)
                let lastVisible = seq.start + (rows.upperBound - seq.rows.lowerBound)
                let split = splitKeys.map { rows.count == 1 && lastVisible > $0 ? (lastVisible + $0 - 1) / $0 : 1 } ?? 1
                if split > 1 { merges.append((s, h, rows.lowerBound, split, jobs.count)) }
                for p in 0..<split { jobs.append(Job(sequence: s, head: h, rows: rows, partition: p, partitions: split)) }
                first = rows.upperBound
            }
        }
    }
    // Partial results of split jobs: (max, sum, acc[D]) per job.
    let partialStride = D + 2
    let partials = UnsafeMutablePointer<Float>.allocate(capacity: max(1, jobs.count * partialStride))
    defer { partials.deallocate() }
    let kvStride = kvHeads * D, groups = H / kvHeads
    let scale = 1 / Float(D).squareRoot()

    pool.parallelFor(jobs.count) { j in
        let job = jobs[j], seq = sequences[job.sequence]
        let kvOffset = (job.head / groups) * D
        let visibleEnd = seq.start + (job.rows.upperBound - seq.rows.lowerBound)
        var keyRange = 0..<visibleEnd
        if job.partitions > 1, let size = splitKeys {
            keyRange = (job.partition * size)..<min(visibleEnd, (job.partition + 1) * size)
        }
        let n = job.rows.count
        let keysT = UnsafeMutablePointer<Float>.allocate(capacity: D * tile)
        let tileValues = UnsafeMutablePointer<Float>.allocate(capacity: tile * D)
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: tile)
        let accumulators = UnsafeMutablePointer<Float>.allocate(capacity: n * D)
        defer { keysT.deallocate(); tileValues.deallocate(); scores.deallocate(); accumulators.deallocate() }
        accumulators.initialize(repeating: 0, count: n * D)
        var maxima = [Float](repeating: -.infinity, count: n), sums = [Float](repeating: 0, count: n)
        seq.blocks.withUnsafeBufferPointer { blocks in
            var tileStart = keyRange.lowerBound
            while tileStart < keyRange.upperBound {
                let count = min(tile, keyRange.upperBound - tileStart)
                for tk in 0..<tile {
                    if tk < count {
                        let p = tileStart + tk
                        let slot = Int(blocks[p / blockSize]) * blockSize + p % blockSize
                        let kp = keys + slot * kvStride + kvOffset, vp = values + slot * kvStride + kvOffset
                        for d in 0..<D {
                            keysT[d * tile + tk] = Float(kp[d])
                            tileValues[tk * D + d] = Float(vp[d])
                        }
                    } else {
                        for d in 0..<D { keysT[d * tile + tk] = 0; tileValues[tk * D + d] = 0 }
                    }
                }
                for r in 0..<n {
                    let row = job.rows.lowerBound + r
                    let visible = seq.start + (row - seq.rows.lowerBound) + 1 - tileStart
                    if visible <= 0 { continue }
                    attentionTileStep(query: q + (row * H + job.head) * D, keysT: keysT, values: tileValues, scores: scores,
                                  count: min(visible, count), accumulator: accumulators + r * D, maximum: &maxima[r], sum: &sums[r],
                                  headDim: D, scale: scale)
                }
                tileStart += count
            }
        }
        if job.partitions > 1 {
            let partial = partials + j * partialStride
            partial[0] = maxima[0]
            partial[1] = sums[0]
            for d in 0..<D { partial[2 + d] = accumulators[d] }
        } else {
            for r in 0..<n {
                let inverse = sums[r] == 0 ? 0 : 1 / sums[r]
                let o = out + ((job.rows.lowerBound + r) * H + job.head) * D
                for d in 0..<D { o[d] = accumulators[r * D + d] * inverse }
            }
        }
    }
    for m in merges {
        var total = -Float.infinity
        for p in 0..<m.partitions { total = max(total, partials[(m.firstJob + p) * partialStride]) }
        let o = out + (m.row * H + m.head) * D
        for d in 0..<D { o[d] = 0 }
        var sum: Float = 0
        for p in 0..<m.partitions {
            let partial = partials + (m.firstJob + p) * partialStride
            guard partial[1] > 0 else { continue }
            let w = expf(partial[0] - total)
            sum += partial[1] * w
            for d in 0..<D { o[d] += partial[2 + d] * w }
        }
        let inverse = sum == 0 ? 0 : 1 / sum
        for d in 0..<D { o[d] *= inverse }
    }
}

/// One query meets one tile of 64 keys (`keysT` [D, 64] transposed, `values` [64, D], the first
/// `count` visible): scores as sequential FMAs over D, the tile maximum, the online rescale of the
/// accumulator, the vectorised exp with the tile's sum in double, and the weighted values in f32.
/// Shared by the tiled prompt schedule and the paged kernel.
@inline(__always)
func attentionTileStep(query qv: UnsafePointer<Float>, keysT: UnsafePointer<Float>, values: UnsafePointer<Float>,
                           scores: UnsafeMutablePointer<Float>, count: Int, accumulator acc: UnsafeMutablePointer<Float>,
                           maximum: inout Float, sum: inout Float, headDim D: Int, scale: Float) {
    let B = attentionTile, lanes = B / 16
    for lane in 0..<lanes {
        var a = SIMD16<Float>()
        for d in 0..<D {
            a.addProduct(SIMD16(repeating: qv[d]), UnsafeRawPointer(keysT + d * B + 16 * lane).loadUnaligned(as: SIMD16<Float>.self))
        }
        UnsafeMutableRawPointer(scores + 16 * lane).storeBytes(of: a * scale, as: SIMD16<Float>.self)
    }
    var tileMax = -Float.infinity
    for tk in 0..<B {
        if tk >= count { scores[tk] = -.infinity }
        tileMax = max(tileMax, scores[tk])
    }
    let newMax = max(maximum, tileMax)
    if newMax > maximum {
        let ms = expf(maximum - newMax)
        for d in 0..<D { acc[d] *= ms }
        sum *= ms
    }
    maximum = newMax
    var total = 0.0
    for lane in 0..<lanes {
        var e = SIMD16<Float>()
        for i in 0..<16 { e[i] = vectorExp(scores[16 * lane + i] - newMax) }
        UnsafeMutableRawPointer(scores + 16 * lane).storeBytes(of: e, as: SIMD16<Float>.self)
        total += Double(horizontalSum(e))
    }
    sum = Float(Double(sum) + total)
    var d = 0
    while d < D {
        if D - d >= 16 {
            var a = UnsafeRawPointer(acc + d).loadUnaligned(as: SIMD16<Float>.self)
            for tk in 0..<count {
                a.addProduct(SIMD16(repeating: scores[tk]), UnsafeRawPointer(values + tk * D + d).loadUnaligned(as: SIMD16<Float>.self))
            }
            UnsafeMutableRawPointer(acc + d).storeBytes(of: a, as: SIMD16<Float>.self)
            d += 16
        } else {
            for tk in 0..<count { acc[d] = acc[d].addingProduct(scores[tk], values[tk * D + d]) }
            d += 1
        }
    }
}
