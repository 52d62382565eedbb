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
///
/// Under tensor or pipeline parallelism (`layout`) a rank's model holds its part only: its slices
/// of the matrices, and its stage's layers (`ModelLayout`); the forward runs the collectives of
/// the tensor-parallel group (`tensor`) between the products.
public final class TrainableLlama: @unchecked Sendable {
    public let configuration: LlamaConfiguration
    /// The part of the whole model this one holds.
    public let layout: ModelLayout
    /// Every parameter this model holds, in Hugging Face's order and naming: views into `arena`.
    public let parameters: [Variable]
    /// How each parameter is cut from the whole model's tensor of the same name.
    public let slices: [(tensor: LlamaTensor, slice: ModelLayout.Slice)]
    /// The parameters and their gradients as two flat buffers.
    public let arena: ParameterArena
    let embedding: Variable?  // the first stage's input (nil with a frozen base)
    let blocks: [Block]
    let finalNorm: Variable?  // the last stage's
    let output: Linear?  // the last stage's: lm_head, or the embedding (or its copy) when tied
    /// With LoRA: the frozen base (any storage type, used where it lies) and the adapter's shape;
    /// the arena then holds the adapter's A and B matrices only.
    public let base: LlamaWeights?
    public let lora: LoRAConfiguration?
    /// A reward or value model's score head [1, C] (with a LoRA whose `scoreHead` is set): the
    /// forward then ends in one score per position instead of the vocabulary's logits.
    public let score: Variable?
    /// PPO's value head [1, C] (with a LoRA, beside the adapter): one value per position, read
    /// from the same final hidden states as the logits (`forwardWithValues`).
    public let valueHead: Variable?
    /// The value head's tensor name, and the file beside the adapter that holds it.
    public static let valueHeadName = "value_head.weight", valueHeadFile = "value_head.safetensors"
    /// With LoRA: whether the adapter takes part in the forward (off, the model is its frozen base:
    /// DPO's reference).
    public var adapterEnabled = true
    /// The RoPE pairing the weights are stored for: Hugging Face's, or GGUF's for a GGUF base.
    let ropeMode: RopeMode
    /// The tensor-parallel group the forward's collectives run in (set by the trainer).
    public var tensor: TensorGroup?
    /// The precision of the trained matrices' products (set by the trainer): bf16 rounds both
    /// operands and sums in f32; the weights themselves stay f32.
    public var precision: Precision = .f32 { didSet { gpt2?.precision = precision } }
    /// A GPT-2 model trains through this class too: it then holds the weights and runs the forward,
    /// and this class gives the trainer its arena, its loss and its saving (one process or plain data
    /// parallel; not under ZeRO, tensor or pipeline parallelism, or with LoRA).
    public let gpt2: TrainableGPT2?

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
        precondition(layout.isWhole && lora == nil, "units are those of a whole model without adapters")
        let embedding = embedding!, finalNorm = finalNorm!, output = output!.trained!
        func range(_ first: Variable, _ last: Variable) -> Range<Int> { arena.offset(of: first)..<arena.offset(of: last) + last.count }
        let embed = range(embedding, embedding)
        return [[embed]]
            + blocks.flatMap { [[range($0.query.trained!, $0.output.trained!), range($0.attentionNorm, $0.attentionNorm)],
                                [range($0.gate.trained!, $0.down.trained!), range($0.feedForwardNorm, $0.feedForwardNorm)]] }
            + [[range(finalNorm, finalNorm), range(output, output)]]
    }

    /// Whether each unit's backward reads its parameters (the embedding's does not: it only adds
    /// the output gradient into the rows the ids picked).
    public var unitsReadInBackward: [Bool] { [false] + blocks.flatMap { _ in [true, true] } + [true] }

    struct Block {
        let query, key, value, output, gate, up, down: Linear
        let attentionNorm, feedForwardNorm: Variable
        var linears: [Linear] { [query, key, value, output, gate, up, down] }
    }

    /// A matrix of the forward: trained, or frozen (any storage type) with LoRA's A and B when the
    /// adapter targets it.
    enum Linear {
        case trained(Variable)
        case frozen(WeightMatrix, lora: (a: Variable, b: Variable)?)

        var trained: Variable? { if case .trained(let v) = self { v } else { nil } }
        /// The first parameter of the arena this layer reads (the weight, or LoRA's A).
        var firstParameter: Variable? {
            switch self {
            case .trained(let v): v
            case .frozen(_, let lora): lora?.a
            }
        }
    }

    /// x · Wᵀ, plus (α / r) · B · A · dropout(x) on a LoRA target; `seed` draws the dropout mask.
    func apply(_ tape: Tape, _ x: Variable, _ linear: Linear, seed: UInt64) -> Variable {
        switch linear {
        case .trained(let w):
            return tape.linear(x, w, precision: precision)
        case .frozen(let w, let lora):
            let y = tape.frozenLinear(x, w)
            guard let lora, let settings = self.lora, adapterEnabled else { return y }
            let h = tape.linear(tape.dropout(x, rate: settings.dropout, seed: seed), lora.a, precision: precision)
            return tape.add(y, tape.linear(h, lora.b, precision: precision), scale: settings.scale)
        }
    }

    /// How a block's activations are kept for the backward.
    public enum Recompute: String, Sendable, CaseIterable, Codable { case none, block }

    var rope: RopeParameters {
        RopeParameters(dimensions: configuration.ropeDimensions, base: configuration.ropeTheta, linearScale: configuration.ropeLinearScale, mode: ropeMode,
                       frequencyFactors: configuration.ropeFrequencyFactors)
    }

    /// Draws of dropout masks so far (each forward with LoRA dropout takes one seed per layer).
    private var dropoutDraws: UInt64 = 0

    /// The LLaMA path (and LoRA over it) trains LLaMA and Mistral: other families (their biases,
    /// norms and fused matrices) run for inference only, but GPT-2, which trains whole (`gpt2`).
    static func checkTrainable(_ c: LlamaConfiguration) throws {
        guard c.family != .gpt2 else { throw TrainingError("GPT-2 trains whole (pretrain, sft without LoRA); LoRA runs on LLaMA and Mistral models") }
        guard c.family.trains else {
            throw TrainingError("\(c.family.rawValue) models run for inference only; Ember trains \(ModelFamily.allCases.filter(\.trains).map(\.rawValue).joined(separator: ", ")) and gpt2 models")
        }
        guard !c.attentionBias, c.ropeDimensions == c.headDim else {
            throw TrainingError("attention biases and partial rotary embeddings run for inference only; training needs a plain LLaMA configuration")
        }
    }

    /// Weights from `values(name, shape)`, every tensor of the whole model asked for in Hugging
    /// Face's order (so that a seeded draw is the same whatever the layout), this layout's cut of
    /// each copied into one `ParameterArena`.
    init(configuration c: LlamaConfiguration, layout: ModelLayout = .whole, values: (String, [Int]) throws -> FloatBuffer) throws {
        try Self.checkTrainable(c)
        try layout.check(c)
        configuration = c
        self.layout = layout
        let held = LlamaTensor.all(c).compactMap { t in layout.slice(t, shape: t.shape, c).map { (tensor: t, slice: $0) } }
        let arena = ParameterArena(held.map { ($0.tensor.name(.huggingFace), $0.slice.localShape) })
        var next = 0
        for t in LlamaTensor.all(c) {
            let source = try values(t.name(.huggingFace), t.shape)
            guard next < held.count, held[next].tensor == t else { continue }
            ModelLayout.cut(source.pointer, shape: t.shape, held[next].slice, into: arena.parameters[next].pointer)
            next += 1
        }
        self.arena = arena
        slices = held
        let byTensor = Dictionary(uniqueKeysWithValues: zip(held.map(\.tensor), arena.parameters))
        func find(_ role: LlamaTensor.Role, _ layer: Int? = nil) -> Variable? { byTensor[LlamaTensor(role, layer: layer, c)] }
        func linear(_ role: LlamaTensor.Role, _ layer: Int? = nil) -> Linear { .trained(find(role, layer)!) }
        embedding = layout.isFirstStage ? find(.embedding) : nil
        blocks = layout.layers(c.layerCount).map { i in
            Block(query: linear(.query, i), key: linear(.key, i), value: linear(.value, i), output: linear(.attentionOutput, i),
                  gate: linear(.gate, i), up: linear(.up, i), down: linear(.down, i),
                  attentionNorm: find(.attentionNorm, i)!, feedForwardNorm: find(.feedForwardNorm, i)!)
        }
        finalNorm = find(.finalNorm)
        output = layout.isLastStage ? linear(c.tieWordEmbeddings ? .embedding : .output) : nil
        parameters = arena.parameters
        base = nil
        lora = nil
        score = nil
        valueHead = nil
        ropeMode = .neox
        gpt2 = nil
    }

    /// A GPT-2 model for the trainer (whole: GPT-2 is not split by tensor or pipeline parallelism).
    public init(gpt2 model: TrainableGPT2, layout: ModelLayout = .whole) throws {
        guard layout.isWhole else {
            throw TrainingError("GPT-2 trains in one process or data parallel; tensor and pipeline parallelism split LLaMA models only")
        }
        configuration = model.configuration
        self.layout = layout
        arena = model.arena
        parameters = model.arena.parameters
        slices = []
        embedding = nil
        blocks = []
        finalNorm = nil
        output = nil
        base = nil
        lora = nil
        score = nil
        valueHead = nil
        ropeMode = .neox
        gpt2 = model
    }

    /// LoRA over a frozen base: the base's weights stay where they are, in their own storage type
    /// (f32 from safetensors, or GGUF's quantized blocks: QLoRA), and the arena holds only the
    /// adapter's A [r, in] and B [out, r] per target, named as PEFT saves them. A new adapter is
    /// PEFT's initialisation, A uniform in ±1/√in from `seed` and B zero, so the model starts as
    /// the base; `adapter` continues a saved one.
    /// `valueHead` adds PPO's value head (drawn as a new score head is, or `savedValueHead`).
    public init(base: LlamaWeights, configuration c: LlamaConfiguration, lora settings: LoRAConfiguration, adapter: LoRAAdapter? = nil,
                seed: UInt64 = 1, valueHead: Bool = false, savedValueHead: [Float]? = nil) throws {
        try c.validate()
        try Self.checkTrainable(c)
        try settings.validate()
        configuration = c
        layout = .whole
        slices = []
        self.base = base
        lora = settings
        ropeMode = base.ropeMode
        gpt2 = nil
        var tensors: [(String, [Int])] = []
        for layer in 0..<c.layerCount {
            for target in settings.targets {
                let (a, b) = LoRAAdapter.shapes(target, rank: settings.rank, c)
                tensors += [(LoRAConfiguration.tensorName(layer: layer, target, b: false), a), (LoRAConfiguration.tensorName(layer: layer, target, b: true), b)]
            }
        }
        if settings.scoreHead { tensors.append((LoRAConfiguration.scoreTensorName, [1, c.hiddenSize])) }
        guard !(valueHead && settings.scoreHead) else { throw TrainingError("a value head goes on a generating model's adapter, not on a reward model's (SEQ_CLS)") }
        if valueHead { tensors.append((Self.valueHeadName, [1, c.hiddenSize])) }
        arena = ParameterArena(tensors)
        parameters = arena.parameters
        var random = SplitMix64(seed: seed)
        var next = 0
        var pairs: [[LoRATarget: (a: Variable, b: Variable)]] = []
        let saved = adapter?.weights(rowOrder: ropeMode, c)
        for layer in 0..<c.layerCount {
            var row: [LoRATarget: (a: Variable, b: Variable)] = [:]
            for target in settings.targets {
                let a = arena.parameters[next], b = arena.parameters[next + 1]
                next += 2
                if let (savedA, savedB) = saved?[layer][target] {
                    a.pointer.update(from: savedA.pointer, count: a.count)
                    b.pointer.update(from: savedB.pointer, count: b.count)
                } else {
                    let bound = 1 / Double(a.shape[1]).squareRoot()
                    for i in 0..<a.count { a.pointer[i] = Float((2 * random.nextUnit() - 1) * bound) }
                }
                row[target] = (a, b)
            }
            pairs.append(row)
        }
        if settings.scoreHead {
            // transformers' initialisation of a new score head: N(0, initializer_range²).
            let head = arena.parameters[next]
            if let saved = adapter?.score {
                head.pointer.update(from: saved.pointer, count: head.count)
            } else {
                for i in 0..<head.count { head.pointer[i] = Float(0.02 * random.nextNormal()) }
            }
            score = head
        } else {
            score = nil
        }
        if valueHead {
            let head = arena.parameters[next]
            if let savedValueHead {
                guard savedValueHead.count == head.count else { throw TrainingError("the saved value head has \(savedValueHead.count) values, not \(head.count)") }
                head.pointer.update(from: savedValueHead, count: head.count)
            } else {
                for i in 0..<head.count { head.pointer[i] = Float(0.02 * random.nextNormal()) }
            }
            self.valueHead = head
        } else {
            self.valueHead = nil
        }
        func frozenNorm(_ values: [Float], _ name: String) -> Variable {
            Variable(shape: [values.count], values: values, name: name, requiresGradient: false)
        }
        embedding = nil
        blocks = base.blocks.enumerated().map { i, w in
            func linear(_ m: WeightMatrix, _ t: LoRATarget) -> Linear { .frozen(m, lora: pairs[i][t]) }
            return Block(query: linear(w.query, .query), key: linear(w.key, .key), value: linear(w.value, .value), output: linear(w.output, .output),
                         gate: linear(w.gate!, .gate), up: linear(w.up, .up), down: linear(w.down, .down),  // gated: checkTrainable
                         attentionNorm: frozenNorm(w.attentionNorm, "attention norm \(i)"), feedForwardNorm: frozenNorm(w.feedForwardNorm, "feed-forward norm \(i)"))
        }
        finalNorm = frozenNorm(base.finalNorm, "final norm")
        output = .frozen(base.output, lora: nil)
    }

    /// The adapter as it stands, in Hugging Face's row order (what PEFT loads).
    public func adapter() -> LoRAAdapter {
        precondition(lora != nil, "a model without LoRA has no adapter")
        let weights = blocks.map { block in
            var row: [LoRATarget: (a: FloatBuffer, b: FloatBuffer)] = [:]
            for (target, linear) in zip(LoRATarget.allCases, block.linears) {
                guard case .frozen(_, let pair?) = linear else { continue }
                row[target] = (FloatBuffer(pair.a.values), FloatBuffer(pair.b.values))
            }
            return row
        }
        let head = score.map { FloatBuffer($0.values) }
        let native = LoRAAdapter(configuration: lora!, weights: weights, score: head)
        return LoRAAdapter(configuration: lora!, weights: native.weights(rowOrder: ropeMode, configuration, inverse: true), score: head)
    }

    /// A new model: matrices and embeddings drawn from N(0, 0.02²) (Hugging Face's default
    /// `initializer_range`), norms at 1, from a seeded generator; under a layout, this rank's
    /// part of the very model one process would draw.
    public convenience init(configuration: LlamaConfiguration, seed: UInt64, layout: ModelLayout = .whole) throws {
        if configuration.family == .gpt2 {
            try self.init(gpt2: TrainableGPT2(configuration: configuration, seed: seed), layout: layout)
            return
        }
        try configuration.validate()
        var random = SplitMix64(seed: seed)
        try self.init(configuration: configuration, layout: layout) { name, shape in
            let n = shape.reduce(1, *)
            if name.hasSuffix("norm.weight") { return FloatBuffer([Float](repeating: 1, count: n)) }
            return FloatBuffer((0..<n).map { _ in Float(0.02 * random.nextNormal()) })
        }
    }

    /// Loads `config.json` and the safetensors weights (f32, f16 or bf16) of a Hugging Face
    /// directory (this layout's part of them).
    public convenience init(directory: String, layout: ModelLayout = .whole) throws {
        let configuration = try LlamaConfiguration.load(configPath: directory + "/config.json")
        if configuration.family == .gpt2 {
            try self.init(gpt2: TrainableGPT2(directory: directory), layout: layout)
            return
        }
        let weights = try SafetensorsCollection(directory: directory)
        try self.init(configuration: configuration, layout: layout) { name, shape in
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
        precondition(layout.isWhole && lora == nil && gpt2 == nil, "an inference model needs a whole LLaMA model")
        func matrix(_ v: Variable) -> WeightMatrix {
            WeightMatrix(type: .f32, rows: v.shape[0], columns: v.shape[1], data: UnsafeRawPointer(v.pointer), owner: v.value)
        }
        let weights = LlamaWeights(
            embedding: matrix(embedding!),
            blocks: blocks.map { b in
                LlamaBlockWeights(attentionNorm: b.attentionNorm.values, query: matrix(b.query.trained!), key: matrix(b.key.trained!),
                                  value: matrix(b.value.trained!), output: matrix(b.output.trained!), feedForwardNorm: b.feedForwardNorm.values,
                                  gate: matrix(b.gate.trained!), up: matrix(b.up.trained!), down: matrix(b.down.trained!))
            },
            finalNorm: finalNorm!.values, output: matrix(output!.trained!), ropeMode: .neox)
        return Llama(configuration: configuration, weights: weights)
    }

    /// Whether a parameter takes weight decay: the projection matrices, an untied output and LoRA's
    /// A and B do; norms, biases and the embeddings do not (GPT-2's matrices are `h.N.attn.*` and
    /// `h.N.mlp.*` weights).
    public static func decays(_ name: String) -> Bool {
        name.hasSuffix("proj.weight") || name == "lm_head.weight" || name.contains(".lora_")
            || name.hasPrefix("h.") && name.hasSuffix(".weight") && (name.contains(".attn.") || name.contains(".mlp."))
    }

    /// LoRA over the model at `path`: a Hugging Face folder (its f32, f16 or bf16 weights where
    /// they lie) or a GGUF file (QLoRA: its quantized weights, never expanded whole). With
    /// `adapter`, a saved adapter folder to continue (its own configuration is then used).
    /// Returns the model and the loaded base (its tokenizer and chat format).
    public static func withLoRA(base path: String, lora: LoRAConfiguration, adapter directory: String? = nil,
                                seed: UInt64 = 1, valueHead: Bool = false) throws -> (model: TrainableLlama, base: LoadedModel) {
        let loaded = try LoadedModel.load(path: path)
        let c = loaded.model.configuration
        let adapter = try directory.map { try LoRAAdapter.load(directory: $0, for: c) }
        var settings = adapter?.configuration ?? lora
        settings.baseModel = URL(fileURLWithPath: path).standardizedFileURL.path
        let saved = try directory.flatMap { try loadValueHead(from: $0, hiddenSize: c.hiddenSize) }
        return (try TrainableLlama(base: loaded.model.weights, configuration: c, lora: settings, adapter: adapter, seed: seed,
                                   valueHead: valueHead || saved != nil, savedValueHead: saved), loaded)
    }

    /// The value head saved beside an adapter in `directory` (nil when there is none).
    static func loadValueHead(from directory: String, hiddenSize: Int) throws -> [Float]? {
        let path = directory + "/" + valueHeadFile
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let file = try SafetensorsFile(path: path)
        guard let entry = file.entries[valueHeadName], entry.dtype == .f32, entry.shape == [1, hiddenSize] else {
            throw TrainingError("\(path): no f32 \(valueHeadName) of shape [1, \(hiddenSize)]")
        }
        return Array(UnsafeBufferPointer(start: file.data(of: entry).assumingMemoryBound(to: Float.self), count: hiddenSize))
    }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// Writes `model.safetensors` and `config.json` into `directory` (which must exist); with LoRA,
    /// the adapter (`adapter_model.safetensors`, `adapter_config.json`).
    public func save(to directory: String) throws {
        precondition(layout.isWhole, "a part of a model is saved through its trainer, which assembles the whole")
        if let gpt2 { return try gpt2.save(to: directory) }
        if lora != nil {
            try adapter().save(to: directory)
            if let valueHead {
                try SafetensorsWriter.write([SafetensorsWriter.Tensor(name: Self.valueHeadName, shape: valueHead.shape,
                                                                      data: UnsafeBufferPointer(start: valueHead.pointer, count: valueHead.count))],
                                            to: directory + "/" + Self.valueHeadFile)
            }
            return
        }
        try Self.save(parameters.map { p in (p.name, p.shape, UnsafeBufferPointer(start: UnsafePointer(p.pointer), count: p.count)) },
                      configuration: configuration, to: directory)
    }

    /// Writes the tensors of a whole model, in Hugging Face's order, and its `config.json`.
    static func save(_ tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)], configuration: LlamaConfiguration,
                     to directory: String) throws {
        try SafetensorsWriter.write(tensors.map { SafetensorsWriter.Tensor(name: $0.name, shape: $0.shape, data: $0.values) },
                                    to: directory + "/model.safetensors")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var config = configuration
        config.architectures = ["LlamaForCausalLM"]
        try writeFile(encoder.encode(config), to: directory + "/config.json")
    }

    /// Logits [B·T, V] of `inputs` (B sequences of T tokens, row-major), recording the backward on
    /// `tape`; under tensor parallelism this rank's columns of the (padded) vocabulary.
    public func logits(_ tape: Tape, inputs: [Int32], batch B: Int, recompute: Recompute = .none) -> Variable {
        forward(tape, inputs: inputs, batch: B, tokens: inputs.count / B, recompute: recompute)
    }

    /// This stage's part of the forward over B sequences of T tokens: from the token ids (the
    /// first stage) or the previous stage's output `input`, through this stage's layers, to the
    /// logits on the last stage (the residual stream [B·T, C] on the others; under sequence
    /// parallelism, this rank's rows of it).
    ///
    /// `positions` [B·T] are the tokens' positions when rows hold packed sequences: each sequence
    /// restarts at 0, and attends only within itself (a block-diagonal causal mask).
    public func forward(_ tape: Tape, inputs: [Int32]? = nil, input: Variable? = nil, batch B: Int, tokens T: Int,
                        positions packed: [Int32]? = nil, recompute: Recompute = .none) -> Variable {
        forward(tape, inputs: inputs, input: input, batch: B, tokens: T, positions: packed, recompute: recompute, head: nil)
    }

    /// PPO's policy and value in one pass: the logits of the final hidden states h scaled by
    /// `logitScale` (h · s · Woutᵀ, TRL's logits / temperature) and the value head's h · vᵀ [B·T, 1].
    public func forwardWithValues(_ tape: Tape, inputs: [Int32], batch B: Int, tokens T: Int, logitScale: Float = 1,
                                  recompute: Recompute = .none) -> (logits: Variable, values: Variable) {
        guard let valueHead, let output else { preconditionFailure("this model has no value head") }
        var values: Variable?
        let logits = forward(tape, inputs: inputs, input: nil, batch: B, tokens: T, positions: nil, recompute: recompute) { tape, h in
            values = tape.linear(h, valueHead)
            return self.apply(tape, logitScale == 1 ? h : tape.scale(h, logitScale), output, seed: 0)
        }
        return (logits, values!)
    }

    /// The forward, ending in `head` of the final hidden states when given (else the logits, or
    /// the score head's scores).
    func forward(_ tape: Tape, inputs: [Int32]?, input: Variable?, batch B: Int, tokens T: Int, positions packed: [Int32]?,
                 recompute: Recompute, head: ((Tape, Variable) -> Variable)?) -> Variable {
        if let gpt2 {
            precondition(head == nil && input == nil, "GPT-2 runs whole, with no value head")
            return gpt2.logits(tape, inputs: inputs!, batch: B, positions: packed, recompute: recompute)
        }
        let c = configuration
        precondition(T <= c.maxPositionEmbeddings && (inputs == nil || inputs!.count == B * T))
        let positions = packed ?? (0..<B * T).map { Int32($0 % T) }
        let segmentStarts = packed.map { Self.segmentStarts(positions: $0, tokens: T) }
        let rope = self.rope, group = tensor
        let heads = c.headCount / layout.tensorSize, kvHeads = c.kvHeadCount / layout.tensorSize
        /// Into and out of the tensor-parallel products (nothing without tensor parallelism).
        func enter(_ tape: Tape, _ x: Variable) -> Variable { group.map { tape.enter(x, rows: B * T, $0) } ?? x }
        func leave(_ tape: Tape, _ y: Variable) -> Variable { group.map { tape.leave(y, $0) } ?? y }
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
        var x: Variable
        if let embedding {
            let ids = inputs!
            x = units([0]) {
                group.map { tape.vocabularyEmbedding(ids, embedding, first: $0.rank * embedding.shape[0], $0) } ?? tape.embedding(ids, embedding)
            }
        } else if let base, let ids = inputs {
            x = tape.frozenEmbedding(ids, base.embedding)
        } else {
            x = input!
        }
        // Recorded before a block, a marker runs in the backward after all of that block's steps.
        func markReady(_ first: Variable?) {
            if let ready = gradientsReady {
                let offset = first.map { arena.offset(of: $0) } ?? arena.count
                tape.record { ready(offset) }
            }
        }
        for (i, block) in blocks.enumerated() {
            markReady(block.linears.lazy.compactMap(\.firstParameter).first)
            // One dropout seed per layer and forward, drawn here so that a recomputation draws the same masks.
            let layerSeed = (dropoutDraws &+ UInt64(i)) << 3
            func seed(_ k: UInt64) -> UInt64 { layerSeed | k }
            let attention: (Tape, Variable) -> Variable = { tape, x in
                let h = enter(tape, tape.rmsNorm(x, block.attentionNorm, epsilon: c.rmsNormEpsilon))
                let q = tape.rope(self.apply(tape, h, block.query, seed: seed(0)), positions: positions, heads: heads, headDim: c.headDim, parameters: rope)
                let k = tape.rope(self.apply(tape, h, block.key, seed: seed(1)), positions: positions, heads: kvHeads, headDim: c.headDim, parameters: rope)
                let v = self.apply(tape, h, block.value, seed: seed(2))
                let a = tape.attention(q: q, k: k, v: v, batch: B, tokens: T, heads: heads, kvHeads: kvHeads, headDim: c.headDim,
                                       segmentStarts: segmentStarts, window: c.attentionOptions(layer: i).window)
                return tape.add(x, leave(tape, self.apply(tape, a, block.output, seed: seed(3))))
            }
            let feedForward: (Tape, Variable) -> Variable = { tape, x1 in
                let h2 = enter(tape, tape.rmsNorm(x1, block.feedForwardNorm, epsilon: c.rmsNormEpsilon))
                let m = self.apply(tape, tape.swiglu(self.apply(tape, h2, block.gate, seed: seed(4)), self.apply(tape, h2, block.up, seed: seed(5))),
                                   block.down, seed: seed(6))
                return tape.add(x1, leave(tape, m))
            }
            if recompute == .block {
                x = units([2 * i + 1, 2 * i + 2]) { tape.checkpoint(x) { tape, x in feedForward(tape, attention(tape, x)) } }
            } else {
                x = units([2 * i + 1]) { attention(tape, x) }
                x = units([2 * i + 2]) { feedForward(tape, x) }
            }
        }
        if lora != nil, tape.recording { dropoutDraws &+= UInt64(blocks.count) }
        guard let finalNorm, let output else { return x }
        markReady(lora == nil ? finalNorm : nil)
        return units([2 * blocks.count + 1]) {
            let h = enter(tape, tape.rmsNorm(x, finalNorm, epsilon: c.rmsNormEpsilon))
            if let head { return head(tape, h) }
            if let score { return tape.linear(h, score) }
            return self.apply(tape, h, output, seed: 0)
        }
    }

    /// Mean cross-entropy of the logits against `targets` (negative = not scored). With a trained
    /// output projection and no tensor parallelism, the projection and the loss run fused, a chunk
    /// of rows at a time (`Tape.linearCrossEntropy`), so the [B·T, V] logits are never held.
    public func loss(_ tape: Tape, inputs: [Int32], targets: [Int32], batch: Int, positions: [Int32]? = nil, recompute: Recompute = .none) -> Variable {
        let tokens = inputs.count / batch
        if tensor == nil, gpt2 == nil, score == nil, case .trained(let w)? = output {
            return forward(tape, inputs: inputs, input: nil, batch: batch, tokens: tokens, positions: positions, recompute: recompute) { tape, h in
                tape.linearCrossEntropy(h, w, targets: targets, precision: self.precision)
            }
        }
        return loss(tape, logits: forward(tape, inputs: inputs, batch: batch, tokens: tokens, positions: positions, recompute: recompute),
                    targets: targets)
    }

    /// For each token of rows of T packed tokens, the index within its row where its sequence
    /// begins (its index less its position).
    static func segmentStarts(positions: [Int32], tokens T: Int) -> [Int32] {
        positions.enumerated().map { i, p in
            let start = i % T - Int(p)
            precondition(p >= 0 && start >= 0 && (p == 0 || positions[i - 1] == p - 1), "positions restart at 0 and count up within a row")
            return Int32(start)
        }
    }

    /// Mean cross-entropy of the last stage's logits against `targets`: vocabulary-parallel under
    /// tensor parallelism, where the padded columns take no part.
    public func loss(_ tape: Tape, logits: Variable, targets: [Int32]) -> Variable {
        guard let group = tensor else { return tape.crossEntropy(logits, targets: targets) }
        let columns = logits.shape.last!
        return tape.vocabularyParallelCrossEntropy(logits, targets: targets, first: group.rank * columns, vocabulary: configuration.vocabularySize, group)
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
