import ArgumentParser
import EmberModels
import EmberTraining
import Foundation

struct PPOCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppo",
        abstract: "Proximal policy optimisation against a reward model: a LoRA policy with a value head, rollouts from Ember's engine.",
        discussion: """
        --data is JSONL of prompts in TRL's prompt-only format, {"prompt": ...} (a string, or a list of messages rendered by the chat template with the generation prompt). Each rollout batch draws batch-size × grad-accum × --num-mini-batches prompts and samples one response of each, up to --response-length tokens at --temperature, from the weights being trained (Ember's engine, in this process); the end-of-turn token ends a response and belongs to it. The policy is a LoRA (--lora-rank is required) with a value head [1, hidden] on the same final hidden states as the logits; the reference is the base with the adapter off; --reward-model (ember train-reward's model/, sharing the policy's tokenizer) scores prompt + response, less --missing-eos-penalty for a response cut at the length limit.

        As TRL's PPOTrainer: every log-probability is of logits / temperature; the per-token reward is −--kl-coef times the KL estimate (--kl-estimator k1: log π − log π_ref, or k3), plus the score one position past the response's last token (at the last when the response is as long as allowed); GAE with --gamma and --lam gives the advantages, whitened over the batch's response tokens, and the returns; each rollout batch then serves --num-ppo-epochs passes of --num-mini-batches optimizer steps, each minimising the clipped policy loss (--cliprange) plus --vf-coef times the clipped value loss (--cliprange-value), token means over each micro-batch.

        --steps counts optimizer steps (default: --epochs over the prompts, times --num-ppo-epochs × --num-mini-batches). The log has objective/scores, objective/kl (summed over a response, averaged over the batch), objective/entropy (the sampled tokens' negative log-probability, summed, TRL's), objective/non_score_reward, objective/rlhf_reward, policy/approxkl_avg, policy/clipfrac_avg, loss/policy_avg, loss/value_avg, val/clipfrac_avg, val/ratio, val/num_eos_tokens, completions/mean_length and rollout/tokens_per_second; validation samples one greedy response per held-out prompt and logs val_score. A finished run draws score.svg and kl.svg beside loss.svg.

        OUTPUT is a training run as `ember sft` writes it: adapter/ (a PEFT CAUSAL_LM adapter, which `ember serve --lora-modules` serves; the value head beside it in value_head.safetensors) and checkpoints for --resume.

        Examples:
          ember ppo --model .cache/models/SmolLM2-135M-f32 --data .cache/sft/prompts.jsonl --reward-model runs/reward/model \\
              --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --missing-eos-penalty 1 --output runs/ppo
          ember serve --model .cache/models/SmolLM2-135M-f32 --lora-modules ppo=runs/ppo/adapter
        """)

    @OptionGroup var options: FineTuningOptions
    @Option(name: .customLong("reward-model"), help: ArgumentHelp("The reward model (as `ember train-reward` writes its model/); it must share the policy's tokenizer.", valueName: "dir"))
    var rewardModel: String?
    @Option(name: .customLong("response-length"), help: "Tokens of the longest response.") var responseLength: Int = 53
    @Option(help: "Sampling temperature of the rollouts (it divides the logits of every log-probability too).") var temperature: Double = 0.7
    @Option(name: .customLong("kl-coef"), help: "The per-token KL penalty's coefficient.") var klCoef: Double = 0.05
    @Option(name: .customLong("kl-estimator"), help: "k1 (log π − log π_ref) or k3.") var klEstimator: PPO.KLEstimator = .k1
    @Option(help: "The policy ratio's clip ε.") var cliprange: Double = 0.2
    @Option(name: .customLong("cliprange-value"), help: "The value's clip around its value at the rollout.") var cliprangeValue: Double = 0.2
    @Option(name: .customLong("vf-coef"), help: "The value loss's weight.") var vfCoef: Double = 0.1
    @Option(help: "GAE's discount γ.") var gamma: Double = 1
    @Option(help: "GAE's λ.") var lam: Double = 0.95
    @Option(name: .customLong("num-ppo-epochs"), help: "Passes over each rollout batch.") var ppoEpochs: Int = 4
    @Option(name: .customLong("num-mini-batches"), help: "Optimizer steps per pass over a rollout batch.") var miniBatches: Int = 1
    @Flag(name: .customLong("whiten-rewards"), help: "Whiten the shaped rewards before GAE.") var whitenRewards = false
    @Option(name: .customLong("missing-eos-penalty"), help: "Subtracted from the score of a response cut at --response-length.") var missingEOSPenalty: Double?
    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var parallel: ParallelOptions

    func validate() throws {
        if options.resume == nil {
            guard rewardModel != nil else { throw ValidationError("give --reward-model DIR: the reward model that scores the responses (ember train-reward's model/)") }
            guard loraOptions.rank != nil else { throw ValidationError("ember ppo trains a LoRA with a value head (the reference is the base with the adapter off): give --lora-rank") }
        } else if rewardModel != nil || loraOptions.rank != nil {
            throw ValidationError("--resume continues a run with its own reward model and adapter; leave out --reward-model and --lora-rank")
        }
        guard responseLength >= 1, responseLength < options.maxLength else {
            throw ValidationError("--response-length must be at least 1 and below --max-length (\(options.maxLength)), which holds prompt and response")
        }
        guard temperature > 0 else { throw ValidationError("--temperature must be positive") }
        guard klCoef >= 0, cliprange >= 0, cliprangeValue >= 0, vfCoef >= 0 else {
            throw ValidationError("--kl-coef, --cliprange, --cliprange-value and --vf-coef must not be negative")
        }
        guard (0...1).contains(gamma), (0...1).contains(lam) else { throw ValidationError("--gamma and --lam must be in [0, 1]") }
        guard ppoEpochs >= 1, miniBatches >= 1 else { throw ValidationError("--num-ppo-epochs and --num-mini-batches must be at least 1") }
    }

    func run() throws { try parallel.run(run) }

    func run(_ parallelism: Parallelism) throws {
        guard parallelism.world.size == 1 else {
            throw CommandError("ember ppo runs in one process (its rollouts and their scores are made once per batch): run it without mpirun")
        }
        let trainer: Trainer, folder: CheckpointFolder
        if let resumed = try options.resumed(parallelism, accepts: { $0.objective is PPOObjective }, command: "ppo") {
            (trainer, folder) = resumed
        } else {
            let output = try options.newOutput()
            let lora = try loraOptions.configuration()
            let (weights, prompting, tokenizerFiles) = try options.load(options.model!, lora: lora, parallelism: parallelism, valueHead: true)
            let ppo = PPOSettings(rewardModel: absolute(rewardModel!), responseLength: responseLength, temperature: temperature, klCoef: klCoef,
                                  klEstimator: klEstimator, clipRange: cliprange, clipRangeValue: cliprangeValue, valueCoef: vfCoef, gamma: gamma,
                                  lambda: lam, epochs: ppoEpochs, miniBatches: miniBatches, whitenRewards: whitenRewards,
                                  missingEOSPenalty: missingEOSPenalty)
            let fineTuning = FineTuningSettings(validationData: options.heldOut.data, validationFraction: options.heldOut.fraction, ppo: ppo)
            var settings = options.settings(defaultLR: 3e-6, fineTuning: fineTuning)
            let objective = try PPOObjective(settings: settings, fineTuning: fineTuning, ppo: ppo, policy: weights, prompting: prompting,
                                             tokenizerFiles: tokenizerFiles)
            let rows = PPOObjective.rolloutRows(settings, ppo)
            let batches = options.steps.map { ($0 + ppoEpochs * miniBatches - 1) / (ppoEpochs * miniBatches) }
                ?? max(1, Int((options.epochs * Double(objective.training.count) / Double(rows)).rounded(.up)))
            settings.steps = options.steps ?? batches * ppoEpochs * miniBatches
            trainer = try Trainer(model: weights, objective: objective, settings: settings, parallelism: parallelism)
            folder = CheckpointFolder(output: output)
            options.describe(weights, from: options.model!, say: { printError($0) })
            let skipped = objective.skipped.total > 0 ? "; skipped \(objective.skipped)" : ""
            printError("data: \(objective.training.count) training prompts, \(objective.validation.count) held out\(skipped); \(batches) rollout batches of \(rows) responses, each \(ppoEpochs) epoch(s) × \(miniBatches) mini-batch(es): \(settings.steps) optimizer steps")
            let before = try trainer.evaluate()
            printError(String(format: "before training: held-out greedy score %.4f, mean response %.1f tokens", -before,
                              objective.validationMetrics["completions/mean_length"] ?? .nan))
        }
        try runTraining(trainer, folder: folder, parallel: parallel, resume: "ember ppo --resume \(folder.output)")
        if let objective = trainer.objective as? PPOObjective, let last = trainer.history.last, let loss = last.validationLoss {
            printError(String(format: "after training: held-out greedy score %.4f, mean response %.1f tokens", -loss,
                              last.metrics["val_completions/mean_length"] ?? .nan))
            let r = objective.rollouts
            printError(String(format: "rollouts: %d tokens generated in %.1f s (%.1f tokens/s); curves in %@/score.svg and %@/kl.svg", r.generatedTokens,
                              r.seconds, Double(r.generatedTokens) / max(r.seconds, 1e-9), folder.output, folder.output))
        }
    }
}

extension PPO.KLEstimator: ExpressibleByArgument {}
