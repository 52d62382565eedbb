import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import EmberTokenizers
import EmberTraining
import Foundation
import Testing

/// The reward model and DPO on a model: the score head against transformers and PEFT
/// (`scripts/fixtures/reward-model-reference.py`: a PEFT SEQ_CLS LoRA with its score over the tiny
/// random LLaMA of the LoRA fixtures), the merged LlamaForSequenceClassification, finite-difference
/// checks of the score head read at the last token (a reward) and at every token (a value head),
/// DPO's known start, and the pairs' tokenization with its skips.
@Suite struct PreferenceTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func fixture(_ path: String) -> String { root.appendingPathComponent("Tests/Fixtures/" + path).path }

    let reference: SafetensorsFile
    let base: LoadedModel
    let ids: [Int32]
    let lengths: [Int]

    init() throws {
        reference = try SafetensorsFile(path: Self.fixture("reward/reference.safetensors"))
        base = try LoadedModel.load(path: Self.fixture("lora/base"))
        ids = try Self.values(reference, "ids").map { Int32($0) }
        lengths = try Self.values(reference, "lengths").map { Int($0) }
    }

    static func values(_ file: SafetensorsFile, _ name: String) throws -> [Float] {
        let entry = try #require(file.entries[name], "\(name) is missing")
        return dequantize(entry.dtype, from: file.data(of: entry), count: entry.shape.reduce(1, *))
    }

    func peftModel() throws -> (TrainableLlama, LoRAAdapter) {
        let c = base.model.configuration
        let adapter = try LoRAAdapter.load(directory: Self.fixture("reward/peft-adapter"), for: c)
        return (try TrainableLlama(base: base.model.weights, configuration: c, lora: adapter.configuration, adapter: adapter), adapter)
    }

    @Test func peftSequenceClassifierGivesTransformersScores() throws {
        let (model, adapter) = try peftModel()
        #expect(adapter.configuration.scoreHead && adapter.score?.count == base.model.configuration.hiddenSize)
        let T = ids.count / lengths.count
        let values = model.forward(Tape(recording: false), inputs: ids, batch: lengths.count, tokens: T).values
        #expect(values.count == ids.count)
        let rows = (0..<lengths.count).map { r in Array(ids[r * T..<(r + 1) * T]) }
        let scores = rows.enumerated().map { r, row in values[r * T + PreferenceObjective.scoredPosition(row, padding: 0)] }
        let expected = try Self.values(reference, "scores")
        let scoreDifference = maxDifference(scores, expected)
        // Values at every real token (padding positions differ: transformers masks them out of attention).
        let expectedValues = try Self.values(reference, "values")
        var valueDifference: Float = 0
        for r in rows.indices { for t in 0..<lengths[r] { valueDifference = max(valueDifference, abs(values[r * T + t] - expectedValues[r * T + t])) } }
        print("PEFT SEQ_CLS adapter: scores at the last non-pad token max difference \(scoreDifference) (scores \(expected)); values at every token \(valueDifference)")
        #expect(scoreDifference < 1e-5 && valueDifference < 1e-5)

        // Saved and loaded again: the same adapter, score head included, in PEFT's names.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ember-reward-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try model.save(to: folder)
        let saved = try SafetensorsFile(path: folder + "/adapter_model.safetensors")
        #expect(saved.entries[LoRAConfiguration.scoreTensorName]?.shape == [1, base.model.configuration.hiddenSize])
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/adapter_config.json"))) as! [String: Any]
        #expect(config["task_type"] as? String == "SEQ_CLS" && (config["modules_to_save"] as? [String])?.contains("score") == true)
        let again = try LoRAAdapter.load(directory: folder, for: base.model.configuration)
        #expect(again.score.map { Array(UnsafeBufferPointer(start: $0.pointer, count: $0.count)) } == adapter.score.map { Array(UnsafeBufferPointer(start: $0.pointer, count: $0.count)) })
    }

    @Test func mergedRewardModelIsTransformersSequenceClassifier() throws {
        let (_, adapter) = try peftModel()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ember-reward-merged-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try MergedExport.write(base: Self.fixture("lora/base"), adapter: adapter, padTokenID: 0, tokenizerFiles: [], to: folder)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/config.json"))) as! [String: Any]
        #expect(config["architectures"] as? [String] == ["LlamaForSequenceClassification"] && (config["id2label"] as? [String: Any])?.count == 1)
        #expect(config["pad_token_id"] as? Int == 0)
        let loaded = try LoadedModel.load(path: folder)
        #expect(loaded.model.configuration.scoresSequences && loaded.model.configuration.padTokenID == 0)
        let T = ids.count / lengths.count
        // Whole rows, padding included: the score is read at the last non-pad token, as transformers reads it.
        let scores = try (0..<lengths.count).map { r in try loaded.model.scores(ids[r * T..<(r + 1) * T].map(Int.init))[0] }
        let expected = try Self.values(reference, "merged_scores")
        let difference = maxDifference(scores, expected)
        print("merged LlamaForSequenceClassification through the serving path: scores max difference \(difference) from transformers' merge_and_unload")
        // The serving arithmetic (its attention's exponentials) differs from PyTorch's by ~3e-3 in this
        // model's logits (LoRATests' baseline); the training path above agrees to 1e-6.
        #expect(difference < 2e-3)
        #expect(throws: Llama.ScoreError.self) { try base.model.scores([1, 2, 3]) }
    }

    /// The largest finite-difference error, relative to the largest gradient, of `loss` over some
    /// values of each parameter (the score head and a LoRA B and A).
    func finiteDifferenceError(_ model: TrainableLlama, _ loss: (Tape) -> Variable) -> Double {
        for p in model.parameters { p.zeroGradient() }
        let tape = Tape()
        tape.backward(loss(tape))
        var worst = 0.0, scale = 0.0
        let checked = model.parameters.filter { $0.name.hasSuffix("score.weight") || $0.name == TrainableLlama.valueHeadName || $0.name.contains("layers.1.self_attn.v_proj") }
        for p in checked {
            let analytic = p.gradient.values
            scale = max(scale, Double(analytic.map(abs).max()!))
            for j in stride(from: 0, to: p.count, by: max(1, p.count / 12)) {
                let saved = p.pointer[j], epsilon: Float = 1e-2
                p.pointer[j] = saved + epsilon
                let plus = Double(loss(Tape(recording: false)).values[0])
                p.pointer[j] = saved - epsilon
                let minus = Double(loss(Tape(recording: false)).values[0])
                p.pointer[j] = saved
                worst = max(worst, abs((plus - minus) / Double(2 * epsilon) - Double(analytic[j])))
            }
        }
        return worst / scale
    }

    func pairs(_ model: TrainableLlama, count: Int, seed: UInt64) -> [PreferencePair] {
        var random = SplitMix64(seed: seed)
        func sequence(_ n: Int, prompt: [Int32]) -> SupervisedSequence {
            let ids = prompt + (0..<n - prompt.count).map { _ in Int32(3 + random.next() % 60) }
            return SupervisedSequence(ids: ids, learned: ids.indices.map { $0 >= prompt.count })
        }
        return (0..<count).map { i in
            let prompt = (0..<3).map { _ in Int32(3 + random.next() % 60) }
            return PreferencePair(chosen: sequence(7 + i % 3, prompt: prompt), rejected: sequence(5 + i % 4, prompt: prompt), line: i + 1)
        }
    }

    @Test func scoreAndValueHeadsPassFiniteDifferences() throws {
        let (model, _) = try peftModel()
        let data = pairs(model, count: 3, seed: 9)
        let objective = try PreferenceObjective(settings: PreferenceSettings(objective: .reward, centering: 0.01), training: data, validation: data,
                                                padding: 0, tokenizerFiles: [], seed: 1)
        let reward = finiteDifferenceError(model) { tape in objective.loss(tape, model, pairs: data, keys: [0, 1, 2]).loss }
        // A value head: the score at every position, weighted (PPO's value loss reads them all).
        var random = SplitMix64(seed: 4)
        let T = 10, weights = (0..<2 * T).map { _ in random.nextNormal() }
        let value = finiteDifferenceError(model) { tape in
            let values = model.forward(tape, inputs: Array(ids[..<(2 * T)]), batch: 2, tokens: T)
            return tape.externalLoss(values) { v in (zip(v, weights).reduce(0) { $0 + $1.0 * $1.1 }, weights) }
        }
        // PPO's policy with a value head: log-probabilities of logits / 0.7 and the values of one
        // pass, both weighted (the LoRA's B drawn, not zero, so that every path carries a gradient).
        let c = base.model.configuration
        let policy = try TrainableLlama(base: base.model.weights, configuration: c, lora: LoRAConfiguration(rank: 4, alpha: 8, targets: LoRATarget.allCases),
                                        seed: 3, valueHead: true)
        for p in policy.parameters where p.name.contains("lora_B") { for i in 0..<p.count { p.pointer[i] = Float(0.05 * random.nextNormal()) } }
        let inputs = Array(ids[..<(2 * T)]), targets = inputs.indices.map { i in i % T + 1 < T ? inputs[i + 1] : -1 }
        let both = finiteDifferenceError(policy) { tape in
            let (logits, values) = policy.forwardWithValues(tape, inputs: inputs, batch: 2, tokens: T, logitScale: 1 / 0.7)
            let logps = tape.tokenLogProbabilities(logits, targets: targets)
            let a = tape.externalLoss(logps) { v in (zip(v, weights).reduce(0) { $0 + $1.0 * $1.1 }, weights) }
            return tape.add(a, tape.externalLoss(values) { v in (zip(v, weights.reversed()).reduce(0) { $0 + $1.0 * $1.1 }, weights.reversed()) })
        }
        print("finite differences: score head read at the last token (Bradley–Terry loss, centring 0.01) worst error \(reward), at every token (a value head) \(value), PPO's policy and value head in one pass \(both), of the largest gradient")
        #expect(reward < 1e-2 && value < 1e-2 && both < 1e-2)
    }

    @Test func dpoStartsAtLn2WithZeroAccuracy() throws {
        let c = base.model.configuration
        let model = try TrainableLlama(base: base.model.weights, configuration: c, lora: LoRAConfiguration(rank: 4, alpha: 8, targets: LoRATarget.allCases), seed: 2)
        let data = pairs(model, count: 8, seed: 3)
        let objective = try PreferenceObjective(settings: PreferenceSettings(objective: .dpo, dpo: DPOLoss()), training: Array(data[..<6]),
                                                validation: Array(data[6...]), padding: 0, tokenizerFiles: [], seed: 1)
        let settings = TrainingSettings(data: "pairs", steps: 8, batchSize: 2, sequenceLength: 16, gradientAccumulation: 2, learningRate: 5e-2,
                                        minimumLearningRate: 5e-2, warmup: 0, weightDecay: 0)
        let trainer = try Trainer(model: model, objective: objective, settings: settings)
        let first = try trainer.trainStep()
        let accuracy = first.metrics["rewards/accuracies"] ?? .nan
        print("DPO step 1: loss \(first.loss) (ln 2 = \(log(2.0))), rewards/accuracies \(accuracy), rewards/margins \(first.metrics["rewards/margins"] ?? .nan)")
        #expect(abs(Double(first.loss) - log(2.0)) < 1e-6)
        #expect(accuracy == 0 && first.metrics["rewards/margins"] == 0)
        var last = first
        for _ in 0..<7 { last = try trainer.trainStep() }
        print("DPO after 8 steps on 6 pairs: loss \(last.loss), rewards/accuracies \(last.metrics["rewards/accuracies"] ?? .nan)")
        #expect(last.loss < first.loss)
    }

    static let smolLM = root.appendingPathComponent(".cache/models/SmolLM2-135M-f32").path
    static let hasSmolLM = FileManager.default.fileExists(atPath: smolLM + "/tokenizer_config.json")

    @Test(.enabled(if: hasSmolLM, "no .cache/models/SmolLM2-135M-f32 with tokenizer files (make test makes it)"))
    func pairsAreTokenizedWithTheirSkipsCounted() throws {
        let prompting = try LoadedModel.prompting(directory: Self.smolLM)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ember-pairs-\(getpid())").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/pairs.jsonl"
        let long = String(repeating: "many words ", count: 200)
        try """
        {"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Seven."}]}
        {"prompt": [{"role": "user", "content": "Same?"}], "chosen": [{"role": "assistant", "content": "Yes."}], "rejected": [{"role": "assistant", "content": "Yes."}]}
        {"prompt": [{"role": "user", "content": "Long?"}], "chosen": [{"role": "assistant", "content": "\(long)"}], "rejected": [{"role": "assistant", "content": "No."}]}
        {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}
        {"chosen": "The sky is blue.", "rejected": "The sky is green."}
        """.write(toFile: path, atomically: true, encoding: .utf8)
        // Mixed plain and conversational lines are an error of the reader; read them apart.
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        try lines[..<3].joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let tokenizer = SupervisedTokenizer(prompting: prompting)
        let chat = try tokenizer.pairs(FineTuningDataset.load(path: path), maximumLength: 128)
        print("pairs at 128 tokens: \(chat.pairs.count) kept, skipped \(chat.skipped)")
        #expect(chat.pairs.count == 1 && chat.skipped.identicalAnswers == 1 && chat.skipped.tooLong == 1)
        let pair = try #require(chat.pairs.first)
        // The completion is the assistant's turn: the tokens after the rendered prompt with its generation prompt.
        let prompt = try prompting.tokens(chat: .list([.dict(JinjaDict([("role", "user"), ("content", "Name a colour.")]))]), tools: nil, addGenerationPrompt: true)
        #expect(Array(pair.chosen.ids.prefix(prompt.count)) == prompt.map(Int32.init) && pair.chosen.learned.firstIndex(of: true) == prompt.count)
        #expect(pair.chosen.ids.prefix(prompt.count) == pair.rejected.ids.prefix(prompt.count))

        try lines[3...].joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let plain = try tokenizer.pairs(FineTuningDataset.load(path: path), maximumLength: 128)
        #expect(plain.pairs.count == 2 && plain.skipped.total == 0)
        let eos = try #require(prompting.tokenizer.id(of: prompting.chatFormat.eosToken!))
        // Plain answers end in EOS; without a prompt, the completion starts where the answers part.
        #expect(plain.pairs.allSatisfy { $0.chosen.ids.last == Int32(eos) && $0.rejected.ids.last == Int32(eos) })
        let implicit = plain.pairs[1]
        let shared = zip(implicit.chosen.ids, implicit.rejected.ids).prefix { $0 == $1 }.count
        #expect(shared > 0 && implicit.chosen.learned.firstIndex(of: true) == shared)

        try lines[0].write(toFile: path, atomically: true, encoding: .utf8)
        let sft = folder + "/sft.jsonl"
        try "{\"text\": \"not a pair\"}\n".write(toFile: sft, atomically: true, encoding: .utf8)
        #expect(throws: TrainingError.self) { try tokenizer.pairs(FineTuningDataset.load(path: sft), maximumLength: 128) }
    }
}
