import EmberFormats
import ArgumentParser
import EmberDistributed
import EmberModels
import EmberTensor
import EmberTokenizers
import EmberTraining
import Foundation

struct Pretrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrain",
        abstract: "Train a LLaMA or GPT-2 model from scratch (or from --init weights) on a data folder.",
        discussion: """
        The model comes from --preset (tiny, small, medium; --architecture llama or gpt2), a Hugging Face --config config.json (LlamaForCausalLM, MistralForCausalLM or GPT2LMHeadModel), or --init DIR (config and weights of an existing model). Without --data, the default corpus is used: the Python standard library's sources, with a byte-level BPE tokenizer trained on them, prepared into OUTPUT/data.

        OUTPUT gets checkpoints/step-N/ (model.safetensors, config.json, tokenizer, optimizer and trainer state; written atomically, the newest named by OUTPUT/latest), model/ (the final model, loadable by Hugging Face transformers and `ember generate`), log.jsonl (one JSON line per step) and loss.svg. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint after the current step and stops; --resume OUTPUT continues a run exactly where its last checkpoint stopped.

        Examples:
          ember pretrain --preset tiny --output runs/tiny
          ember pretrain --architecture gpt2 --preset tiny --data shakespeare --output runs/gpt2
          ember pretrain --config config.json --data data --steps 2000 --output runs/a
          ember pretrain --resume runs/a

        Parallel training: the same command under Open MPI's mpirun runs data parallel over its ranks. The global batch stays --batch-size × --grad-accum sequences per step, shared among the ranks, so a run gives the same losses (bit for bit when each rank takes one whole micro-batch) whatever the number of ranks, and its checkpoints resume at any other. Gradients are all-reduced in buckets (--bucket-mb) while the backward goes on. Rank 0 writes the log, checkpoints and model. Each rank uses --threads threads (default: the cores divided among the ranks on the machine).
          mpirun -np 2 --bind-to none ember pretrain --preset small --grad-accum 2 --output runs/dp
          mpirun --hostfile hosts -np 16 ember pretrain --preset medium --grad-accum 16 --output /shared/runs/dp16

        Model parallelism splits LLaMA models (GPT-2 trains in one process or plain data parallel): --zero-stage 1|2|3 partitions the optimizer state, the gradients and the parameters over the data-parallel ranks; --tensor-parallel T splits each block's matrices, the embedding and the output over T ranks (--sequence-parallel also splits the norms' tokens); --pipeline-parallel P splits the layers into P stages run as a 1F1B schedule over --micro-batches. The ranks form tensor × data × pipeline groups (N = T × D × P), and a checkpoint saved in one layout resumes in any other.
          mpirun -np 2 --bind-to none ember pretrain --preset medium --zero-stage 3 --output runs/z3
          mpirun -np 4 --oversubscribe --bind-to none ember pretrain --preset small --tensor-parallel 2 --pipeline-parallel 2 --grad-accum 4 --output runs/tp-pp
        """)

    @Option(help: ArgumentHelp("Model size: tiny (~1M parameters), small (~10M) or medium (~40M).", valueName: "name"))
    var preset: String?

    @Option(help: ArgumentHelp("The preset's architecture: llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) or gpt2 (LayerNorm, learned positions, GELU, biases; the MLP 4× the hidden size).", valueName: "name"))
    var architecture: Architecture = .llama

    @Option(help: ArgumentHelp("A Hugging Face config.json (LlamaForCausalLM, MistralForCausalLM or GPT2LMHeadModel).", valueName: "path"))
    var config: String?

    @Option(name: .customLong("init"), help: ArgumentHelp("Start from this model directory's config and weights.", valueName: "dir"))
    var initial: String?

    @Option(help: ArgumentHelp("A folder from `ember prepare-data` (default: the Python standard library corpus).", valueName: "dir"))
    var data: String?

    @Option(help: ArgumentHelp("Where checkpoints, logs and the final model go.", valueName: "dir"))
    var output: String?

    @Option(help: ArgumentHelp("Continue a run: its output folder or one of its checkpoints.", valueName: "dir"))
    var resume: String?

    @Option(help: "Optimizer steps in the whole run (default \(D.steps)).") var steps: Int?
    @Option(name: .customLong("batch-size"), help: "Sequences per micro-batch (default \(D.batchSize)).") var batchSize: Int?
    @Option(name: .customLong("seq-len"), help: "Tokens per sequence (default \(D.sequenceLength), at most the model's context).") var seqLen: Int?
    @Option(name: .customLong("grad-accum"), help: "Micro-batches per optimizer step (default \(D.gradientAccumulation)).") var gradAccum: Int?
    @Option(help: "Peak learning rate (default \(D.learningRate)).") var lr: Float?
    @Option(name: .customLong("min-lr"), help: "Learning rate at the end of the cosine decay (default \(D.minimumLearningRate)).") var minLr: Float?
    @Option(help: "Linear warmup steps (default \(D.warmup)).") var warmup: Int?
    @Option(name: .customLong("weight-decay"), help: "AdamW weight decay, projection matrices only (default \(D.weightDecay)).") var weightDecay: Float?
    @Flag(name: .customLong("decay-norms-and-embeddings"), help: "Apply the weight decay to norms and embeddings too.")
    var decayEverything = false
    @Option(name: .customLong("grad-clip"), help: "Largest global gradient norm (default \(D.gradientClip)).") var gradClip: Float?
    @Option(help: "Activation recomputation: none, or block (keep only each block's input; less memory, ~30% slower; default \(D.recompute.rawValue)).") var recompute: TrainableLlama.Recompute?
    @Option(help: "Precision of the matrix products: f32, or bf16 (operands rounded to bf16, with AVX-512 BF16 where the CPU has it; sums, master weights, AdamW moments, norms, softmax and losses stay f32). Default f32.")
    var precision: Precision?
    @Option(help: "Seed for the initial weights and the data order (default \(D.seed)).") var seed: UInt64?
    @Option(name: .customLong("eval-every"), help: "Steps between validation losses (default \(D.evalEvery); 0: only at the end).") var evalEvery: Int?
    @Option(name: .customLong("save-every"), help: "Steps between checkpoints (default \(D.saveEvery); 0: only at the end).") var saveEvery: Int?
    @Option(help: "Checkpoints kept (default \(D.keepCheckpoints)).") var keep: Int?
    @OptionGroup var parallel: ParallelOptions

    func validate() throws {
        if resume == nil {
            guard output != nil else { throw ValidationError("give --output DIR (or --resume a run)") }
            let sources = [preset, config, initial].compactMap { $0 }
            guard sources.count == 1 else { throw ValidationError("give exactly one of --preset, --config and --init") }
            if let preset, Preset(rawValue: preset) == nil {
                throw ValidationError("--preset must be one of \(Preset.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if architecture != .llama && preset == nil {
                throw ValidationError("--architecture chooses a --preset's architecture; --config and --init name their own")
            }
        } else if preset != nil || config != nil || initial != nil || data != nil || decayEverything || architecture != .llama || precision != nil {
            throw ValidationError("--resume continues a run with its own model, data and settings; leave out --preset, --architecture, --config, --init, --data, --precision and --decay-norms-and-embeddings")
        }
    }

    enum Architecture: String, CaseIterable, ExpressibleByArgument { case llama, gpt2 }

    enum Preset: String, CaseIterable {
        case tiny, small, medium
        /// The preset's size as `architecture`: GPT-2 takes its hidden size, layers, heads and context.
        func configuration(vocabularySize: Int, architecture: Architecture) -> LlamaConfiguration {
            let c = configuration(vocabularySize: vocabularySize)
            guard architecture == .gpt2 else { return c }
            return LlamaConfiguration(gpt2: c.hiddenSize, layerCount: c.layerCount, headCount: c.headCount, vocabularySize: vocabularySize,
                                      context: c.maxPositionEmbeddings)
        }

        func configuration(vocabularySize: Int) -> LlamaConfiguration {
            switch self {
            case .tiny: LlamaConfiguration(hiddenSize: 128, intermediateSize: 384, layerCount: 4, headCount: 4, kvHeadCount: 2,
                                           vocabularySize: vocabularySize, maxPositionEmbeddings: 256, tieWordEmbeddings: true)
            case .small: LlamaConfiguration(hiddenSize: 256, intermediateSize: 1024, layerCount: 8, headCount: 8, kvHeadCount: 4,
                                            vocabularySize: vocabularySize, maxPositionEmbeddings: 512, tieWordEmbeddings: true)
            case .medium: LlamaConfiguration(hiddenSize: 512, intermediateSize: 1536, layerCount: 12, headCount: 8, kvHeadCount: 4,
                                             vocabularySize: vocabularySize, maxPositionEmbeddings: 1024, tieWordEmbeddings: true)
            }
        }
    }

    func run() throws {
        try parallel.run(self.run)
    }

    func run(_ parallelism: Parallelism) throws {
        let world = parallelism.world, leader = parallelism.isLeader
        /// What only rank 0 prints.
        func say(_ text: String) { if leader { printError(text) } }
        let trainer: Trainer, folder: CheckpointFolder
        if let resume {
            let checkpoint = try CheckpointFolder.locate(resume)
            trainer = try Trainer.resume(from: checkpoint, steps: steps, parallelism: parallelism)
            folder = CheckpointFolder(output: output ?? CheckpointFolder.run(of: resume, checkpoint: checkpoint))
            say("resuming \(checkpoint) at step \(trainer.step) of \(trainer.settings.steps)")
        } else {
            let output = self.output!
            // Rank 0 checks the folder and prepares the data; the others wait for it.
            var dataFolder = data ?? output + "/data"
            try world.everyRankSucceeds("preparing the run") {
                guard leader else { return }
                guard !FileManager.default.fileExists(atPath: output + "/latest") else {
                    throw CommandError("\(output) already holds a run; continue it with --resume \(output), or choose another --output")
                }
                try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
                dataFolder = try data ?? defaultCorpus(into: output + "/data")
            }
            let dataset = try TokenDataset(directory: dataFolder)
            let seed = self.seed ?? D.seed
            let model: TrainableLlama
            if let preset = preset.flatMap(Preset.init) {
                model = try TrainableLlama(configuration: preset.configuration(vocabularySize: dataset.description.vocabularySize, architecture: architecture), seed: seed,
                                           layout: parallelism.layout)
            } else if let config {
                model = try TrainableLlama(configuration: LlamaConfiguration.load(configPath: config), seed: seed, layout: parallelism.layout)
            } else {
                model = try TrainableLlama(directory: initial!, layout: parallelism.layout)
            }
            let settings = TrainingSettings(
                data: URL(fileURLWithPath: dataFolder).standardizedFileURL.path, steps: steps ?? D.steps, batchSize: batchSize ?? D.batchSize,
                sequenceLength: seqLen ?? min(D.sequenceLength, model.configuration.maxPositionEmbeddings),
                gradientAccumulation: gradAccum ?? D.gradientAccumulation, learningRate: lr ?? D.learningRate,
                minimumLearningRate: minLr ?? D.minimumLearningRate, warmup: warmup ?? D.warmup, weightDecay: weightDecay ?? D.weightDecay,
                decayEverything: decayEverything, gradientClip: gradClip ?? D.gradientClip, recompute: recompute ?? D.recompute, precision: precision, seed: seed,
                evalEvery: evalEvery ?? D.evalEvery, evalWindows: D.evalWindows, saveEvery: saveEvery ?? D.saveEvery,
                keepCheckpoints: keep ?? D.keepCheckpoints)
            trainer = try Trainer(model: model, dataset: dataset, settings: settings, parallelism: parallelism)
            folder = CheckpointFolder(output: output)
            let c = model.configuration
            say(String(format: "model: %@, %.2fM parameters (hidden %d, %d layers, %d/%d heads, vocabulary %d); %d tokens per step; data %@",
                       c.family.rawValue, Double(model.parameterCount) / 1e6, c.hiddenSize, c.layerCount, c.headCount, c.kvHeadCount, c.vocabularySize,
                       trainer.tokensPerStep, dataFolder))
        }
        try runTraining(trainer, folder: folder, parallel: parallel, resume: "ember pretrain --resume \(folder.output)")
    }

    /// The default corpus, prepared once into `folder`: the Python standard library's sources and a
    /// 4,096-token byte-level BPE tokenizer learned from them.
    func defaultCorpus(into folder: String) throws -> String {
        if FileManager.default.fileExists(atPath: folder + "/dataset.json") { return folder }
        let files = try pythonStandardLibrarySources(limit: 8_000_000)
        printError("default corpus: \(files.count) Python standard library files from \((files[0] as NSString).deletingLastPathComponent)")
        let texts = files.compactMap { path in
            FileManager.default.contents(atPath: path).flatMap { String(validating: $0, as: UTF8.self) }
        }
        let trainer = ByteLevelBPETrainer(vocabularySize: 4096, preTokenizer: .gpt2, specialTokens: ["<|endoftext|>"])
        let result = trainer.train(texts) { done, wanted in
            showProgress(Double(done) / Double(max(wanted, 1)), "tokenizer: \(done)/\(wanted) merges")
        }
        endProgress()
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let tokenizerPath = folder + "/tokenizer.json"
        try writeFile(result.tokenizerJSON(preTokenizer: .gpt2), to: tokenizerPath)
        let description = try prepareData(tokenizer: TokenizerJSON.load(path: tokenizerPath), tokenizerPath: tokenizerPath, inputs: files,
                                          output: folder, validationFraction: 0.05) { done, total, tokens in
            showProgress(Double(done) / Double(total), "data: \(done)/\(total) files, \(tokens) tokens")
        }
        endProgress()
        printError("default corpus: \(description.tokens["train"] ?? 0) training and \(description.tokens["val"] ?? 0) validation tokens in \(folder)")
        return folder
    }
}

extension TrainableLlama.Recompute: ExpressibleByArgument {}
extension Precision: ExpressibleByArgument {}

/// The defaults `ember pretrain` shows and uses.
private let D = TrainingSettings.defaults
