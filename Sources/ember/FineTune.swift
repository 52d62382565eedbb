import ArgumentParser
import EmberModels
import EmberTensor
import EmberTraining
import Foundation

struct FineTune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sft",
        abstract: "Supervised fine-tuning of a model on JSONL data in TRL's formats.",
        discussion: """
        --model is a Hugging Face model folder (config.json, model.safetensors, tokenizer.json and tokenizer_config.json with its chat template), or with --lora-rank also a GGUF file (QLoRA). --data is JSONL, one example a line, in one of TRL's formats:
          {"text": "..."}                                   language modelling: every token is learned
          {"messages": [{"role": ..., "content": ...}]}     conversations: the assistant's turns are learned
          {"prompt": ..., "completion": ...}                the completion is learned (strings, or lists of messages)
        Conversations are rendered with the model's chat template. EOS is appended to plain text and plain completions that lack it. Examples longer than --max-length are dropped and counted (--overlong truncate keeps their start instead); examples with an empty assistant turn or completion are skipped and counted.

        The loss is the mean cross-entropy over the learned tokens of the whole step (--batch-size × --grad-accum examples, or packed rows with --packing), as TRL computes it. --packing puts the examples into rows of --max-length by best-fit decreasing; each example restarts its positions and attends only to itself. The held-out examples (--eval-data, or --eval-fraction of --data) give the validation masked NLL and token accuracy, before training and every --eval-every steps.

        --fim-rate R trains code completion inside a file: each plain-text document, with probability R, is cut at two random characters into prefix, middle and suffix and rearranged as <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle (PSM), or with probability --fim-spm-rate as <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle (SPM), StarCoder's transformation. A model whose vocabulary lacks <fim_prefix>, <fim_middle>, <fim_suffix> and <fim_pad> gets them first (the embedding grows by four rows at the mean of the others); that model, untrained, is written to OUTPUT/base. `ember serve` then answers POST /infill and "suffix" on /v1/completions.

        With --lora-rank only a LoRA adapter trains (PEFT's initialisation: the model starts as the base); the base stays frozen where it lies: f32 from a folder, or a GGUF file's quantized blocks (QLoRA), expanded a tile at a time in the products.

        OUTPUT is a training run as `ember pretrain` writes it: checkpoints (with --resume), log.jsonl, loss.svg and model/, which `ember serve --model` and transformers load; with LoRA, adapter/ (adapter_model.safetensors and adapter_config.json), which PEFT and `ember serve --lora-modules` load. The same parallel options work under mpirun.

        Examples:
          scripts/fetch-sft-data.py      # the Alpaca demo and others into .cache/sft
          ember sft --model .cache/models/SmolLM2-135M-f32 --data .cache/sft/alpaca.jsonl --output runs/sft
          ember sft --model base --data chats.jsonl --packing --max-length 2048 --epochs 3 --output runs/chat
          ember sft --model .cache/models/SmolLM2-135M-f32 --data .cache/sft/alpaca.jsonl --lora-rank 16 --lora-alpha 32 --lora-targets all-linear --lr 2e-4 --output runs/lora
          ember sft --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --data .cache/sft/alpaca.jsonl --lora-rank 16 --lr 2e-4 --output runs/qlora
          scripts/fetch-fim-data.py      # Python standard library functions into .cache/fim
          ember sft --model .cache/models/SmolLM2-135M-f32 --data .cache/fim/train.jsonl --fim-rate 0.9 --packing --max-length 512 --lr 1e-4 --output runs/fim
          ember sft --resume runs/sft
        """)

    @Option(help: ArgumentHelp("The model to fine-tune: a Hugging Face folder with its tokenizer.", valueName: "dir"))
    var model: String?
    @Option(help: ArgumentHelp("Training examples, JSONL in TRL's formats.", valueName: "file"))
    var data: String?
    @Option(name: .customLong("eval-data"), help: ArgumentHelp("Held-out examples (default: --eval-fraction of --data).", valueName: "file"))
    var evalData: String?
    @Option(name: .customLong("eval-fraction"), help: "The fraction of --data held out when there is no --eval-data.")
    var evalFraction: Double = 0.05
    @Option(help: ArgumentHelp("Where checkpoints, logs and the final model go.", valueName: "dir"))
    var output: String?
    @Option(help: ArgumentHelp("Continue a run: its output folder or one of its checkpoints.", valueName: "dir"))
    var resume: String?

    @Flag(help: "Pack examples into rows of --max-length (best-fit decreasing, one attention block per example).")
    var packing = false
    @Option(name: .customLong("loss-on"), help: "completion (the completion or the assistant's turns; all of plain text) or all (every token).")
    var lossOn: LearnedTokens = .completion
    @Option(help: "Examples longer than --max-length: drop (counted) or truncate (keep the start).")
    var overlong: OverlongExamples = .drop
    @Option(name: .customLong("max-length"), help: "Tokens of the longest example, or of a packed row.")
    var maxLength: Int = 1024

    @Option(help: "Optimizer steps (default: --epochs over the training examples).") var steps: Int?
    @Option(help: "Passes over the training data when --steps is not given.") var epochs: Double = 1
    @Option(name: .customLong("batch-size"), help: "Examples (or packed rows) per micro-batch.") var batchSize: Int = 4
    @Option(name: .customLong("grad-accum"), help: "Micro-batches per optimizer step.") var gradAccum: Int = 2
    @Option(help: "Peak learning rate.") var lr: Float = 2e-5
    @Option(name: .customLong("min-lr"), help: "Learning rate at the end of the cosine decay.") var minLr: Float = 0
    @Option(help: "Linear warmup steps.") var warmup: Int = 0
    @Option(name: .customLong("weight-decay"), help: "AdamW weight decay of the projection matrices.") var weightDecay: Float = 0
    @Option(name: .customLong("grad-clip"), help: "Largest global gradient norm.") var gradClip: Float = 1
    @Option(help: "Activation recomputation: none or block.") var recompute: TrainableLlama.Recompute = .none
    @Option(help: "Seed of the held-out split and the data order.") var seed: UInt64 = 1
    @Option(name: .customLong("eval-every"), help: "Steps between validations (0: only at the end).") var evalEvery: Int = 50
    @Option(name: .customLong("save-every"), help: "Steps between checkpoints (0: only at the end).") var saveEvery: Int = 100
    @Option(help: "Checkpoints kept.") var keep: Int = 2

    @Option(name: .customLong("fim-rate"), help: "The fraction of plain-text documents given the fill-in-the-middle transformation.")
    var fimRate: Double = 0
    @Option(name: .customLong("fim-spm-rate"), help: "The fraction of those in SPM rather than PSM order.")
    var fimSPMRate: Double = 0.5

    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var parallel: ParallelOptions

    func validate() throws {
        if resume == nil {
            guard model != nil, data != nil, output != nil else { throw ValidationError("give --model DIR, --data FILE and --output DIR (or --resume a run)") }
        } else if model != nil || data != nil || evalData != nil || packing || loraOptions.rank != nil || fimRate != 0 {
            throw ValidationError("--resume continues a run with its own model, data, adapter and settings; leave out --model, --data, --eval-data, --packing, --fim-rate and --lora-rank")
        }
        guard (0...1).contains(fimRate), (0...1).contains(fimSPMRate) else { throw ValidationError("--fim-rate and --fim-spm-rate must be between 0 and 1") }
        guard maxLength >= 2 else { throw ValidationError("--max-length must be at least 2") }
        guard epochs > 0 else { throw ValidationError("--epochs must be positive") }
        guard evalFraction > 0, evalFraction < 1 else { throw ValidationError("--eval-fraction must be between 0 and 1") }
    }

    func run() throws {
        try parallel.run(run)
    }

    func run(_ parallelism: Parallelism) throws {
        func say(_ text: String) { if parallelism.isLeader { printError(text) } }
        let trainer: Trainer, folder: CheckpointFolder
        if let resume {
            let checkpoint = try CheckpointFolder.locate(resume)
            trainer = try Trainer.resume(from: checkpoint, steps: steps, parallelism: parallelism)
            guard trainer.objective is SupervisedObjective else { throw CommandError("\(resume) is not a fine-tuning run; continue it with ember pretrain --resume") }
            folder = CheckpointFolder(output: output ?? CheckpointFolder.run(of: resume, checkpoint: checkpoint))
            say("resuming \(checkpoint) at step \(trainer.step) of \(trainer.settings.steps)")
        } else {
            let output = self.output!
            var model = self.model!
            guard !FileManager.default.fileExists(atPath: output + "/latest") else {
                throw CommandError("\(output) already holds a run; continue it with --resume \(output), or choose another --output")
            }
            if fimRate > 0, !model.hasSuffix(".gguf"), FillInTheMiddle(tokenizer: try LoadedModel.prompting(directory: model).tokenizer) == nil {
                guard loraOptions.rank == nil else {
                    throw CommandError("\(model) has no fill-in-the-middle tokens; adding them grows the embedding, which a LoRA adapter does not carry: fine-tune fully (leave out --lora-rank), or start from a model that has them")
                }
                if parallelism.isLeader {
                    let tokens = try FIMVocabulary.add(to: model, output: output + "/base")
                    say("added \(FillInTheMiddle.addedNames.joined(separator: ", ")) as tokens \(tokens.prefix)–\(tokens.prefix + 3); the model with them, untrained, is in \(output)/base")
                }
                try parallelism.world.barrier()
                model = output + "/base"
            }
            let weights: TrainableLlama, prompting: Prompting, tokenizerFiles: [String]
            if let lora = try loraOptions.configuration() {
                let adapted = try TrainableLlama.withLoRA(base: model, lora: lora, seed: seed)
                weights = adapted.model
                prompting = try adapted.base.prompting()
                tokenizerFiles = adapted.base.gguf == nil ? SupervisedObjective.tokenizerFiles(in: model) : []
            } else {
                guard !model.hasSuffix(".gguf") else {
                    throw CommandError("\(model): a GGUF model trains through an adapter only (QLoRA: give --lora-rank); full fine-tuning starts from a Hugging Face folder")
                }
                prompting = try LoadedModel.prompting(directory: model)
                weights = try TrainableLlama(directory: model, layout: parallelism.layout)
                tokenizerFiles = SupervisedObjective.tokenizerFiles(in: model)
            }
            let fineTuning = FineTuningSettings(validationData: evalData.map(absolute), validationFraction: evalFraction, packing: packing,
                                                learned: lossOn, overlong: overlong, fimRate: fimRate > 0 ? fimRate : nil,
                                                fimSPMRate: fimRate > 0 ? fimSPMRate : nil)
            var settings = TrainingSettings(
                data: absolute(data!), steps: 1, batchSize: batchSize, sequenceLength: maxLength, gradientAccumulation: gradAccum,
                learningRate: lr, minimumLearningRate: minLr, warmup: warmup, weightDecay: weightDecay, gradientClip: gradClip,
                recompute: recompute, seed: seed, evalEvery: evalEvery, saveEvery: saveEvery, keepCheckpoints: keep, fineTuning: fineTuning)
            let objective = try SupervisedObjective(settings: settings, fineTuning: fineTuning, prompting: prompting,
                                                    tokenizerFiles: tokenizerFiles, configuration: weights.configuration)
            let rowsPerStep = batchSize * gradAccum
            settings.steps = steps ?? max(1, Int((epochs * Double(objective.training.count) / Double(rowsPerStep)).rounded(.up)))
            trainer = try Trainer(model: weights, objective: objective, settings: settings, parallelism: parallelism)
            folder = CheckpointFolder(output: output)
            let c = weights.configuration
            let skipped = objective.skipped.total > 0 ? "; skipped \(objective.skipped)" : ""
            if let lora = weights.lora, let base = weights.base {
                let types = Set(base.blocks.flatMap { [$0.query.type, $0.gate.type, $0.down.type] }.map(\.rawValue)).sorted().joined(separator: "/")
                say(String(format: "model: LoRA rank %d, alpha %g on %@: %.2fM trained parameters over the frozen %@ base (hidden %d, %d layers) from %@",
                           lora.rank, lora.alpha, lora.targets.map(\.rawValue).joined(separator: ","), Double(weights.parameterCount) / 1e6, types,
                           c.hiddenSize, c.layerCount, model))
            } else {
                say(String(format: "model: %.1fM parameters (hidden %d, %d layers, vocabulary %d) from %@", Double(weights.parameterCount) / 1e6,
                           c.hiddenSize, c.layerCount, c.vocabularySize, model))
            }
            say("data: \(objective.trainingExamples) training examples\(packing ? " packed into \(objective.training.count) rows of \(maxLength)" : ""), \(objective.validation.count) held out\(skipped); \(settings.steps) steps of \(rowsPerStep) \(packing ? "rows" : "examples") (\(String(format: "%.2f", Double(settings.steps * rowsPerStep) / Double(objective.training.count))) epochs)")
            let before = try trainer.evaluate()
            say(String(format: "before training: validation masked NLL %.4f, token accuracy %.4f", before, objective.validationMetrics["token_accuracy"] ?? .nan))
        }
        try runTraining(trainer, folder: folder, parallel: parallel, resume: "ember sft --resume \(folder.output)")
    }

    private func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
}

extension LearnedTokens: ExpressibleByArgument {}
extension OverlongExamples: ExpressibleByArgument {}
