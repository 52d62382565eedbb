import EmberFormats
import EmberTensor
import EmberTokenizers
import Foundation

/// A BERT encoder with sentence-transformers' pooling: what turns texts into embeddings
/// (all-MiniLM-L6-v2 and its kin).
///
/// The folder is a sentence-transformers model: `config.json` (`model_type` bert), `model.safetensors`
/// (`BertModel`'s tensors, with or without a `bert.` prefix), `tokenizer.json` (WordPiece), and
/// optionally `modules.json` (a `Normalize` module turns normalisation on), `1_Pooling/config.json`
/// (`pooling_mode_mean_tokens`, `_cls_token` or `_max_tokens`) and `sentence_bert_config.json`
/// (`max_seq_length`, where inputs are cut). Without the pooling files the embedding is the mean of
/// the token states, not normalised, and inputs are cut at the position table's length.
///
/// The forward is BERT's post-norm block: x = LN(x + Attention(x)); x = LN(x + FFN(x)), with GELU
/// (erf) in the FFN, biases on every product, learned absolute positions and token type 0.
/// Sequences of a batch are laid end to end (no padding): the products run once over all their
/// tokens, and each sequence attends only to itself.
public final class SentenceEncoder: @unchecked Sendable {
    public struct Configuration: Sendable {
        public let hiddenSize: Int
        public let intermediateSize: Int
        public let layerCount: Int
        public let headCount: Int
        public let vocabularySize: Int
        public let maxPositions: Int
        public let layerNormEpsilon: Float
    }

    public enum Pooling: String, Sendable {
        case mean, cls, max
    }

    struct Linear {
        let weight: WeightMatrix
        let bias: [Float]
    }

    struct Norm {
        let weight: [Float]
        let bias: [Float]
    }

    struct Layer {
        let query: Linear, key: Linear, value: Linear, output: Linear
        let attentionNorm: Norm
        let intermediate: Linear, down: Linear
        let outputNorm: Norm
    }

    public let path: String
    public let configuration: Configuration
    public let tokenizer: any Tokenizer
    public let pooling: Pooling
    public let normalize: Bool
    /// Token count (with [CLS] and [SEP]) at which inputs are cut.
    public let maxSequenceLength: Int
    let wordEmbeddings: WeightMatrix
    let positionEmbeddings: WeightMatrix
    let tokenTypeEmbedding: [Float]
    let embeddingNorm: Norm
    let layers: [Layer]
    let classToken: Int
    let separatorToken: Int

    /// Whether `path` holds a BERT encoder: a folder whose config.json says `model_type` bert, or a
    /// GGUF file of architecture bert.
    public static func isEncoder(path: String) -> Bool {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return false }
        if !isDirectory.boolValue { return (try? GGUFFile(path: path))?.string("general.architecture") == "bert" }
        guard let data = FileManager.default.contents(atPath: path + "/config.json"),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return false }
        return object["model_type"] as? String == "bert"
    }

    /// What a loader reads from a folder or a GGUF file.
    struct Parts {
        var configuration: Configuration
        var tokenizer: any Tokenizer
        var classToken: Int, separatorToken: Int
        var pooling: Pooling, normalize: Bool, maxSequenceLength: Int
        var typeVocabularySize: Int
        var source: TensorSource
        /// The file's name of each tensor (Hugging Face's name without a prefix).
        var name: (String) -> String
    }

    /// A sentence-transformers folder, or a GGUF `bert` file (as llama.cpp's convert_hf_to_gguf.py
    /// writes it: pooling from `bert.pooling_type`, normalised as llama.cpp's embeddings are, inputs
    /// cut at the context length).
    /// - Parameter prefetch: read every page of the weights' files now (see `LoadedModel.load`).
    public convenience init(path: String, prefetch: Bool = false) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw FormatError("\(path): no such file or directory") }
        let parts = isDirectory.boolValue ? try Self.folder(path) : try Self.gguf(path)
        if prefetch { parts.source.files.forEach { $0.prefetch() } }
        try self.init(path: path, parts: parts)
    }

    init(path: String, parts p: Parts) throws {
        self.path = path
        let c = p.configuration
        guard c.hiddenSize > 0, c.headCount > 0, c.hiddenSize % c.headCount == 0, c.layerCount > 0, c.intermediateSize > 0,
              c.vocabularySize > 0, c.maxPositions > 0 else {
            throw FormatError("\(path): hidden size \(c.hiddenSize) is not a multiple of the head count \(c.headCount), or a size is not positive")
        }
        guard p.tokenizer.vocabularySize <= c.vocabularySize else {
            throw FormatError("\(path): the tokenizer has \(p.tokenizer.vocabularySize) tokens but the model \(c.vocabularySize)")
        }
        configuration = c
        tokenizer = p.tokenizer
        classToken = p.classToken
        separatorToken = p.separatorToken
        pooling = p.pooling
        normalize = p.normalize
        maxSequenceLength = min(p.maxSequenceLength, c.maxPositions)
        func matrix(_ name: String, _ rows: Int, _ columns: Int) throws -> WeightMatrix {
            try p.source.matrix(p.name(name), rows: rows, columns: columns)
        }
        func vector(_ name: String, _ count: Int) throws -> [Float] { try p.source.vector(p.name(name), count: count) }
        func linear(_ name: String, _ rows: Int, _ columns: Int) throws -> Linear {
            Linear(weight: try matrix(name + ".weight", rows, columns), bias: try vector(name + ".bias", rows))
        }
        func norm(_ name: String) throws -> Norm {
            Norm(weight: try vector(name + ".weight", c.hiddenSize), bias: try vector(name + ".bias", c.hiddenSize))
        }
        let C = c.hiddenSize, F = c.intermediateSize
        wordEmbeddings = try matrix("embeddings.word_embeddings.weight", c.vocabularySize, C)
        positionEmbeddings = try matrix("embeddings.position_embeddings.weight", c.maxPositions, C)
        let types = try matrix("embeddings.token_type_embeddings.weight", p.typeVocabularySize, C)
        var typeZero = [Float](repeating: 0, count: C)
        types.dequantizeRow(0, into: &typeZero)
        tokenTypeEmbedding = typeZero
        embeddingNorm = try norm("embeddings.LayerNorm")
        layers = try (0..<c.layerCount).map { i in
            let l = "encoder.layer.\(i)."
            return Layer(query: try linear(l + "attention.self.query", C, C), key: try linear(l + "attention.self.key", C, C),
                         value: try linear(l + "attention.self.value", C, C), output: try linear(l + "attention.output.dense", C, C),
                         attentionNorm: try norm(l + "attention.output.LayerNorm"),
                         intermediate: try linear(l + "intermediate.dense", F, C), down: try linear(l + "output.dense", C, F),
                         outputNorm: try norm(l + "output.LayerNorm"))
        }
    }

    static func folder(_ path: String) throws -> Parts {
        func json(_ name: String) throws -> [String: Any]? {
            let file = path + "/" + name
            guard let data = FileManager.default.contents(atPath: file) else { return nil }
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw FormatError("\(file): not a JSON object") }
            return object
        }
        guard let config = try json("config.json") else { throw FormatError("\(path): no config.json in the model directory") }
        func int(_ key: String) throws -> Int {
            guard let value = config[key] as? Int else { throw FormatError("\(path)/config.json: missing field \(key)") }
            return value
        }
        guard config["model_type"] as? String == "bert" else {
            throw FormatError("\(path)/config.json: model_type \(config["model_type"] ?? "(none)") is not bert")
        }
        if let activation = config["hidden_act"] as? String, activation != "gelu" {
            throw FormatError("\(path)/config.json: hidden_act \(activation) is not supported (gelu is)")
        }
        if let embedding = config["position_embedding_type"] as? String, embedding != "absolute" {
            throw FormatError("\(path)/config.json: position_embedding_type \(embedding) is not supported (absolute is)")
        }
        let c = Configuration(hiddenSize: try int("hidden_size"), intermediateSize: try int("intermediate_size"),
                              layerCount: try int("num_hidden_layers"), headCount: try int("num_attention_heads"),
                              vocabularySize: try int("vocab_size"), maxPositions: try int("max_position_embeddings"),
                              layerNormEpsilon: Float((config["layer_norm_eps"] as? Double) ?? 1e-12))

        // sentence-transformers' modules: pooling, normalisation and the length cut.
        var pooling = Pooling.mean
        if let options = try json("1_Pooling/config.json") {
            if options["pooling_mode_cls_token"] as? Bool == true { pooling = .cls }
            else if options["pooling_mode_max_tokens"] as? Bool == true { pooling = .max }
            else if options["pooling_mode_mean_tokens"] as? Bool != true {
                throw FormatError("\(path)/1_Pooling/config.json: no pooling mode Ember runs (mean, cls or max tokens)")
            }
        }
        var normalize = false
        if let data = FileManager.default.contents(atPath: path + "/modules.json") {
            guard let modules = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
                throw FormatError("\(path)/modules.json: not a list of modules")
            }
            normalize = modules.contains { ($0["type"] as? String)?.hasSuffix(".Normalize") == true }
        }
        let tokenizerPath = path + "/tokenizer.json"
        guard FileManager.default.fileExists(atPath: tokenizerPath) else { throw FormatError("\(path): no tokenizer.json in the model directory") }
        let tokenizer = try TokenizerJSON.load(path: tokenizerPath)
        guard let cls = tokenizer.id(of: "[CLS]"), let sep = tokenizer.id(of: "[SEP]") else {
            throw FormatError("\(tokenizerPath): no [CLS] or [SEP] token")
        }
        let source = SafetensorsTensorSource(collection: try SafetensorsCollection(directory: path), path: path)
        let prefix = source.contains("bert.embeddings.word_embeddings.weight") ? "bert." : ""
        return Parts(configuration: c, tokenizer: tokenizer, classToken: cls, separatorToken: sep, pooling: pooling, normalize: normalize,
                     maxSequenceLength: (try json("sentence_bert_config.json"))?["max_seq_length"] as? Int ?? c.maxPositions,
                     typeVocabularySize: (config["type_vocab_size"] as? Int) ?? 2, source: source, name: { prefix + $0 })
    }

    static func gguf(_ path: String) throws -> Parts {
        let gguf = try GGUFFile(path: path)
        guard let architecture = gguf.string("general.architecture") else { throw FormatError("\(path): metadata general.architecture is missing") }
        guard architecture == "bert" else { throw FormatError("\(path): architecture \(architecture) is not an encoder Ember embeds with (bert is)") }
        guard let embeddings = gguf.tensorInfo(named: "token_embd.weight"), embeddings.extents.count == 2 else {
            throw FormatError("\(path): tensor token_embd.weight is missing")
        }
        let c = Configuration(hiddenSize: try gguf.requireInt("bert.embedding_length"), intermediateSize: try gguf.requireInt("bert.feed_forward_length"),
                              layerCount: try gguf.requireInt("bert.block_count"), headCount: try gguf.requireInt("bert.attention.head_count"),
                              vocabularySize: embeddings.extents[1], maxPositions: try gguf.requireInt("bert.context_length"),
                              layerNormEpsilon: gguf.float("bert.attention.layer_norm_epsilon") ?? 1e-12)
        // llama.cpp's pooling types: 0 none, 1 mean, 2 cls, 3 last, 4 rank.
        let pooling: Pooling
        switch gguf.int("bert.pooling_type") ?? 1 {
        case 1: pooling = .mean
        case 2: pooling = .cls
        case let other: throw FormatError("\(path): bert.pooling_type \(other) is not a pooling Ember runs (1 mean, 2 cls)")
        }
        let tokenizer = try GGUFTokenizer.load(gguf)
        guard let cls = gguf.int("tokenizer.ggml.bos_token_id") ?? tokenizer.id(of: "[CLS]"),
              let sep = gguf.int("tokenizer.ggml.seperator_token_id") ?? gguf.int("tokenizer.ggml.eos_token_id") ?? tokenizer.id(of: "[SEP]") else {
            throw FormatError("\(path): no [CLS] or [SEP] token id in the metadata")
        }
        let types = gguf.tensorInfo(named: "token_types.weight")?.extents.last ?? 2
        return Parts(configuration: c, tokenizer: tokenizer, classToken: cls, separatorToken: sep, pooling: pooling, normalize: true,
                     maxSequenceLength: c.maxPositions, typeVocabularySize: types, source: GGUFTensorSource(gguf: gguf), name: Self.ggufName)
    }

    /// llama.cpp's name of a BERT tensor given by its Hugging Face name.
    static func ggufName(_ name: String) -> String {
        let whole = ["embeddings.word_embeddings.weight": "token_embd.weight", "embeddings.position_embeddings.weight": "position_embd.weight",
                     "embeddings.token_type_embeddings.weight": "token_types.weight", "embeddings.LayerNorm.weight": "token_embd_norm.weight",
                     "embeddings.LayerNorm.bias": "token_embd_norm.bias"]
        if let n = whole[name] { return n }
        let parts = name.split(separator: ".")  // encoder.layer.I.<module...>.weight|bias
        guard parts.count >= 5, parts[0] == "encoder", parts[1] == "layer" else { return name }
        let module = parts[3..<(parts.count - 1)].joined(separator: ".")
        let modules = ["attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
                       "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
                       "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm"]
        return "blk.\(parts[2]).\(modules[module] ?? module).\(parts.last!)"
    }

    /// The embedding size.
    public var dimensions: Int { configuration.hiddenSize }

    /// [CLS] + the text's tokens + [SEP], cut at `maxSequenceLength` as sentence-transformers cuts.
    public func tokens(_ text: String) -> [Int] {
        sequence(tokenizer.encode(text, parseSpecial: false))
    }

    /// [CLS] + `ids` + [SEP], cut at `maxSequenceLength`.
    public func sequence(_ ids: [Int]) -> [Int] {
        [classToken] + ids.prefix(max(0, maxSequenceLength - 2)) + [separatorToken]
    }

    /// The embeddings of whole sequences (as `tokens` makes them), each `dimensions` long.
    public func embed(sequences: [[Int]], pool: ThreadPool = .shared) throws -> [[Float]] {
        for (i, s) in sequences.enumerated() {
            guard !s.isEmpty, s.count <= configuration.maxPositions else {
                throw FormatError("input \(i) has \(s.count) tokens; the model takes 1 to \(configuration.maxPositions)")
            }
            if let bad = s.first(where: { $0 < 0 || $0 >= configuration.vocabularySize }) {
                throw FormatError("input \(i) has token id \(bad), outside the vocabulary of \(configuration.vocabularySize)")
            }
        }
        let states = hiddenStates(sequences, pool: pool)
        let C = configuration.hiddenSize
        var start = 0
        return sequences.map { s in
            defer { start += s.count }
            let rows = states.pointer + start * C
            var e = [Float](repeating: pooling == .max ? -.infinity : 0, count: C)
            switch pooling {
            case .cls:
                for i in 0..<C { e[i] = rows[i] }
            case .max:
                for t in 0..<s.count { for i in 0..<C { e[i] = max(e[i], rows[t * C + i]) } }
            case .mean:
                var sums = [Double](repeating: 0, count: C)
                for t in 0..<s.count { for i in 0..<C { sums[i] += Double(rows[t * C + i]) } }
                for i in 0..<C { e[i] = Float(sums[i] / Double(s.count)) }
            }
            if normalize {
                let norm = e.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot()
                let scale = Float(1 / max(norm, 1e-12))  // torch.nn.functional.normalize's eps
                for i in 0..<C { e[i] *= scale }
            }
            return e
        }
    }

    /// The last layer's states of every token of every sequence, end to end: [Σ lengths, hidden].
    func hiddenStates(_ sequences: [[Int]], pool: ThreadPool) -> FloatBuffer {
        let c = configuration, C = c.hiddenSize, T = sequences.reduce(0) { $0 + $1.count }
        let x = FloatBuffer(count: T * C), y = FloatBuffer(count: T * C)
        let q = FloatBuffer(count: T * C), k = FloatBuffer(count: T * C), v = FloatBuffer(count: T * C), context = FloatBuffer(count: T * C)
        let hidden = FloatBuffer(count: T * c.intermediateSize)
        var row = 0
        for s in sequences {
            for (position, id) in s.enumerated() {
                let out = x.pointer + row * C
                wordEmbeddings.dequantizeRow(id, into: out)
                positionEmbeddings.dequantizeRow(position, into: y.pointer)
                for i in 0..<C { out[i] = out[i] + y.pointer[i] + tokenTypeEmbedding[i] }
                row += 1
            }
        }
        layerNorm(x.pointer, embeddingNorm, rows: T)
        func apply(_ l: Linear, _ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>) {
            if l.weight.type == .f32 {
                // Split by rows of the batch: each thread packs the weight once.
                matmulLarge(input, l.weight.data.assumingMemoryBound(to: Float.self), output, m: T, n: l.weight.rows, k: l.weight.columns, pool: pool)
            } else {
                l.weight.multiply(input, output, m: T, pool: pool)
            }
            let n = l.weight.rows
            pool.parallelRanges(T) { rows in
                for t in rows { for j in 0..<n { output[t * n + j] += l.bias[j] } }
            }
        }
        var starts = [0]
        for s in sequences { starts.append(starts.last! + s.count) }
        for layer in layers {
            apply(layer.query, x.pointer, q.pointer)
            apply(layer.key, x.pointer, k.pointer)
            apply(layer.value, x.pointer, v.pointer)
            attend(q.pointer, k.pointer, v.pointer, into: context.pointer, starts: starts, pool: pool)
            apply(layer.output, context.pointer, y.pointer)
            for i in 0..<T * C { x.pointer[i] += y.pointer[i] }
            layerNorm(x.pointer, layer.attentionNorm, rows: T)
            apply(layer.intermediate, x.pointer, hidden.pointer)
            let n = T * c.intermediateSize
            pool.parallelRanges(n, minimumChunk: 4096) { range in
                for i in range {
                    let h = hidden.pointer[i]
                    hidden.pointer[i] = 0.5 * h * (1 + erff(h * 0.70710678118654752))
                }
            }
            apply(layer.down, hidden.pointer, y.pointer)
            for i in 0..<T * C { x.pointer[i] += y.pointer[i] }
            layerNorm(x.pointer, layer.outputNorm, rows: T)
        }
        return x
    }

    /// Each sequence's bidirectional attention over its own tokens (`starts`: where each begins, and
    /// the end), one job per sequence and head: its keys and values copied into contiguous tiles,
    /// scores and weighted sums in eight-wide vectors.
    func attend(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                starts: [Int], pool: ThreadPool) {
        let C = configuration.hiddenSize, H = configuration.headCount, D = C / H
        let scale = 1 / Float(D).squareRoot()
        let longest = zip(starts, starts.dropFirst()).map { $1 - $0 }.max() ?? 0
        pool.parallelFor((starts.count - 1) * H) { job in
            let sequence = job / H, h = job % H
            let first = starts[sequence], L = starts[sequence + 1] - first
            withUnsafeTemporaryAllocation(of: Float.self, capacity: max(longest, 1) * (2 * D + 1) + D) { buffer in
                let keys = buffer.baseAddress!, values = keys + L * D, scores = values + L * D, row = scores + L
                for s in 0..<L {
                    (keys + s * D).update(from: k + (first + s) * C + h * D, count: D)
                    (values + s * D).update(from: v + (first + s) * C + h * D, count: D)
                }
                for t in first..<first + L {
                    let query = q + t * C + h * D
                    var maximum = -Float.infinity
                    for s in 0..<L {
                        scores[s] = Self.dot(query, keys + s * D, D) * scale
                        maximum = max(maximum, scores[s])
                    }
                    var sum: Float = 0
                    for s in 0..<L {
                        scores[s] = expf(scores[s] - maximum)
                        sum += scores[s]
                    }
                    for i in 0..<D { row[i] = 0 }
                    for s in 0..<L { Self.addScaled(scores[s] / sum, values + s * D, into: row, D) }
                    (out + t * C + h * D).update(from: row, count: D)
                }
            }
        }
    }

    @inline(__always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            acc.addProduct(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self), UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
            i += 8
        }
        var total = acc.sum()
        while i < n { total += a[i] * b[i]; i += 1 }
        return total
    }

    @inline(__always) static func addScaled(_ alpha: Float, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        while i + 8 <= n {
            var yv = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
            yv.addProduct(SIMD8(repeating: alpha), UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self))
            UnsafeMutableRawPointer(y + i).storeBytes(of: yv, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }

    /// LayerNorm in place over rows of the hidden size.
    func layerNorm(_ x: UnsafeMutablePointer<Float>, _ norm: Norm, rows: Int) {
        layerNormForward(x, weight: norm.weight, bias: norm.bias, out: x, rows: rows, dim: configuration.hiddenSize, epsilon: configuration.layerNormEpsilon)
    }
}

extension SentenceEncoder {
    /// `sequences` in order, in batches of at most `tokens` tokens (a longer sequence alone).
    public static func batches(_ sequences: [[Int]], tokens: Int) -> [[[Int]]] {
        var batches: [[[Int]]] = [], current: [[Int]] = [], count = 0
        for s in sequences {
            if !current.isEmpty && count + s.count > tokens {
                batches.append(current)
                current = []
                count = 0
            }
            current.append(s)
            count += s.count
        }
        if !current.isEmpty { batches.append(current) }
        return batches
    }
}
