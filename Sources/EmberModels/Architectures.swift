import EmberTensor
import Foundation

/// The decoder families Ember runs, and how each differs from LLaMA-2. Every difference is a trait
/// here; the forward pass (`Llama.transformer`) reads the traits, never the family.
///
/// | family  | Hugging Face                          | GGUF    | differences from LLaMA-2 (config key)                      |
/// |---------|---------------------------------------|---------|------------------------------------------------------------|
/// | llama   | LlamaForCausalLM (LLaMA-2/3, SmolLM)  | llama   | LLaMA-3: `rope_scaling.rope_type` llama3 (`rope_freqs`)   |
/// | mistral | MistralForCausalLM                    | llama   | `sliding_window`: a query sees the last `sliding_window` positions (llama.cpp's conversion drops it) |
/// | qwen2   | Qwen2ForCausalLM                      | qwen2   | Q/K/V biases (always)                                      |
/// | qwen3   | Qwen3ForCausalLM                      | qwen3   | RMSNorm of each head's q and k (`q_norm`, `k_norm`)        |
/// | phi3    | Phi3ForCausalLM                       | phi3    | fused `qkv_proj` and `gate_up_proj`                        |
/// | glm4    | Glm4ForCausalLM                       | glm4    | `partial_rotary_factor` on adjacent pairs, `attention_bias`, fused `gate_up_proj`, norms after attention and MLP |
/// | gpt2    | GPT2LMHeadModel                       | gpt2    | LayerNorm with biases, a plain MLP with GELU (tanh), learned positions (no RoPE), biases on every product, fused QKV, Conv1D weights stored [in, out] (see GPT2.swift) |
/// | gemma2  | Gemma2ForCausalLM                     | gemma2  | GeGLU (`hidden_activation` gelu_pytorch_tanh), embeddings × √hidden, RMSNorm weights stored as w − 1 (Hugging Face), norms after attention and MLP, `attn_logit_softcapping`, `final_logit_softcapping`, `sliding_window` on even layers, `query_pre_attn_scalar` |
public enum ModelFamily: String, Sendable, CaseIterable, Codable {
    case llama, mistral, qwen2, qwen3, phi3, glm4, gemma2, gpt2

    /// The family of a Hugging Face `architectures` entry.
    static let huggingFaceClasses: [String: ModelFamily] = [
        "LlamaForCausalLM": .llama, "LlamaForSequenceClassification": .llama, "MistralForCausalLM": .mistral,
        "Qwen2ForCausalLM": .qwen2, "Qwen3ForCausalLM": .qwen3, "Phi3ForCausalLM": .phi3, "Glm4ForCausalLM": .glm4,
        "Gemma2ForCausalLM": .gemma2, "GPT2LMHeadModel": .gpt2,
    ]

    /// The family of a GGUF `general.architecture` (llama.cpp writes Mistral as llama).
    init?(gguf architecture: String) {
        self.init(rawValue: architecture)
    }

    /// Q, K and V have biases unless the config says otherwise (`attention_bias`).
    var attentionBiasByDefault: Bool { self == .qwen2 }

    /// Each head's q and k are RMS-normalised (over the head) before RoPE.
    public var normalizesQueryAndKey: Bool { self == .qwen3 }

    /// The attention output and the MLP output are normalised before their residual adds.
    public var normalizesSublayerOutputs: Bool { self == .glm4 || self == .gemma2 }

    /// The MLP's activation is GELU (tanh form) rather than SiLU: GeGLU (gated), or GPT-2's plain MLP.
    public var activatesWithGELU: Bool { self == .gemma2 || self == .gpt2 }

    /// Norms are LayerNorm (centred, with a bias) rather than RMSNorm.
    public var usesLayerNorm: Bool { self == .gpt2 }

    /// Positions come from a learned table added to the embeddings, not from RoPE.
    public var learnsPositions: Bool { self == .gpt2 }

    /// The embeddings are multiplied by √hidden before the first block.
    public var scalesEmbeddings: Bool { self == .gemma2 }

    /// Hugging Face stores RMSNorm weights as w − 1 (the norm multiplies by 1 + w); llama.cpp's
    /// conversion adds the 1.
    func normWeightOffset(_ format: TensorFormat) -> Float { self == .gemma2 && format == .huggingFace ? 1 : 0 }

    /// The family's own Hugging Face name for a tensor of the common table, where it differs.
    func huggingFaceName(_ role: LlamaTensor.Role) -> String? {
        switch (self, role) {
        case (.gemma2, .feedForwardNorm): "model.layers.{i}.pre_feedforward_layernorm.weight"
        default: nil
        }
    }

    /// Q, K and V are one stored matrix (rows q, k, v).
    public var fusesQKV: Bool { self == .phi3 }

    /// Gate and up are one stored matrix (rows gate, then up).
    public var fusesGateUp: Bool { self == .phi3 || self == .glm4 }

    /// Which elements form a RoPE pair in the weights as `format` stores them: llama.cpp permutes
    /// LLaMA's Q/K rows to adjacent pairs, GLM-4 uses adjacent pairs in both, the others halves.
    public func ropeMode(_ format: TensorFormat) -> RopeMode {
        switch self {
        case .llama, .mistral: format == .gguf ? .interleaved : .neox
        case .glm4: .interleaved
        case .qwen2, .qwen3, .phi3, .gemma2, .gpt2: .neox
        }
    }

    /// Whether block `layer` attends through the sliding window (when the model has one).
    func slidesWindow(layer: Int) -> Bool { self == .mistral || (self == .gemma2 && layer % 2 == 0) }

    /// Whether the LLaMA training path (and LoRA over it) runs this family; GPT-2 trains through
    /// its own path (`TrainableGPT2`), the rest are inference only.
    public var trains: Bool { self == .llama || self == .mistral }
}

extension LlamaConfiguration {
    /// The attention of block `layer`: the sliding window where the family applies it.
    public func attentionOptions(layer: Int) -> AttentionOptions {
        AttentionOptions(window: family.slidesWindow(layer: layer) ? slidingWindow : nil, softcap: attentionSoftcap,
                         scale: queryPreAttentionScalar.map { 1 / $0.squareRoot() })
    }
}

/// The tensors some families add to a block, named in both formats (`{i}`: the block).
enum ExtraTensor: CaseIterable {
    case queryBias, keyBias, valueBias, queryNorm, keyNorm, fusedQKV, fusedGateUp, postAttentionNorm, postFeedForwardNorm

    var names: (gguf: String, huggingFace: String) {
        switch self {
        case .queryBias: ("blk.{i}.attn_q.bias", "model.layers.{i}.self_attn.q_proj.bias")
        case .keyBias: ("blk.{i}.attn_k.bias", "model.layers.{i}.self_attn.k_proj.bias")
        case .valueBias: ("blk.{i}.attn_v.bias", "model.layers.{i}.self_attn.v_proj.bias")
        case .queryNorm: ("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight")
        case .keyNorm: ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight")
        case .fusedQKV: ("blk.{i}.attn_qkv.weight", "model.layers.{i}.self_attn.qkv_proj.weight")
        case .fusedGateUp: ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.gate_up_proj.weight")
        case .postAttentionNorm: ("blk.{i}.post_attention_norm.weight", "model.layers.{i}.post_self_attn_layernorm.weight")
        case .postFeedForwardNorm: ("blk.{i}.post_ffw_norm.weight", "model.layers.{i}.post_mlp_layernorm.weight")
        }
    }

    func name(layer: Int, _ format: TensorFormat, family: ModelFamily) -> String {
        var pattern = format == .gguf ? names.gguf : names.huggingFace
        if format == .huggingFace, family == .gemma2 {
            if self == .postAttentionNorm { pattern = "model.layers.{i}.post_attention_layernorm.weight" }
            if self == .postFeedForwardNorm { pattern = "model.layers.{i}.post_feedforward_layernorm.weight" }
        }
        return pattern.replacingOccurrences(of: "{i}", with: "\(layer)")
    }
}

/// LLaMA-3's RoPE frequency scaling (`rope_type` llama3) as per-frequency divisors, the form of
/// llama.cpp's `rope_freqs` tensor: long wavelengths divided by `factor`, short ones kept, and a
/// smooth blend between `originalContext / lowFrequencyFactor` and `/ highFrequencyFactor`.
func llama3FrequencyFactors(dimensions: Int, base: Float, factor: Float, lowFrequencyFactor: Float, highFrequencyFactor: Float,
                            originalContext: Float) -> [Float] {
    let lowWavelength = originalContext / lowFrequencyFactor, highWavelength = originalContext / highFrequencyFactor
    return (0..<dimensions / 2).map { i in
        let frequency = 1 / powf(base, Float(2 * i) / Float(dimensions))
        let wavelength = 2 * Float.pi / frequency
        if wavelength < highWavelength { return 1 }
        if wavelength > lowWavelength { return factor }
        let smooth = (originalContext / wavelength - lowFrequencyFactor) / (highFrequencyFactor - lowFrequencyFactor)
        return frequency / ((1 - smooth) * frequency / factor + smooth * frequency)
    }
}
