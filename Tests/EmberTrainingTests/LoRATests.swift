import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// LoRA against PEFT (`scripts/fixtures/lora-reference.py`): a PEFT-saved adapter's logits,
/// gradients and merged weights on a tiny random LLaMA; PEFT's initialisation; Ember's saved
/// adapter read back; adapters that do not fit the model.
@Suite struct LoRATests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func fixture(_ name: String) -> String { root.appendingPathComponent("Tests/Fixtures/lora/" + name).path }

    let reference: SafetensorsFile
    let base: LoadedModel
    let ids: [Int32]

    init() throws {
        reference = try SafetensorsFile(path: Self.fixture("reference.safetensors"))
        base = try LoadedModel.load(path: Self.fixture("base"))
        ids = try Self.values(reference, "ids").map { Int32($0) }
    }

    static func values(_ file: SafetensorsFile, _ name: String) throws -> [Float] {
        let entry = try #require(file.entries[name], "\(name) is missing")
        return dequantize(entry.dtype, from: file.data(of: entry), count: entry.shape.reduce(1, *))
    }

    func logits(_ model: TrainableLlama) -> [Float] {
        model.logits(Tape(recording: false), inputs: ids, batch: 2).values
    }

    @Test func peftAdapterGivesPEFTsLogitsAndGradients() throws {
        let c = base.model.configuration
        let adapter = try LoRAAdapter.load(directory: Self.fixture("peft-adapter"), for: c)
        #expect(adapter.configuration.rank == 4 && adapter.configuration.alpha == 8 && adapter.configuration.targets == LoRATarget.allCases)
        let model = try TrainableLlama(base: base.model.weights, configuration: c, lora: adapter.configuration, adapter: adapter)
        let expected = try Self.values(reference, "adapted_logits")
        let difference = maxDifference(logits(model), expected)
        print("PEFT adapter (rank 4, every projection): logits max difference \(difference) (largest |logit| \(expected.map(abs).max()!))")
        #expect(difference < 1e-4)

        let targets = (0..<ids.count).map { i in i % 12 == 11 ? Int32(-1) : ids[i + 1] }
        let tape = Tape()
        let loss = model.loss(tape, inputs: ids, targets: targets, batch: 2)
        tape.backward(loss)
        var worst: Float = 0
        for p in model.parameters {
            let g = try Self.values(reference, "grad." + p.name)
            worst = max(worst, maxDifference(p.gradient.values, g) / max(g.map(abs).max()!, 1e-6))
        }
        let expectedLoss = try Self.values(reference, "loss")[0]
        print("PEFT adapter: loss \(loss.values[0]) vs \(expectedLoss); gradients of every lora_A and lora_B: largest difference \(worst) of the largest")
        #expect(abs(loss.values[0] - expectedLoss) < 1e-5)
        #expect(worst < 1e-4)
    }

    @Test func mergeEqualsPEFTsMergeAndUnload() throws {
        let c = base.model.configuration
        let adapter = try LoRAAdapter.load(directory: Self.fixture("peft-adapter"), for: c)
        let weights = try SafetensorsCollection(directory: Self.fixture("base"))
        var worst: Float = 0
        for layer in 0..<c.layerCount {
            for target in LoRATarget.allCases {
                let name = LlamaTensor(target.role, layer: layer, c).name(.huggingFace)
                let (file, entry) = try #require(weights.entry(name))
                let w = dequantize(entry.dtype, from: file.data(of: entry), count: entry.shape.reduce(1, *))
                let merged = zip(w, adapter.delta(layer: layer, target)).map { $0 + $1 }
                worst = max(worst, maxDifference(merged, try Self.values(reference, "merged." + name)))
            }
        }
        print("merge W + (α/r)·B·A against PEFT's merge_and_unload, 14 matrices: max difference \(worst)")
        #expect(worst < 1e-5)
    }

    @Test func newAdapterStartsAsTheBase() throws {
        let c = base.model.configuration
        let model = try TrainableLlama(base: base.model.weights, configuration: c, lora: LoRAConfiguration(rank: 4, targets: LoRATarget.allCases), seed: 3)
        for p in model.parameters {
            let bound = p.name.contains("lora_A") ? 1 / Float(p.shape[1]).squareRoot() : 0
            #expect(p.values.allSatisfy { abs($0) <= bound }, "\(p.name) outside ±\(bound)")
            if p.name.contains("lora_A") { #expect(p.values.map(abs).max()! > 0.8 * bound) }
        }
        let difference = maxDifference(logits(model), try Self.values(reference, "base_logits"))
        print("a new adapter (A uniform in ±1/√in, B zero): logits max difference from the base \(difference)")
        #expect(difference < 1e-4)
    }

    @Test func savedAdapterReadsBackAndTrains() throws {
        let c = base.model.configuration
        let adapter = try LoRAAdapter.load(directory: Self.fixture("peft-adapter"), for: c)
        let model = try TrainableLlama(base: base.model.weights, configuration: c, lora: adapter.configuration, adapter: adapter)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ember-lora-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try model.save(to: folder)
        let again = try LoRAAdapter.load(directory: folder, for: c)
        let reloaded = try TrainableLlama(base: base.model.weights, configuration: c, lora: again.configuration, adapter: again)
        #expect(maxDifference(logits(reloaded), logits(model)) == 0)
        #expect(again.configuration == adapter.configuration)
    }

    /// The base's weights with the query and key rows in GGUF's RoPE pairing (what a GGUF base holds).
    func interleavedBase() -> LlamaWeights {
        let c = base.model.configuration
        var w = base.model.weights
        func permuted(_ m: WeightMatrix, heads: Int) -> WeightMatrix {
            let values = dequantize(m.type, from: m.data, count: m.rows * m.columns)
            let buffer = FloatBuffer(LlamaTensor.interleavePairs(values, heads: heads, columns: m.columns))
            return WeightMatrix(type: .f32, rows: m.rows, columns: m.columns, data: UnsafeRawPointer(buffer.pointer), owner: buffer)
        }
        for i in w.blocks.indices {
            w.blocks[i].query = permuted(w.blocks[i].query, heads: c.headCount)
            w.blocks[i].key = permuted(w.blocks[i].key, heads: c.kvHeadCount)
        }
        w.ropeMode = .interleaved
        return w
    }

    /// The serving path (a paged batch) under the adapter, over a Hugging Face and a GGUF-ordered
    /// base; and training over the GGUF-ordered base gives the same logits and saves the same adapter.
    @Test func inferenceAdapterGivesPEFTsLogits() throws {
        let c = base.model.configuration
        let adapter = try LoRAAdapter.load(directory: Self.fixture("peft-adapter"), for: c)
        let expected = try Self.values(reference, "adapted_logits")
        let V = c.vocabularySize
        for weights in [base.model.weights, interleavedBase()] {
            let model = Llama(configuration: c, weights: weights)
            let served = InferenceAdapter(adapter, name: "peft", for: model)
            var worst: Float = 0
            for row in 0..<2 {
                let logits = try model.allLogits(ids[row * 12..<(row + 1) * 12].map { Int($0) }, adapter: served).flatMap { $0 }
                worst = max(worst, maxDifference(logits, Array(expected[row * 12 * V..<(row + 1) * 12 * V])))
            }
            // The serving arithmetic itself (its attention's exponentials) differs from PyTorch's by this much on the base alone.
            var baseline: Float = 0
            let baseLogits = try Self.values(reference, "base_logits")
            for row in 0..<2 {
                let logits = try model.allLogits(ids[row * 12..<(row + 1) * 12].map { Int($0) }).flatMap { $0 }
                baseline = max(baseline, maxDifference(logits, Array(baseLogits[row * 12 * V..<(row + 1) * 12 * V])))
            }
            print("serving path under the PEFT adapter, \(weights.ropeMode) base: logits max difference \(worst) (the base alone: \(baseline))")
            #expect(worst < max(1e-4, 2 * baseline))
            let trainable = try TrainableLlama(base: weights, configuration: c, lora: adapter.configuration, adapter: adapter)
            #expect(maxDifference(logits(trainable), expected) < 1e-4)
            let saved = trainable.adapter()
            for layer in 0..<c.layerCount {
                for t in LoRATarget.allCases {
                    #expect(saved.weights[layer][t]!.b.values == adapter.weights[layer][t]!.b.values, "\(t) of layer \(layer) saved in another row order")
                }
            }
        }
    }

    /// The base and two adapters in one batch: every row's logits equal its own run alone.
    @Test func mixedAdapterBatchEqualsSeparateRuns() throws {
        let c = base.model.configuration
        let model = Llama(configuration: c, weights: interleavedBase())
        let peft = try LoRAAdapter.load(directory: Self.fixture("peft-adapter"), for: c)
        var doubled = peft.configuration
        doubled.alpha *= 2
        let adapters: [InferenceAdapter?] = [nil, InferenceAdapter(peft, name: "a", for: model),
                                             InferenceAdapter(LoRAAdapter(configuration: doubled, weights: peft.weights), name: "b", for: model)]
        let prompts = [Array(ids[0..<12]), Array(ids[12..<24]), Array(ids[3..<10])].map { $0.map { Int($0) } }
        let cache = PagedKVCache(configuration: c, blockCount: 8, blockSize: 4)
        var next = 0
        let entries = zip(prompts, adapters).map { prompt, adapter in
            let blocks = (prompt.count + 3) / 4
            defer { next += blocks }
            return Llama.BatchEntry(tokens: prompt, start: 0, blocks: Array(next..<next + blocks), wantsLogits: true, allLogits: true, adapter: adapter)
        }
        let batched = try model.forward(batch: entries, cache: cache)
        var offset = 0, worst: Float = 0
        for (prompt, adapter) in zip(prompts, adapters) {
            let alone = try model.allLogits(prompt, adapter: adapter)
            for (i, row) in alone.enumerated() { worst = max(worst, maxDifference(row, batched[offset + i])) }
            offset += prompt.count
        }
        let apart = maxDifference(batched[12], batched[24])  // the same token at position 0 under adapters a and b
        print("base + 2 adapters in one batch against each alone: max difference \(worst) (adapters a and b differ by \(apart) at the same first token)")
        #expect(worst < 1e-5)
        #expect(apart > 1e-3)
    }

    /// Writes a copy of the PEFT adapter with `edit` applied to its config, and returns the error loading it gives.
    func loadingError(for c: LlamaConfiguration? = nil, _ edit: (inout [String: Any]) -> Void) throws -> String? {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ember-lora-bad-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.copyItem(atPath: Self.fixture("peft-adapter/adapter_model.safetensors"), toPath: folder + "/adapter_model.safetensors")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.fixture("peft-adapter/adapter_config.json")))) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: folder + "/adapter_config.json"))
        do {
            _ = try LoRAAdapter.load(directory: folder, for: c ?? base.model.configuration)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func adaptersThatDoNotFitAreRefused() throws {
        let rank = try loadingError { $0["r"] = 8 }
        print("rank 8 on rank-4 tensors: \(rank ?? "loaded")")
        #expect(rank?.contains("rank 8 on this model needs [8, 32]") == true)
        let target = try loadingError { $0["target_modules"] = ["q_proj", "c_attn"] }
        print("target c_attn: \(target ?? "loaded")")
        #expect(target?.contains("c_attn is not a linear layer") == true)
        let fewer = try loadingError { $0["target_modules"] = ["q_proj", "v_proj"] }
        print("fewer targets than tensors: \(fewer ?? "loaded")")
        #expect(fewer?.contains("does not belong") == true)
        let dora = try loadingError { $0["use_dora"] = true }
        #expect(dora?.contains("DoRA") == true)
        var wider = base.model.configuration
        wider.hiddenSize = 48
        wider.headDim = 12
        let other = try loadingError(for: wider) { $0["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M" }
        print("another base: \(other ?? "loaded")")
        #expect(other?.contains("made for another base model (HuggingFaceTB/SmolLM2-360M)") == true)
    }
}
