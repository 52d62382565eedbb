import ArgumentParser
import EmberModels
import EmberTraining
import Foundation

struct GRPOCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "grpo",
        abstract: "Group relative policy optimisation on prompts with verifiable or programmed rewards, rollouts from Ember's engine.",
        discussion: """
        --data is JSONL of prompts in TRL's prompt-only format, {"prompt": ..., "answer": ...}: the prompt a string or a list of messages (rendered by the chat template with the generation prompt), "answer" what rewards check completions against. Each step samples --num-generations completions of batch-size × grad-accum / G prompts from the weights being trained, through Ember's engine (continuous batching on the paged KV cache, in this process: no file is written). Rewards, summed with --reward-weights:
          final-number     1 when the completion's last number equals the answer's (commas and $ ignored), else 0
          format:REGEX     1 when REGEX matches the completion (. matches newlines), else 0
          --reward-model   a reward model's score of prompt + completion (ember train-reward's model/; it must share the policy's tokenizer)
          --reward-command a program that reads {"prompt", "completion", "answer"} JSONL on standard input and prints one number a line; a crash, a hang past --reward-timeout or anything but a number is an error, and the run stops with its last checkpoint intact
        Advantages are each reward minus its group's mean, divided by the group's std (--scale-rewards group), the batch's (batch) or not at all (none); a group whose rewards are all equal has advantage 0 and teaches nothing (its share is logged as frac_reward_zero_std). The loss is the clipped ratio −min(ρA, clip(ρ, 1−ε, 1+ε_high)A), plus β times the k3 KL to the reference when --beta > 0 (the base with the adapter off for LoRA, else a frozen copy of --model), aggregated as --loss-type dapo (a mean over every completion token, the default), grpo (per-sequence means averaged) or dr_grpo (a sum over completion tokens / (sequences × --max-completion-length)). --num-iterations μ > 1 reuses each generated batch for μ steps, the ratio then against the log-probabilities at generation.

        --batch-size counts completions (rows) per micro-batch; a step's batch-size × grad-accum completions must be whole groups. The log has reward, reward_std, frac_reward_zero_std, rewards/<name>/mean, completions/mean_length, completions/clipped_ratio, kl (β > 0), clip_ratio/*, rollout/tokens_per_second; validation samples one greedy completion per held-out prompt (--eval-data, or --eval-fraction of --data) and logs val_reward and val_rewards/<name>/mean (the validation loss is the negated mean reward).

        OUTPUT is a training run as `ember sft` writes it: model/ (or adapter/ with LoRA, which `ember serve --lora-modules` serves).

        Examples:
          scripts/make-arithmetic-prompts.py      # writes .cache/grpo/arithmetic.jsonl
          ember grpo --model .cache/models/SmolLM2-135M-f32 --data .cache/grpo/arithmetic.jsonl --reward final-number --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --output runs/grpo
          ember grpo ... --reward final-number --reward 'format:^[^0-9]*[0-9]+[^0-9]*$' --reward-weights 1,0.2
          ember grpo ... --reward-command 'python3 my_reward.py' --reward-timeout 30
        """)

    @OptionGroup var options: FineTuningOptions
    @Option(name: .customLong("reward"), help: "A built-in reward: final-number, or format:REGEX (repeat for several).") var rewards: [String] = []
    @Option(name: .customLong("reward-model"), help: ArgumentHelp("A reward model (as `ember train-reward` writes its model/) scoring prompt + completion; it must share the policy's tokenizer.", valueName: "dir"))
    var rewardModel: String?
    @Option(name: .customLong("reward-command"), help: "A reward program, a shell command line (run by sh -c: 'python3 score.py').")
    var rewardCommand: String?
    @Option(name: .customLong("reward-timeout"), help: "Seconds a reward program has for one batch.") var rewardTimeout: Double = 60
    @Option(name: .customLong("reward-weights"), help: "Comma-separated weights of the rewards: the built-ins in the order given, then the reward model, then the command.")
    var rewardWeights: String?
    @Option(name: .customLong("num-generations"), help: "Completions per prompt, G.") var generations: Int = 8
    @Option(name: .customLong("max-completion-length"), help: "Tokens of the longest completion.") var maxCompletionLength: Int = 256
    @Option(help: "Sampling temperature of the rollouts.") var temperature: Double = 1
    @Option(name: .customLong("top-p"), help: "Nucleus sampling of the rollouts.") var topP: Double = 1
    @Option(name: .customLong("top-k"), help: "Keep the k most likely tokens (0: all).") var topK: Int = 0
    @Option(name: .customLong("scale-rewards"), help: "group, batch or none.") var scale: GRPO.RewardScale = .group
    @Option(name: .customLong("loss-type"), help: "dapo, grpo or dr_grpo.") var lossType: GRPO.Aggregation = .dapo
    @Option(help: "ε: the ratio's lower clip (and upper, without --epsilon-high).") var epsilon: Double = 0.2
    @Option(name: .customLong("epsilon-high"), help: "The ratio's upper clip ε_high (DAPO's clip-higher).") var epsilonHigh: Double?
    @Option(help: "β: the weight of the k3 KL to the reference (0: no reference).") var beta: Double = 0
    @Option(name: .customLong("num-iterations"), help: "Optimizer steps on each generated batch, μ.") var iterations: Int = 1
    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var parallel: ParallelOptions

    func rewardSettings() throws -> [GRPOSettings.Reward] {
        var out = try rewards.map { spec -> GRPOSettings.Reward in
            if spec == "final-number" { return .finalNumber }
            if spec.hasPrefix("format:") {
                let pattern = String(spec.dropFirst("format:".count))
                guard (try? NSRegularExpression(pattern: pattern)) != nil else { throw ValidationError("--reward \(spec): not a valid regular expression") }
                return .format(pattern)
            }
            throw ValidationError("--reward \(spec): expected final-number or format:REGEX")
        }
        if let rewardModel { out.append(.model(absolute(rewardModel))) }
        if let rewardCommand { out.append(.command(["sh", "-c", rewardCommand], timeout: rewardTimeout)) }
        return out
    }

    func parsedWeights() throws -> [Double]? {
        guard let rewardWeights else { return nil }
        let values = rewardWeights.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard values.allSatisfy({ $0?.isFinite ?? false }) else { throw ValidationError("--reward-weights: comma-separated numbers") }
        return values.map { $0! }
    }

    func validate() throws {
        if options.resume == nil {
            let count = try rewardSettings().count
            guard count > 0 else { throw ValidationError("give a reward: --reward final-number, --reward format:REGEX, --reward-model DIR or --reward-command 'COMMAND'") }
            if let w = try parsedWeights(), w.count != count { throw ValidationError("--reward-weights gives \(w.count) weights for \(count) rewards") }
        } else if !rewards.isEmpty || rewardCommand != nil || rewardModel != nil || loraOptions.rank != nil {
            throw ValidationError("--resume continues a run with its own rewards and adapter; leave out --reward, --reward-model, --reward-command and --lora-rank")
        }
        guard rewardTimeout > 0 else { throw ValidationError("--reward-timeout must be positive") }
        guard generations >= 2 else { throw ValidationError("--num-generations must be at least 2 (advantages compare completions of one prompt)") }
        guard maxCompletionLength >= 1, maxCompletionLength < options.maxLength else {
            throw ValidationError("--max-completion-length must be at least 1 and below --max-length (\(options.maxLength)), which holds prompt and completion")
        }
        guard temperature > 0 else { throw ValidationError("--temperature must be positive") }
        guard topP > 0, topP <= 1, topK >= 0 else { throw ValidationError("--top-p must be in (0, 1] and --top-k at least 0") }
        guard epsilon >= 0, (epsilonHigh ?? 0) >= 0 else { throw ValidationError("--epsilon and --epsilon-high must not be negative") }
        guard beta >= 0 else { throw ValidationError("--beta must not be negative") }
        guard iterations >= 1 else { throw ValidationError("--num-iterations must be at least 1") }
        guard (options.batchSize * options.gradAccum) % generations == 0 else {
            throw ValidationError("a step's --batch-size × --grad-accum completions (\(options.batchSize * options.gradAccum)) must be whole groups of --num-generations \(generations)")
        }
    }

    func run() throws { try parallel.run(run) }

    func run(_ parallelism: Parallelism) throws {
        guard parallelism.world.size == 1 else {
            throw CommandError("ember grpo runs in one process (its rollouts and their rewards are made once per step): run it without mpirun")
        }
        let trainer: Trainer, folder: CheckpointFolder
        if let resumed = try options.resumed(parallelism, accepts: { $0.objective is GRPOObjective }, command: "grpo") {
            (trainer, folder) = resumed
        } else {
            let output = try options.newOutput()
            let lora = try loraOptions.configuration()
            let (weights, prompting, tokenizerFiles) = try options.load(options.model!, lora: lora, parallelism: parallelism)
            let grpo = GRPOSettings(rewards: try rewardSettings(), rewardWeights: try parsedWeights(), generations: generations,
                                    maxCompletionLength: maxCompletionLength, temperature: temperature, topP: topP, topK: topK, scale: scale,
                                    aggregation: lossType, epsilonLow: epsilon, epsilonHigh: epsilonHigh, beta: beta, iterations: iterations,
                                    reference: lora == nil && beta > 0 ? absolute(options.model!) : nil)
            let fineTuning = FineTuningSettings(validationData: options.heldOut.data, validationFraction: options.heldOut.fraction, grpo: grpo)
            var settings = options.settings(defaultLR: 1e-6, fineTuning: fineTuning)
            let reference = try grpo.reference.map { try TrainableLlama(directory: $0) }
            let objective = try GRPOObjective(settings: settings, fineTuning: fineTuning, grpo: grpo, policy: weights, prompting: prompting,
                                              tokenizerFiles: tokenizerFiles, reference: reference)
            let prompts = settings.batchSize * settings.gradientAccumulation / generations
            settings.steps = options.steps ?? max(1, Int((options.epochs * Double(objective.training.count) / Double(prompts)).rounded(.up)))
            trainer = try Trainer(model: weights, objective: objective, settings: settings, parallelism: parallelism)
            folder = CheckpointFolder(output: output)
            options.describe(weights, from: options.model!, say: { printError($0) })
            let skipped = objective.skipped.total > 0 ? "; skipped \(objective.skipped)" : ""
            printError("data: \(objective.training.count) training prompts, \(objective.validation.count) held out\(skipped); \(settings.steps) steps of \(prompts) prompts × \(generations) completions (\(String(format: "%.2f", Double(settings.steps * prompts) / Double(objective.training.count))) epochs)")
            let before = try trainer.evaluate()
            printError("before training: " + Self.summary(-before, objective.validationMetrics))
        }
        try runTraining(trainer, folder: folder, parallel: parallel, resume: "ember grpo --resume \(folder.output)")
        if let objective = trainer.objective as? GRPOObjective, let last = trainer.history.last, let loss = last.validationLoss {
            let metrics = Dictionary(uniqueKeysWithValues: last.metrics.filter { $0.key.hasPrefix("val_") }.map { (String($0.key.dropFirst(4)), $0.value) })
            printError("after training: " + Self.summary(-loss, metrics))
            let r = objective.rollouts
            printError(String(format: "rollouts: %d tokens generated in %.1f s (%.1f tokens/s, %d completions per step)", r.generatedTokens, r.seconds,
                              Double(r.generatedTokens) / max(r.seconds, 1e-9), trainer.settings.batchSize * trainer.settings.gradientAccumulation))
        }
    }

    static func summary(_ reward: Float, _ metrics: [String: Float]) -> String {
        let each = metrics.filter { $0.key.hasPrefix("rewards/") }.sorted { $0.key < $1.key }
            .map { String(format: ", %@ %.4f", String($0.key.dropFirst("rewards/".count).dropLast("/mean".count)), $0.value) }.joined()
        return String(format: "held-out greedy reward %.4f%@, mean completion %.1f tokens", reward, each, metrics["completions/mean_length"] ?? .nan)
    }
}

extension GRPO.RewardScale: ExpressibleByArgument {}
extension GRPO.Aggregation: ExpressibleByArgument {}
