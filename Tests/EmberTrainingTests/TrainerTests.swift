import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// A temporary folder, removed when the value goes away.
final class TemporaryFolder {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "ember-training-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

enum Synthetic {
    static let configuration = LlamaConfiguration(hiddenSize: 32, intermediateSize: 48, layerCount: 2, headCount: 4, kvHeadCount: 2,
                                                  vocabularySize: 61, maxPositionEmbeddings: 64)

    /// A data folder of `tokens` pseudo-random ids with some repeated structure, and a placeholder tokenizer file.
    static func dataset(in folder: String, tokens: Int = 4000, validation: Int = 600) throws -> String {
        let data = folder + "/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        var state: UInt64 = 5
        func next() -> Int32 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32((state >> 33) % 61)
        }
        let ids = (0..<tokens).map { i in i % 7 == 0 ? 3 : next() }
        try TokenFile.write(Array(ids[..<(tokens - validation)]), vocabularySize: 61, to: data + "/train.bin")
        try TokenFile.write(Array(ids[(tokens - validation)...]), vocabularySize: 61, to: data + "/val.bin")
        try Data("{}".utf8).write(to: URL(fileURLWithPath: data + "/tokenizer.json"))
        let description = TokenDataset.Description(tokenizer: "tokenizer.json", vocabularySize: 61, endOfTextTokenID: nil,
                                                   documents: ["train": 1, "val": 1], tokens: ["train": tokens - validation, "val": validation],
                                                   sources: [])
        try JSONEncoder().encode(description).write(to: URL(fileURLWithPath: data + "/dataset.json"))
        return data
    }

    static func settings(data: String, steps: Int) -> TrainingSettings {
        TrainingSettings(data: data, steps: steps, batchSize: 3, sequenceLength: 16, gradientAccumulation: 2, learningRate: 5e-3,
                         minimumLearningRate: 5e-4, warmup: 2, weightDecay: 0.1, gradientClip: 1, seed: 11, evalEvery: 0, evalWindows: 4)
    }
}

@Suite struct TrainerTests {
    @Test func resumingContinuesBitForBit() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let dataset = try TokenDataset(directory: data)

        let straight = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: dataset,
                                   settings: Synthetic.settings(data: data, steps: 6))
        for _ in 0..<6 { _ = try straight.trainStep() }

        let first = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: dataset,
                                settings: Synthetic.settings(data: data, steps: 6))
        for _ in 0..<3 { _ = try first.trainStep() }
        let run = CheckpointFolder(output: folder.path + "/run")
        try run.save(first, keep: 2)
        let resumed = try Trainer.resume(from: CheckpointFolder.locate(folder.path + "/run"))
        #expect(resumed.step == 3)
        for _ in 0..<3 { _ = try resumed.trainStep() }

        #expect(resumed.history.map(\.loss) == straight.history.map(\.loss))
        for (a, b) in zip(straight.model.parameters, resumed.model.parameters) {
            #expect(a.values == b.values, "\(a.name) differs after resuming")
        }
        for (a, b) in zip(straight.optimizer.squares, resumed.optimizer.squares) {
            #expect(Array(UnsafeBufferPointer(start: a.pointer, count: a.count)) == Array(UnsafeBufferPointer(start: b.pointer, count: b.count)))
        }
        print("resume: losses \(resumed.history.map(\.loss)) equal the straight run's, weights bit-identical")
    }

    /// Parameters, gradients and AdamW moments each live in one flat buffer, parameter after
    /// parameter in Hugging Face's order.
    @Test func parametersGradientsAndMomentsAreFlat() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: TokenDataset(directory: data),
                                  settings: Synthetic.settings(data: data, steps: 2))
        _ = try trainer.trainStep()
        let arena = trainer.model.arena, optimizer = trainer.optimizer
        #expect(arena.count == trainer.model.parameterCount)
        #expect(arena.parameters.map(\.name) == LlamaTensor.all(Synthetic.configuration).map { $0.name(.huggingFace) })
        for (i, p) in arena.parameters.enumerated() {
            let offset = arena.offsets[i]
            #expect(p.pointer == arena.values.pointer + offset && p.gradient.pointer == arena.gradients.pointer + offset)
            #expect(optimizer.moments[i].pointer == optimizer.flatMoments.pointer + offset)
            #expect(optimizer.squares[i].pointer == optimizer.flatSquares.pointer + offset)
        }
        #expect(arena.offsets.last! + arena.parameters.last!.count == arena.count)
    }

    /// The model being trained runs as an inference model in memory, on the live weights: its
    /// logits equal those of the same weights saved and loaded, and follow the next update.
    @Test func theTrainedModelRunsInMemory() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: TokenDataset(directory: data),
                                  settings: Synthetic.settings(data: data, steps: 3))
        _ = try trainer.trainStep()
        let live = trainer.model.inferenceModel()
        let tokens = [3, 17, 42, 3, 8, 60, 1, 3, 25]
        let inMemory = try live.allLogits(tokens)
        let saved = folder.path + "/saved"
        try FileManager.default.createDirectory(atPath: saved, withIntermediateDirectories: true)
        try trainer.model.save(to: saved)
        let loaded = try LoadedModel.load(path: saved).model.allLogits(tokens)
        let difference = zip(inMemory.joined(), loaded.joined()).map { abs($0 - $1) }.max()!
        print("in-memory vs saved and loaded: max |Δlogit| \(difference)")
        #expect(inMemory == loaded)
        _ = try trainer.trainStep()
        #expect(try live.allLogits(tokens) != inMemory, "the in-memory model does not see the update")
    }

    /// An objective of its own plugs into the trainer and the run: its loss trains the model, its
    /// named metric reaches log.jsonl, and the log reads back with it.
    @Test func anotherObjectivePlugsIntoTheRun() throws {
        final class MemorizeOneBatch: TrainingObjective {
            let inputs: [Int32] = (0..<32).map { Int32($0 * 7 % 61) }
            var targets: [Int32] { Array(inputs.dropFirst()) + [inputs[0]] }
            func nextStep(settings: TrainingSettings, share: DataShare) -> [MicroBatch] { [MicroBatch(divisor: 1, loss: loss)] }
            func loss(_ tape: Tape, model: TrainableLlama) -> (loss: Variable, metrics: [String: Float]) {
                let logits = model.logits(tape, inputs: inputs, batch: 2)
                let V = model.configuration.vocabularySize
                let values = logits.values
                let correct = targets.indices.filter { t in
                    let row = values[t * V..<(t + 1) * V]
                    return row.indices.max { row[$0] < row[$1] }! - t * V == Int(targets[t])
                }.count
                return (tape.crossEntropy(logits, targets: targets), ["token_accuracy": Float(correct) / Float(targets.count)])
            }
            func validationLoss(model: TrainableLlama, settings: TrainingSettings, pool: ThreadPool) -> Float {
                let tape = Tape(pool: pool, recording: false)
                return tape.crossEntropy(model.logits(tape, inputs: inputs, batch: 2), targets: targets).values[0]
            }
            var checkpointState: String { "0" }
            var tokenizerFiles: [String] { [] }
        }
        let folder = try TemporaryFolder()
        var settings = Synthetic.settings(data: folder.path, steps: 30)
        settings.evalEvery = 10
        settings.saveEvery = 0
        let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), objective: MemorizeOneBatch(),
                                  settings: settings)
        let run = TrainingRun(trainer: trainer, folder: CheckpointFolder(output: folder.path + "/run"))
        try FileManager.default.createDirectory(atPath: folder.path + "/run", withIntermediateDirectories: true)
        guard case .finished = try run.run(stopOnSignals: false) else { Issue.record("the run did not finish"); return }
        let lines = try String(contentsOfFile: run.logPath, encoding: .utf8).split(separator: "\n")
        let records = try lines.map { try JSONDecoder().decode(StepRecord.self, from: Data($0.utf8)) }
        let first = records.first!, last = records.last!
        print("own objective: loss \(first.loss) → \(last.loss), token accuracy \(first.metrics["token_accuracy"]!) → \(last.metrics["token_accuracy"]!), validation \(last.validationLoss!)")
        #expect(records.count == 30 && records == trainer.history)
        #expect(last.loss < first.loss / 2)
        #expect(last.metrics["token_accuracy"]! > first.metrics["token_accuracy"]!)
        #expect(lines[0].contains("\"token_accuracy\""))
    }

    @Test func lossFallsOnRepeatedStructure() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: TokenDataset(directory: data),
                                  settings: Synthetic.settings(data: data, steps: 40))
        let before = try trainer.evaluate()
        for _ in 0..<40 { _ = try trainer.trainStep() }
        let after = try trainer.evaluate()
        print("validation loss \(before) → \(after) in 40 steps")
        #expect(after < before - 0.2)
    }

    /// Norms and embeddings take weight decay only when asked: with a zero gradient, one AdamW step
    /// moves a weight by exactly −lr·λ·w, so the decayed ones are the ones that moved.
    @Test func weightDecaySkipsNormsAndEmbeddingsUnlessAsked() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        for everything in [false, true] {
            var settings = Synthetic.settings(data: data, steps: 1)
            settings.decayEverything = everything
            let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4),
                                      dataset: TokenDataset(directory: data), settings: settings)
            let before = trainer.model.parameters.map(\.values)
            trainer.model.parameters.forEach { _ = $0.gradient }  // zero gradients: only the decay acts
            trainer.optimizer.update(learningRate: 0.5)
            for (p, old) in zip(trainer.model.parameters, before) {
                let moved = p.values != old
                #expect(moved == (everything || TrainableLlama.decays(p.name)), "\(p.name), decay everything: \(everything)")
            }
        }
    }

    @Test func recomputationGivesTheSameLosses() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        var runs: [[Float]] = []
        for recompute in TrainableLlama.Recompute.allCases {
            var settings = Synthetic.settings(data: data, steps: 4)
            settings.recompute = recompute
            let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: TokenDataset(directory: data),
                                      settings: settings)
            for _ in 0..<4 { _ = try trainer.trainStep() }
            runs.append(trainer.history.map(\.loss))
        }
        #expect(runs[0] == runs[1])
    }
}

/// Bad input gets a clear error, and a failed save leaves the previous checkpoint intact.
@Suite struct TrainingBadInputTests {
    static func shell(_ arguments: [String]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = arguments
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    /// Whether this process can mount a tmpfs (root, a mount command, a kernel and sandbox that allow it).
    static let canMountTmpfs: Bool = {
        guard getuid() == 0, let folder = try? TemporaryFolder() else { return false }
        guard shell(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", folder.path]) == 0 else { return false }
        return shell(["umount", folder.path]) == 0
    }()

    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch { return "\(error)" }
        return "no error"
    }

    @Test func dataShorterThanOneSequence() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path, tokens: 30, validation: 10)
        let text = message {
            _ = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 1), dataset: TokenDataset(directory: data),
                            settings: Synthetic.settings(data: data, steps: 1))
        }
        print(text)
        #expect(text.contains("fewer than one sequence"))
    }

    @Test func truncatedTokenFile() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let path = data + "/train.bin"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 7).write(to: URL(fileURLWithPath: path))
        let text = message { _ = try TokenDataset(directory: data) }
        print(text)
        #expect(text.contains("truncated"))
    }

    @Test func inconsistentHeadCounts() throws {
        let folder = try TemporaryFolder()
        let config = """
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 6, "num_key_value_heads": 4, "vocab_size": 100}
        """
        try Data(config.utf8).write(to: URL(fileURLWithPath: folder.path + "/config.json"))
        let text = message { _ = try LlamaConfiguration.load(configPath: folder.path + "/config.json") }
        print(text)
        #expect(text.contains("not a multiple of the key/value head count"))
    }

    /// Saves a checkpoint, then damages it in several ways; each resume fails with a message naming the file.
    @Test func corruptCheckpoints() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: TokenDataset(directory: data),
                                  settings: Synthetic.settings(data: data, steps: 2))
        _ = try trainer.trainStep()
        let checkpoint = try CheckpointFolder(output: folder.path + "/run").save(trainer, keep: 2)
        for (file, cut) in [("model.safetensors", 100), ("model.safetensors", 5), ("optimizer.safetensors", 64), ("trainer_state.json", 10)] {
            let path = checkpoint + "/" + file
            let original = try Data(contentsOf: URL(fileURLWithPath: path))
            try original.prefix(original.count - cut).write(to: URL(fileURLWithPath: path))
            let text = message { _ = try Trainer.resume(from: checkpoint) }
            print("\(file) cut by \(cut) bytes: \(text)")
            #expect(text.contains(file) || text.contains("truncated"), "\(file): \(text)")
            try original.write(to: URL(fileURLWithPath: path))
        }
        #expect(message { _ = try Trainer.resume(from: checkpoint) } == "no error")
    }

    /// A full disk while saving: a small tmpfs holds one checkpoint but not two. Needs root (mount).
    @Test(.enabled(if: TrainingBadInputTests.canMountTmpfs, "a tmpfs cannot be mounted here (this needs root and mount), so the full-disk check cannot run"))
    func fullDiskKeepsThePreviousCheckpoint() throws {
        let folder = try TemporaryFolder()
        let data = try Synthetic.dataset(in: folder.path)
        let disk = folder.path + "/disk"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        let trainer = try Trainer(model: TrainableLlama(configuration: Synthetic.configuration, seed: 4), dataset: TokenDataset(directory: data),
                                  settings: Synthetic.settings(data: data, steps: 3))
        let bytes = trainer.model.parameterCount * 4 * 3  // weights and two moments
        try #require(Self.shell(["mount", "-t", "tmpfs", "-o", "size=\(bytes * 3 / 2)", "tmpfs", disk]) == 0, "mounting a tmpfs at \(disk)")
        defer { _ = Self.shell(["umount", disk]) }
        let run = CheckpointFolder(output: disk + "/run")
        _ = try trainer.trainStep()
        let first = try run.save(trainer, keep: 5)
        _ = try trainer.trainStep()
        let text = message { try run.save(trainer, keep: 5) }
        print("full disk: \(text)")
        #expect(text.contains("previous checkpoint is intact"))
        #expect(try CheckpointFolder.locate(disk + "/run") == first)
        let resumed = try Trainer.resume(from: first)
        #expect(resumed.step == 1)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: disk + "/run/checkpoints").filter { $0.hasSuffix(".partial") }
        #expect(leftovers.isEmpty)
    }
}
