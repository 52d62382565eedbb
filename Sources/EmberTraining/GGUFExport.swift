import EmberFormats
import EmberModels
import EmberTensor
import EmberTokenizers
import Foundation

/// Writes a Hugging Face LLaMA directory (config.json, safetensors, a byte-level BPE tokenizer.json)
/// as a GGUF file that llama.cpp runs, laid out as llama.cpp's own converter lays it out:
/// `llama.*` hyper-parameters, the `gpt2` tokenizer (tokens, token types, merges, pre-tokenizer),
/// tensors renamed (`blk.N.attn_q.weight`, …), and the query and key rows of each head permuted
/// from Hugging Face's rotate-half pairs back to the interleaved pairs GGUF expects.
/// Norms stay f32; matrices are f32, f16 or q8_0.
public enum GGUFExport {
    public enum MatrixType: String, CaseIterable, Sendable { case f32, f16, q8_0 }

    /// With `merging`, each adapted matrix is written as W + (α / r) · B · A (`--merge-lora`).
    public static func write(directory: String, to path: String, type: MatrixType, merging adapter: LoRAAdapter? = nil) throws {
        let model = try TrainableLlama(directory: directory)
        if let gpt2 = model.gpt2 {
            guard adapter == nil else { throw TrainingError("GPT-2 takes no LoRA adapters to merge") }
            return try writeGPT2(gpt2, directory: directory, to: path, type: type)
        }
        let c = model.configuration
        if let adapter { model.merge(adapter) }
        var writer = GGUFWriter()
        func meta(_ key: String, _ value: GGUFValue) { writer.metadata.append((key, value)) }
        meta("general.architecture", .string("llama"))
        meta("general.name", .string((directory as NSString).lastPathComponent))
        meta("general.file_type", .uint32(type == .f32 ? 0 : type == .f16 ? 1 : 7))
        meta("llama.block_count", .uint32(UInt32(c.layerCount)))
        meta("llama.context_length", .uint32(UInt32(c.maxPositionEmbeddings)))
        meta("llama.embedding_length", .uint32(UInt32(c.hiddenSize)))
        meta("llama.feed_forward_length", .uint32(UInt32(c.intermediateSize)))
        meta("llama.attention.head_count", .uint32(UInt32(c.headCount)))
        meta("llama.attention.head_count_kv", .uint32(UInt32(c.kvHeadCount)))
        meta("llama.attention.key_length", .uint32(UInt32(c.headDim)))
        meta("llama.attention.value_length", .uint32(UInt32(c.headDim)))
        meta("llama.rope.freq_base", .float32(c.ropeTheta))
        meta("llama.rope.dimension_count", .uint32(UInt32(c.headDim)))
        meta("llama.attention.layer_norm_rms_epsilon", .float32(c.rmsNormEpsilon))
        meta("llama.vocab_size", .uint32(UInt32(c.vocabularySize)))
        meta("general.quantization_version", .uint32(2))
        try addTokenizer(to: &writer, directory: directory, vocabularySize: c.vocabularySize)

        // llama.cpp's converter writes each block's tensors in this order.
        let order: [LlamaTensor.Role] = [.embedding, .attentionNorm, .query, .key, .value, .attentionOutput, .feedForwardNorm,
                                         .gate, .up, .down, .finalNorm, .output]
        func rank(_ t: LlamaTensor) -> Int {
            (t.layer.map { $0 + 1 } ?? (t.role == .embedding ? 0 : c.layerCount + 1)) * order.count + order.firstIndex(of: t.role)!
        }
        let tensors = zip(LlamaTensor.all(c), model.parameters).sorted { rank($0.0) < rank($1.0) }
        for (t, p) in tensors {
            var values = p.values
            if t.permutedInGGUF { values = LlamaTensor.interleavePairs(values, heads: t.heads(c), columns: p.shape[1]) }
            addTensor(to: &writer, name: t.name(.gguf), shape: p.shape, values: values, type: t.isMatrix ? type : .f32)
        }
        try writer.write(to: path)
    }

    /// A tensor [rows, columns] (or [n]) in `type`: GGUF lists the extents fastest first.
    static func addTensor(to writer: inout GGUFWriter, name: String, shape: [Int], values: [Float], type: MatrixType) {
        let extents = shape.count == 2 ? [shape[1], shape[0]] : [values.count]
        switch type {
        case .f32: writer.addTensor(name: name, type: .f32, extents: extents, data: values.withUnsafeBytes { Array($0) })
        case .f16: writer.addTensor(name: name, type: .f16, extents: extents, data: values.map { Float16($0) }.withUnsafeBytes { Array($0) })
        case .q8_0: writer.addTensor(name: name, type: .q8_0, extents: extents, data: quantizeQ8_0(values))
        }
    }

    /// The directory's byte-level BPE tokenizer.json as llama.cpp's `gpt2` vocabulary (tokens, types,
    /// merges, pre-tokenizer, end-of-text and fill-in-the-middle tokens), padded to the model's size.
    static func addTokenizer(to writer: inout GGUFWriter, directory: String, vocabularySize: Int) throws {
        let tokenizerPath = directory + "/tokenizer.json"
        guard FileManager.default.fileExists(atPath: tokenizerPath) else { throw FormatError("\(directory): no tokenizer.json to export") }
        guard let tokenizer = try TokenizerJSON.load(path: tokenizerPath) as? ByteLevelBPETokenizer else {
            throw FormatError("\(tokenizerPath): only byte-level BPE tokenizers export to GGUF here")
        }
        guard tokenizer.vocabularySize <= vocabularySize else {
            throw FormatError("\(directory): the tokenizer has \(tokenizer.vocabularySize) tokens but the model only \(vocabularySize)")
        }
        let pre: String = switch tokenizer.preTokenizer {
        case .gpt2: "gpt-2"
        case .smollm: "smollm"
        case .llama3: "llama-bpe"
        case .qwen2: "qwen2"
        }
        func meta(_ key: String, _ value: GGUFValue) { writer.metadata.append((key, value)) }
        var tokens = tokenizer.tokens, types = tokens.indices.map { tokenizer.isSpecial($0) ? Int32(3) : 1 }
        for i in tokens.count..<vocabularySize {
            tokens.append("[PAD\(i)]")
            types.append(5)  // unused
        }
        meta("tokenizer.ggml.model", .string("gpt2"))
        meta("tokenizer.ggml.pre", .string(pre))
        meta("tokenizer.ggml.tokens", .array(tokens.map { .string($0) }))
        meta("tokenizer.ggml.token_type", .array(types.map { .int32($0) }))
        meta("tokenizer.ggml.merges", .array(tokenizer.mergeList.map { .string($0) }))
        if let eos = tokenizer.eosTokenID ?? tokenizer.id(of: "<|endoftext|>") {
            meta("tokenizer.ggml.eos_token_id", .uint32(UInt32(eos)))
            meta("tokenizer.ggml.bos_token_id", .uint32(UInt32(tokenizer.bosTokenID ?? eos)))
        }
        meta("tokenizer.ggml.add_bos_token", .bool(false))
        // Fill-in-the-middle tokens, under the keys llama.cpp's /infill reads.
        if let fim = FillInTheMiddle(tokenizer: tokenizer) {
            for (key, id) in zip(FillInTheMiddle.ggufKeys, fim.ggufValues) { if let id { meta(key, .uint32(UInt32(id))) } }
        }
    }

    /// GPT-2 as llama.cpp's converter writes it: `gpt2.*` hyper-parameters, `token_embd`,
    /// `position_embd`, and per block `attn_norm`, `attn_qkv` (Q, K, V rows fused), `attn_output`,
    /// `ffn_norm`, `ffn_up` and `ffn_down`, each with its bias; the head tied (no `output`).
    static func writeGPT2(_ model: TrainableGPT2, directory: String, to path: String, type: MatrixType) throws {
        let c = model.configuration
        var writer = GGUFWriter()
        func meta(_ key: String, _ value: GGUFValue) { writer.metadata.append((key, value)) }
        meta("general.architecture", .string("gpt2"))
        meta("general.name", .string((directory as NSString).lastPathComponent))
        meta("general.file_type", .uint32(type == .f32 ? 0 : type == .f16 ? 1 : 7))
        meta("gpt2.block_count", .uint32(UInt32(c.layerCount)))
        meta("gpt2.context_length", .uint32(UInt32(c.maxPositionEmbeddings)))
        meta("gpt2.embedding_length", .uint32(UInt32(c.hiddenSize)))
        meta("gpt2.feed_forward_length", .uint32(UInt32(c.intermediateSize)))
        meta("gpt2.attention.head_count", .uint32(UInt32(c.headCount)))
        meta("gpt2.attention.layer_norm_epsilon", .float32(c.rmsNormEpsilon))
        meta("general.quantization_version", .uint32(2))
        try addTokenizer(to: &writer, directory: directory, vocabularySize: c.vocabularySize)
        // Hugging Face's tensors renamed, every matrix [out, in] as the model holds it.
        let names = ["wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight", "ln_f.weight": "output_norm.weight",
                     "ln_f.bias": "output_norm.bias"]
        let parts = ["ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up",
                     "mlp.c_proj": "ffn_down"]
        for t in model.tensors(\.values) {
            var name = names[t.name] ?? t.name
            if t.name.hasPrefix("h.") {
                let pieces = t.name.split(separator: ".")  // h, i, module..., weight|bias
                let module = pieces[2..<(pieces.count - 1)].joined(separator: ".")
                name = "blk.\(pieces[1]).\(parts[module] ?? module).\(pieces.last!)"
            }
            addTensor(to: &writer, name: name, shape: t.shape, values: t.values, type: t.shape.count == 2 && !name.hasPrefix("position") ? type : .f32)
        }
        try writer.write(to: path)
    }

    /// Writes a LoRA adapter as llama.cpp's GGUF adapter (`llama-cli --lora`): `general.type`
    /// adapter, `adapter.type` lora, `adapter.lora.alpha`, and for each adapted matrix
    /// `<its GGUF name>.lora_a` [r, in] and `.lora_b` [out, r] in f32, B's query and key rows in
    /// GGUF's RoPE pairing as the base's rows are. llama.cpp scales by alpha / rank.
    public static func writeAdapter(_ adapter: LoRAAdapter, configuration c: LlamaConfiguration, name: String, to path: String) throws {
        let lora = adapter.configuration
        guard !lora.rankStabilized else { throw FormatError("rsLoRA (alpha / √rank) has no GGUF form: llama.cpp scales by alpha / rank") }
        var writer = GGUFWriter()
        writer.metadata = [("general.architecture", .string("llama")), ("general.type", .string("adapter")), ("general.name", .string(name)),
                           ("adapter.type", .string("lora")), ("adapter.lora.alpha", .float32(lora.alpha))]
        let weights = adapter.weights(rowOrder: .interleaved, c)
        for layer in 0..<c.layerCount {
            for target in lora.targets {
                let t = LlamaTensor(target.role, layer: layer, c), (a, b) = weights[layer][target]!
                let bValues = Array(UnsafeBufferPointer(start: b.pointer, count: b.count))
                let aValues = Array(UnsafeBufferPointer(start: a.pointer, count: a.count))
                writer.addTensor(name: t.name(.gguf) + ".lora_a", type: .f32, extents: [t.shape[1], lora.rank], data: aValues.withUnsafeBytes { Array($0) })
                writer.addTensor(name: t.name(.gguf) + ".lora_b", type: .f32, extents: [lora.rank, t.shape[0]], data: bValues.withUnsafeBytes { Array($0) })
            }
        }
        try writer.write(to: path)
    }

    /// q8_0 blocks of 32 as llama.cpp's reference quantizer makes them: d = max|x| / 127 (stored f16),
    /// q = round(x / d), half away from zero.
    static func quantizeQ8_0(_ values: [Float]) -> [UInt8] {
        precondition(values.count % 32 == 0)
        var out: [UInt8] = []
        out.reserveCapacity(values.count / 32 * 34)
        for b in stride(from: 0, to: values.count, by: 32) {
            let block = values[b..<b + 32]
            let amax = block.map(abs).max()!
            let d = amax / 127, inverse: Float = d != 0 ? 1 / d : 0
            withUnsafeBytes(of: Float16(d).bitPattern.littleEndian) { out += $0 }
            for x in block { out.append(UInt8(bitPattern: Int8((x * inverse).rounded(.toNearestOrAwayFromZero)))) }
        }
        return out
    }
}
