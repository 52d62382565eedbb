import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// GPT-2's training path: every weight an f32 `Variable` of one `ParameterArena`, the forward
/// recorded on a `Tape`:
///
///     x = wte[ids] + wpe[positions]                              [B·T, C]
///     for each block:
///         h = LN₁(x) ; q, k, v = h·Wqᵀ + bq, h·Wkᵀ + bk, h·Wvᵀ + bv
///         x = x + attention(q, k, v, causal) · Woᵀ + bo
///         x = x + gelu(LN₂(x) · Wfcᵀ + bfc) · Wprojᵀ + bproj
///     logits = LN_f(x) · wteᵀ                                    [B·T, V]   (the head is tied)
///
/// It reads and writes Hugging Face's `GPT2LMHeadModel` folder: the `Conv1D` weights are stored
/// [in, out] there and held [out, in] here, and `c_attn`'s fused Q, K, V are held as three matrices,
/// so `gradient(named:)` gives each gradient back in the file's layout and naming.
public final class TrainableGPT2: @unchecked Sendable {
    public let configuration: LlamaConfiguration
    public let arena: ParameterArena
    let tokenEmbedding: Variable, positionEmbedding: Variable
    let blocks: [Block]
    let finalNorm: (weight: Variable, bias: Variable)
    /// The precision of the matrix products (`TrainableLlama.precision` sets it).
    var precision: Precision = .f32

    struct Block {
        let norm1, norm2: (weight: Variable, bias: Variable)
        let query, key, value, output, up, down: (weight: Variable, bias: Variable)
    }

    /// The parameters in the arena's order: (name, shape [out, in] for matrices).
    static func tensors(_ c: LlamaConfiguration) -> [(name: String, shape: [Int])] {
        let C = c.hiddenSize, F = c.intermediateSize
        var list: [(String, [Int])] = [("wte.weight", [c.vocabularySize, C]), ("wpe.weight", [c.maxPositionEmbeddings, C])]
        for i in 0..<c.layerCount {
            let h = "h.\(i)."
            list += [(h + "ln_1.weight", [C]), (h + "ln_1.bias", [C])]
            for part in ["q", "k", "v"] { list += [(h + "attn.\(part).weight", [C, C]), (h + "attn.\(part).bias", [C])] }
            list += [(h + "attn.c_proj.weight", [C, C]), (h + "attn.c_proj.bias", [C]), (h + "ln_2.weight", [C]), (h + "ln_2.bias", [C]),
                     (h + "mlp.c_fc.weight", [F, C]), (h + "mlp.c_fc.bias", [F]), (h + "mlp.c_proj.weight", [C, F]), (h + "mlp.c_proj.bias", [C])]
        }
        return list + [("ln_f.weight", [C]), ("ln_f.bias", [C])]
    }

    /// Weights from `values(name, shape)`, asked for in the arena's order and naming (`tensors`).
    init(configuration c: LlamaConfiguration, values: (String, [Int]) throws -> [Float]) throws {
        guard c.family == .gpt2 else { throw TrainingError("not a GPT-2 configuration (\(c.family.rawValue))") }
        try c.validate()
        configuration = c
        let list = Self.tensors(c)
        arena = ParameterArena(list)
        for (p, t) in zip(arena.parameters, list) {
            let v = try values(t.name, t.shape)
            precondition(v.count == p.count, "\(t.name): \(v.count) values for \(p.count)")
            p.pointer.update(from: v, count: p.count)
        }
        var parameters = arena.parameters.makeIterator()
        func pair() -> (Variable, Variable) { (parameters.next()!, parameters.next()!) }
        tokenEmbedding = parameters.next()!
        positionEmbedding = parameters.next()!
        blocks = (0..<c.layerCount).map { _ in
            let norm1 = pair(), q = pair(), k = pair(), v = pair(), o = pair(), norm2 = pair(), up = pair(), down = pair()
            return Block(norm1: norm1, norm2: norm2, query: q, key: k, value: v, output: o, up: up, down: down)
        }
        finalNorm = pair()
    }

    /// A new model as Hugging Face's GPT-2 draws one: matrices and embeddings from N(0, 0.02²), the
    /// two residual projections (`c_proj`) from N(0, (0.02 / √(2·layers))²), biases 0, LayerNorms
    /// at weight 1 and bias 0, from a seeded generator.
    public convenience init(configuration c: LlamaConfiguration, seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        let residual = 0.02 / Double(2 * c.layerCount).squareRoot()
        try self.init(configuration: c) { name, shape in
            let n = shape.reduce(1, *)
            if shape.count == 1 { return [Float](repeating: name.contains("ln_") && name.hasSuffix(".weight") ? 1 : 0, count: n) }
            let std = name.hasSuffix("c_proj.weight") ? residual : 0.02
            return (0..<n).map { _ in Float(std * random.nextNormal()) }
        }
    }

    /// A GPT2LMHeadModel folder (`config.json` and safetensors, names with or without `transformer.`).
    public convenience init(directory: String) throws {
        let c = try LlamaConfiguration.load(configPath: directory + "/config.json")
        guard c.family == .gpt2 else { throw TrainingError("\(directory): not a GPT-2 model (\(c.family.rawValue))") }
        let files = try SafetensorsCollection(directory: directory)
        let prefix = files.entry("transformer.wte.weight") != nil ? "transformer." : ""
        func read(_ name: String, _ count: Int) throws -> [Float] {
            guard let (file, entry) = files.entry(prefix + name) else { throw FormatError("\(directory): tensor \(prefix + name) is missing") }
            guard entry.shape.reduce(1, *) == count else { throw FormatError("\(directory): tensor \(prefix + name) has shape \(entry.shape)") }
            return dequantize(entry.dtype, from: file.data(of: entry), count: count)
        }
        let C = c.hiddenSize
        var fused: (layer: String, weight: [Float], bias: [Float])?
        try self.init(configuration: c) { name, shape in
            let n = shape.reduce(1, *)
            // h.i.attn.{q,k,v}.{weight,bias}: the rows of c_attn (as [3C, C]), Q then K then V.
            if let range = name.range(of: #"attn\.[qkv]\."#, options: .regularExpression) {
                let layer = String(name[..<range.lowerBound])
                if fused?.layer != layer {
                    fused = (layer, transposed(try read(layer + "attn.c_attn.weight", 3 * C * C), rows: C, columns: 3 * C),
                             try read(layer + "attn.c_attn.bias", 3 * C))
                }
                let k = ["q", "k", "v"].firstIndex(of: String(name[name.index(range.lowerBound, offsetBy: 5)]))!
                let source = shape.count == 2 ? fused!.weight : fused!.bias
                return Array(source[k * n..<(k + 1) * n])
            }
            // Conv1D weights are stored [in, out].
            if shape.count == 2 && name.hasPrefix("h.") { return transposed(try read(name, n), rows: shape[1], columns: shape[0]) }
            return try read(name, n)
        }
    }

    /// Logits [B·T, V] of `inputs` [B·T] (B sequences of T tokens, each from position 0, or at
    /// `positions` when rows hold packed sequences, each then attending within itself only).
    public func logits(_ tape: Tape, inputs: [Int32], batch B: Int, positions packed: [Int32]? = nil,
                       recompute: TrainableLlama.Recompute = .none) -> Variable {
        let c = configuration, T = inputs.count / B, C = c.hiddenSize, H = c.headCount, eps = c.rmsNormEpsilon
        precondition(inputs.count == B * T && T <= c.maxPositionEmbeddings, "GPT-2: \(inputs.count) tokens are not \(B) sequences within the context")
        func linear(_ tape: Tape, _ x: Variable, _ l: (weight: Variable, bias: Variable)) -> Variable { tape.addBias(tape.linear(x, l.weight, precision: precision), l.bias) }
        let positions = packed ?? (0..<B * T).map { Int32($0 % T) }
        let segmentStarts = packed.map { TrainableLlama.segmentStarts(positions: $0, tokens: T) }
        var x = tape.add(tape.embedding(inputs, tokenEmbedding), tape.embedding(positions, positionEmbedding))
        for block in blocks {
            let body: (Tape, Variable) -> Variable = { tape, x in
                let h = tape.layerNorm(x, block.norm1.weight, block.norm1.bias, epsilon: eps)
                let a = tape.attention(q: linear(tape, h, block.query), k: linear(tape, h, block.key), v: linear(tape, h, block.value), batch: B, tokens: T,
                                       heads: H, kvHeads: H, headDim: C / H, segmentStarts: segmentStarts)
                let x1 = tape.add(x, linear(tape, a, block.output))
                let h2 = tape.layerNorm(x1, block.norm2.weight, block.norm2.bias, epsilon: eps)
                return tape.add(x1, linear(tape, tape.gelu(linear(tape, h2, block.up)), block.down))
            }
            x = recompute == .block ? tape.checkpoint(x, body) : body(tape, x)
        }
        return tape.linear(tape.layerNorm(x, finalNorm.weight, finalNorm.bias, epsilon: eps), tokenEmbedding, precision: precision)
    }

    /// The mean next-token cross-entropy of `inputs` [B·T], each token predicting the next in its
    /// sequence (transformers' shift with labels = input_ids).
    public func loss(_ tape: Tape, inputs: [Int32], batch B: Int) -> Variable {
        let T = inputs.count / B
        let targets = (0..<B * T).map { $0 % T == T - 1 ? -1 : inputs[$0 + 1] }
        return tape.crossEntropy(logits(tape, inputs: inputs, batch: B), targets: targets)
    }

    /// The gradient of the Hugging Face tensor `name` (without `transformer.`), in the file's layout:
    /// Conv1D weights [in, out], `c_attn` the fused Q, K, V.
    public func gradient(named name: String) -> [Float]? {
        fileTensors { Array(UnsafeBufferPointer(start: $0.gradient.pointer, count: $0.count)) }.first { $0.name == name }?.values
    }
}

extension TrainableGPT2 {
    /// The model's tensors as GPT2LMHeadModel names them (without `transformer.`), from `read` of
    /// each parameter (its values or its gradient): matrices [out, in], `c_attn` the rows of Q, K and V
    /// fused; `conv1D` marks the weights the file stores transposed.
    func tensors(_ read: (Variable) -> [Float]) -> [(name: String, shape: [Int], values: [Float], conv1D: Bool)] {
        let c = configuration, C = c.hiddenSize
        func one(_ name: String, _ v: Variable, conv1D: Bool = false) -> (String, [Int], [Float], Bool) { (name, v.shape, read(v), conv1D) }
        var list = [one("wte.weight", tokenEmbedding), one("wpe.weight", positionEmbedding)]
        for (i, b) in blocks.enumerated() {
            let h = "h.\(i)."
            list += [one(h + "ln_1.weight", b.norm1.weight), one(h + "ln_1.bias", b.norm1.bias),
                     (h + "attn.c_attn.weight", [3 * C, C], read(b.query.weight) + read(b.key.weight) + read(b.value.weight), true),
                     (h + "attn.c_attn.bias", [3 * C], read(b.query.bias) + read(b.key.bias) + read(b.value.bias), false),
                     one(h + "attn.c_proj.weight", b.output.weight, conv1D: true), one(h + "attn.c_proj.bias", b.output.bias),
                     one(h + "ln_2.weight", b.norm2.weight), one(h + "ln_2.bias", b.norm2.bias),
                     one(h + "mlp.c_fc.weight", b.up.weight, conv1D: true), one(h + "mlp.c_fc.bias", b.up.bias),
                     one(h + "mlp.c_proj.weight", b.down.weight, conv1D: true), one(h + "mlp.c_proj.bias", b.down.bias)]
        }
        return list + [one("ln_f.weight", finalNorm.weight), one("ln_f.bias", finalNorm.bias)]
    }

    /// `tensors` in the file's own layout: the Conv1D weights [in, out].
    func fileTensors(_ read: (Variable) -> [Float]) -> [(name: String, shape: [Int], values: [Float])] {
        tensors(read).map { t in
            t.conv1D ? (t.name, [t.shape[1], t.shape[0]], transposed(t.values, rows: t.shape[0], columns: t.shape[1])) : (t.name, t.shape, t.values)
        }
    }

    /// Writes a Hugging Face GPT2LMHeadModel folder: config.json (GPT-2's keys, no token ids) and model.safetensors
    /// (`transformer.` names, Conv1D layout, the fused c_attn). The head is tied, so it is not stored.
    public func save(to directory: String) throws {
        let c = configuration
        let config: [String: Any] = [
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": c.hiddenSize, "n_layer": c.layerCount, "n_head": c.headCount,
            "n_positions": c.maxPositionEmbeddings, "n_ctx": c.maxPositionEmbeddings, "n_inner": c.intermediateSize, "vocab_size": c.vocabularySize,
            "layer_norm_epsilon": Double(c.rmsNormEpsilon), "activation_function": "gelu_new", "tie_word_embeddings": true,
            "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "torch_dtype": "float32",
            // GPT2Config's defaults (50256) name OpenAI's vocabulary; the tokenizer beside the model names its own.
            "bos_token_id": NSNull(), "eos_token_id": NSNull(),
        ]
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try writeFile(data, to: directory + "/config.json")
        let tensors = fileTensors(\.values)
        let buffers = tensors.map { FloatBuffer($0.values) }
        try SafetensorsWriter.write(zip(tensors, buffers).map { t, b in
            SafetensorsWriter.Tensor(name: "transformer." + t.name, shape: t.shape, data: UnsafeBufferPointer(start: b.pointer, count: b.count))
        }, to: directory + "/model.safetensors")
        withExtendedLifetime(buffers) {}
    }
}
