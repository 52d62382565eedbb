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
