import EmberModels
import EmberNN
import EmberTensor
import EmberTokenizers
import EmberTraining
import Foundation
import Testing

/// GRPO on SmolLM2-135M-Instruct: rollouts come from the weights being trained (a change to a
/// weight in memory changes them, and they are what the training path's own greedy choice
/// gives), a step's gradient does not depend on how its completions are cut into micro-batches,
/// all-equal rewards are reported and teach nothing, and a failing reward program stops the step
/// with an error naming it.
@Suite(.serialized, .enabled(if: PreferenceTests.hasSmolLM, "no .cache/models/SmolLM2-135M-f32 with tokenizer files (make test makes it)"))
struct GRPOTests {
    static let lora = LoRAConfiguration(rank: 4, alpha: 8, dropout: 0, targets: [.query, .value])

    /// A folder with prompt-only data, removed by the caller.
    static func prompts(_ lines: [String]) throws -> (folder: String, path: String) {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ember-grpo-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try lines.joined(separator: "\n").write(toFile: folder + "/prompts.jsonl", atomically: true, encoding: .utf8)
        return (folder, folder + "/prompts.jsonl")
    }

    static func question(_ a: Int, _ b: Int) -> String {
        #"{"prompt": [{"role": "user", "content": "What is \#(a) + \#(b)? Answer with the number."}], "answer": \#(a + b)}"#
    }

    /// The greedy choice of the training path after each prefix of prompt + completion.
    func trainingPathGreedy(_ model: TrainableLlama, prompt: [Int32], completion: [Int32]) -> [Int32] {
        let ids = prompt + completion.dropLast()
        let logits = model.forward(Tape(recording: false), inputs: ids, batch: 1, tokens: ids.count)
        let V = logits.shape.last!
        return (prompt.count - 1..<ids.count).map { t in
            let row = logits.pointer + t * V
            var best = 0
            for j in 1..<V where row[j] > row[best] { best = j }
            return Int32(best)
        }
    }

    @Test func rolloutsFollowTheWeightsInMemory() throws {
        let prompting = try LoadedModel.prompting(directory: PreferenceTests.smolLM)
        let prompt = try prompting.tokens(chat: .list([.dict(JinjaDict([("role", "user"), ("content", "Name three colours.")]))]), tools: nil, addGenerationPrompt: true).map(Int32.init)
        var greedy = SamplingParameters.greedy
        greedy.maxTokens = 8
        for whole in [false, true] {
            let model = whole ? try TrainableLlama(directory: PreferenceTests.smolLM)
                : try TrainableLlama.withLoRA(base: PreferenceTests.smolLM, lora: Self.lora).model
            let rollouts = try RolloutEngine(policy: model, prompting: prompting, maxLength: 128)
            let before = try rollouts.generate([prompt], n: 1, parameters: greedy)[0][0]
            let agreeBefore = trainingPathGreedy(model, prompt: prompt, completion: before.tokens) == before.tokens
            // A change to the trained weights, in memory: every LoRA B (zero when new), or the whole
            // model's first query matrix.
            let name = whole ? "model.layers.0.self_attn.q_proj.weight" : "lora_B"
            let changed = model.parameters.filter { whole ? $0.name == name : $0.name.contains(name) }
            #expect(!changed.isEmpty)
            var random = SplitMix64(seed: 7)
            for weight in changed { for i in 0..<weight.count { weight.pointer[i] = (Float(random.next() % 2001) / 1000 - 1) * 0.5 } }
            let after = try rollouts.generate([prompt], n: 1, parameters: greedy)[0][0]
            let agreeAfter = trainingPathGreedy(model, prompt: prompt, completion: after.tokens) == after.tokens
            print("\(whole ? "whole model" : "LoRA"): greedy rollout before \(before.text.debugDescription), after changing \(changed.count) \(name) \(after.text.debugDescription); the training path's greedy tokens agree: \(agreeBefore), \(agreeAfter)")
            #expect(before.tokens != after.tokens)
            #expect(agreeBefore && agreeAfter)
        }
    }

    func objective(_ model: TrainableLlama, data: String, rewards: [GRPOSettings.Reward], aggregation: GRPO.Aggregation = .dapo,
                   iterations: Int = 1, beta: Double = 0, batchSize: Int = 4) throws -> (GRPOObjective, TrainingSettings) {
        let prompting = try LoadedModel.prompting(directory: PreferenceTests.smolLM)
        let grpo = GRPOSettings(rewards: rewards, generations: 4, maxCompletionLength: 12, aggregation: aggregation, beta: beta, iterations: iterations)
        let fineTuning = FineTuningSettings(validationFraction: 0.2, grpo: grpo)
        let settings = TrainingSettings(data: data, steps: 2, batchSize: batchSize, sequenceLength: 96, gradientAccumulation: 1, learningRate: 1e-3, warmup: 0,
                                        fineTuning: fineTuning)
        return (try GRPOObjective(settings: settings, fineTuning: fineTuning, grpo: grpo, policy: model, prompting: prompting, tokenizerFiles: []), settings)
    }

    /// The gradient of a step's micro-batches (each scaled by 1 / its divisor, as the trainer runs them).
    func gradient(_ model: TrainableLlama, _ parts: [MicroBatch]) -> (gradient: [Float], loss: Float, metrics: [String: Float]) {
        model.arena.zeroGradients()
        var loss: Float = 0, metrics: [String: Float] = [:]
        for part in parts {
            let tape = Tape()
            let (l, named) = part.loss(tape, model)
            tape.backward(l, seed: 1 / part.divisor)
            loss += l.values[0] / part.divisor
            for (k, v) in named { metrics[k, default: 0] += v / part.divisor }
        }
        return (Array(UnsafeBufferPointer(start: model.arena.gradients.pointer, count: model.arena.count)), loss, metrics)
    }

    @Test func microBatchesGiveTheWholeBatchGradient() throws {
        let (folder, path) = try Self.prompts((0..<10).map { Self.question(10 + $0, 7) })
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let model = try TrainableLlama.withLoRA(base: PreferenceTests.smolLM, lora: Self.lora).model
        // B starts at zero, where the ratio's gradient reaches A not at all: give B values first.
        var random = SplitMix64(seed: 3)
        for p in model.parameters where p.name.contains("lora_B") { for i in 0..<p.count { p.pointer[i] = (Float(random.next() % 2001) / 1000 - 1) * 0.05 } }
        // Rewards for a short completion and for a digit, so that the completions of a group differ.
        for aggregation in GRPO.Aggregation.allCases {
            let (objective, settings) = try objective(model, data: path, rewards: [.format("^.{0,24}$"), .format("[0-9]")],
                                                      aggregation: aggregation, iterations: 2, batchSize: 8)
            let whole = gradient(model, try objective.nextStep(settings: settings, share: .whole))
            var halves = settings
            (halves.batchSize, halves.gradientAccumulation) = (3, 3)  // 8 rows as 3 + 3 + 2
            let parts = try objective.nextStep(settings: halves, share: .whole)  // the same generation, its second use
            let split = gradient(model, parts)
            let norm = sqrt(whole.gradient.reduce(0) { $0 + $1 * $1 })
            let difference = maxDifference(whole.gradient, split.gradient)
            print("GRPO \(aggregation.rawValue): 1 micro-batch of 8 completions against 3, 3 and 2: gradient max difference \(difference) (norm \(norm)), loss \(whole.loss) vs \(split.loss); rewards \(whole.metrics["reward"]!), zero-std groups \(whole.metrics["frac_reward_zero_std"]!)")
            #expect(parts.count == 3 && norm > 0)
            #expect(difference <= 1e-5 * max(1, norm) && abs(whole.loss - split.loss) < 1e-5)
            #expect(abs(split.metrics["reward"]! - whole.metrics["reward"]!) < 1e-5)
        }
    }

    @Test func equalRewardsAndFailingRewardPrograms() throws {
        let (folder, path) = try Self.prompts((0..<10).map { Self.question(20 + $0, 5) })
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let model = try TrainableLlama.withLoRA(base: PreferenceTests.smolLM, lora: Self.lora).model
        // Every completion gets 1: every group has zero std, the advantages are 0, and so is the step.
        let (same, settings) = try objective(model, data: path, rewards: [.format(".*")])
        let trainer = try Trainer(model: model, objective: same, settings: settings)
        let record = try trainer.trainStep()
        print("all rewards equal: loss \(record.loss), gradient norm \(record.gradientNorm), frac_reward_zero_std \(record.metrics["frac_reward_zero_std"] ?? .nan), reward_std \(record.metrics["reward_std"] ?? .nan)")
        #expect(record.loss == 0 && record.gradientNorm == 0 && record.metrics["frac_reward_zero_std"] == 1 && record.metrics["reward"] == 1)

        // A reward program that fails is an error naming it; the step changes nothing.
        let (failing, _) = try objective(model, data: path, rewards: [.command(["sh", "-c", "cat > /dev/null; echo broken >&2; exit 3"], timeout: 30)])
        let before = Array(UnsafeBufferPointer(start: model.arena.values.pointer, count: model.arena.count))
        let failingTrainer = try Trainer(model: model, objective: failing, settings: settings)
        var message = ""
        do { _ = try failingTrainer.trainStep() } catch { message = "\(error)" }
        print("a failing reward program: \(message)")
        #expect(message.contains("exited with status 3: broken"))
        #expect(Array(UnsafeBufferPointer(start: model.arena.values.pointer, count: model.arena.count)) == before)
    }

    @Test func rewardModelsOfAnotherVocabularyAreRefused() throws {
        let (folder, path) = try Self.prompts((0..<10).map { Self.question(30 + $0, 4) })
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let model = try TrainableLlama.withLoRA(base: PreferenceTests.smolLM, lora: Self.lora).model
        // The reward model of the fixtures (a tiny LLaMA), given SmolLM2's tokenizer: the same tokens, another embedding.
        let base = try LoadedModel.load(path: PreferenceTests.fixture("lora/base"))
        let adapter = try LoRAAdapter.load(directory: PreferenceTests.fixture("reward/peft-adapter"), for: base.model.configuration)
        let rewardModel = folder + "/reward"
        try MergedExport.write(base: PreferenceTests.fixture("lora/base"), adapter: adapter, padTokenID: 0,
                               tokenizerFiles: ["tokenizer.json", "tokenizer_config.json"].map { PreferenceTests.smolLM + "/" + $0 }, to: rewardModel)
        func refusal() -> String {
            do { _ = try objective(model, data: path, rewards: [.model(rewardModel)]) } catch { return "\(error)" }
            return "accepted"
        }
        let otherEmbedding = refusal()
        // And with two of the tokenizer's tokens swapped: another vocabulary of the same size.
        let tokenizerPath = rewardModel + "/tokenizer.json"
        var tokenizer = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: tokenizerPath))) as! [String: Any]
        var tokenModel = tokenizer["model"] as! [String: Any]
        var vocabulary = tokenModel["vocab"] as! [String: Int]
        let a = vocabulary.first { $0.value == 1000 }!.key, b = vocabulary.first { $0.value == 1001 }!.key
        (vocabulary[a], vocabulary[b]) = (1001, 1000)
        tokenModel["vocab"] = vocabulary
        tokenizer["model"] = tokenModel
        try JSONSerialization.data(withJSONObject: tokenizer).write(to: URL(fileURLWithPath: tokenizerPath))
        let otherTokens = refusal()
        print("a reward model with another embedding: \(otherEmbedding)\nwith two tokens swapped: \(otherTokens)")
        #expect(otherEmbedding.contains("embeds \(base.model.configuration.vocabularySize) tokens and the policy 49152"))
        #expect(otherTokens.contains("reads token 1000 as"))
    }

    @Test func promptsAreReadWithTheirSkipsCounted() throws {
        let long = String(repeating: "many words ", count: 100)
        let (folder, path) = try Self.prompts([Self.question(1, 2), #"{"prompt": [{"role": "user", "content": "\#(long)"}], "answer": "x"}"#,
                                               #"{"prompt": [{"role": "user", "content": "Hi"}], "answer": [1]}"#])
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let prompting = try LoadedModel.prompting(directory: PreferenceTests.smolLM)
        let tokenizer = SupervisedTokenizer(prompting: prompting)
        var message = ""
        do { _ = try FineTuningDataset.load(path: path) } catch { message = "\(error)" }
        #expect(message.hasSuffix(":3: 'answer' must be a string or a number"))
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        try lines[..<2].joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let (prompts, skipped) = try tokenizer.prompts(FineTuningDataset.load(path: path), maximumLength: 128, completionLength: 32)
        print("prompts at 128 tokens with 32 for the completion: \(prompts.count) kept, skipped \(skipped)")
        #expect(prompts.count == 1 && skipped.tooLong == 1 && prompts[0].answer == "3")
        let expected = try prompting.tokens(chat: .list([.dict(JinjaDict([("role", "user"), ("content", "What is 1 + 2? Answer with the number.")]))]), tools: nil,
                                            addGenerationPrompt: true)
        #expect(prompts[0].ids == expected.map(Int32.init))
        try "{\"text\": \"not a prompt\"}\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: TrainingError.self) { try tokenizer.prompts(FineTuningDataset.load(path: path), maximumLength: 128, completionLength: 32) }
    }
}
