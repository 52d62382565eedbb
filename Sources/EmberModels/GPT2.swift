import EmberFormats
import EmberTensor
import Foundation

/// GPT-2 (`GPT2LMHeadModel`; GGUF `gpt2`), the model of nanoGPT and llm.c, on the shared forward:
/// pre-LayerNorm blocks with biases on every product, a fused QKV, a plain MLP with GELU (tanh form),
/// learned positions added to the embeddings instead of RoPE, and the head tied to the embeddings.
///
/// Hugging Face's checkpoint keeps the `Conv1D` layout, each weight stored [in, out]: they are
/// transposed to [out, in] when read. Its config names the sizes `n_embd`, `n_layer`, `n_head`,
/// `n_positions` and `n_inner` (4 × n_embd when null).
extension LlamaConfiguration {
    enum GPT2Key: String, CodingKey {
        case embedding = "n_embd", layers = "n_layer", heads = "n_head", positions = "n_positions", context = "n_ctx", inner = "n_inner"
        case epsilon = "layer_norm_epsilon", activation = "activation_function", vocabulary = "vocab_size"
    }

    init(gpt2 decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: GPT2Key.self)
        let C = try c.decode(Int.self, forKey: .embedding)
        if let activation = try c.decodeIfPresent(String.self, forKey: .activation), !["gelu_new", "gelu_pytorch_tanh"].contains(activation) {
            throw FormatError("config.json: activation_function \(activation) is not supported for GPT-2 (gelu_new is)")
        }
        self.init(gpt2: C, intermediateSize: try c.decodeIfPresent(Int.self, forKey: .inner) ?? 4 * C,
                  layerCount: try c.decode(Int.self, forKey: .layers), headCount: try c.decode(Int.self, forKey: .heads),
                  vocabularySize: try c.decode(Int.self, forKey: .vocabulary),
                  context: try c.decodeIfPresent(Int.self, forKey: .positions) ?? c.decodeIfPresent(Int.self, forKey: .context) ?? 1024,
                  epsilon: try c.decodeIfPresent(Float.self, forKey: .epsilon) ?? 1e-5)
    }

    /// A GPT-2 configuration of hidden size `C` (the MLP 4·C wide unless given).
    public init(gpt2 C: Int, intermediateSize: Int? = nil, layerCount: Int, headCount: Int, vocabularySize: Int, context: Int, epsilon: Float = 1e-5) {
        self.init(hiddenSize: C, intermediateSize: intermediateSize ?? 4 * C, layerCount: layerCount, headCount: headCount, kvHeadCount: headCount,
                  vocabularySize: vocabularySize, maxPositionEmbeddings: context, rmsNormEpsilon: epsilon, tieWordEmbeddings: true)
        family = .gpt2
        attentionBias = true
        architectures = ["GPT2LMHeadModel"]
    }
}

extension LlamaWeights {
    static func loadGPT2(from source: TensorSource, configuration c: LlamaConfiguration, format: TensorFormat) throws -> LlamaWeights {
        let C = c.hiddenSize, F = c.intermediateSize
        let prefix = format == .huggingFace && source.contains("transformer.wte.weight") ? "transformer." : ""
        func vector(_ gguf: String, _ hf: String, _ count: Int) throws -> [Float] {
            try source.vector(format == .gguf ? gguf : prefix + hf, count: count)
        }
        /// A product's weight as [out, in]: GGUF stores it so; Hugging Face's Conv1D stores [in, out].
        func matrix(_ gguf: String, _ hf: String, out rows: Int, in columns: Int) throws -> WeightMatrix {
            if format == .gguf { return try source.matrix(gguf, rows: rows, columns: columns) }
            let stored = try source.matrix(prefix + hf, rows: columns, columns: rows)
            let values = FloatBuffer(transposed(dequantize(stored.type, from: stored.data, count: rows * columns), rows: columns, columns: rows))
            return WeightMatrix(type: .f32, rows: rows, columns: columns, data: UnsafeRawPointer(values.pointer), owner: values)
        }
        let embedding = try format == .gguf ? source.matrix("token_embd.weight", rows: c.vocabularySize, columns: C)
                                            : source.matrix(prefix + "wte.weight", rows: c.vocabularySize, columns: C)
        let positions = try format == .gguf ? source.matrix("position_embd.weight", rows: c.maxPositionEmbeddings, columns: C)
                                            : source.matrix(prefix + "wpe.weight", rows: c.maxPositionEmbeddings, columns: C)
        let blocks = try (0..<c.layerCount).map { i in
            let g = "blk.\(i).", h = "h.\(i)."
            let qkv = try matrix(g + "attn_qkv.weight", h + "attn.c_attn.weight", out: 3 * C, in: C)
            let qkvBias = try vector(g + "attn_qkv.bias", h + "attn.c_attn.bias", 3 * C)
            func rows(_ k: Int) -> WeightMatrix {
                WeightMatrix(type: qkv.type, rows: C, columns: C, data: qkv.row(k * C), owner: qkv.owner)
            }
            var block = LlamaBlockWeights(attentionNorm: try vector(g + "attn_norm.weight", h + "ln_1.weight", C), query: rows(0), key: rows(1),
                                          value: rows(2), output: try matrix(g + "attn_output.weight", h + "attn.c_proj.weight", out: C, in: C),
                                          feedForwardNorm: try vector(g + "ffn_norm.weight", h + "ln_2.weight", C), gate: nil,
                                          up: try matrix(g + "ffn_up.weight", h + "mlp.c_fc.weight", out: F, in: C),
                                          down: try matrix(g + "ffn_down.weight", h + "mlp.c_proj.weight", out: C, in: F))
            block.queryBias = Array(qkvBias[0..<C])
            block.keyBias = Array(qkvBias[C..<2 * C])
            block.valueBias = Array(qkvBias[2 * C..<3 * C])
            block.attentionNormBias = try vector(g + "attn_norm.bias", h + "ln_1.bias", C)
            block.feedForwardNormBias = try vector(g + "ffn_norm.bias", h + "ln_2.bias", C)
            block.outputBias = try vector(g + "attn_output.bias", h + "attn.c_proj.bias", C)
            block.upBias = try vector(g + "ffn_up.bias", h + "mlp.c_fc.bias", F)
            block.downBias = try vector(g + "ffn_down.bias", h + "mlp.c_proj.bias", C)
            return block
        }
        var weights = LlamaWeights(embedding: embedding, blocks: blocks, finalNorm: try vector("output_norm.weight", "ln_f.weight", C),
                                   output: embedding, ropeMode: .neox)
        weights.positionEmbedding = positions
        weights.finalNormBias = try vector("output_norm.bias", "ln_f.bias", C)
        return weights
    }
}
