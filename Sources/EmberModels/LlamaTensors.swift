/// The file formats whose tensor names Ember reads and writes.
public enum TensorFormat: Sendable {
    /// llama.cpp's names (`blk.N.attn_q.weight`); Q and K rows permuted to adjacent RoPE pairs.
    case gguf
    /// transformers' `LlamaForCausalLM` names (`model.layers.N.self_attn.q_proj.weight`).
    case huggingFace
}

/// One tensor of a LLaMA model: what it is, in which block, its shape, and its name in each
/// format. This is the one table of names that loading, training and export use.
public struct LlamaTensor: Sendable, Hashable {
    public enum Role: String, Sendable, CaseIterable {
        case embedding, attentionNorm, query, key, value, attentionOutput, feedForwardNorm, gate, up, down, finalNorm, output
    }

    public let role: Role
    /// The block, for the roles inside one.
    public let layer: Int?
    /// [rows, columns] (out × in) for a matrix, [n] for a vector.
    public let shape: [Int]

    /// Names with `{i}` for the block index: (GGUF, Hugging Face).
    static let names: [Role: (gguf: String, huggingFace: String)] = [
        .embedding: ("token_embd.weight", "model.embed_tokens.weight"),
        .attentionNorm: ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        .query: ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight"),
        .key: ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight"),
        .value: ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
        .attentionOutput: ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
        .feedForwardNorm: ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
        .gate: ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
        .up: ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
        .down: ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
        .finalNorm: ("output_norm.weight", "model.norm.weight"),
        .output: ("output.weight", "lm_head.weight"),
    ]

    public func name(_ format: TensorFormat) -> String {
        let pair = Self.names[role]!
        let pattern = format == .gguf ? pair.gguf : pair.huggingFace
        return layer.map { pattern.replacingOccurrences(of: "{i}", with: "\($0)") } ?? pattern
    }

    public var isMatrix: Bool { shape.count == 2 }

    /// Whether GGUF stores this tensor's rows permuted within each head (Q and K, for RoPE on adjacent pairs).
    public var permutedInGGUF: Bool { role == .query || role == .key }

    /// Rows of each head reordered from Hugging Face's (first half, second half) RoPE pairs to
    /// GGUF's adjacent pairs (new row 2i + j of a head is old row j · D/2 + i), or back with `inverse`.
    public static func interleavePairs(_ values: [Float], heads: Int, columns: Int, inverse: Bool = false) -> [Float] {
        let rows = values.count / columns, D = rows / heads, half = D / 2
        var out = values
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    var target = (h * D + 2 * i + j) * columns, source = (h * D + j * half + i) * columns
                    if inverse { swap(&target, &source) }
                    out[target..<target + columns] = values[source..<source + columns]
                }
            }
        }
        return out
    }

    /// Heads whose rows `permutedInGGUF` reorders.
    public func heads(_ c: LlamaConfiguration) -> Int { role == .query ? c.headCount : c.kvHeadCount }

    /// The tensor of `role` (in block `layer`) of a model with configuration `c`.
    public init(_ role: Role, layer: Int? = nil, _ c: LlamaConfiguration) {
        let C = c.hiddenSize
        let shape: [Int] = switch role {
        case .embedding, .output: [c.vocabularySize, C]
        case .query: [c.queryDim, C]
        case .key, .value: [c.kvDim, C]
        case .attentionOutput: [C, c.queryDim]
        case .gate, .up: [c.intermediateSize, C]
        case .down: [C, c.intermediateSize]
        case .attentionNorm, .feedForwardNorm, .finalNorm: [C]
        }
        self.init(role: role, layer: layer, shape: shape)
    }

    init(role: Role, layer: Int?, shape: [Int]) {
        self.role = role
        self.layer = layer
        self.shape = shape
    }

    /// Every tensor of a model, in Hugging Face's order: the embedding; per block Q, K, V, O, gate,
    /// up, down and the two norms; the final norm; the output matrix unless it is tied to the embedding.
    public static func all(_ c: LlamaConfiguration) -> [LlamaTensor] {
        let block: [Role] = [.query, .key, .value, .attentionOutput, .gate, .up, .down, .attentionNorm, .feedForwardNorm]
        return [LlamaTensor(.embedding, c)]
            + (0..<c.layerCount).flatMap { i in block.map { LlamaTensor($0, layer: i, c) } }
            + [LlamaTensor(.finalNorm, c)]
            + (c.tieWordEmbeddings ? [] : [LlamaTensor(.output, c)])
    }
}
