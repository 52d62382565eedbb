import EmberFormats
import EmberTensor
import Foundation

/// The weights of one transformer block. Matrices are [out, in].
public struct LlamaBlockWeights: Sendable {
    public var attentionNorm: [Float]  // [C]
    public var query: WeightMatrix     // [H·D, C]
    public var key: WeightMatrix       // [Hkv·D, C]
    public var value: WeightMatrix     // [Hkv·D, C]
    public var output: WeightMatrix    // [C, H·D]
    public var feedForwardNorm: [Float] // [C]
    public var gate: WeightMatrix?     // [I, C]; nil when the MLP is not gated (GPT-2)
    public var up: WeightMatrix        // [I, C]
    public var down: WeightMatrix      // [C, I]
    /// What some families add (see Architectures.swift): Q/K/V biases, the per-head q and k norms
    /// [D], and the norms of the attention and MLP outputs [C].
    public var queryBias: [Float]?, keyBias: [Float]?, valueBias: [Float]?
    public var queryNorm: [Float]?, keyNorm: [Float]?
    public var postAttentionNorm: [Float]?, postFeedForwardNorm: [Float]?
    /// GPT-2's biases: of the two LayerNorms, the attention output, and the MLP's two products.
    public var attentionNormBias: [Float]?, feedForwardNormBias: [Float]?
    public var outputBias: [Float]?, upBias: [Float]?, downBias: [Float]?

    public init(attentionNorm: [Float], query: WeightMatrix, key: WeightMatrix, value: WeightMatrix, output: WeightMatrix,
                feedForwardNorm: [Float], gate: WeightMatrix?, up: WeightMatrix, down: WeightMatrix) {
        self.attentionNorm = attentionNorm
        self.query = query
        self.key = key
        self.value = value
        self.output = output
        self.feedForwardNorm = feedForwardNorm
        self.gate = gate
        self.up = up
        self.down = down
    }
}

/// All weights of a LLaMA model and the RoPE convention they were stored for.
public struct LlamaWeights: Sendable {
    public var embedding: WeightMatrix  // [V, C]
    public var blocks: [LlamaBlockWeights]
    public var finalNorm: [Float]       // [C]
    public var output: WeightMatrix     // [V, C]; the embedding itself when tied
    /// GGUF stores Q/K rows permuted for interleaved pairs; Hugging Face checkpoints use NeoX pairs.
    public var ropeMode: RopeMode
    /// A reward model's score head [1, C] (`LlamaForSequenceClassification`'s `score.weight`).
    public var score: WeightMatrix?
    /// GPT-2's learned positions [context, C] and final LayerNorm bias.
    public var positionEmbedding: WeightMatrix?
    public var finalNormBias: [Float]?

    public init(embedding: WeightMatrix, blocks: [LlamaBlockWeights], finalNorm: [Float], output: WeightMatrix, ropeMode: RopeMode,
                score: WeightMatrix? = nil) {
        self.embedding = embedding
        self.blocks = blocks
        self.finalNorm = finalNorm
        self.output = output
        self.ropeMode = ropeMode
        self.score = score
    }
}

/// Where a tensor comes from, independent of the file format.
protocol TensorSource {
    var path: String { get }
    /// The tensor's dtype, shape as [rows, columns] (a vector is [1, n]) and data, or nil when absent.
    func lookup(_ name: String) throws -> (DType, [Int], UnsafeRawPointer, AnyObject)?
    /// Whether the source holds `name` (without reading it: a lookup may dequantize).
    func contains(_ name: String) -> Bool
    /// The memory-mapped files the tensors come from.
    var files: [MappedFile] { get }
}

extension TensorSource {
    func matrix(_ name: String, rows: Int, columns: Int) throws -> WeightMatrix {
        guard let (type, shape, data, owner) = try lookup(name) else { throw FormatError("\(path): tensor \(name) is missing") }
        guard shape == [rows, columns] else {
            throw FormatError("\(path): tensor \(name) has shape \(shape), expected [\(rows), \(columns)]")
        }
        return WeightMatrix(type: type, rows: rows, columns: columns, data: data, owner: owner)
    }

    func vector(_ name: String, count: Int) throws -> [Float] {
        guard let (type, shape, data, _) = try lookup(name) else { throw FormatError("\(path): tensor \(name) is missing") }
        guard shape.reduce(1, *) == count else { throw FormatError("\(path): tensor \(name) has shape \(shape), expected [\(count)]") }
        return dequantize(type, from: data, count: count)
    }
}

struct GGUFTensorSource: TensorSource {
    let gguf: GGUFFile
    var path: String { gguf.path }
    var files: [MappedFile] { [gguf.file] }

    func contains(_ name: String) -> Bool { gguf.tensorInfo(named: name) != nil }

    func lookup(_ name: String) throws -> (DType, [Int], UnsafeRawPointer, AnyObject)? {
        guard let info = gguf.tensorInfo(named: name) else { return nil }
        let shape = info.extents.count == 1 ? [1, info.extents[0]] : Array(info.extents.reversed())
        guard let type = info.ggmlType.dtype else {
            throw FormatError("\(path): tensor \(name) is stored as \(info.ggmlType), which Ember cannot read (it reads f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K–q6_K, iq4_nl and iq4_xs)")
        }
        return (type, shape, gguf.data(of: info), gguf.file)
    }
}

struct SafetensorsTensorSource: TensorSource {
    let collection: SafetensorsCollection
    let path: String
    var files: [MappedFile] { collection.files.map(\.file) }

    func contains(_ name: String) -> Bool { collection.entry(name) != nil }

    func lookup(_ name: String) throws -> (DType, [Int], UnsafeRawPointer, AnyObject)? {
        guard let (file, entry) = collection.entry(name) else {
            if let (file, dtype) = collection.files.lazy.compactMap({ f in f.otherTensors[name].map { (f, $0) } }).first {
                throw FormatError("\(file.path): tensor \(name) has dtype \(dtype); Ember reads F32, F16 and BF16")
            }
            return nil
        }
        let shape = entry.shape.count == 1 ? [1, entry.shape[0]] : entry.shape
        return (entry.dtype, shape, file.data(of: entry), file.file)
    }
}

extension LlamaWeights {
    static func load(from source: TensorSource, configuration c: LlamaConfiguration, format: TensorFormat, ropeMode: RopeMode) throws -> LlamaWeights {
        if c.family == .gpt2 { return try loadGPT2(from: source, configuration: c, format: format) }
        func name(_ t: LlamaTensor) -> String {
            guard format == .huggingFace, let pattern = c.family.huggingFaceName(t.role) else { return t.name(format) }
            return t.layer.map { pattern.replacingOccurrences(of: "{i}", with: "\($0)") } ?? pattern
        }
        func matrix(_ role: LlamaTensor.Role, _ layer: Int? = nil) throws -> WeightMatrix {
            let t = LlamaTensor(role, layer: layer, c)
            return try source.matrix(name(t), rows: t.shape[0], columns: t.shape[1])
        }
        func vector(_ role: LlamaTensor.Role, _ layer: Int? = nil) throws -> [Float] {
            let t = LlamaTensor(role, layer: layer, c)
            return try source.vector(name(t), count: t.shape[0])
        }
        func extra(_ tensor: ExtraTensor, _ layer: Int, count: Int) throws -> [Float] {
            try source.vector(tensor.name(layer: layer, format, family: c.family), count: count)
        }
        /// A norm's weights as the forward multiplies by them (Gemma's 1 + w).
        func norm(_ values: [Float]) -> [Float] {
            let offset = c.family.normWeightOffset(format)
            return offset == 0 ? values : values.map { $0 + offset }
        }
        /// Consecutive row ranges of one stored matrix, each a matrix of its own (no copy).
        func split(_ tensor: ExtraTensor, _ layer: Int, rows: [Int]) throws -> [WeightMatrix] {
            let whole = try source.matrix(tensor.name(layer: layer, format, family: c.family), rows: rows.reduce(0, +), columns: c.hiddenSize)
            var first = 0
            return rows.map { count in
                defer { first += count }
                return WeightMatrix(type: whole.type, rows: count, columns: whole.columns, data: whole.row(first), owner: whole.owner)
            }
        }
        let family = c.family
        let embedding = try matrix(.embedding)
        let blocks = try (0..<c.layerCount).map { i in
            let qkv = family.fusesQKV ? try split(.fusedQKV, i, rows: [c.queryDim, c.kvDim, c.kvDim])
                                      : [try matrix(.query, i), try matrix(.key, i), try matrix(.value, i)]
            let gateUp = family.fusesGateUp ? try split(.fusedGateUp, i, rows: [c.intermediateSize, c.intermediateSize])
                                            : [try matrix(.gate, i), try matrix(.up, i)]
            var block = LlamaBlockWeights(attentionNorm: norm(try vector(.attentionNorm, i)), query: qkv[0], key: qkv[1], value: qkv[2],
                                          output: try matrix(.attentionOutput, i), feedForwardNorm: norm(try vector(.feedForwardNorm, i)),
                                          gate: gateUp[0], up: gateUp[1], down: try matrix(.down, i))
            if c.attentionBias {
                block.queryBias = try extra(.queryBias, i, count: c.queryDim)
                block.keyBias = try extra(.keyBias, i, count: c.kvDim)
                block.valueBias = try extra(.valueBias, i, count: c.kvDim)
            }
            if family.normalizesQueryAndKey {
                block.queryNorm = try extra(.queryNorm, i, count: c.headDim)
                block.keyNorm = try extra(.keyNorm, i, count: c.headDim)
            }
            if family.normalizesSublayerOutputs {
                block.postAttentionNorm = norm(try extra(.postAttentionNorm, i, count: c.hiddenSize))
                block.postFeedForwardNorm = norm(try extra(.postFeedForwardNorm, i, count: c.hiddenSize))
            }
            return block
        }
        let finalNorm = norm(try vector(.finalNorm))
        // The output matrix is read when the file has one, whatever the configuration says.
        let output = source.contains(LlamaTensor(.output, c).name(format)) ? try matrix(.output) : embedding
        let score = c.scoresSequences ? try source.matrix("score.weight", rows: 1, columns: c.hiddenSize) : nil
        return LlamaWeights(embedding: embedding, blocks: blocks, finalNorm: finalNorm, output: output, ropeMode: ropeMode, score: score)
    }
}
