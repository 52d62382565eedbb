import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// PPO on SmolLM2-135M-Instruct with a LoRA policy, its value head and a reward model made from
/// the same base (a new score head, so that it shares the policy's tokenizer): the first pass over
/// a rollout batch sees the policy that sampled it (ratio 1, nothing clipped, no KL to the
/// reference, which a new LoRA equals), later passes and batches move away from it, and the value
/// head survives a checkpoint and a resume.
@Suite(.serialized, .enabled(if: PreferenceTests.hasSmolLM, "no .cache/models/SmolLM2-135M-f32 with tokenizer files (make test makes it)"))
struct PPOTests {
    @Test func stepsOnRolloutsOfTheWeightsBeingTrained() throws {
        let smolLM = PreferenceTests.smolLM
        let (folder, path) = try GRPOTests.prompts((1...6).map { GRPOTests.question($0, 2 * $0) })
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let scorer = try TrainableLlama.withLoRA(base: smolLM, lora: LoRAConfiguration(rank: 2, alpha: 4, targets: [.query], scoreHead: true)).model
        let rewardModel = folder + "/reward"
        try MergedExport.write(base: smolLM, adapter: scorer.adapter(), padTokenID: 2,
                               tokenizerFiles: ["tokenizer.json", "tokenizer_config.json"].map { smolLM + "/" + $0 }, to: rewardModel)

        let lora = LoRAConfiguration(rank: 4, alpha: 8, dropout: 0, targets: [.query, .value])
        let policy = try TrainableLlama.withLoRA(base: smolLM, lora: lora, valueHead: true)
        let prompting = try policy.base.prompting()
        let ppo = PPOSettings(rewardModel: rewardModel, responseLength: 12, epochs: 2, missingEOSPenalty: 1)
        let fineTuning = FineTuningSettings(validationFraction: 0.2, ppo: ppo)
        let settings = TrainingSettings(data: path, steps: 3, batchSize: 2, sequenceLength: 96, gradientAccumulation: 2, learningRate: 1e-2,
                                        warmup: 0, fineTuning: fineTuning)
        let objective = try PPOObjective(settings: settings, fineTuning: fineTuning, ppo: ppo, policy: policy.model, prompting: prompting,
                                         tokenizerFiles: [smolLM + "/tokenizer.json", smolLM + "/tokenizer_config.json"])
        let trainer = try Trainer(model: policy.model, objective: objective, settings: settings)
        let steps = try (0..<3).map { _ in try trainer.trainStep() }
        func metric(_ k: Int, _ name: String) -> Double { Double(steps[k].metrics[name] ?? .nan) }
        for (k, s) in steps.enumerated() {
            print("PPO step \(k + 1): loss \(s.loss), " + ["objective/scores", "objective/kl", "val/ratio", "policy/approxkl_avg", "policy/clipfrac_avg",
                                                           "loss/value_avg", "val/clipfrac_avg", "completions/mean_length"]
                .map { "\($0) \(metric(k, $0))" }.joined(separator: ", "))
        }
        // Step 1: the policy that sampled the batch, which a new LoRA (B = 0) makes the reference.
        #expect(abs(metric(0, "val/ratio") - 1) < 1e-5 && metric(0, "policy/approxkl_avg") < 1e-10)
        #expect(metric(0, "policy/clipfrac_avg") == 0 && metric(0, "val/clipfrac_avg") == 0 && metric(0, "objective/kl") == 0)
        // Step 2: the second epoch over the same batch, after one update.
        #expect(metric(1, "objective/scores") == metric(0, "objective/scores"))
        #expect(abs(metric(1, "val/ratio") - 1) > 1e-6 && metric(1, "policy/approxkl_avg") > 0)
        // Step 3: a new batch, sampled by the updated policy, which has left the reference.
        #expect(metric(2, "objective/kl") != 0 && metric(2, "objective/scores").isFinite)
        #expect(steps.allSatisfy { $0.loss.isFinite && $0.gradientNorm > 0 })

        // The value head goes into the checkpoint beside the adapter and comes back on resume.
        let run = CheckpointFolder(output: folder + "/run")
        let checkpoint = try run.save(trainer, keep: 1)
        #expect(FileManager.default.fileExists(atPath: checkpoint + "/" + TrainableLlama.valueHeadFile))
        let resumed = try Trainer.resume(from: checkpoint)
        #expect(resumed.objective is PPOObjective)
        #expect(resumed.model.valueHead?.values == policy.model.valueHead?.values && resumed.model.valueHead != nil)
        #expect(resumed.model.parameters.map(\.values) == policy.model.parameters.map(\.values))

        // A policy without a value head, or without LoRA, is refused with a reason.
        let plain = try TrainableLlama.withLoRA(base: smolLM, lora: lora).model
        var message = ""
        do { _ = try PPOObjective(settings: settings, fineTuning: fineTuning, ppo: ppo, policy: plain, prompting: prompting, tokenizerFiles: []) } catch {
            message = "\(error)"
        }
        print("a policy without a value head: \(message)")
        #expect(message.contains("value head"))
    }
}
