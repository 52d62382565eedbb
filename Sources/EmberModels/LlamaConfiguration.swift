import EmberFormats
import EmberTensor
import Foundation

/// The hyper-parameters of a LLaMA-family model (LLaMA-2/3, SmolLM, Mistral, Qwen2/3, Phi-3, GLM-4),
/// named as in Hugging Face's `config.json` through `CodingKeys`, and readable from GGUF metadata.
/// `family` says which of the variations in Architectures.swift the model has.
public struct LlamaConfiguration: Codable, Sendable, Equatable {
    public var family: ModelFamily = .llama
    /// Q, K and V have biases.
    public var attentionBias = false
    /// The leading dimensions of each head that RoPE rotates (the head dimension unless partial).
    public var ropeDimensions: Int
    /// Per-frequency divisors of the RoPE angles (LLaMA-3's scaling; llama.cpp's `rope_freqs`).
    public var ropeFrequencyFactors: [Float]?
    /// The sliding window of the layers that have one (Mistral's `sliding_window`): a query sees
    /// the last `slidingWindow` positions, itself included.
    public var slidingWindow: Int?
    /// Gemma-2's soft-capping of attention scores and of the final logits (cap · tanh(x / cap)).
    public var attentionSoftcap: Float?
    public var finalSoftcap: Float?
    /// Gemma-2's query scale is 1/√(this) rather than 1/√head_dim (`query_pre_attn_scalar`).
    public var queryPreAttentionScalar: Float?
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var vocabularySize: Int
    public var maxPositionEmbeddings: Int
    /// The norms' epsilon (RMSNorm's, or GPT-2's LayerNorm's).
    public var rmsNormEpsilon: Float
    public var ropeTheta: Float
    public var ropeLinearScale: Float
    public var tieWordEmbeddings: Bool
    public var architectures: [String]?
    /// A reward model's pad token (`pad_token_id`): its score is read at the last token that is
    /// not this one, as transformers reads it (nil for other models).
    public var padTokenID: Int?

    enum CodingKeys: String, CodingKey {
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case layerCount = "num_hidden_layers"
        case headCount = "num_attention_heads"
        case kvHeadCount = "num_key_value_heads"
        case headDim = "head_dim"
        case vocabularySize = "vocab_size"
        case maxPositionEmbeddings = "max_position_embeddings"
        case rmsNormEpsilon = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters"
        case tieWordEmbeddings = "tie_word_embeddings"
        case architectures
        case modelType = "model_type"
        case labels = "id2label"
        case labelCount = "num_labels"
        case padTokenID = "pad_token_id"
        case attentionBias = "attention_bias"
        case partialRotaryFactor = "partial_rotary_factor"
        case slidingWindow = "sliding_window"
        case attentionSoftcap = "attn_logit_softcapping"
        case finalSoftcap = "final_logit_softcapping"
        case queryPreAttentionScalar = "query_pre_attn_scalar"
        case hiddenActivation = "hidden_activation"
    }

    /// A reward model (`LlamaForSequenceClassification` with one label): its forward ends in the
    /// score head, read at the last token.
    public var scoresSequences: Bool { architectures?.first == "LlamaForSequenceClassification" }

    public init(hiddenSize: Int, intermediateSize: Int, layerCount: Int, headCount: Int, kvHeadCount: Int,
                headDim: Int? = nil, vocabularySize: Int, maxPositionEmbeddings: Int, rmsNormEpsilon: Float = 1e-5,
                ropeTheta: Float = 10000, ropeLinearScale: Float = 1, tieWordEmbeddings: Bool = false) {
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layerCount = layerCount
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim ?? hiddenSize / max(headCount, 1)
        ropeDimensions = self.headDim
        self.vocabularySize = vocabularySize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.rmsNormEpsilon = rmsNormEpsilon
        self.ropeTheta = ropeTheta
        self.ropeLinearScale = ropeLinearScale
        self.tieWordEmbeddings = tieWordEmbeddings
        architectures = ["LlamaForCausalLM"]
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let architectures = try c.decodeIfPresent([String].self, forKey: .architectures)
        let modelType = try c.decodeIfPresent(String.self, forKey: .modelType)
        let classes = ModelFamily.huggingFaceClasses
        if let architectures, !architectures.contains(where: { classes[$0] != nil }) {
            throw FormatError("config.json: architecture \(architectures.joined(separator: ", ")) is not supported (Ember runs \(classes.keys.sorted().joined(separator: ", ")))")
        }
        family = architectures?.lazy.compactMap { classes[$0] }.first ?? modelType.flatMap(ModelFamily.init(rawValue:)) ?? .llama
        if family == .gpt2 {
            self = try LlamaConfiguration(gpt2: decoder)
            try validate()
            return
        }
        if architectures?.first == "LlamaForSequenceClassification" {
            // transformers' default is two labels when the config names none.
            let labels = try c.decodeIfPresent([String: String].self, forKey: .labels)?.count ?? c.decodeIfPresent(Int.self, forKey: .labelCount) ?? 2
            guard labels == 1 else {
                throw FormatError("config.json: a LlamaForSequenceClassification of \(labels) labels; Ember runs reward models, which have one (id2label with one entry)")
            }
            padTokenID = try c.decodeIfPresent(Int.self, forKey: .padTokenID)
        }
        if architectures == nil, let modelType, ModelFamily(rawValue: modelType) == nil {
            throw FormatError("config.json: model_type \(modelType) is not supported (Ember runs \(ModelFamily.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        layerCount = try c.decode(Int.self, forKey: .layerCount)
        headCount = try c.decode(Int.self, forKey: .headCount)
        kvHeadCount = try c.decodeIfPresent(Int.self, forKey: .kvHeadCount) ?? headCount
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim) ?? hiddenSize / max(headCount, 1)
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? family.attentionBiasByDefault
        slidingWindow = try c.decodeIfPresent(Int.self, forKey: .slidingWindow)
        attentionSoftcap = try c.decodeIfPresent(Float.self, forKey: .attentionSoftcap)
        finalSoftcap = try c.decodeIfPresent(Float.self, forKey: .finalSoftcap)
        queryPreAttentionScalar = try c.decodeIfPresent(Float.self, forKey: .queryPreAttentionScalar)
        if family == .gemma2, let activation = try c.decodeIfPresent(String.self, forKey: .hiddenActivation),
           !["gelu_pytorch_tanh", "gelu_tanh", "gelu_new"].contains(activation) {
            throw FormatError("config.json: hidden_activation \(activation) is not supported for \(family.rawValue) (gelu_pytorch_tanh is)")
        }
        vocabularySize = try c.decode(Int.self, forKey: .vocabularySize)
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        rmsNormEpsilon = try c.decodeIfPresent(Float.self, forKey: .rmsNormEpsilon) ?? 1e-6
        // transformers 5 writes rope_theta (and the scaling) inside rope_parameters.
        let parameters = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeParameters)
        ropeTheta = try c.decodeIfPresent(Float.self, forKey: .ropeTheta) ?? parameters?.theta ?? 10000
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        self.architectures = architectures
        ropeLinearScale = 1
        let partial = try c.decodeIfPresent(Float.self, forKey: .partialRotaryFactor) ?? parameters?.partialRotaryFactor ?? 1
        ropeDimensions = Int((Float(headDim) * partial).rounded())
        if let scaling = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling) ?? parameters {
            switch scaling.type {
            case "linear": ropeLinearScale = scaling.factor ?? 1
            case "llama3":
                guard let factor = scaling.factor, let low = scaling.lowFrequencyFactor, let high = scaling.highFrequencyFactor,
                      let original = scaling.originalContext, high > low else {
                    throw FormatError("config.json: rope_scaling llama3 needs factor, low_freq_factor < high_freq_factor and original_max_position_embeddings")
                }
                ropeFrequencyFactors = llama3FrequencyFactors(dimensions: ropeDimensions, base: ropeTheta, factor: factor, lowFrequencyFactor: low,
                                                              highFrequencyFactor: high, originalContext: Float(original))
            case "default", nil: break
            default: throw FormatError("config.json: rope_scaling type \(scaling.type!) is not supported (linear and llama3 are)")
            }
        }
        try validate()
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(layerCount, forKey: .layerCount)
        try c.encode(headCount, forKey: .headCount)
        try c.encode(kvHeadCount, forKey: .kvHeadCount)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(vocabularySize, forKey: .vocabularySize)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(rmsNormEpsilon, forKey: .rmsNormEpsilon)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(architectures ?? ["LlamaForCausalLM"], forKey: .architectures)
        try c.encode("llama", forKey: .modelType)
        try c.encodeIfPresent(padTokenID, forKey: .padTokenID)
        if ropeLinearScale != 1 { try c.encode(RopeScaling(type: "linear", factor: ropeLinearScale), forKey: .ropeScaling) }
    }

    private struct RopeScaling: Codable {
        var type: String?
        var factor: Float?
        var theta: Float?
        var partialRotaryFactor: Float?
        var lowFrequencyFactor: Float?
        var highFrequencyFactor: Float?
        var originalContext: Int?
        enum CodingKeys: String, CodingKey {
            case type = "rope_type", factor, theta = "rope_theta", partialRotaryFactor = "partial_rotary_factor"
            case lowFrequencyFactor = "low_freq_factor", highFrequencyFactor = "high_freq_factor", originalContext = "original_max_position_embeddings"
        }
        init(type: String?, factor: Float?) { self.type = type; self.factor = factor }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encodeIfPresent(type, forKey: .type)
            try c.encodeIfPresent(factor, forKey: .factor)
        }
        init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            factor = try c.decodeIfPresent(Float.self, forKey: .factor)
            theta = try c.decodeIfPresent(Float.self, forKey: .theta)
            partialRotaryFactor = try c.decodeIfPresent(Float.self, forKey: .partialRotaryFactor)
            lowFrequencyFactor = try c.decodeIfPresent(Float.self, forKey: .lowFrequencyFactor)
            highFrequencyFactor = try c.decodeIfPresent(Float.self, forKey: .highFrequencyFactor)
            originalContext = try c.decodeIfPresent(Int.self, forKey: .originalContext)
            let legacy = try decoder.container(keyedBy: LegacyKey.self)
            type = try c.decodeIfPresent(String.self, forKey: .type) ?? legacy.decodeIfPresent(String.self, forKey: .type)
        }
        enum LegacyKey: String, CodingKey { case type }
    }

    /// Reads a `config.json`.
    public static func load(configPath: String) throws -> LlamaConfiguration {
        guard let data = FileManager.default.contents(atPath: configPath) else { throw FormatError("\(configPath): cannot read") }
        do {
            return try JSONDecoder().decode(LlamaConfiguration.self, from: data)
        } catch let error as FormatError {
            throw error
        } catch DecodingError.keyNotFound(let key, _) {
            throw FormatError("\(configPath): missing field \(key.stringValue)")
        } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
            throw FormatError("\(configPath): field \(context.codingPath.map(\.stringValue).joined(separator: ".")) has the wrong type")
        } catch {
            throw FormatError("\(configPath): not valid JSON")
        }
    }

    /// Reads the `llama.*` (or `mistral.*`) metadata of a GGUF file.
    public init(gguf: GGUFFile) throws {
        guard let architecture = gguf.string("general.architecture") else {
            throw FormatError("\(gguf.path): metadata general.architecture is missing")
        }
        guard let family = ModelFamily(gguf: architecture) else {
            let hint = architecture == "bert" ? "; a bert file is an embedding model: ember embed and ember serve run it" : ""
            throw FormatError("\(gguf.path): architecture \(architecture) is not supported (Ember generates with \(ModelFamily.allCases.map(\.rawValue).joined(separator: ", "))\(hint))")
        }
        self.family = family
        let a = architecture
        hiddenSize = try gguf.requireInt("\(a).embedding_length")
        intermediateSize = try gguf.requireInt("\(a).feed_forward_length")
        layerCount = try gguf.requireInt("\(a).block_count")
        headCount = try gguf.requireInt("\(a).attention.head_count")
        kvHeadCount = gguf.int("\(a).attention.head_count_kv") ?? headCount
        headDim = gguf.int("\(a).attention.key_length") ?? hiddenSize / max(headCount, 1)
        guard let embeddings = gguf.tensorInfo(named: "token_embd.weight"), embeddings.extents.count == 2 else {
            throw FormatError("\(gguf.path): tensor token_embd.weight is missing")
        }
        vocabularySize = gguf.int("\(a).vocab_size") ?? embeddings.extents[1]
        maxPositionEmbeddings = gguf.int("\(a).context_length") ?? 2048
        rmsNormEpsilon = gguf.float("\(a).attention.layer_norm_rms_epsilon") ?? gguf.float("\(a).attention.layer_norm_epsilon") ?? 1e-5
        ropeTheta = gguf.float("\(a).rope.freq_base") ?? 10000
        ropeLinearScale = 1
        if let type = gguf.string("\(a).rope.scaling.type"), type != "none" {
            guard type == "linear" else { throw FormatError("\(gguf.path): rope scaling \(type) is not supported (linear is)") }
            ropeLinearScale = gguf.float("\(a).rope.scaling.factor") ?? 1
        }
        ropeDimensions = gguf.int("\(a).rope.dimension_count") ?? headDim
        if let factors = gguf.tensorInfo(named: "rope_freqs.weight") {
            guard factors.ggmlType == .f32, factors.elementCount == ropeDimensions / 2 else {
                throw FormatError("\(gguf.path): tensor rope_freqs.weight is not \(ropeDimensions / 2) f32 values")
            }
            ropeFrequencyFactors = dequantize(.f32, from: gguf.data(of: factors), count: ropeDimensions / 2)
        }
        attentionBias = gguf.tensorInfo(named: "blk.0.attn_q.bias") != nil || family == .gpt2
        slidingWindow = gguf.int("\(a).attention.sliding_window").flatMap { $0 > 0 ? $0 : nil }
        attentionSoftcap = gguf.float("\(a).attn_logit_softcapping")
        finalSoftcap = gguf.float("\(a).final_logit_softcapping")
        if family == .gemma2 {  // llama.cpp's defaults when a Gemma-2 file lacks the keys
            attentionSoftcap = attentionSoftcap ?? 50
            finalSoftcap = finalSoftcap ?? 30
            slidingWindow = slidingWindow ?? 4096
        }
        tieWordEmbeddings = gguf.tensorInfo(named: "output.weight") == nil
        architectures = ["LlamaForCausalLM"]
        try validate()
    }

    /// Rejects inconsistent or absurd settings with a message naming the field.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw FormatError("model configuration: \(message)") } }
        try check((1...1 << 16).contains(hiddenSize), "hidden size \(hiddenSize) is out of range")
        try check((1...1 << 18).contains(intermediateSize), "intermediate size \(intermediateSize) is out of range")
        try check((1...1024).contains(layerCount), "layer count \(layerCount) is out of range")
        try check((1...1024).contains(headCount), "head count \(headCount) is out of range")
        try check(kvHeadCount >= 1 && headCount % kvHeadCount == 0, "head count \(headCount) is not a multiple of the key/value head count \(kvHeadCount)")
        try check(headDim >= 2 && headDim % 2 == 0 && headDim <= 1024, "head dimension \(headDim) must be even and at most 1024")
        try check((1...1 << 22).contains(vocabularySize), "vocabulary size \(vocabularySize) is out of range")
        try check((1...1 << 24).contains(maxPositionEmbeddings), "context length \(maxPositionEmbeddings) is out of range")
        try check(rmsNormEpsilon > 0 && rmsNormEpsilon < 1, "rms_norm_eps \(rmsNormEpsilon) is out of range")
        try check(ropeTheta > 1, "rope_theta \(ropeTheta) is out of range")
        try check(ropeDimensions >= 2 && ropeDimensions % 2 == 0 && ropeDimensions <= headDim,
                  "rotary dimensions \(ropeDimensions) must be even and at most the head dimension \(headDim)")
        try check(ropeFrequencyFactors.map { $0.count == ropeDimensions / 2 && $0.allSatisfy { $0 > 0 && $0.isFinite } } ?? true,
                  "RoPE frequency factors must be \(ropeDimensions / 2) positive numbers")
    }

    public var queryDim: Int { headCount * headDim }
    public var kvDim: Int { kvHeadCount * headDim }
}
