import EmberTensor
import Foundation

/// How a command computes.
public enum Arithmetic: String, Sendable, CaseIterable {
    /// What `ember serve` runs: one batch over a paged KV cache, integer products of 8-bit
    /// activations on CPUs that have them (see `KernelTier`), each query's attention on a fixed grid
    /// of key tiles. Its logits differ from llama.cpp's by rounding.
    case fast
    /// llama.cpp's CPU arithmetic, reproduced operation by operation: logits equal to llama.cpp's
    /// to the last printed digit, at 0.6–0.8× llama.cpp's speed.
    case llamaCppExact = "llama-cpp-exact"
}

/// LLaMA-family inference: token ids in, logits out, with a KV cache for incremental decoding.
///
/// One `forward` call processes T new tokens at positions `cache.count ..< cache.count + T`:
///
///     x = embed(tokens)                                   [T, C]
///     for each block:
///         h = rmsnorm(x) ; q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ   [T, H·D], [T, Hkv·D]
///         rope(q, k) ; cache ← k, v
///         x += attention(q, cache, causal) · Woᵀ
///         h = rmsnorm(x) ; x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ) · Wdᵀ
///     logits = rmsnorm(x) · Woutᵀ                        [T, V]
///
/// The other families (Qwen, Phi-3, GLM-4, Gemma-2, GPT-2) run the same pass with the variations
/// their `ModelFamily` traits and weights turn on: biases, q/k norms, post-sublayer norms, GeGLU or
/// a plain GELU MLP, LayerNorm, learned positions, soft-capping and sliding windows.
public final class Llama: @unchecked Sendable {
    public let configuration: LlamaConfiguration
    public let weights: LlamaWeights
    public let rope: RopeParameters

    public init(configuration: LlamaConfiguration, weights: LlamaWeights) {
        self.configuration = configuration
        self.weights = weights
        rope = RopeParameters(dimensions: configuration.ropeDimensions, base: configuration.ropeTheta,
                              linearScale: configuration.ropeLinearScale, mode: weights.ropeMode,
                              frequencyFactors: configuration.ropeFrequencyFactors)
    }

    public func makeCache(capacity: Int? = nil) -> KVCache {
        KVCache(configuration: configuration, capacity: capacity ?? configuration.maxPositionEmbeddings)
    }

    /// Which positions' logits `forward` returns.
    public enum Outputs: Sendable { case last, all }

    public enum ForwardError: Error, CustomStringConvertible {
        case contextFull(needed: Int, capacity: Int)
        case tokenOutOfRange(Int, vocabulary: Int)

        public var description: String {
            switch self {
            case .contextFull(let needed, let capacity):
                "the sequence needs \(needed) positions but the context holds \(capacity)"
            case .tokenOutOfRange(let id, let vocabulary):
                "token id \(id) is outside the vocabulary (0..<\(vocabulary))"
            }
        }
    }

    /// Runs `tokens` through the model, appending them to `cache`, and returns logits
    /// [1, V] (`.last`) or [T, V] (`.all`) as a flat array.
    public func forward(_ tokens: [Int], cache: KVCache, outputs: Outputs = .last, adapter: InferenceAdapter? = nil, pool: ThreadPool = .shared) throws -> [Float] {
        let c = configuration
        let T = tokens.count, C = c.hiddenSize, start = cache.count
        guard T > 0 else { return [] }
        guard start + T <= cache.capacity else { throw ForwardError.contextFull(needed: start + T, capacity: cache.capacity) }
        for id in tokens where id < 0 || id >= c.vocabularySize { throw ForwardError.tokenOutOfRange(id, vocabulary: c.vocabularySize) }

        let positions = (0..<T).map { Int32(start + $0) }
        let x = transformer(tokens: tokens, positions: positions, adapters: adapter.map { [($0, 0..<T)] } ?? [], pool: pool) { layer, q, k, v, attention in
            cache.store(layer: layer, keys: k, values: v, at: start, count: T)
            cachedAttentionForward(q: q, k: cache.keys[layer], v: cache.values[layer], out: attention,
                                   tokens: T, offset: start, heads: c.headCount, kvHeads: c.kvHeadCount,
                                   headDim: c.headDim, options: c.attentionOptions(layer: layer), pool: pool)
        }
        cache.count = start + T

        let first = outputs == .last ? T - 1 : 0
        let rows = T - first
        let h = FloatBuffer(count: rows * C)
        normalize(x.pointer + first * C, weights.finalNorm, bias: weights.finalNormBias, into: h.pointer, rows: rows, pool: pool)
        return [Float](unsafeUninitializedCapacity: rows * c.vocabularySize) { buffer, initialized in
            weights.output.multiply(h.pointer, buffer.baseAddress!, m: rows, pool: pool)
            capLogits(buffer.baseAddress!, count: rows * c.vocabularySize)
            initialized = rows * c.vocabularySize
        }
    }

    /// Gemma-2's final soft-capping, cap · tanh(logit / cap), in place (nothing for other models).
    func capLogits(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        guard let cap = configuration.finalSoftcap else { return }
        for i in 0..<count { logits[i] = cap * tanhf(logits[i] / cap) }
    }

    public enum ScoreError: Error, CustomStringConvertible {
        case noScoreHead
        public var description: String { "this model has no score head (a reward model is a LlamaForSequenceClassification of one label)" }
    }

    /// A reward model's scores of `tokens` (one sequence, from position 0): the score head on the
    /// final hidden state of the last token that is not the pad token (`.last`, the sequence's
    /// reward, read where transformers reads it) or of every token (`.all`, a value model's values).
    public func scores(_ tokens: [Int], outputs: Outputs = .last, pool: ThreadPool = .shared) throws -> [Float] {
        guard let score = weights.score else { throw ScoreError.noScoreHead }
        let c = configuration, T = tokens.count, C = c.hiddenSize
        guard T > 0 else { return [] }
        guard T <= c.maxPositionEmbeddings else { throw ForwardError.contextFull(needed: T, capacity: c.maxPositionEmbeddings) }
        let cache = makeCache(capacity: T)
        for id in tokens where id < 0 || id >= c.vocabularySize { throw ForwardError.tokenOutOfRange(id, vocabulary: c.vocabularySize) }
        let x = transformer(tokens: tokens, positions: (0..<T).map(Int32.init), pool: pool) { layer, q, k, v, attention in
            cache.store(layer: layer, keys: k, values: v, at: 0, count: T)
            cachedAttentionForward(q: q, k: cache.keys[layer], v: cache.values[layer], out: attention, tokens: T, offset: 0, heads: c.headCount,
                                   kvHeads: c.kvHeadCount, headDim: c.headDim, options: c.attentionOptions(layer: layer), pool: pool)
        }
        let last = c.padTokenID.flatMap { pad in tokens.lastIndex { $0 != pad } } ?? T - 1
        let first = outputs == .last ? last : 0, rows = outputs == .last ? 1 : T
        let h = FloatBuffer(count: rows * C), out = FloatBuffer(count: rows)
        normalize(x.pointer + first * C, weights.finalNorm, bias: weights.finalNormBias, into: h.pointer, rows: rows, pool: pool)
        score.multiply(h.pointer, out.pointer, m: rows, pool: pool)
        return Array(UnsafeBufferPointer(start: out.pointer, count: rows))
    }

    /// Embeds `tokens` and runs every block over them at `positions`; `attend(layer, q, k, v, out)`
    /// stores the new keys and values wherever the caller keeps them and writes the attention
    /// output [T, H·D]. Returns the final hidden states [T, C].
    ///
    /// `adapters` adds each LoRA adapter's update to the products of its rows (the others run on the base).
    func transformer(tokens: [Int], positions: [Int32], integerProducts: Bool = false, adapters: [(adapter: InferenceAdapter, rows: Range<Int>)] = [],
                     pool: ThreadPool,
                     attend: (_ layer: Int, _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
                              _ out: UnsafeMutablePointer<Float>) -> Void) -> FloatBuffer {
        let c = configuration
        let T = tokens.count, C = c.hiddenSize
        let x = FloatBuffer(count: T * C), h = FloatBuffer(count: T * C)
        let q = FloatBuffer(count: T * c.queryDim), k = FloatBuffer(count: T * c.kvDim), v = FloatBuffer(count: T * c.kvDim)
        let attention = FloatBuffer(count: T * c.queryDim)
        let gate = FloatBuffer(count: T * c.intermediateSize), up = FloatBuffer(count: T * c.intermediateSize)
        func multiply(_ x: UnsafePointer<Float>, _ products: [(weight: WeightMatrix, output: UnsafeMutablePointer<Float>)]) {
            if integerProducts {
                WeightMatrix.multiplyByIntegers(x, m: T, by: products, pool: pool)
            } else {
                WeightMatrix.multiply(x, m: T, by: products, pool: pool)
            }
        }
        func adapt(_ layer: Int, _ x: UnsafePointer<Float>, _ products: [(LoRATarget, UnsafeMutablePointer<Float>)]) {
            for (adapter, rows) in adapters {
                for (target, y) in products { adapter.apply(layer: layer, target, x: x, y: y, rows: rows, pool: pool) }
            }
        }

        pool.parallelRanges(T) { rows in
            for t in rows { weights.embedding.dequantizeRow(tokens[t], into: x.pointer + t * C) }
        }
        if c.family.scalesEmbeddings {
            let scale = Float(C).squareRoot()
            for i in 0..<T * C { x.pointer[i] *= scale }
        }
        if let table = weights.positionEmbedding {
            for t in 0..<T {
                table.dequantizeRow(Int(positions[t]), into: h.pointer)
                add(h.pointer, into: x.pointer + t * C, C)
            }
        }
        for (layer, block) in weights.blocks.enumerated() {
            normalize(x.pointer, block.attentionNorm, bias: block.attentionNormBias, into: h.pointer, rows: T, pool: pool)
            multiply(h.pointer, [(block.query, q.pointer), (block.key, k.pointer), (block.value, v.pointer)])
            adapt(layer, h.pointer, [(.query, q.pointer), (.key, k.pointer), (.value, v.pointer)])
            for (bias, y) in [(block.queryBias, q.pointer), (block.keyBias, k.pointer), (block.valueBias, v.pointer)] {
                guard let bias else { continue }
                addRows(bias, into: y, rows: T, pool: pool)
            }
            if let queryNorm = block.queryNorm, let keyNorm = block.keyNorm {
                normalizeHeads(q.pointer, queryNorm, rows: T * c.headCount, pool: pool)
                normalizeHeads(k.pointer, keyNorm, rows: T * c.kvHeadCount, pool: pool)
            }
            if !c.family.learnsPositions {
                positions.withUnsafeBufferPointer { p in
                    pool.parallelRanges(T) { rows in
                        ropeForward(q.pointer + rows.lowerBound * c.queryDim, positions: p.baseAddress! + rows.lowerBound,
                                    tokens: rows.count, heads: c.headCount, headDim: c.headDim, parameters: rope)
                        ropeForward(k.pointer + rows.lowerBound * c.kvDim, positions: p.baseAddress! + rows.lowerBound,
                                    tokens: rows.count, heads: c.kvHeadCount, headDim: c.headDim, parameters: rope)
                    }
                }
            }
            attend(layer, q.pointer, k.pointer, v.pointer, attention.pointer)
            multiply(attention.pointer, [(block.output, h.pointer)])
            adapt(layer, attention.pointer, [(.output, h.pointer)])
            if let bias = block.outputBias { addRows(bias, into: h.pointer, rows: T, pool: pool) }
            if let norm = block.postAttentionNorm { normalize(h.pointer, norm, into: h.pointer, rows: T, pool: pool) }
            add(h.pointer, into: x.pointer, T * C)

            normalize(x.pointer, block.feedForwardNorm, bias: block.feedForwardNormBias, into: h.pointer, rows: T, pool: pool)
            let I = c.intermediateSize
            // The MLP's hidden activations end up in `gate` (gated: act(gate) · up; plain: act(up)).
            if let gateWeight = block.gate {
                multiply(h.pointer, [(gateWeight, gate.pointer), (block.up, up.pointer)])
                adapt(layer, h.pointer, [(.gate, gate.pointer), (.up, up.pointer)])
            } else {
                multiply(h.pointer, [(block.up, gate.pointer)])
                adapt(layer, h.pointer, [(.up, gate.pointer)])
                if let bias = block.upBias { addRows(bias, into: gate.pointer, rows: T, pool: pool) }
            }
            let gated = block.gate != nil
            pool.parallelRanges(T * I, minimumChunk: 4096) { r in
                if c.family.activatesWithGELU {  // GELU, tanh form (gelu_pytorch_tanh, gelu_new)
                    geluForward(gate.pointer + r.lowerBound, out: gate.pointer + r.lowerBound, count: r.count)
                    if gated { for i in r { gate.pointer[i] *= up.pointer[i] } }
                } else {
                    swigluForward(gate: gate.pointer + r.lowerBound, up: up.pointer + r.lowerBound, out: gate.pointer + r.lowerBound, count: r.count)
                }
            }
            multiply(gate.pointer, [(block.down, h.pointer)])
            adapt(layer, gate.pointer, [(.down, h.pointer)])
            if let bias = block.downBias { addRows(bias, into: h.pointer, rows: T, pool: pool) }
            if let norm = block.postFeedForwardNorm { normalize(h.pointer, norm, into: h.pointer, rows: T, pool: pool) }
            add(h.pointer, into: x.pointer, T * C)
        }
        return x
    }

    /// y[r] += bias for each of `rows` rows of bias.count values.
    func addRows(_ bias: [Float], into y: UnsafeMutablePointer<Float>, rows: Int, pool: ThreadPool) {
        let n = bias.count
        bias.withUnsafeBufferPointer { b in
            pool.parallelRanges(rows) { r in
                for t in r { add(b.baseAddress!, into: y + t * n, n) }
            }
        }
    }

    /// RMSNorm in place over each head of `rows` heads (Qwen3's q and k norms).
    func normalizeHeads(_ x: UnsafeMutablePointer<Float>, _ weight: [Float], rows: Int, pool: ThreadPool) {
        let D = configuration.headDim, eps = configuration.rmsNormEpsilon
        weight.withUnsafeBufferPointer { w in
            pool.parallelRanges(rows) { r in
                rmsNormForward(x + r.lowerBound * D, weight: w.baseAddress!, out: x + r.lowerBound * D, rows: r.count, dim: D, epsilon: eps)
            }
        }
    }

    /// RMSNorm, or LayerNorm with `bias` for the families that use it, over rows of the hidden size.
    func normalize(_ x: UnsafePointer<Float>, _ weight: [Float], bias: [Float]? = nil, into out: UnsafeMutablePointer<Float>, rows: Int, pool: ThreadPool) {
        let C = configuration.hiddenSize, eps = configuration.rmsNormEpsilon
        weight.withUnsafeBufferPointer { w in
            (bias ?? []).withUnsafeBufferPointer { b in
                pool.parallelRanges(rows) { r in
                    if configuration.family.usesLayerNorm, let bias = b.baseAddress {
                        layerNormForward(x + r.lowerBound * C, weight: w.baseAddress!, bias: bias, out: out + r.lowerBound * C, rows: r.count, dim: C, epsilon: eps)
                    } else {
                        rmsNormForward(x + r.lowerBound * C, weight: w.baseAddress!, out: out + r.lowerBound * C, rows: r.count, dim: C, epsilon: eps)
                    }
                }
            }
        }
    }
}
