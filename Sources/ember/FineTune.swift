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

        --fim-rate R trains code completion inside a file: each plain-text document, with probability R, is cut at two random characters (with --fim-span line, the middle is whole lines instead, at most --fim-max-lines of them) into prefix, middle and suffix and rearranged as <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle (PSM), or with probability --fim-spm-rate as <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle (SPM), StarCoder's transformation; with --fim-spm-style llama-server, SPM documents are <fim_suffix> suffix <fim_prefix> prefix <fim_middle> middle instead, the prompt that `ember serve --spm-infill` and llama-server's --spm-infill build. A model whose vocabulary lacks <fim_prefix>, <fim_middle>, <fim_suffix> and <fim_pad> gets them first (the embedding grows by four rows at the mean of the others); that model, untrained, is written to OUTPUT/base. `ember serve` then answers POST /infill and "suffix" on /v1/completions.

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

    @OptionGroup var options: FineTuningOptions
    @Flag(help: "Pack examples into rows of --max-length (best-fit decreasing, one attention block per example).")
    var packing = false
    @Option(name: .customLong("loss-on"), help: "completion (the completion or the assistant's turns; all of plain text) or all (every token).")
    var lossOn: LearnedTokens = .completion
    @Option(help: "Examples longer than --max-length: drop (counted) or truncate (keep the start).")
    var overlong: OverlongExamples = .drop

    @Option(name: .customLong("fim-rate"), help: "The fraction of plain-text documents given the fill-in-the-middle transformation.")
    var fimRate: Double = 0
    @Option(name: .customLong("fim-spm-rate"), help: "The fraction of those in SPM rather than PSM order.")
    var fimSPMRate: Double = 0.5
    @Option(name: .customLong("fim-spm-style"), help: "The layout of SPM documents: starcoder or llama-server (what --spm-infill serves).")
    var fimSPMStyle: FIMTransform.SPMStyle = .starcoder
    @Option(name: .customLong("fim-span"), help: "Where a document is cut: character (anywhere, as StarCoder) or line (the middle is whole lines, without the last one's newline).")
    var fimSpan: FIMTransform.Span = .character
    @Option(name: .customLong("fim-max-lines"), help: "With --fim-span line: the most lines in a middle (1 trains single-line infilling; default: up to the whole document).")
    var fimMaxLines: Int?

    @OptionGroup var loraOptions: LoRAOptions
    @OptionGroup var parallel: ParallelOptions

    func validate() throws {
        if options.resume != nil, packing || loraOptions.rank != nil || fimRate != 0 || fimSpan != .character || fimMaxLines != nil
            || fimSPMStyle != .starcoder {
            throw ValidationError("--resume continues a run with its own model, data, adapter and settings; leave out --packing, the --fim options and --lora-rank")
        }
        guard (0...1).contains(fimRate), (0...1).contains(fimSPMRate) else { throw ValidationError("--fim-rate and --fim-spm-rate must be between 0 and 1") }
        if fimRate == 0, fimSpan != .character || fimSPMStyle != .starcoder {
            throw ValidationError("--fim-span and --fim-spm-style shape the fill-in-the-middle transformation; give them with --fim-rate")
        }
        if let fimMaxLines {
            guard fimMaxLines > 0 else { throw ValidationError("--fim-max-lines must be at least 1") }
            guard fimSpan == .line, fimRate > 0 else { throw ValidationError("--fim-max-lines limits the middles of --fim-span line; give it with --fim-rate and --fim-span line") }
        }
    }

    func run() throws {
        try parallel.run(run)
    }

    func run(_ parallelism: Parallelism) throws {
        func say(_ text: String) { if parallelism.isLeader { printError(text) } }
        let trainer: Trainer, folder: CheckpointFolder
        if let resumed = try options.resumed(parallelism, accepts: { $0.objective is SupervisedObjective }, command: "sft") {
            (trainer, folder) = resumed
        } else {
            let output = try options.newOutput()
            var model = options.model!
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
            let (weights, prompting, tokenizerFiles) = try options.load(model, lora: try loraOptions.configuration(), parallelism: parallelism)
            let fineTuning = FineTuningSettings(validationData: options.heldOut.data, validationFraction: options.heldOut.fraction, packing: packing,
                                                learned: lossOn, overlong: overlong, fimRate: fimRate > 0 ? fimRate : nil,
                                                fimSPMRate: fimRate > 0 ? fimSPMRate : nil, fimSpan: fimRate > 0 ? fimSpan : nil,
                                                fimMaxLines: fimRate > 0 ? fimMaxLines : nil, fimSPMStyle: fimRate > 0 ? fimSPMStyle : nil)
            var settings = options.settings(defaultLR: 2e-5, fineTuning: fineTuning)
            let objective = try SupervisedObjective(settings: settings, fineTuning: fineTuning, prompting: prompting,
                                                    tokenizerFiles: tokenizerFiles, configuration: weights.configuration)
            settings.steps = options.steps(for: objective.training.count)
            trainer = try Trainer(model: weights, objective: objective, settings: settings, parallelism: parallelism)
            folder = CheckpointFolder(output: output)
            let skipped = objective.skipped.total > 0 ? "; skipped \(objective.skipped)" : ""
            options.describe(weights, from: model, say: say)
            let rowsPerStep = settings.batchSize * settings.gradientAccumulation
            say("data: \(objective.trainingExamples) training examples\(packing ? " packed into \(objective.training.count) rows of \(settings.sequenceLength)" : ""), \(objective.validation.count) held out\(skipped); \(settings.steps) steps of \(rowsPerStep) \(packing ? "rows" : "examples") (\(String(format: "%.2f", Double(settings.steps * rowsPerStep) / Double(objective.training.count))) epochs)")
            let before = try trainer.evaluate()
            say(String(format: "before training: validation masked NLL %.4f, token accuracy %.4f", before, objective.validationMetrics["token_accuracy"] ?? .nan))
        }
        try runTraining(trainer, folder: folder, parallel: parallel, resume: "ember sft --resume \(folder.output)")
    }
}

extension LearnedTokens: ExpressibleByArgument {}
extension OverlongExamples: ExpressibleByArgument {}
extension FIMTransform.Span: ExpressibleByArgument {}
extension FIMTransform.SPMStyle: ExpressibleByArgument {}
