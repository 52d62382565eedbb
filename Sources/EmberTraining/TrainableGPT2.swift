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

    /// A GPT2LMHeadModel folder (`config.json` and safetensors, names with or without `transformer.`).
    public init(directory: String) throws {
        let c = try LlamaConfiguration.load(configPath: directory + "/config.json")
        guard c.family == .gpt2 else { throw TrainingError("\(directory): not a GPT-2 model (\(c.family.rawValue))") }
        configuration = c
        arena = ParameterArena(Self.tensors(c))
        let files = try SafetensorsCollection(directory: directory)
        let prefix = files.entry("transformer.wte.weight") != nil ? "transformer." : ""
        func read(_ name: String, _ count: Int) throws -> [Float] {
            guard let (file, entry) = files.entry(prefix + name) else { throw FormatError("\(directory): tensor \(prefix + name) is missing") }
            guard entry.shape.reduce(1, *) == count else { throw FormatError("\(directory): tensor \(prefix + name) has shape \(entry.shape)") }
            return dequantize(entry.dtype, from: file.data(of: entry), count: count)
        }
        let C = c.hiddenSize
        var parameters = arena.parameters.makeIterator()
        func fill(_ values: [Float]) -> Variable {
            let p = parameters.next()!
            p.pointer.update(from: values, count: p.count)
            return p
        }
        /// A Conv1D weight [in, out] as [out, in], or rows `columns` of its out dimension.
        func conv1D(_ name: String, in inputs: Int, out outputs: Int, columns: Range<Int>? = nil) throws -> [Float] {
            let stored = try read(name, inputs * outputs), range = columns ?? 0..<outputs
            var out = [Float](repeating: 0, count: range.count * inputs)
            for i in 0..<inputs { for (o, column) in range.enumerated() { out[o * inputs + i] = stored[i * outputs + column] } }
            return out
        }
        tokenEmbedding = fill(try read("wte.weight", c.vocabularySize * C))
        positionEmbedding = fill(try read("wpe.weight", c.maxPositionEmbeddings * C))
        blocks = try (0..<c.layerCount).map { i in
            let h = "h.\(i).", F = c.intermediateSize
            let norm1 = (fill(try read(h + "ln_1.weight", C)), fill(try read(h + "ln_1.bias", C)))
            let qkvBias = try read(h + "attn.c_attn.bias", 3 * C)
            let q = (fill(try conv1D(h + "attn.c_attn.weight", in: C, out: 3 * C, columns: 0..<C)), fill(Array(qkvBias[0..<C])))
            let k = (fill(try conv1D(h + "attn.c_attn.weight", in: C, out: 3 * C, columns: C..<2 * C)), fill(Array(qkvBias[C..<2 * C])))
            let v = (fill(try conv1D(h + "attn.c_attn.weight", in: C, out: 3 * C, columns: 2 * C..<3 * C)), fill(Array(qkvBias[2 * C..<3 * C])))
            let o = (fill(try conv1D(h + "attn.c_proj.weight", in: C, out: C)), fill(try read(h + "attn.c_proj.bias", C)))
            let norm2 = (fill(try read(h + "ln_2.weight", C)), fill(try read(h + "ln_2.bias", C)))
            let up = (fill(try conv1D(h + "mlp.c_fc.weight", in: C, out: F)), fill(try read(h + "mlp.c_fc.bias", F)))
            let down = (fill(try conv1D(h + "mlp.c_proj.weight", in: F, out: C)), fill(try read(h + "mlp.c_proj.bias", C)))
            return Block(norm1: norm1, norm2: norm2, query: q, key: k, value: v, output: o, up: up, down: down)
        }
        finalNorm = (fill(try read("ln_f.weight", C)), fill(try read("ln_f.bias", C)))
    }

    /// Logits [B·T, V] of `inputs` [B·T] (B sequences of T tokens, each from position 0).
    public func logits(_ tape: Tape, inputs: [Int32], batch B: Int) -> Variable {
        let c = configuration, T = inputs.count / B, C = c.hiddenSize, H = c.headCount, eps = c.rmsNormEpsilon
        precondition(inputs.count == B * T && T <= c.maxPositionEmbeddings, "GPT-2: \(inputs.count) tokens are not \(B) sequences within the context")
        func linear(_ x: Variable, _ l: (weight: Variable, bias: Variable)) -> Variable { tape.addBias(tape.linear(x, l.weight), l.bias) }
        let positions = (0..<B * T).map { Int32($0 % T) }
        var x = tape.add(tape.embedding(inputs, tokenEmbedding), tape.embedding(positions, positionEmbedding))
        for block in blocks {
            let h = tape.layerNorm(x, block.norm1.weight, block.norm1.bias, epsilon: eps)
            let a = tape.attention(q: linear(h, block.query), k: linear(h, block.key), v: linear(h, block.value), batch: B, tokens: T,
                                   heads: H, kvHeads: H, headDim: C / H)
            x = tape.add(x, linear(a, block.output))
            let h2 = tape.layerNorm(x, block.norm2.weight, block.norm2.bias, epsilon: eps)
            x = tape.add(x, linear(tape.gelu(linear(h2, block.up)), block.down))
        }
        return tape.linear(tape.layerNorm(x, finalNorm.weight, finalNorm.bias, epsilon: eps), tokenEmbedding)
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
        let names = Self.tensors(configuration).map(\.name)
        func grad(_ n: String) -> (values: [Float], shape: [Int])? {
            guard let i = names.firstIndex(of: n) else { return nil }
            let p = arena.parameters[i]
            return (Array(UnsafeBufferPointer(start: p.gradient.pointer, count: p.count)), p.shape)
        }
        if name.hasSuffix("attn.c_attn.weight") || name.hasSuffix("attn.c_attn.bias") {
            let base = name.replacingOccurrences(of: "c_attn.", with: ""), weight = name.hasSuffix("weight")
            let parts = ["q", "k", "v"].compactMap { grad(base.replacingOccurrences(of: "attn.", with: "attn.\($0).")) }
            guard parts.count == 3 else { return nil }
            return weight ? Self.conv1D(parts) : parts.flatMap(\.values)
        }
        guard let g = grad(name) else { return nil }
        let isConv1D = name.hasSuffix(".weight") && (name.contains("c_proj") || name.contains("c_fc"))
        return isConv1D ? Self.conv1D([g]) : g.values
    }

    /// [out, in] matrices side by side as one Conv1D [in, Σ out], Hugging Face GPT-2's layout.
    static func conv1D(_ parts: [(values: [Float], shape: [Int])]) -> [Float] {
        let inputs = parts[0].shape[1], outputs = parts.reduce(0) { $0 + $1.shape[0] }
        var out = [Float](repeating: 0, count: inputs * outputs)
        var first = 0
        for part in parts {
            for o in 0..<part.shape[0] { for i in 0..<inputs { out[i * outputs + first + o] = part.values[o * inputs + i] } }
            first += part.shape[0]
        }
        return out
    }
}

extension TrainableGPT2 {
    /// The tensors of a GPT2LMHeadModel file, in its layout: (name without `transformer.`, shape, values).
    func huggingFaceTensors() -> [(name: String, shape: [Int], values: [Float])] {
        let c = configuration, C = c.hiddenSize, F = c.intermediateSize
        func values(_ v: Variable) -> [Float] { Array(UnsafeBufferPointer(start: v.pointer, count: v.count)) }
        func conv1D(_ parts: [Variable]) -> [Float] { Self.conv1D(parts.map { (values($0), $0.shape) }) }
        var list: [(String, [Int], [Float])] = [("wte.weight", [c.vocabularySize, C], values(tokenEmbedding)),
                                                ("wpe.weight", [c.maxPositionEmbeddings, C], values(positionEmbedding))]
        for (i, b) in blocks.enumerated() {
            let h = "h.\(i)."
            list += [(h + "ln_1.weight", [C], values(b.norm1.weight)), (h + "ln_1.bias", [C], values(b.norm1.bias)),
                     (h + "attn.c_attn.weight", [C, 3 * C], conv1D([b.query.weight, b.key.weight, b.value.weight])),
                     (h + "attn.c_attn.bias", [3 * C], values(b.query.bias) + values(b.key.bias) + values(b.value.bias)),
                     (h + "attn.c_proj.weight", [C, C], conv1D([b.output.weight])), (h + "attn.c_proj.bias", [C], values(b.output.bias)),
                     (h + "ln_2.weight", [C], values(b.norm2.weight)), (h + "ln_2.bias", [C], values(b.norm2.bias)),
                     (h + "mlp.c_fc.weight", [C, F], conv1D([b.up.weight])), (h + "mlp.c_fc.bias", [F], values(b.up.bias)),
                     (h + "mlp.c_proj.weight", [F, C], conv1D([b.down.weight])), (h + "mlp.c_proj.bias", [C], values(b.down.bias))]
        }
        return list + [("ln_f.weight", [C], values(finalNorm.weight)), ("ln_f.bias", [C], values(finalNorm.bias))]
    }

    /// Writes a Hugging Face GPT2LMHeadModel folder: config.json (GPT-2's keys) and model.safetensors
    /// (`transformer.` names, Conv1D layout, the fused c_attn). The head is tied, so it is not stored.
    public func save(to directory: String) throws {
        let c = configuration
        let config: [String: Any] = [
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": c.hiddenSize, "n_layer": c.layerCount, "n_head": c.headCount,
            "n_positions": c.maxPositionEmbeddings, "n_ctx": c.maxPositionEmbeddings, "n_inner": c.intermediateSize, "vocab_size": c.vocabularySize,
            "layer_norm_epsilon": Double(c.rmsNormEpsilon), "activation_function": "gelu_new", "tie_word_embeddings": true,
            "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "torch_dtype": "float32",
        ]
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try writeFile(data, to: directory + "/config.json")
        let tensors = huggingFaceTensors()
        let buffers = tensors.map { FloatBuffer($0.values) }
        try SafetensorsWriter.write(zip(tensors, buffers).map { t, b in
            SafetensorsWriter.Tensor(name: "transformer." + t.name, shape: t.shape, data: UnsafeBufferPointer(start: b.pointer, count: b.count))
        }, to: directory + "/model.safetensors")
        withExtendedLifetime(buffers) {}
    }
}
