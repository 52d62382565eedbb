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
        abstract: "Train a LLaMA model from scratch (or from --init weights) on a data folder.",
        discussion: """
        The model comes from --preset (tiny, small, medium), a Hugging Face --config config.json, or --init DIR (config and weights of an existing model). Without --data, the default corpus is used: the Python standard library's sources, with a byte-level BPE tokenizer trained on them, prepared into OUTPUT/data.

        OUTPUT gets checkpoints/step-N/ (model.safetensors, config.json, tokenizer, optimizer and trainer state; written atomically, the newest named by OUTPUT/latest), model/ (the final model, loadable by Hugging Face transformers and `ember generate`), log.jsonl (one JSON line per step) and loss.svg. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint after the current step and stops; --resume OUTPUT continues a run exactly where its last checkpoint stopped.

        Examples:
          ember pretrain --preset tiny --output runs/tiny
          ember pretrain --config config.json --data data --steps 2000 --output runs/a
          ember pretrain --resume runs/a

        Parallel training: the same command under Open MPI's mpirun runs data parallel over its ranks. The global batch stays --batch-size × --grad-accum sequences per step, shared among the ranks, so a run gives the same losses (bit for bit when each rank takes one whole micro-batch) whatever the number of ranks, and its checkpoints resume at any other. Gradients are all-reduced in buckets (--bucket-mb) while the backward goes on. Rank 0 writes the log, checkpoints and model. Each rank uses --threads threads (default: the cores divided among the ranks on the machine).
          mpirun -np 2 --bind-to none ember pretrain --preset small --grad-accum 2 --output runs/dp
          mpirun --hostfile hosts -np 16 ember pretrain --preset medium --grad-accum 16 --output /shared/runs/dp16

        Model parallelism splits the model itself: --zero-stage 1|2|3 partitions the optimizer state, the gradients and the parameters over the data-parallel ranks; --tensor-parallel T splits each block's matrices, the embedding and the output over T ranks (--sequence-parallel also splits the norms' tokens); --pipeline-parallel P splits the layers into P stages run as a 1F1B schedule over --micro-batches. The ranks form tensor × data × pipeline groups (N = T × D × P), and a checkpoint saved in one layout resumes in any other.
          mpirun -np 2 --bind-to none ember pretrain --preset medium --zero-stage 3 --output runs/z3
          mpirun -np 4 --oversubscribe --bind-to none ember pretrain --preset small --tensor-parallel 2 --pipeline-parallel 2 --grad-accum 4 --output runs/tp-pp
        """)

    @Option(help: ArgumentHelp("Model size: tiny (~1M parameters), small (~10M) or medium (~40M).", valueName: "name"))
    var preset: String?

    @Option(help: ArgumentHelp("A Hugging Face LlamaForCausalLM config.json.", valueName: "path"))
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
    @Option(help: "Seed for the initial weights and the data order (default \(D.seed)).") var seed: UInt64?
    @Option(name: .customLong("eval-every"), help: "Steps between validation losses (default \(D.evalEvery); 0: only at the end).") var evalEvery: Int?
    @Option(name: .customLong("save-every"), help: "Steps between checkpoints (default \(D.saveEvery); 0: only at the end).") var saveEvery: Int?
    @Option(help: "Checkpoints kept (default \(D.keepCheckpoints)).") var keep: Int?
    @Option(help: "Worker threads per rank (default: all cores, divided among the ranks mpirun starts on this machine).")
    var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? 1))
    @Option(name: .customLong("bucket-mb"), help: "Data parallel: gradients are all-reduced in buckets of this many MiB (default 25).") var bucketMB: Double = 25
    @Flag(name: .customLong("no-overlap"), help: "Data parallel: all-reduce the gradients after the backward instead of during it.") var noOverlap = false
    @Option(name: .customLong("zero-stage"), help: "Data parallel: ZeRO stage 0 (replicate everything), 1 (partition the AdamW moments, reduce-scatter the gradients), 2 (also keep only this rank's shard of the gradients) or 3 (also partition the parameters, gathering each block when it runs) (default 0).")
    var zeroStage: Int = 0
    @Option(name: .customLong("tensor-parallel"), help: "Tensor parallelism (Megatron): split each block's matrices, the embedding and the output over this many ranks (they must divide the heads, the key/value heads and the feed-forward size; the vocabulary is padded) (default 1).")
    var tensorParallel: Int = 1
    @Flag(name: .customLong("sequence-parallel"), help: "With --tensor-parallel: run the norms and residuals on shards of the sequence (all-gather before each split product, reduce-scatter after).")
    var sequenceParallel = false
    @Option(name: .customLong("pipeline-parallel"), help: "Pipeline parallelism: split the layers into this many stages, run as a 1F1B schedule over --micro-batches (default 1).")
    var pipelineParallel: Int = 1
    @Option(name: .customLong("micro-batches"), help: "With --pipeline-parallel: micro-batches per step and pipeline, each of --batch-size sequences; --grad-accum must be this times the data-parallel ranks (default: --grad-accum over the data-parallel ranks).")
    var microBatches: Int?
    @Flag(name: .customLong("check-collective-order"), help: "Parallel runs: before every collective, check that all ranks make the same call (one small all-reduce each; for debugging a hang or a mismatch).")
    var checkCollectiveOrder = false
    @Flag(name: .customLong("drop-sequence-parallel-norm-reduction"), help: .hidden)
    var dropNormReduction = false
    @Option(name: .customLong("collective-timeout"), help: "Parallel runs: end the job when a collective waits longer than this many seconds, naming it (a stalled rank; default 600, 0: never).")
    var collectiveTimeout: Double = 600

    func validate() throws {
        if resume == nil {
            guard output != nil else { throw ValidationError("give --output DIR (or --resume a run)") }
            let sources = [preset, config, initial].compactMap { $0 }
            guard sources.count == 1 else { throw ValidationError("give exactly one of --preset, --config and --init") }
            if let preset, Preset(rawValue: preset) == nil {
                throw ValidationError("--preset must be one of \(Preset.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        } else if preset != nil || config != nil || initial != nil || data != nil || decayEverything {
            throw ValidationError("--resume continues a run with its own model, data and settings; leave out --preset, --config, --init, --data and --decay-norms-and-embeddings")
        }
        guard (1...1024).contains(threads) else { throw ValidationError("--threads must be between 1 and 1024") }
        guard bucketMB > 0 else { throw ValidationError("--bucket-mb must be positive") }
        guard (0...3).contains(zeroStage) else { throw ValidationError("--zero-stage must be 0, 1, 2 or 3") }
        guard collectiveTimeout >= 0 else { throw ValidationError("--collective-timeout must not be negative") }
        guard tensorParallel >= 1, pipelineParallel >= 1 else { throw ValidationError("--tensor-parallel and --pipeline-parallel must be at least 1") }
        guard microBatches.map({ $0 >= 1 }) ?? true else { throw ValidationError("--micro-batches must be at least 1") }
        guard !sequenceParallel || tensorParallel > 1 else { throw ValidationError("--sequence-parallel needs --tensor-parallel 2 or more") }
    }

    enum Preset: String, CaseIterable {
        case tiny, small, medium
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
        ThreadPool.configureShared(threadCount: threads)
        MPICommunicator.collectiveTimeout = collectiveTimeout
        let world = try worldCommunicator()
        do {
            var parallelism = try Parallelism(world: world, tensorSize: tensorParallel, stages: pipelineParallel, sequenceParallel: sequenceParallel,
                                              microBatches: microBatches,
                                              bucketBytes: Int(bucketMB * 1_048_576), overlap: !noOverlap, zeroStage: zeroStage,
                                              checkOrder: checkCollectiveOrder)
            parallelism.reduceNormGradients = !dropNormReduction
            try run(parallelism)
        } catch let stopped as ExitCode {
            throw stopped  // every rank stopped after the same step (a signal), with a checkpoint
        } catch {
            guard world.size > 1 else { throw error }
            // The other ranks would wait in their next collective forever: end the whole job.
            printError("Error: rank \(world.rank) of \(world.size): \(error)")
            world.abort(code: 1)
        }
    }

    func run(_ parallelism: Parallelism) throws {
        let world = parallelism.world, leader = parallelism.isLeader
        /// What only rank 0 prints.
        func say(_ text: String) { if leader { printError(text) } }
        let trainer: Trainer, folder: CheckpointFolder
        if let resume {
            let checkpoint = try CheckpointFolder.locate(resume)
            trainer = try Trainer.resume(from: checkpoint, steps: steps, parallelism: parallelism)
            let runFolder = FileManager.default.fileExists(atPath: resume + "/latest") ? resume
                : URL(fileURLWithPath: checkpoint).deletingLastPathComponent().deletingLastPathComponent().path
            folder = CheckpointFolder(output: output ?? runFolder)
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
                model = try TrainableLlama(configuration: preset.configuration(vocabularySize: dataset.description.vocabularySize), seed: seed,
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
                decayEverything: decayEverything, gradientClip: gradClip ?? D.gradientClip, recompute: recompute ?? D.recompute, seed: seed,
                evalEvery: evalEvery ?? D.evalEvery, evalWindows: D.evalWindows, saveEvery: saveEvery ?? D.saveEvery,
                keepCheckpoints: keep ?? D.keepCheckpoints)
            trainer = try Trainer(model: model, dataset: dataset, settings: settings, parallelism: parallelism)
            folder = CheckpointFolder(output: output)
            let c = model.configuration
            say(String(format: "model: %.2fM parameters (hidden %d, %d layers, %d/%d heads, vocabulary %d); %d tokens per step; data %@",
                       Double(model.parameterCount) / 1e6, c.hiddenSize, c.layerCount, c.headCount, c.kvHeadCount, c.vocabularySize,
                       trainer.tokensPerStep, dataFolder))
        }
        say("f32 products: \(BLASCore.summary)")
        if world.size > 1 {
            let gradients = "gradients \(zeroStage > 0 ? "reduce-scattered" : "all-reduced") in \(String(format: "%g", bucketMB)) MiB buckets \(noOverlap ? "after" : "during") the backward"
            let moments = Double(trainer.optimizer.range.count * 8) / 1_048_576
            let p = trainer.parallelism
            say("parallel over \(world.size) ranks (Open MPI), \(threads) threads each: data \(p.data.size) × tensor \(p.tensor.size)\(sequenceParallel ? " (sequence parallel)" : "") × pipeline \(p.pipeline.size); rank 0 holds \(String(format: "%.2f", Double(trainer.model.parameterCount) / 1e6))M parameters")
            say("data parallel over \(p.data.size) ranks; ZeRO stage \(zeroStage): \(gradients); AdamW moments on rank 0: \(String(format: "%.1f", moments)) MiB")
        }
        try train(trainer, folder: folder)
    }

    func train(_ trainer: Trainer, folder: CheckpointFolder) throws {
        let s = trainer.settings, output = folder.output
        let run = TrainingRun(trainer: trainer, folder: folder)
        let interactive = interactiveStandardError
        let outcome = try run.run { p in
            var line = String(format: "step %d/%d loss %.4f lr %.2e %.0f tok/s", p.record.step, s.steps, p.record.loss, p.record.learningRate,
                              p.tokensPerSecond)
            if let validation = p.validationLoss {
                line += String(format: " val %.4f", validation)
                if interactive { printError("\r" + line + "\u{1B}[K") } else { printError(line) }
            }
            if interactive {
                let eta = p.elapsed / Double(p.stepsDone) * Double(s.steps - p.record.step)
                printError(progressBar(Double(p.record.step) / Double(s.steps), line + " ETA " + duration(eta)), terminator: "")
            }
        }
        endProgress()
        let pipeline = try trainer.pipelineReport()  // every rank: the stages' traces are gathered
        if let pipeline, trainer.parallelism.isLeader {
            pipeline.lines.forEach { printError($0) }
            try writeFile(pipeline.chromeTrace, to: output + "/pipeline-trace.json")
            printError(String(format: "rank 0: pipeline %.3f MB sent to neighbour stages per step; pipeline theory %.3f MB (per micro-batch R·C activations forward and R·C gradients backward per boundary, and the tied embedding's gradient); the last step's schedule is in %@/pipeline-trace.json",
                              trainer.pipelineSentBytes / 1e6 / Double(max(1, trainer.stepsRun)), trainer.pipelineSentTheory / 1e6, output))
        }
        guard trainer.parallelism.isLeader else {
            if case .stopped = outcome { throw ExitCode(130) }
            return
        }
        switch outcome {
        case .stopped(let step, let checkpoint):
            printError("stopped at step \(step) of \(s.steps); saved \(checkpoint); continue with: ember pretrain --resume \(output)")
            throw ExitCode(130)
        case .finished(let model):
            let last = trainer.history.last
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            printError(String(format: "done: step %d, loss %.4f%@; peak memory %.0f MiB; model in %@, loss curve %@/loss.svg, log %@",
                              trainer.step, last?.loss ?? .nan, last?.validationLoss.map { String(format: ", validation %.4f", $0) } ?? "",
                              Double(usage.ru_maxrss) / 1024, model, output, run.logPath))
            if trainer.parallelism.world.size > 1 {
                let n = trainer.parallelism.data.size, stage = trainer.parallelism.zeroStage
                let rule = stage == 3 ? "(N−1)/N·(Ψ reduce-scattered + each unit gathered for its forward and backward), ≈ 3(N−1)/N·Ψ"
                    : "2(N−1)/N·Ψ"
                printError(String(format: "rank 0: %.2f MB on the wire per step; theory %.2f MB (ring algorithms: %@); %.2f s spent finishing gradient reductions after the backward (exposed communication)",
                                  trainer.wireBytes / 1e6 / Double(max(1, trainer.stepsRun)), trainer.wireTheory / 1e6, rule,
                                  trainer.exposedCommunicationSeconds))
                if trainer.parallelism.tensor.size > 1 {
                    printError(String(format: "rank 0: tensor-parallel group %.3f MB on the wire per step; tensor theory %.3f MB (ring algorithms: per layer 8(T−1)/T·R·C values for R tokens of C, plus the embedding, the output and the cross-entropy)",
                                      trainer.tensorWireBytes / 1e6 / Double(max(1, trainer.stepsRun)), trainer.tensorWireTheory / 1e6))
                }
                let p = Double(trainer.model.parameterCount), mib = 1_048_576.0
                let ideal = [16 * p, 8 * p + 8 * p / Double(n), 4 * p + 12 * p / Double(n), 16 * p / Double(n)][stage]
                let peak = stage == 3 ? String(format: "peak during a step %.1f MiB (with the units gathered), ", Double(trainer.peakModelStateBytes) / mib) : ""
                printError(String(format: "rank 0 model state (parameters, gradients, AdamW moments in memory): %@after the last step %.1f MiB; ZeRO-%d theory %.1f MiB (DDP %.1f MiB)",
                                  peak, Double(trainer.modelStateBytes) / mib, stage, ideal / mib, 16 * p / mib))
            }
        }
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

/// The defaults `ember pretrain` shows and uses.
private let D = TrainingSettings.defaults
