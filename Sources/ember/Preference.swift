import ArgumentParser
import EmberModels
import EmberTraining
import Foundation

struct TrainReward: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-reward",
        abstract: "Train a reward model on preference pairs (a LoRA with a score head, Bradley–Terry loss).",
        discussion: """
        --data is JSONL of preference pairs in TRL's format, {"prompt": ..., "chosen": ..., "rejected": ...}, each field a string or a list of messages ("prompt" optional: without it, both answers are whole conversations). Each answer is scored as the chat template's rendering of prompt + answer (plain text: prompt + answer + EOS); the score is the score head [1, hidden] on the final hidden state of its last token, as transformers' LlamaForSequenceClassification reads it. The loss is −log σ(r_chosen − r_rejected), averaged over the step's pairs (TRL's RewardTrainer), plus c · mean((r_chosen + r_rejected)²) with --center-rewards c. Pairs whose answers are the same tokens, or either answer longer than --max-length, are left out and counted.

        A LoRA trains with the new score head (--lora-rank is required); the base stays frozen. The held-out pairs (--eval-data, or --eval-fraction of --data) give the validation loss and accuracy (the fraction of pairs whose chosen answer scores higher), before training and every --eval-every steps.

        OUTPUT is a training run (checkpoints, --resume, log.jsonl, loss.svg) with adapter/, a PEFT adapter of task_type SEQ_CLS (the score head saved beside the LoRA matrices), and, for a Hugging Face folder base, model/: the merged LlamaForSequenceClassification, which transformers' AutoModelForSequenceClassification loads and `ember serve --model` exposes on POST /pooling.

        Examples:
          scripts/fetch-sft-data.py      # writes .cache/sft/dpo.jsonl (300 pairs)
          ember train-reward --model .cache/models/SmolLM2-135M-f32 --data .cache/sft/dpo.jsonl --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --output runs/reward
          ember serve --model runs/reward/model
        """)

    @OptionGroup var options: FineTuningOptions
    @Option(name: .customLong("center-rewards"), help: "Add c · mean((r_chosen + r_rejected)²) to the loss, keeping the scores near 0 (TRL's center_rewards_coefficient).")
    var centerRewards: Double?
    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var parallel: ParallelOptions

    func validate() throws {
        if options.resume == nil, loraOptions.rank == nil { throw ValidationError("a reward model trains as a LoRA with a score head: give --lora-rank") }
        if options.resume != nil, loraOptions.rank != nil || centerRewards != nil {
            throw ValidationError("--resume continues a run with its own adapter and settings; leave out --lora-rank and --center-rewards")
        }
        guard centerRewards.map({ $0 >= 0 }) ?? true else { throw ValidationError("--center-rewards must not be negative") }
    }

    func run() throws { try parallel.run(run) }

    func run(_ parallelism: Parallelism) throws {
        let preference = PreferenceSettings(objective: .reward, centering: centerRewards)
        let trainer = try PreferenceRun(options: options, lora: loraOptions, parallel: parallel, command: "train-reward", defaultLR: 1e-4)
            .run(parallelism, preference: preference, scoreHead: true)
        guard let trainer, parallelism.isLeader, let base = trainer.model.lora?.baseModel, let objective = trainer.objective as? PreferenceObjective else { return }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: base, isDirectory: &isDirectory), isDirectory.boolValue else {
            printError("the base \(base) is a GGUF file: the reward model is the adapter alone (adapter/), on that base")
            return
        }
        var output = options.output ?? ""
        if let resume = options.resume, options.output == nil { output = CheckpointFolder.run(of: resume, checkpoint: try CheckpointFolder.locate(resume)) }
        try MergedExport.write(base: base, adapter: trainer.model.adapter(), padTokenID: Int(objective.padding),
                                    tokenizerFiles: SupervisedObjective.tokenizerFiles(in: output + "/adapter"), to: output + "/model")
        printError("reward model (LlamaForSequenceClassification, the adapter merged) in \(output)/model")
    }
}

struct DPO: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dpo",
        abstract: "Direct preference optimisation of a model on preference pairs.",
        discussion: """
        --data is JSONL of preference pairs in TRL's format, {"prompt": ..., "chosen": ..., "rejected": ...} (see `ember train-reward --help`). Each answer's log-probability is the sum over its completion's tokens (those after the prompt). The reference is the frozen starting model: with --lora-rank, the base with the adapter off; otherwise a second copy of --model. Its log-probabilities are computed once per pair, the first time the pair is drawn. With Δ = (π_chosen − ref_chosen) − (π_rejected − ref_rejected), the losses are TRL's:
          sigmoid  −log σ(βΔ)                          (the default, the DPO paper's)
          hinge    max(0, 1 − βΔ)
          ipo      ((π_c − ref_c)/n_c − (π_r − ref_r)/n_r − 1/(2β))², n: completion tokens
          robust   (−(1 − ε) log σ(βΔ) + ε log σ(−βΔ)) / (1 − 2ε), ε: --label-smoothing
        averaged over the step's pairs. The log has rewards/chosen and rewards/rejected (the means of β(π − ref)), rewards/accuracies (chosen reward > rejected), rewards/margins, logps/chosen and logps/rejected; the held-out pairs give val_ of each. At the first step the policy is the reference: the loss is ln 2 (sigmoid) and rewards/accuracies 0.

        OUTPUT is a training run as `ember sft` writes it: model/ (or adapter/ with LoRA, which `ember serve --lora-modules` serves).

        Examples:
          ember dpo --model .cache/models/SmolLM2-135M-f32 --data .cache/sft/dpo.jsonl --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --lr 5e-5 --output runs/dpo
          ember serve --model .cache/models/SmolLM2-135M-f32 --lora-modules dpo=runs/dpo/adapter
        """)

    @OptionGroup var options: FineTuningOptions
    @Option(help: "β: how far the policy may move from the reference.") var beta: Double = 0.1
    @Option(name: .customLong("loss-type"), help: "sigmoid, ipo, hinge or robust.") var lossType: DPOLoss.Kind = .sigmoid
    @Option(name: .customLong("label-smoothing"), help: "ε of the robust loss: the probability that a pair's preference is flipped.")
    var labelSmoothing: Double = 0
    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var parallel: ParallelOptions

    func validate() throws {
        guard beta > 0, beta.isFinite else { throw ValidationError("--beta must be positive") }
        guard (0..<0.5).contains(labelSmoothing) else { throw ValidationError("--label-smoothing must be in [0, 0.5)") }
        guard labelSmoothing == 0 || lossType == .robust else { throw ValidationError("--label-smoothing applies to --loss-type robust only") }
        if options.resume != nil, loraOptions.rank != nil { throw ValidationError("--resume continues a run with its own adapter; leave out --lora-rank") }
    }

    func run() throws { try parallel.run(run) }

    func run(_ parallelism: Parallelism) throws {
        let preference = PreferenceSettings(objective: .dpo, dpo: DPOLoss(kind: lossType, beta: beta, labelSmoothing: labelSmoothing),
                                            reference: loraOptions.rank == nil ? options.model.map(absolute) : nil)
        _ = try PreferenceRun(options: options, lora: loraOptions, parallel: parallel, command: "dpo", defaultLR: 1e-6)
            .run(parallelism, preference: preference, scoreHead: false)
    }
}

extension DPOLoss.Kind: ExpressibleByArgument {}

/// What train-reward and dpo share: the run started (or resumed) on preference pairs, its start
/// reported, trained to the end.
struct PreferenceRun {
    let options: FineTuningOptions
    let lora: LoRAOptions
    let parallel: ParallelOptions
    let command: String
    let defaultLR: Float

    /// The trainer after its last step (nil when stopped by a signal: the error then ends the process).
    func run(_ parallelism: Parallelism, preference: PreferenceSettings, scoreHead: Bool) throws -> Trainer? {
        func say(_ text: String) { if parallelism.isLeader { printError(text) } }
        guard parallelism.tensor.size == 1, parallelism.pipeline.size == 1 else {
            throw CommandError("ember \(command) runs data-parallel only (its losses read whole sequences of scores or log-probabilities): leave out --tensor-parallel and --pipeline-parallel")
        }
        let trainer: Trainer, folder: CheckpointFolder
        if let resumed = try options.resumed(parallelism, accepts: {
            ($0.objective as? PreferenceObjective)?.settings.objective == preference.objective
        }, command: command) {
            (trainer, folder) = resumed
        } else {
            let output = try options.newOutput()
            var adapter = try lora.configuration()
            adapter?.scoreHead = scoreHead
            let (weights, prompting, tokenizerFiles) = try options.load(options.model!, lora: adapter, parallelism: parallelism)
            let fineTuning = FineTuningSettings(validationData: options.heldOut.data, validationFraction: options.heldOut.fraction, preference: preference)
            var settings = options.settings(defaultLR: defaultLR, fineTuning: fineTuning)
            let reference = try preference.reference.map { try TrainableLlama(directory: $0) }
            let objective = try PreferenceObjective(settings: settings, fineTuning: fineTuning, preference: preference, prompting: prompting,
                                                    tokenizerFiles: tokenizerFiles, configuration: weights.configuration, reference: reference)
            settings.steps = options.steps(for: objective.training.count)
            trainer = try Trainer(model: weights, objective: objective, settings: settings, parallelism: parallelism)
            folder = CheckpointFolder(output: output)
            options.describe(weights, from: options.model!, say: say)
            let pairs = settings.batchSize * settings.gradientAccumulation
            let skipped = objective.skipped.total > 0 ? "; skipped \(objective.skipped)" : ""
            say("data: \(objective.training.count) training pairs, \(objective.validation.count) held out\(skipped); \(settings.steps) steps of \(pairs) pairs (\(String(format: "%.2f", Double(settings.steps * pairs) / Double(objective.training.count))) epochs)")
            let before = try trainer.evaluate()
            say("before training: " + Self.validationSummary(before, objective.validationMetrics, preference.objective))
        }
        try runTraining(trainer, folder: folder, parallel: parallel, resume: "ember \(command) --resume \(folder.output)")
        if parallelism.isLeader, let loss = trainer.history.last?.validationLoss {
            let metrics = (trainer.history.last?.metrics ?? [:]).filter { $0.key.hasPrefix("val_") }
            printError("after training: " + Self.validationSummary(loss, Dictionary(uniqueKeysWithValues: metrics.map { (String($0.key.dropFirst(4)), $0.value) }),
                                                                   preference.objective))
        }
        return trainer
    }

    static func validationSummary(_ loss: Float, _ metrics: [String: Float], _ objective: PreferenceSettings.Objective) -> String {
        switch objective {
        case .reward:
            String(format: "validation loss %.4f, accuracy %.4f, margin %.4f", loss, metrics["accuracy"] ?? .nan, metrics["margin"] ?? .nan)
        case .dpo:
            String(format: "validation loss %.4f, rewards/accuracies %.4f, rewards/margins %.4f, rewards/chosen %.4f, rewards/rejected %.4f", loss,
                   metrics["rewards/accuracies"] ?? .nan, metrics["rewards/margins"] ?? .nan, metrics["rewards/chosen"] ?? .nan,
                   metrics["rewards/rejected"] ?? .nan)
        }
    }
}
