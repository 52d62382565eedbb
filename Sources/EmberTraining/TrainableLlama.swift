import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// The training path of a LLaMA model: every weight is an f32 `Variable` named as in Hugging Face's
/// `LlamaForCausalLM`, and the forward pass records its backward on a `Tape`.
///
///     x = embed(ids)                                        [B·T, C]
///     for each block (optionally recomputed in the backward):
///         h = rmsnorm(x) ; q, k = rope(h·Wqᵀ), rope(h·Wkᵀ) ; v = h·Wvᵀ
///         x = x + attention(q, k, v, causal) · Woᵀ
///         x = x + (silu(rmsnorm(x)·Wgᵀ) ⊙ rmsnorm(x)·Wuᵀ) · Wdᵀ
///     logits = rmsnorm(x) · Woutᵀ                           [B·T, V]   (Wout = embed when tied)
public final class TrainableLlama: @unchecked Sendable {
    public let configuration: LlamaConfiguration
    /// Every parameter, in Hugging Face's order and naming.
    public let parameters: [Variable]
    let embedding: Variable
    let blocks: [Block]
    let finalNorm: Variable
    let head: Variable?  // nil when the output is tied to the embedding

    struct Block {
        let query, key, value, output, gate, up, down, attentionNorm, feedForwardNorm: Variable
    }

    /// How a block's activations are kept for the backward.
    public enum Recompute: String, Sendable, CaseIterable, Codable { case none, block }

    var rope: RopeParameters {
        RopeParameters(dimensions: configuration.headDim, base: configuration.ropeTheta, linearScale: configuration.ropeLinearScale, mode: .neox)
    }

    /// Weights from `values(name, shape)`, which returns nil for a missing tensor.
    init(configuration c: LlamaConfiguration, values: (String, [Int]) throws -> FloatBuffer) throws {
        configuration = c
        var all: [Variable] = []
        func parameter(_ name: String, _ shape: [Int]) throws -> Variable {
            let v = Variable(shape: shape, value: try values(name, shape), name: name)
            all.append(v)
            return v
        }
        let C = c.hiddenSize
        embedding = try parameter("model.embed_tokens.weight", [c.vocabularySize, C])
        var blocks: [Block] = []
        for i in 0..<c.layerCount {
            let p = "model.layers.\(i)."
            blocks.append(Block(
                query: try parameter(p + "self_attn.q_proj.weight", [c.queryDim, C]),
                key: try parameter(p + "self_attn.k_proj.weight", [c.kvDim, C]),
                value: try parameter(p + "self_attn.v_proj.weight", [c.kvDim, C]),
                output: try parameter(p + "self_attn.o_proj.weight", [C, c.queryDim]),
                gate: try parameter(p + "mlp.gate_proj.weight", [c.intermediateSize, C]),
                up: try parameter(p + "mlp.up_proj.weight", [c.intermediateSize, C]),
                down: try parameter(p + "mlp.down_proj.weight", [C, c.intermediateSize]),
                attentionNorm: try parameter(p + "input_layernorm.weight", [C]),
                feedForwardNorm: try parameter(p + "post_attention_layernorm.weight", [C])))
        }
        self.blocks = blocks
        finalNorm = try parameter("model.norm.weight", [C])
        head = c.tieWordEmbeddings ? nil : try parameter("lm_head.weight", [c.vocabularySize, C])
        parameters = all
    }

    /// A new model: matrices and embeddings drawn from N(0, 0.02²) (Hugging Face's default
    /// `initializer_range`), norms at 1, from a seeded generator.
    public convenience init(configuration: LlamaConfiguration, seed: UInt64) throws {
        try configuration.validate()
        var random = SplitMix64(seed: seed)
        try self.init(configuration: configuration) { name, shape in
            let n = shape.reduce(1, *)
            if name.hasSuffix("norm.weight") { return FloatBuffer([Float](repeating: 1, count: n)) }
            return FloatBuffer((0..<n).map { _ in Float(0.02 * random.nextNormal()) })
        }
    }

    /// Loads `config.json` and the safetensors weights (f32, f16 or bf16) of a Hugging Face directory.
    public convenience init(directory: String) throws {
        let configuration = try LlamaConfiguration.load(configPath: directory + "/config.json")
        let weights = try SafetensorsCollection(directory: directory)
        try self.init(configuration: configuration) { name, shape in
            guard let (file, entry) = weights.entry(name) else { throw FormatError("\(directory): tensor \(name) is missing") }
            guard entry.shape == shape else { throw FormatError("\(directory): tensor \(name) has shape \(entry.shape), expected \(shape)") }
            let buffer = FloatBuffer(count: shape.reduce(1, *))
            dequantize(entry.dtype, from: file.data(of: entry), to: buffer.pointer, count: buffer.count)
            return buffer
        }
    }

    /// Whether a parameter takes weight decay: the projection matrices and an untied output do;
    /// norms and the embedding do not.
    public static func decays(_ name: String) -> Bool { name.hasSuffix("proj.weight") || name == "lm_head.weight" }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// Writes `model.safetensors` and `config.json` into `directory` (which must exist).
    public func save(to directory: String) throws {
        let tensors = parameters.map { p in
            SafetensorsWriter.Tensor(name: p.name, shape: p.shape, data: UnsafeBufferPointer(start: p.pointer, count: p.count))
        }
        try SafetensorsWriter.write(tensors, to: directory + "/model.safetensors")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var config = configuration
        config.architectures = ["LlamaForCausalLM"]
        try writeFile(encoder.encode(config), to: directory + "/config.json")
    }

    /// Logits [B·T, V] of `inputs` (B sequences of T tokens, row-major), recording the backward on `tape`.
    public func logits(_ tape: Tape, inputs: [Int32], batch B: Int, recompute: Recompute = .none) -> Variable {
        let c = configuration
        let T = inputs.count / B
        precondition(B * T == inputs.count && T <= c.maxPositionEmbeddings)
        let positions = (0..<B * T).map { Int32($0 % T) }
        let rope = self.rope
        var x = tape.embedding(inputs, embedding)
        for block in blocks {
            let body: (Tape, Variable) -> Variable = { tape, x in
                let h = tape.rmsNorm(x, block.attentionNorm, epsilon: c.rmsNormEpsilon)
                let q = tape.rope(tape.linear(h, block.query), positions: positions, heads: c.headCount, headDim: c.headDim, parameters: rope)
                let k = tape.rope(tape.linear(h, block.key), positions: positions, heads: c.kvHeadCount, headDim: c.headDim, parameters: rope)
                let v = tape.linear(h, block.value)
                let a = tape.attention(q: q, k: k, v: v, batch: B, tokens: T, heads: c.headCount, kvHeads: c.kvHeadCount, headDim: c.headDim)
                let x1 = tape.add(x, tape.linear(a, block.output))
                let h2 = tape.rmsNorm(x1, block.feedForwardNorm, epsilon: c.rmsNormEpsilon)
                let m = tape.linear(tape.swiglu(tape.linear(h2, block.gate), tape.linear(h2, block.up)), block.down)
                return tape.add(x1, m)
            }
            x = recompute == .block ? tape.checkpoint(x, body) : body(tape, x)
        }
        let h = tape.rmsNorm(x, finalNorm, epsilon: c.rmsNormEpsilon)
        return tape.linear(h, head ?? embedding)
    }

    /// Mean cross-entropy of the logits against `targets` (negative = not scored).
    public func loss(_ tape: Tape, inputs: [Int32], targets: [Int32], batch: Int, recompute: Recompute = .none) -> Variable {
        tape.crossEntropy(logits(tape, inputs: inputs, batch: batch, recompute: recompute), targets: targets)
    }
}

/// Writes `data` to `path` through a temporary file in the same folder and a rename, so that the
/// file is either the old one or the whole new one. Errors (a full disk) are thrown.
public func writeFile(_ data: Data, to path: String) throws {
    let url = URL(fileURLWithPath: path)
    let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
    do {
        try data.write(to: temporary)
        guard rename(temporary.path, path) == 0 else { throw FormatError(String(cString: strerror(errno))) }
    } catch {
        try? FileManager.default.removeItem(at: temporary)
        throw FormatError("\(path): writing failed: \(error.localizedDescription)")
    }
}
