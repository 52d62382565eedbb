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
    /// Every parameter, in Hugging Face's order and naming: views into `arena`.
    public let parameters: [Variable]
    /// The parameters and their gradients as two flat buffers.
    public let arena: ParameterArena
    let embedding: Variable
    let blocks: [Block]
    let finalNorm: Variable
    let head: Variable?  // nil when the output is tied to the embedding

    /// Called during a backward with the arena offset from which on every gradient is final
    /// (after each block's backward, from the last block to the first): data parallelism
    /// all-reduces those buckets while the backward goes on.
    public var gradientsReady: ((Int) -> Void)?

    /// Told before and after each unit's forward and backward, when set: ZeRO-3 gathers a unit's
    /// parameters there and releases them after (`units` says which ranges each unit reads).
    public var residency: (any ParameterResidency)?

    /// The arena ranges each unit of the forward reads, in forward order: the embedding, the
    /// attention and the feed-forward half of each block (each with its norm), then the final norm
    /// with the output (the embedding again when tied).
    public var units: [[Range<Int>]] {
        func range(_ first: Variable, _ last: Variable) -> Range<Int> { arena.offset(of: first)..<arena.offset(of: last) + last.count }
        let embed = range(embedding, embedding)
        return [[embed]]
            + blocks.flatMap { [[range($0.query, $0.output), range($0.attentionNorm, $0.attentionNorm)],
                                [range($0.gate, $0.down), range($0.feedForwardNorm, $0.feedForwardNorm)]] }
            + [[range(finalNorm, finalNorm), head.map { range($0, $0) } ?? embed]]
    }

    /// Whether each unit's backward reads its parameters (the embedding's does not: it only adds
    /// the output gradient into the rows the ids picked).
    public var unitsReadInBackward: [Bool] { [false] + blocks.flatMap { _ in [true, true] } + [true] }

    struct Block {
        let query, key, value, output, gate, up, down, attentionNorm, feedForwardNorm: Variable
    }

    /// How a block's activations are kept for the backward.
    public enum Recompute: String, Sendable, CaseIterable, Codable { case none, block }

    var rope: RopeParameters {
        RopeParameters(dimensions: configuration.headDim, base: configuration.ropeTheta, linearScale: configuration.ropeLinearScale, mode: .neox)
    }

    /// Weights from `values(name, shape)`, asked for in Hugging Face's order, copied into one
    /// `ParameterArena`.
    init(configuration c: LlamaConfiguration, values: (String, [Int]) throws -> FloatBuffer) throws {
        configuration = c
        let tensors = LlamaTensor.all(c)
        let arena = ParameterArena(tensors.map { ($0.name(.huggingFace), $0.shape) })
        for (p, t) in zip(arena.parameters, tensors) {
            let source = try values(p.name, t.shape)
            p.pointer.update(from: source.pointer, count: p.count)
        }
        self.arena = arena
        let byTensor = Dictionary(uniqueKeysWithValues: zip(tensors, arena.parameters))
        func find(_ role: LlamaTensor.Role, _ layer: Int? = nil) -> Variable { byTensor[LlamaTensor(role, layer: layer, c)]! }
        embedding = find(.embedding)
        blocks = (0..<c.layerCount).map { i in
            Block(query: find(.query, i), key: find(.key, i), value: find(.value, i), output: find(.attentionOutput, i),
                  gate: find(.gate, i), up: find(.up, i), down: find(.down, i),
                  attentionNorm: find(.attentionNorm, i), feedForwardNorm: find(.feedForwardNorm, i))
        }
        finalNorm = find(.finalNorm)
        head = c.tieWordEmbeddings ? nil : find(.output)
        parameters = arena.parameters
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

    /// A model for inference that computes with this model's weights where they are (f32, no copy
    /// of the matrices): what the training changes, it sees at once. Rollouts and evaluation during
    /// post-training run on it; it uses the Hugging Face RoPE layout the weights are trained in.
    public func inferenceModel() -> Llama {
        func matrix(_ v: Variable) -> WeightMatrix {
            WeightMatrix(type: .f32, rows: v.shape[0], columns: v.shape[1], data: UnsafeRawPointer(v.pointer), owner: v.value)
        }
        let weights = LlamaWeights(
            embedding: matrix(embedding),
            blocks: blocks.map { b in
                LlamaBlockWeights(attentionNorm: b.attentionNorm.values, query: matrix(b.query), key: matrix(b.key), value: matrix(b.value),
                                  output: matrix(b.output), feedForwardNorm: b.feedForwardNorm.values,
                                  gate: matrix(b.gate), up: matrix(b.up), down: matrix(b.down))
            },
            finalNorm: finalNorm.values, output: matrix(head ?? embedding), ropeMode: .neox)
        return Llama(configuration: configuration, weights: weights)
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
        let residency = self.residency
        /// Runs the forward of units `us` (consecutive) between the residency's calls; recorded
        /// around it, the calls for their backward run before and after their backward steps.
        func units<T>(_ us: [Int], _ body: () -> T) -> T {
            guard let residency else { return body() }
            for u in us { tape.record { residency.afterBackward(u) } }
            for u in us { residency.beforeForward(u) }
            let output = body()
            for u in us.reversed() { residency.afterForward(u, backwardFollows: tape.recording) }
            for u in us { tape.record { residency.beforeBackward(u) } }
            return output
        }
        var x = units([0]) { tape.embedding(inputs, embedding) }
        // Recorded before a block, a marker runs in the backward after all of that block's steps.
        func markReady(_ first: Variable) {
            if let ready = gradientsReady {
                let offset = arena.offset(of: first)
                tape.record { ready(offset) }
            }
        }
        for (i, block) in blocks.enumerated() {
            markReady(block.query)
            let attention: (Tape, Variable) -> Variable = { tape, x in
                let h = tape.rmsNorm(x, block.attentionNorm, epsilon: c.rmsNormEpsilon)
                let q = tape.rope(tape.linear(h, block.query), positions: positions, heads: c.headCount, headDim: c.headDim, parameters: rope)
                let k = tape.rope(tape.linear(h, block.key), positions: positions, heads: c.kvHeadCount, headDim: c.headDim, parameters: rope)
                let v = tape.linear(h, block.value)
                let a = tape.attention(q: q, k: k, v: v, batch: B, tokens: T, heads: c.headCount, kvHeads: c.kvHeadCount, headDim: c.headDim)
                return tape.add(x, tape.linear(a, block.output))
            }
            let feedForward: (Tape, Variable) -> Variable = { tape, x1 in
                let h2 = tape.rmsNorm(x1, block.feedForwardNorm, epsilon: c.rmsNormEpsilon)
                let m = tape.linear(tape.swiglu(tape.linear(h2, block.gate), tape.linear(h2, block.up)), block.down)
                return tape.add(x1, m)
            }
            if recompute == .block {
                x = units([2 * i + 1, 2 * i + 2]) { tape.checkpoint(x) { tape, x in feedForward(tape, attention(tape, x)) } }
            } else {
                x = units([2 * i + 1]) { attention(tape, x) }
                x = units([2 * i + 2]) { feedForward(tape, x) }
            }
        }
        markReady(finalNorm)
        return units([2 * blocks.count + 1]) {
            let h = tape.rmsNorm(x, finalNorm, epsilon: c.rmsNormEpsilon)
            return tape.linear(h, head ?? embedding)
        }
    }

    /// Mean cross-entropy of the logits against `targets` (negative = not scored).
    public func loss(_ tape: Tape, inputs: [Int32], targets: [Int32], batch: Int, recompute: Recompute = .none) -> Variable {
        tape.crossEntropy(logits(tape, inputs: inputs, batch: batch, recompute: recompute), targets: targets)
    }
}

/// Where a model's parameters must be present during its forward and backward, unit by unit
/// (`TrainableLlama.units`): the calls come in the order the passes reach the units.
public protocol ParameterResidency: AnyObject {
    func beforeForward(_ unit: Int)
    /// `backwardFollows` is false for a forward whose tape records nothing (evaluation).
    func afterForward(_ unit: Int, backwardFollows: Bool)
    func beforeBackward(_ unit: Int)
    func afterBackward(_ unit: Int)
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
