import CKernels
import Foundation

/// What some families change in attention: a sliding window (a query at position p sees keys at
/// p − window < position ≤ p: Mistral, Gemma-2's local layers), soft-capping of the scores
/// (cap · tanh(score / cap): Gemma-2) and the query scale (1/√D unless set: Gemma-2's
/// `query_pre_attn_scalar`).
public struct AttentionOptions: Sendable, Equatable {
    public var window: Int?
    public var softcap: Float?
    public var scale: Float?

    public init(window: Int? = nil, softcap: Float? = nil, scale: Float? = nil) {
        self.window = window
        self.softcap = softcap
        self.scale = scale
    }

    /// The first key position a query at `position` sees.
    @inline(__always) func firstKey(_ position: Int) -> Int { window.map { max(0, position - $0 + 1) } ?? 0 }
}

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

/// Causal attention for a ragged batch over a paged f16 KV pool. Values are [slots, Hkv·D]; keys
/// are stored transposed within each block, [blocks, Hkv, D, blockSize], so that a tile's keys load
/// as vectors of `blockSize` positions per dimension.
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
                                  options: AttentionOptions = AttentionOptions(), pool: ThreadPool = .shared) {
    let tile = attentionTile
    precondition(splitKeys.map { $0 % tile == 0 && $0 > 0 } ?? true, "splitKeys must be a positive multiple of \(tile)")
    precondition(tile % blockSize == 0, "blockSize must divide \(tile)")
    let groups = H / kvHeads  // query heads per key/value head
    // Jobs: (sequence, key/value head, up to 64 query rows, key partition). The query heads sharing
    // a key/value head share the job, so each key tile is loaded and converted once for them.
    struct Job { let sequence: Int, kvHead: Int, rows: Range<Int>, partition: Int, partitions: Int }
    var jobs: [Job] = []
    var merges: [(row: Int, kvHead: Int, partitions: Int, firstJob: Int)] = []
    for (s, seq) in sequences.enumerated() {
        for g in 0..<kvHeads {
            var first = seq.rows.lowerBound
            while first < seq.rows.upperBound {
                let rows = first..<min(seq.rows.upperBound, first + tile)
                let lastVisible = seq.start + (rows.upperBound - seq.rows.lowerBound)
                let split = splitKeys.map { rows.count == 1 && lastVisible > $0 ? (lastVisible + $0 - 1) / $0 : 1 } ?? 1
                if split > 1 { merges.append((rows.lowerBound, g, split, jobs.count)) }
                for p in 0..<split { jobs.append(Job(sequence: s, kvHead: g, rows: rows, partition: p, partitions: split)) }
                first = rows.upperBound
            }
        }
    }
    // Partial results of split jobs: (max, sum, acc[D]) per query head of the group.
    let partialStride = groups * (D + 2)
    let partials = UnsafeMutablePointer<Float>.allocate(capacity: max(1, jobs.count * partialStride))
    defer { partials.deallocate() }
    let kvStride = kvHeads * D
    let scale = options.scale ?? 1 / Float(D).squareRoot()

    pool.parallelFor(jobs.count) { j in
        let job = jobs[j], seq = sequences[job.sequence]
        let kvOffset = job.kvHead * D
        let visibleEnd = seq.start + (job.rows.upperBound - seq.rows.lowerBound)
        var keyRange = 0..<visibleEnd
        if job.partitions > 1, let size = splitKeys {
            keyRange = (job.partition * size)..<min(visibleEnd, (job.partition + 1) * size)
        }
        // A window skips the tiles (on the fixed grid) that no query of the job sees.
        let firstSeen = options.firstKey(seq.start + (job.rows.lowerBound - seq.rows.lowerBound)) / tile * tile
        if firstSeen > keyRange.lowerBound { keyRange = min(firstSeen, keyRange.upperBound)..<keyRange.upperBound }
        let n = job.rows.count, queries = n * groups  // query q = r * groups + head in group
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * D * tile + tile + queries * (D + 2))
        defer { scratch.deallocate() }
        let keysT = scratch, tileValues = scratch + D * tile, scores = tileValues + tile * D
        let accumulators = scores + tile, maxima = accumulators + queries * D, sums = maxima + queries
        accumulators.initialize(repeating: 0, count: queries * D)
        maxima.initialize(repeating: -.infinity, count: queries)
        sums.initialize(repeating: 0, count: queries)
        seq.blocks.withUnsafeBufferPointer { blocks in
            var tileStart = keyRange.lowerBound
            while tileStart < keyRange.upperBound {
                let count = min(tile, keyRange.upperBound - tileStart)
                // Keys: for each dimension, blockSize positions at a time from the transposed blocks.
                let blockCount = (count + blockSize - 1) / blockSize
                for j in 0..<tile / blockSize {
                    if j < blockCount {
                        let block = Int(blocks[(tileStart + j * blockSize) / blockSize])
                        let base = keys + (block * kvHeads + job.kvHead) * D * blockSize
                        for d in 0..<D {
                            let source = base + d * blockSize, target = keysT + d * tile + j * blockSize
                            var t = 0
                            while t + 16 <= blockSize {
                                UnsafeMutableRawPointer(target + t).storeBytes(
                                    of: SIMD16<Float>(UnsafeRawPointer(source + t).loadUnaligned(as: SIMD16<Float16>.self)), as: SIMD16<Float>.self)
                                t += 16
                            }
                            while t < blockSize { target[t] = Float(source[t]); t += 1 }
                        }
                    } else {
                        for d in 0..<D { (keysT + d * tile + j * blockSize).update(repeating: 0, count: blockSize) }
                    }
                }
                for tk in 0..<tile {
                    if tk < count {
                        let p = tileStart + tk
                        let slot = Int(blocks[p / blockSize]) * blockSize + p % blockSize
                        let vp = values + slot * kvStride + kvOffset
                        var d = 0
                        while d + 16 <= D {
                            UnsafeMutableRawPointer(tileValues + tk * D + d).storeBytes(
                                of: SIMD16<Float>(UnsafeRawPointer(vp + d).loadUnaligned(as: SIMD16<Float16>.self)), as: SIMD16<Float>.self)
                            d += 16
                        }
                        while d < D { tileValues[tk * D + d] = Float(vp[d]); d += 1 }
                    } else {
                        for d in 0..<D { tileValues[tk * D + d] = 0 }
                    }
                }
                for r in 0..<n {
                    let row = job.rows.lowerBound + r
                    let position = seq.start + (row - seq.rows.lowerBound)
                    let visible = position + 1 - tileStart, first = options.firstKey(position) - tileStart
                    if visible <= 0 || first >= min(visible, count) { continue }
                    for g in 0..<groups {
                        let qi = r * groups + g, head = job.kvHead * groups + g
                        attentionTileStep(query: q + (row * H + head) * D, keysT: keysT, values: tileValues, scores: scores,
                                          count: min(visible, count), first: first, accumulator: accumulators + qi * D, maximum: &maxima[qi],
                                          sum: &sums[qi], headDim: D, scale: scale, softcap: options.softcap)
                    }
                }
                tileStart += count
            }
        }
        if job.partitions > 1 {
            for g in 0..<groups {
                let partial = partials + j * partialStride + g * (D + 2)
                partial[0] = maxima[g]
                partial[1] = sums[g]
                for d in 0..<D { partial[2 + d] = accumulators[g * D + d] }
            }
        } else {
            for r in 0..<n {
                for g in 0..<groups {
                    let qi = r * groups + g
                    let inverse = sums[qi] == 0 ? 0 : 1 / sums[qi]
                    let o = out + ((job.rows.lowerBound + r) * H + job.kvHead * groups + g) * D
                    for d in 0..<D { o[d] = accumulators[qi * D + d] * inverse }
                }
            }
        }
    }
    for m in merges {
        for g in 0..<groups {
            func partial(_ p: Int) -> UnsafeMutablePointer<Float> { partials + (m.firstJob + p) * partialStride + g * (D + 2) }
            var total = -Float.infinity
            for p in 0..<m.partitions { total = max(total, partial(p)[0]) }
            let o = out + (m.row * H + m.kvHead * groups + g) * D
            for d in 0..<D { o[d] = 0 }
            var sum: Float = 0
            for p in 0..<m.partitions {
                let part = partial(p)
                guard part[1] > 0 else { continue }
                let w = expf(part[0] - total)
                sum += part[1] * w
                for d in 0..<D { o[d] += part[2 + d] * w }
            }
            let inverse = sum == 0 ? 0 : 1 / sum
            for d in 0..<D { o[d] *= inverse }
        }
    }
}

/// One query meets one tile of 64 keys (`keysT` [D, 64] transposed, `values` [64, D], keys
/// `first ..< count` visible): scores as sequential FMAs over D (soft-capped when `softcap` is set),
/// the tile maximum, the online rescale of the accumulator, the vectorised exp with the tile's sum
/// in double, and the weighted values in f32. Shared by the tiled prompt schedule and the paged kernel.
@inline(__always)
func attentionTileStep(query qv: UnsafePointer<Float>, keysT: UnsafePointer<Float>, values: UnsafePointer<Float>,
                           scores: UnsafeMutablePointer<Float>, count: Int, first: Int = 0, accumulator acc: UnsafeMutablePointer<Float>,
                           maximum: inout Float, sum: inout Float, headDim D: Int, scale: Float, softcap: Float? = nil) {
    let B = attentionTile, lanes = B / 16
    for lane in 0..<lanes {
        var a = SIMD16<Float>()
        for d in 0..<D {
            a.addProduct(SIMD16(repeating: qv[d]), UnsafeRawPointer(keysT + d * B + 16 * lane).loadUnaligned(as: SIMD16<Float>.self))
        }
        UnsafeMutableRawPointer(scores + 16 * lane).storeBytes(of: a * scale, as: SIMD16<Float>.self)
    }
    if let softcap {
        for tk in 0..<count { scores[tk] = softcap * tanhf(scores[tk] / softcap) }
    }
    var tileMax = -Float.infinity
    for tk in 0..<B {
        if tk >= count || tk < first { scores[tk] = -.infinity }
        tileMax = max(tileMax, scores[tk])
    }
    let newMax = max(maximum, tileMax)
    if newMax > maximum {
        let ms = expf(maximum - newMax)
        for d in 0..<D { acc[d] *= ms }
        sum *= ms
    }
    maximum = newMax
    // The exps eight at a time in C, bit-identical to `vectorExp` (masked scores give 0).
    _ = ember_exp_sum(scores, newMax, scores, B)
    var total = 0.0
    for lane in 0..<lanes { total += Double(horizontalSum(UnsafeRawPointer(scores + 16 * lane).loadUnaligned(as: SIMD16<Float>.self))) }
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
