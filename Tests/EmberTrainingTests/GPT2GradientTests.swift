import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// GPT-2's training path against transformers' GPT2LMHeadModel and PyTorch autograd
/// (scripts/fixtures/gpt2-gradients.py): the loss over 2 × 24 tokens of the tiny random GPT-2 of
/// Tests/Fixtures/architectures/gpt2, and the gradient of every parameter in the file's own layout
/// (Conv1D [in, out], the fused c_attn).
@Suite struct GPT2GradientTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func lossAndGradientsMatchTransformers() throws {
        let reference = try SafetensorsFile(path: Self.root.appendingPathComponent("Tests/Fixtures/gpt2/gradients.safetensors").path)
        func values(_ name: String) throws -> [Float] {
            let entry = try #require(reference.entries[name], "\(name) is missing")
            return dequantize(entry.dtype, from: reference.data(of: entry), count: entry.shape.reduce(1, *))
        }
        let ids = try values("ids").map { Int32($0) }
        let model = try TrainableGPT2(directory: Self.root.appendingPathComponent("Tests/Fixtures/architectures/gpt2/hf").path)
        let tape = Tape()
        let loss = model.loss(tape, inputs: ids, batch: 2)
        tape.backward(loss)
        let expectedLoss = try values("loss")[0]
        var worst: (name: String, difference: Float, scale: Float) = ("", 0, 0)
        var checked = 0
        for name in reference.entries.keys.sorted() where name.hasPrefix("grad.") {
            let hfName = String(name.dropFirst("grad.".count)).replacingOccurrences(of: "transformer.", with: "")
            let ours = try #require(model.gradient(named: hfName), "no gradient for \(hfName)")
            let theirs = try values(name)
            #expect(ours.count == theirs.count, "\(hfName): \(ours.count) values, expected \(theirs.count)")
            let difference = zip(ours, theirs).map { abs($0 - $1) }.max() ?? 0
            if difference > worst.difference { worst = (hfName, difference, theirs.map(abs).max() ?? 0) }
            #expect(difference <= 1e-5, "\(hfName): max |Δ| \(difference)")
            checked += 1
        }
        print("GPT-2 vs transformers: loss \(loss.values[0]) vs \(expectedLoss) (|Δ| \(abs(loss.values[0] - expectedLoss))); "
              + "\(checked) gradients, worst max |Δ| \(worst.difference) (\(worst.name), largest |g| there \(worst.scale))")
        #expect(abs(loss.values[0] - expectedLoss) < 1e-5)
        #expect(checked == 28)
    }
}

/// GPT-2's exports: the Hugging Face folder `TrainableGPT2.save` writes gives the original's logits
/// through Ember's loader, and `GGUFExport` writes the same tensors, names, shapes and bytes as
/// llama.cpp's own convert_hf_to_gguf.py did for the fixture (Tests/Fixtures/architectures/gpt2/model.gguf).
@Suite struct GPT2ExportTests {
    @Test func savedFolderAndGGUFMatchTheOriginals() throws {
        let source = GPT2GradientTests.root.appendingPathComponent("Tests/Fixtures/architectures/gpt2").path
        let folder = NSTemporaryDirectory() + "ember-gpt2-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let model = try TrainableGPT2(directory: source + "/hf")
        try model.save(to: folder)
        try FileManager.default.copyItem(atPath: source + "/hf/tokenizer.json", toPath: folder + "/tokenizer.json")
        let tokens = [3, 17, 42, 100, 7, 250, 31]
        let original = try LoadedModel.load(path: source + "/hf").model.allLogits(tokens)
        let saved = try LoadedModel.load(path: folder).model.allLogits(tokens)
        #expect(saved == original, "the saved folder's logits differ")

        try GGUFExport.write(directory: folder, to: folder + "/model.gguf", type: .f32)
        let ours = try GGUFFile(path: folder + "/model.gguf"), theirs = try GGUFFile(path: source + "/model.gguf")
        #expect(ours.string("general.architecture") == "gpt2")
        var compared = 0
        for info in theirs.tensors {
            let mine = try #require(ours.tensorInfo(named: info.name), "\(info.name) is missing from Ember's GGUF")
            #expect(mine.extents == info.extents && mine.ggmlType == info.ggmlType, "\(info.name): \(mine.extents) vs \(info.extents)")
            let bytes = info.byteCount ?? 0
            #expect(memcmp(ours.data(of: mine), theirs.data(of: info), bytes) == 0, "\(info.name): different values")
            compared += 1
        }
        #expect(compared == theirs.tensors.count && ours.tensors.count == theirs.tensors.count)
        let fromGGUF = try LoadedModel.load(path: folder + "/model.gguf").model.allLogits(tokens)
        #expect(fromGGUF == original, "the exported GGUF's logits differ")
        print("GPT-2 export: saved folder and GGUF give the original's logits; \(compared) tensors equal to llama.cpp's conversion, byte for byte")
    }
}

/// `ember pretrain --architecture gpt2`: GPT-2 through the trainer, on the synthetic data of
/// TrainerTests.
@Suite struct GPT2PretrainingTests {
    static let configuration = LlamaConfiguration(gpt2: 32, layerCount: 2, headCount: 4, vocabularySize: 61, context: 64)

    @Test func trainsResumesBitForBitAndRecomputes() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let dataset = try TokenDataset(directory: data)
        func trainer(_ recompute: TrainableLlama.Recompute = .none, steps: Int = 8) throws -> Trainer {
            var settings = Synthetic.settings(data: data, steps: steps)
            settings.recompute = recompute
            return try Trainer(model: TrainableLlama(configuration: Self.configuration, seed: 4), dataset: dataset, settings: settings)
        }
        let straight = try trainer()
        for _ in 0..<8 { _ = try straight.trainStep() }
        let losses = straight.history.map(\.loss)
        #expect(losses.last! < losses.first! - 0.1, "the loss should fall on repeated structure: \(losses)")

        let first = try trainer()
        for _ in 0..<4 { _ = try first.trainStep() }
        let run = CheckpointFolder(output: folder.path + "/run")
        try run.save(first, keep: 2)
        let checkpoint = try CheckpointFolder.locate(folder.path + "/run")
        // The checkpoint is a GPT2LMHeadModel folder.
        #expect(try LlamaConfiguration.load(configPath: checkpoint + "/config.json").family == .gpt2)
        let resumed = try Trainer.resume(from: checkpoint)
        for _ in 0..<4 { _ = try resumed.trainStep() }
        #expect(resumed.history.map(\.loss) == losses)
        for (a, b) in zip(straight.model.parameters, resumed.model.parameters) { #expect(a.values == b.values, "\(a.name) differs after resuming") }

        let recomputed = try trainer(.block)
        for _ in 0..<8 { _ = try recomputed.trainStep() }
        #expect(recomputed.history.map(\.loss) == losses)
        print("GPT-2 pretraining: losses \(losses.map { String(format: "%.4f", $0) }.joined(separator: " ")); resumed and recomputed runs equal bit for bit")
    }

    /// Packed rows: each sequence takes positions from 0 and attends within itself, so its logits
    /// equal those of the sequence run alone.
    @Test func packedSequencesSeeOnlyThemselves() throws {
        let model = try TrainableLlama(configuration: Self.configuration, seed: 3)
        let a: [Int32] = [5, 9, 14, 2, 33], b: [Int32] = [7, 7, 40]
        let packed = model.forward(Tape(recording: false), inputs: a + b, batch: 1, tokens: 8, positions: [0, 1, 2, 3, 4, 0, 1, 2])
        let alone = model.logits(Tape(recording: false), inputs: b, batch: 1)
        let V = Self.configuration.vocabularySize
        let difference = zip(packed.values.dropFirst(5 * V), alone.values).map { abs($0 - $1) }.max()!
        #expect(difference < 1e-5, "max |Δ| \(difference)")
    }

    @Test func splitLayoutsAreRefused() throws {
        #expect(throws: TrainingError.self) {
            _ = try TrainableLlama(configuration: Self.configuration, seed: 1, layout: ModelLayout(tensorRank: 0, tensorSize: 2))
        }
    }

    /// Generation from the weights being trained (GRPO, PPO) runs LLaMA-path models: GPT-2 is refused
    /// by name instead of stopping the process.
    @Test func rolloutsAreRefused() throws {
        let folder = GPT2GradientTests.root.appendingPathComponent("Tests/Fixtures/architectures/gpt2/hf").path
        let policy = try TrainableLlama(directory: folder)
        let error = #expect(throws: TrainingError.self) {
            _ = try RolloutEngine(policy: policy, prompting: LoadedModel.prompting(directory: folder), maxLength: 64)
        }
        #expect(error?.description.contains("GPT-2") == true)
    }
}
