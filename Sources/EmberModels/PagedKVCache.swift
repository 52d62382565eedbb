import Foundation
import EmberTensor

/// The KV cache of a serving engine: for each layer, keys and values for `blockCount` blocks of
/// `blockSize` positions, f16. Values are [slots, Hkv·D]; keys are transposed within each block,
/// [blocks, Hkv, D, blockSize], the layout `pagedAttentionForward` reads. Which blocks belong to which sequence is the block
/// manager's business; this only holds the data.
public final class PagedKVCache: @unchecked Sendable {
    public let blockCount: Int
    public let blockSize: Int
    public let kvDim: Int
    let keys: [UnsafeMutablePointer<Float16>]
    let values: [UnsafeMutablePointer<Float16>]

    public init(configuration: LlamaConfiguration, blockCount: Int, blockSize: Int) {
        self.blockCount = blockCount
        self.blockSize = blockSize
        kvDim = configuration.kvDim
        let size = blockCount * blockSize * kvDim
        keys = (0..<configuration.layerCount).map { _ in .allocate(capacity: size) }
        values = (0..<configuration.layerCount).map { _ in .allocate(capacity: size) }
        // Touch every page now, so the memory is really there before serving starts.
        for p in keys + values { p.initialize(repeating: 0, count: size) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Bytes per block over all layers (keys and values, f16).
    public static func bytesPerBlock(configuration: LlamaConfiguration, blockSize: Int) -> Int {
        2 * configuration.layerCount * blockSize * configuration.kvDim * MemoryLayout<Float16>.size
    }

    /// Copies block `source` onto block `destination` in every layer (copy-on-write).
    public func copyBlock(_ source: Int, to destination: Int) {
        let n = blockSize * kvDim
        for layer in keys.indices {
            (keys[layer] + destination * n).update(from: keys[layer] + source * n, count: n)
            (values[layer] + destination * n).update(from: values[layer] + source * n, count: n)
        }
    }

    func store(layer: Int, row: UnsafePointer<Float>, value: UnsafePointer<Float>, slot: Int) {
        let block = slot / blockSize, offset = slot % blockSize
        let k = keys[layer] + block * blockSize * kvDim + offset, v = values[layer] + slot * kvDim
        for i in 0..<kvDim {
            k[i * blockSize] = Float16(row[i])  // i = head · D + d
            v[i] = Float16(value[i])
        }
    }
}

extension Llama {
    /// Repacks the quantized weights for the integer products of `forward(batch:)` now (when this CPU
    /// runs them), so that the first request does not wait for it.
    public func prepareBatches() {
        guard WeightMatrix.integerProductsAvailable else { return }
        let w = weights
        let matrices = w.blocks.flatMap { [$0.query, $0.key, $0.value, $0.output, $0.up, $0.down] + ($0.gate.map { [$0] } ?? []) } + [w.output]
        ThreadPool.shared.parallelFor(matrices.count) { matrices[$0].preparePackedRows() }
    }

    /// Every position's logits for `tokens`, run as one batch from the start of a paged cache (a new
    /// one unless `cache` is given): the serving path's arithmetic, teacher-forced.
    public func allLogits(_ tokens: [Int], cache: PagedKVCache? = nil, adapter: InferenceAdapter? = nil, pool: ThreadPool = .shared) throws -> [[Float]] {
        let blockSize = cache?.blockSize ?? 16
        let blocks = (tokens.count + blockSize - 1) / blockSize
        let cache = cache ?? PagedKVCache(configuration: configuration, blockCount: blocks, blockSize: blockSize)
        guard blocks <= cache.blockCount else { throw ForwardError.contextFull(needed: tokens.count, capacity: cache.blockCount * blockSize) }
        let entry = BatchEntry(tokens: tokens, start: 0, blocks: Array(0..<blocks), wantsLogits: true, allLogits: true, adapter: adapter)
        return try forward(batch: [entry], cache: cache, pool: pool)
    }

    /// One sequence's share of a batched step: `tokens` at positions `start ..< start + tokens.count`,
    /// its block table, and whether the last token's logits are wanted (or, with `allLogits`, every
    /// token's: perplexity and scoring).
    public struct BatchEntry: Sendable {
        public var tokens: [Int]
        public var start: Int
        public var blocks: [Int]
        public var wantsLogits: Bool
        public var allLogits: Bool
        /// The LoRA adapter this sequence runs under (nil: the base).
        public var adapter: InferenceAdapter?
        public init(tokens: [Int], start: Int, blocks: [Int], wantsLogits: Bool, allLogits: Bool = false, adapter: InferenceAdapter? = nil) {
            self.tokens = tokens
            self.start = start
            self.blocks = blocks
            self.wantsLogits = wantsLogits
            self.allLogits = allLogits
            self.adapter = adapter
        }
    }

    /// Runs a ragged batch (sequences of different lengths and phases) as one pass: every weight
    /// matrix is read once for all rows; attention reads each sequence's keys and values through its
    /// block table. Returns the logits of the last token of each entry that wants them (of every token
    /// for an entry with `allLogits`), in order.
    public func forward(batch: [BatchEntry], cache: PagedKVCache, splitKeys: Int? = 2048, pool: ThreadPool = .shared) throws -> [[Float]] {
        let c = configuration
        let C = c.hiddenSize
        let T = batch.reduce(0) { $0 + $1.tokens.count }
        guard T > 0 else { return [] }
        var tokens: [Int] = [], positions: [Int32] = [], slots: [Int] = []
        var sequences: [PagedSequence] = []
        tokens.reserveCapacity(T)
        for e in batch {
            for id in e.tokens where id < 0 || id >= c.vocabularySize { throw ForwardError.tokenOutOfRange(id, vocabulary: c.vocabularySize) }
            guard (e.start + e.tokens.count + cache.blockSize - 1) / cache.blockSize <= e.blocks.count else {
                throw ForwardError.contextFull(needed: e.start + e.tokens.count, capacity: e.blocks.count * cache.blockSize)
            }
            sequences.append(PagedSequence(rows: tokens.count..<tokens.count + e.tokens.count, start: e.start, blocks: e.blocks.map { Int32($0) }))
            for (i, id) in e.tokens.enumerated() {
                let p = e.start + i
                tokens.append(id)
                positions.append(Int32(p))
                slots.append(e.blocks[p / cache.blockSize] * cache.blockSize + p % cache.blockSize)
            }
        }

        let integers = WeightMatrix.integerProductsAvailable
        // Neighbouring sequences under one adapter are one range: one pair of products for all of them.
        var adapters: [(adapter: InferenceAdapter, rows: Range<Int>)] = []
        for (e, s) in zip(batch, sequences) {
            guard let adapter = e.adapter else { continue }
            if let last = adapters.last, last.adapter === adapter, last.rows.upperBound == s.rows.lowerBound {
                adapters[adapters.count - 1].rows = last.rows.lowerBound..<s.rows.upperBound
            } else {
                adapters.append((adapter, s.rows))
            }
        }
        let x = transformer(tokens: tokens, positions: positions, integerProducts: integers, adapters: adapters, pool: pool) { layer, q, k, v, attention in
            for t in 0..<T { cache.store(layer: layer, row: k + t * c.kvDim, value: v + t * c.kvDim, slot: slots[t]) }
            pagedAttentionForward(q: q, keys: cache.keys[layer], values: cache.values[layer], out: attention,
                                  sequences: sequences, blockSize: cache.blockSize, heads: c.headCount, kvHeads: c.kvHeadCount,
                                  headDim: c.headDim, splitKeys: splitKeys, options: c.attentionOptions(layer: layer), pool: pool)
        }
        // Logits only for the rows that need them.
        let wanted = zip(batch, sequences).flatMap { entry, sequence in
            entry.allLogits ? Array(sequence.rows) : entry.wantsLogits ? [sequence.rows.upperBound - 1] : []
        }
        guard !wanted.isEmpty else { return [] }
        let selected = FloatBuffer(count: wanted.count * C), h = FloatBuffer(count: wanted.count * C)
        for (i, row) in wanted.enumerated() { (selected.pointer + i * C).update(from: x.pointer + row * C, count: C) }
        normalize(selected.pointer, weights.finalNorm, bias: weights.finalNormBias, into: h.pointer, rows: wanted.count, pool: pool)
        let V = c.vocabularySize
        let logits = [Float](unsafeUninitializedCapacity: wanted.count * V) { buffer, initialized in
            if integers {
                WeightMatrix.multiplyByIntegers(h.pointer, m: wanted.count, by: [(weights.output, buffer.baseAddress!)], pool: pool)
            } else {
                weights.output.multiply(h.pointer, buffer.baseAddress!, m: wanted.count, pool: pool)
            }
            capLogits(buffer.baseAddress!, count: wanted.count * V)
            initialized = wanted.count * V
        }
        return (0..<wanted.count).map { Array(logits[$0 * V..<($0 + 1) * V]) }
    }
}

extension Llama {
    /// The log-probability of each token of `tokens` after those before it (positions 1 ..< count),
    /// with the `top` most likely tokens at each: what OpenAI's `echo` with `logprobs` reports, and
    /// what a log-likelihood evaluation reads. The serving path's arithmetic, in chunks of `chunk`
    /// tokens on a cache of its own, so that only one chunk's logits are held at a time.
    public func promptLogprobs(_ tokens: [Int], top: Int, adapter: InferenceAdapter? = nil, chunk: Int = 64,
                               pool: ThreadPool = .shared) throws -> [TokenLogprob] {
        let blockSize = 16, blocks = max(1, (tokens.count + blockSize - 1) / blockSize)
        let cache = PagedKVCache(configuration: configuration, blockCount: blocks, blockSize: blockSize)
        var result: [TokenLogprob] = []
        var start = 0
        while start < tokens.count - 1 {
            let end = min(tokens.count - 1, start + chunk)  // the last token's logits predict nothing asked for
            let entry = BatchEntry(tokens: Array(tokens[start..<end]), start: start, blocks: Array(0..<blocks), wantsLogits: true,
                                   allLogits: true, adapter: adapter)
            for (i, row) in try forward(batch: [entry], cache: cache, pool: pool).enumerated() {
                result.append(Sampler.logprobs(row, chosen: tokens[start + i + 1], top: top))
            }
            start = end
        }
        return result
    }
}

/// A continuation's score after a context: what a multiple-choice evaluation compares.
public struct ContinuationScore: Sendable, Equatable {
    /// The sum of the continuation tokens' log-probabilities (natural log).
    public var logprob: Double
    /// Whether every continuation token is the most likely one where it stands.
    public var greedy: Bool
    public var tokens: Int
    public init(logprob: Double, greedy: Bool, tokens: Int) {
        self.logprob = logprob
        self.greedy = greedy
        self.tokens = tokens
    }
}

extension Llama {
    /// The log-likelihood of each of `continuations` after one `context` (token ids, neither
    /// empty): `continuationScores(questions:)` for one question.
    public func continuationScores(context: [Int], continuations: [[Int]], adapter: InferenceAdapter? = nil,
                                   pool: ThreadPool = .shared) throws -> [ContinuationScore] {
        try continuationScores(questions: [(context, continuations)], adapter: adapter, pool: pool)[0]
    }

    /// For each question, the log-likelihood of each of its continuations after its context: every
    /// context is computed once into a paged cache, then every continuation runs over its context's
    /// blocks (with its own copy of the context's partial last block), so a question's choices
    /// share its context's computation. The questions' contexts go through the model as one ragged
    /// batch, and all their continuations as another, in passes of at most `budget` tokens. When a
    /// context and its longest continuation exceed the model's length, the context loses tokens
    /// from its start.
    public func continuationScores(questions: [(context: [Int], continuations: [[Int]])], adapter: InferenceAdapter? = nil, budget: Int = 2048,
                                   pool: ThreadPool = .shared) throws -> [[ContinuationScore]] {
        precondition(questions.allSatisfy { !$0.context.isEmpty && !$0.continuations.isEmpty && $0.continuations.allSatisfy { !$0.isEmpty } },
                     "contexts and continuations of at least one token")
        let blockSize = 16
        // The block layout: each question's context blocks, then per continuation its own blocks.
        struct Layout { var context: [Int]; var contextBlocks: Range<Int>; var whole: Int; var perChoice: Int }
        var layouts: [Layout] = []
        var next = 0
        for q in questions {
            let longest = q.continuations.map(\.count).max()!
            let context = Array(q.context.suffix(max(1, configuration.maxPositionEmbeddings - longest + 1)))
            let n = context.count, blocks = (n + blockSize - 1) / blockSize
            let perChoice = (n % blockSize + longest + blockSize - 1) / blockSize
            layouts.append(Layout(context: context, contextBlocks: next..<next + blocks, whole: n / blockSize, perChoice: perChoice))
            next += blocks + q.continuations.count * perChoice
        }
        let cache = PagedKVCache(configuration: configuration, blockCount: next, blockSize: blockSize)
        /// Runs entries in passes of at most `budget` tokens (an entry longer than that alone,
        /// in pieces); the logits rows in entry order.
        func run(_ entries: [BatchEntry]) throws -> [[Float]] {
            var rows: [[Float]] = []
            var pending: [BatchEntry] = [], tokens = 0
            func flush() throws {
                if !pending.isEmpty { rows += try forward(batch: pending, cache: cache, pool: pool) }
                pending = []
                tokens = 0
            }
            for entry in entries {
                if entry.tokens.count > budget {
                    try flush()
                    var start = 0
                    while start < entry.tokens.count {
                        let end = min(entry.tokens.count, start + budget)
                        var piece = entry
                        piece.tokens = Array(entry.tokens[start..<end])
                        piece.start = entry.start + start
                        piece.wantsLogits = entry.wantsLogits && (entry.allLogits || end == entry.tokens.count)
                        rows += try forward(batch: [piece], cache: cache, pool: pool)
                        start = end
                    }
                    continue
                }
                if tokens + entry.tokens.count > budget { try flush() }
                pending.append(entry)
                tokens += entry.tokens.count
            }
            try flush()
            return rows
        }
        // Contexts: the last position's logits predict each continuation's first token.
        let last = try run(layouts.map { l in
            BatchEntry(tokens: l.context, start: 0, blocks: Array(l.contextBlocks), wantsLogits: true, adapter: adapter)
        })
        var entries: [BatchEntry] = []
        for (q, l) in zip(questions, layouts) {
            for (i, continuation) in q.continuations.enumerated() where continuation.count > 1 {
                let own = l.contextBlocks.upperBound + i * l.perChoice
                if l.context.count % blockSize != 0 { cache.copyBlock(l.contextBlocks.lowerBound + l.whole, to: own) }
                entries.append(BatchEntry(tokens: Array(continuation.dropLast()), start: l.context.count,
                                          blocks: Array(l.contextBlocks.prefix(l.whole)) + Array(own..<own + l.perChoice),
                                          wantsLogits: true, allLogits: true, adapter: adapter))
            }
        }
        var rows = try run(entries)[...]
        return zip(questions, last).map { q, first in
            q.continuations.map { continuation in
                var score = ContinuationScore(logprob: 0, greedy: true, tokens: continuation.count)
                for (j, token) in continuation.enumerated() {
                    let (logprob, isMax) = Self.logSoftmax(j == 0 ? first : rows.popFirst()!, at: token)
                    score.logprob += logprob
                    score.greedy = score.greedy && isMax
                }
                return score
            }
        }
    }

    /// log softmax(row)[token] in double precision, and whether `token` is the row's maximum.
    static func logSoftmax(_ row: [Float], at token: Int) -> (Double, Bool) {
        let top = row.max()!
        var sum = 0.0
        for x in row { sum += exp(Double(x - top)) }
        return (Double(row[token] - top) - log(sum), row[token] == top)
    }
}
