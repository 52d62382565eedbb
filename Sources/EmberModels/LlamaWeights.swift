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
    public var gate: WeightMatrix      // [I, C]
    public var up: WeightMatrix        // [I, C]
    public var down: WeightMatrix      // [C, I]
}

/// All weights of a LLaMA model and the RoPE convention they were stored for.
public struct LlamaWeights: Sendable {
    public var embedding: WeightMatrix  // [V, C]
    public var blocks: [LlamaBlockWeights]
    public var finalNorm: [Float]       // [C]
    public var output: WeightMatrix     // [V, C]; the embedding itself when tied
    /// GGUF stores Q/K rows permuted for interleaved pairs; Hugging Face checkpoints use NeoX pairs.
    public var ropeMode: RopeMode
}

/// Where a tensor comes from, independent of the file format.
protocol TensorSource {
    var path: String { get }
    /// The tensor's dtype, shape as [rows, columns] (a vector is [1, n]) and data, or nil when absent.
    func lookup(_ name: String) throws -> (DType, [Int], UnsafeRawPointer, AnyObject)?
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

    func lookup(_ name: String) throws -> (DType, [Int], UnsafeRawPointer, AnyObject)? {
        guard let info = gguf.tensorInfo(named: name) else { return nil }
        guard let type = info.ggmlType.dtype else {
            throw FormatError("\(path): tensor \(name) is stored as \(info.ggmlType), which Ember cannot compute with (f32, f16, bf16, q8_0, q4_0, q4_1)")
        }
        let shape = info.extents.count == 1 ? [1, info.extents[0]] : Array(info.extents.reversed())
        return (type, shape, gguf.data(of: info), gguf.file)
    }
}

struct SafetensorsTensorSource: TensorSource {
    let collection: SafetensorsCollection
    let path: String

    func lookup(_ name: String) throws -> (DType, [Int], UnsafeRawPointer, AnyObject)? {
        guard let (file, entry) = collection.entry(name) else { return nil }
        let shape = entry.shape.count == 1 ? [1, entry.shape[0]] : entry.shape
        return (entry.dtype, shape, file.data(of: entry), file.file)
    }
}

extension LlamaWeights {
    static func load(from source: TensorSource, configuration c: LlamaConfiguration, names: TensorNames, ropeMode: RopeMode) throws -> LlamaWeights {
        let embedding = try source.matrix(names.embedding, rows: c.vocabularySize, columns: c.hiddenSize)
        var blocks: [LlamaBlockWeights] = []
        for i in 0..<c.layerCount {
            func n(_ part: KeyPath<TensorNames, String>) -> String { names[keyPath: part].replacingOccurrences(of: "{i}", with: "\(i)") }
            blocks.append(LlamaBlockWeights(
                attentionNorm: try source.vector(n(\.attentionNorm), count: c.hiddenSize),
                query: try source.matrix(n(\.query), rows: c.queryDim, columns: c.hiddenSize),
                key: try source.matrix(n(\.key), rows: c.kvDim, columns: c.hiddenSize),
                value: try source.matrix(n(\.value), rows: c.kvDim, columns: c.hiddenSize),
                output: try source.matrix(n(\.attentionOutput), rows: c.hiddenSize, columns: c.queryDim),
                feedForwardNorm: try source.vector(n(\.feedForwardNorm), count: c.hiddenSize),
                gate: try source.matrix(n(\.gate), rows: c.intermediateSize, columns: c.hiddenSize),
                up: try source.matrix(n(\.up), rows: c.intermediateSize, columns: c.hiddenSize),
                down: try source.matrix(n(\.down), rows: c.hiddenSize, columns: c.intermediateSize)))
        }
        let finalNorm = try source.vector(names.finalNorm, count: c.hiddenSize)
        let output = try source.lookup(names.output) == nil
            ? embedding
            : try source.matrix(names.output, rows: c.vocabularySize, columns: c.hiddenSize)
        return LlamaWeights(embedding: embedding, blocks: blocks, finalNorm: finalNorm, output: output, ropeMode: ropeMode)
    }
}

/// Tensor names of a checkpoint format; `{i}` stands for the block index.
struct TensorNames {
    var embedding, finalNorm, output: String
    var attentionNorm, query, key, value, attentionOutput, feedForwardNorm, gate, up, down: String

    static let gguf = TensorNames(
        embedding: "token_embd.weight", finalNorm: "output_norm.weight", output: "output.weight",
        attentionNorm: "blk.{i}.attn_norm.weight", query: "blk.{i}.attn_q.weight", key: "blk.{i}.attn_k.weight",
        value: "blk.{i}.attn_v.weight", attentionOutput: "blk.{i}.attn_output.weight", feedForwardNorm: "blk.{i}.ffn_norm.weight",
        gate: "blk.{i}.ffn_gate.weight", up: "blk.{i}.ffn_up.weight", down: "blk.{i}.ffn_down.weight")

    static let huggingFace = TensorNames(
        embedding: "model.embed_tokens.weight", finalNorm: "model.norm.weight", output: "lm_head.weight",
        attentionNorm: "model.layers.{i}.input_layernorm.weight", query: "model.layers.{i}.self_attn.q_proj.weight",
        key: "model.layers.{i}.self_attn.k_proj.weight", value: "model.layers.{i}.self_attn.v_proj.weight",
        attentionOutput: "model.layers.{i}.self_attn.o_proj.weight", feedForwardNorm: "model.layers.{i}.post_attention_layernorm.weight",
        gate: "model.layers.{i}.mlp.gate_proj.weight", up: "model.layers.{i}.mlp.up_proj.weight", down: "model.layers.{i}.mlp.down_proj.weight")
}
