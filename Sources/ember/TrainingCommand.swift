import EmberFormats
import ArgumentParser
import EmberDistributed
import EmberModels
import EmberTensor
import EmberTraining
import Foundation

/// LoRA: the options every trainer of a model shares. Given a rank, only the adapter trains,
/// over the frozen base.
struct LoRAOptions: ParsableArguments {
    @Option(name: .customLong("lora-rank"), help: "Train a LoRA adapter of this rank over the frozen model instead of the whole model (a GGUF --model is QLoRA: its quantized weights stay as they are).")
    var rank: Int?
    @Option(name: .customLong("lora-alpha"), help: "LoRA's α: the update is scaled by α / rank (the default is PEFT's).") var alpha: Float = 8
    @Option(name: .customLong("lora-dropout"), help: "Dropout on LoRA's input during training.") var dropout: Float = 0
    @Option(name: .customLong("lora-targets"), help: "The adapted layers: module names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear (the default is PEFT's for LLaMA).")
    var targets: String = "q_proj,v_proj"

    /// The adapter's shape, when a rank is given.
    func configuration() throws -> LoRAConfiguration? {
        guard let rank else { return nil }
        let settings = LoRAConfiguration(rank: rank, alpha: alpha, dropout: dropout, targets: try LoRATarget.parse(targets))
        try settings.validate()
        return settings
    }
}

/// The options of parallel training that every training command shares: threads, and the data,
/// tensor and pipeline parallelism of a run under mpirun.
struct ParallelOptions: ParsableArguments {
    @Option(help: "Worker threads per rank (default: all cores, divided among the ranks mpirun starts on this machine).")
    var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? 1))
    @Option(name: .customLong("bucket-mb"), help: "Data parallel: gradients are all-reduced in buckets of this many MiB.") var bucketMB: Double = 25
    @Flag(name: .customLong("no-overlap"), help: "Data parallel: all-reduce the gradients after the backward instead of during it.") var noOverlap = false
    @Option(name: .customLong("zero-stage"), help: "Data parallel: ZeRO stage 0 (replicate everything), 1 (partition the AdamW moments, reduce-scatter the gradients), 2 (also keep only this rank's shard of the gradients) or 3 (also partition the parameters, gathering each block when it runs).")
    var zeroStage: Int = 0
    @Option(name: .customLong("tensor-parallel"), help: "Tensor parallelism (Megatron): split each block's matrices, the embedding and the output over this many ranks (they must divide the heads, the key/value heads and the feed-forward size; the vocabulary is padded).")
    var tensorParallel: Int = 1
    @Flag(name: .customLong("sequence-parallel"), help: "With --tensor-parallel: run the norms and residuals on shards of the sequence (all-gather before each split product, reduce-scatter after).")
    var sequenceParallel = false
    @Option(name: .customLong("pipeline-parallel"), help: "Pipeline parallelism: split the layers into this many stages, run as a 1F1B schedule over --micro-batches.")
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
        guard (1...1024).contains(threads) else { throw ValidationError("--threads must be between 1 and 1024") }
        guard bucketMB > 0 else { throw ValidationError("--bucket-mb must be positive") }
        guard (0...3).contains(zeroStage) else { throw ValidationError("--zero-stage must be 0, 1, 2 or 3") }
        guard collectiveTimeout >= 0 else { throw ValidationError("--collective-timeout must not be negative") }
        guard tensorParallel >= 1, pipelineParallel >= 1 else { throw ValidationError("--tensor-parallel and --pipeline-parallel must be at least 1") }
        guard microBatches.map({ $0 >= 1 }) ?? true else { throw ValidationError("--micro-batches must be at least 1") }
        guard !sequenceParallel || tensorParallel > 1 else { throw ValidationError("--sequence-parallel needs --tensor-parallel 2 or more") }
    }

    /// Configures the threads and the MPI world, and runs `body` with this rank's grid; an error on
    /// one rank of several ends the whole job (the others would wait in their next collective).
    func run(_ body: (Parallelism) throws -> Void) throws {
        ThreadPool.configureShared(threadCount: threads)
        MPICommunicator.collectiveTimeout = collectiveTimeout
        let world = try worldCommunicator()
        do {
            var parallelism = try Parallelism(world: world, tensorSize: tensorParallel, stages: pipelineParallel, sequenceParallel: sequenceParallel,
                                              microBatches: microBatches,
                                              bucketBytes: Int(bucketMB * 1_048_576), overlap: !noOverlap, zeroStage: zeroStage,
                                              checkOrder: checkCollectiveOrder)
            parallelism.reduceNormGradients = !dropNormReduction
            try body(parallelism)
        } catch let stopped as ExitCode {
            throw stopped  // every rank stopped after the same step (a signal), with a checkpoint
        } catch {
            guard world.size > 1 else { throw error }
            // The other ranks would wait in their next collective forever: end the whole job.
            printError("Error: rank \(world.rank) of \(world.size): \(error)")
            world.abort(code: 1)
        }
    }

    func describe(_ trainer: Trainer) {
        let world = trainer.parallelism.world
        func say(_ text: String) { if trainer.parallelism.isLeader { printError(text) } }
        if trainer.settings.precision == .bf16 {
            say("bf16 products: \(hasBF16Instructions ? "AVX-512 BF16 (vdpbf16ps), f32 sums" : "SGEMM over bf16-rounded operands (this CPU has no AVX-512 BF16)"); master weights, moments, norms, softmax and losses in f32")
        } else {
            say("f32 products: \(usesOwnF32Kernel ? "Ember's AVX-512F kernel (EMBER_F32_GEMM=openblas runs OpenBLAS's SGEMM)" : BLASCore.summary)")
        }
        if world.size > 1 {
            let gradients = "gradients \(zeroStage > 0 ? "reduce-scattered" : "all-reduced") in \(String(format: "%g", bucketMB)) MiB buckets \(noOverlap ? "after" : "during") the backward"
            let moments = Double(trainer.optimizer.range.count * 8) / 1_048_576
            let p = trainer.parallelism
            say("parallel over \(world.size) ranks (Open MPI), \(threads) threads each: data \(p.data.size) × tensor \(p.tensor.size)\(sequenceParallel ? " (sequence parallel)" : "") × pipeline \(p.pipeline.size); rank 0 holds \(String(format: "%.2f", Double(trainer.model.parameterCount) / 1e6))M parameters")
            say("data parallel over \(p.data.size) ranks; ZeRO stage \(zeroStage): \(gradients); AdamW moments on rank 0: \(String(format: "%.1f", moments)) MiB")
        }
    }
}

/// Runs a training run to its end with progress on standard error (a bar when it is a terminal),
/// then reports the outcome; `resume` is the command that continues the run after a stop.
func runTraining(_ trainer: Trainer, folder: CheckpointFolder, parallel: ParallelOptions, resume: String) throws {
    parallel.describe(trainer)
    let s = trainer.settings, output = folder.output
    let run = TrainingRun(trainer: trainer, folder: folder)
    let interactive = interactiveStandardError
    var lastLine = 0.0  // when a log (not a terminal) last got a step line
    let outcome = try run.run { p in
        var line = String(format: "step %d/%d loss %.4f lr %.2e %.0f tok/s", p.record.step, s.steps, p.record.loss, p.record.learningRate,
                          p.tokensPerSecond)
        for (key, label) in [("reward", "reward"), ("frac_reward_zero_std", "zero-std groups"), ("kl", "kl"), ("objective/scores", "score"),
                             ("objective/kl", "kl")] {
            if let value = p.record.metrics[key] { line += String(format: " %@ %.3f", label, value) }
        }
        if let validation = p.validationLoss {
            line += String(format: " val %.4f", validation)
            let metrics = trainer.history.last?.metrics ?? [:]
            for (key, label) in [("val_token_accuracy", "val accuracy"), ("val_accuracy", "val accuracy"), ("val_rewards/accuracies", "val reward accuracy"),
                                 ("val_rewards/margins", "val margin"), ("val_reward", "val reward"), ("val_score", "val score")] {
                if let value = metrics[key] { line += String(format: " %@ %.4f", label, value) }
            }
            if interactive { printError("\r" + line + "\u{1B}[K") } else { printError(line) }
            lastLine = p.elapsed
        } else if !interactive, p.elapsed - lastLine >= 30 {
            // Slow steps still show progress in a log, at most every 30 seconds.
            printError(line)
            lastLine = p.elapsed
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
        printError("stopped at step \(step) of \(s.steps); saved \(checkpoint); continue with: \(resume)")
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

/// The options of the fine-tuning commands (sft, train-reward, dpo): the model, the data, the
/// output and the schedule.
struct FineTuningOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The model to fine-tune: a Hugging Face folder with its tokenizer (or, with --lora-rank, a GGUF file).", valueName: "dir"))
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
    @Option(name: .customLong("max-length"), help: "Tokens of the longest example (or of a packed row, or of either answer of a pair).")
    var maxLength: Int = 1024

    @Option(help: "Optimizer steps (default: --epochs over the training examples).") var steps: Int?
    @Option(help: "Passes over the training data when --steps is not given.") var epochs: Double = 1
    @Option(name: .customLong("batch-size"), help: "Examples (packed rows, or pairs) per micro-batch.") var batchSize: Int = 4
    @Option(name: .customLong("grad-accum"), help: "Micro-batches per optimizer step.") var gradAccum: Int = 2
    @Option(help: "Peak learning rate (default: sft 2e-5; train-reward 1e-4 and dpo 1e-6, TRL's).") var lr: Float?
    @Option(name: .customLong("min-lr"), help: "Learning rate at the end of the cosine decay.") var minLr: Float = 0
    @Option(help: "Linear warmup steps.") var warmup: Int = 0
    @Option(name: .customLong("weight-decay"), help: "AdamW weight decay of the projection matrices.") var weightDecay: Float = 0
    @Option(name: .customLong("grad-clip"), help: "Largest global gradient norm.") var gradClip: Float = 1
    @Option(help: "Activation recomputation: none or block.") var recompute: TrainableLlama.Recompute = .none
    @Option(help: "Precision of the matrix products: f32, or bf16 (operands rounded to bf16, sums, weights and everything else in f32).")
    var precision: Precision = .f32
    @Option(help: "Seed of the held-out split, the data order and a new adapter.") var seed: UInt64 = 1
    @Option(name: .customLong("eval-every"), help: "Steps between validations (0: only at the end).") var evalEvery: Int = 50
    @Option(name: .customLong("save-every"), help: "Steps between checkpoints (0: only at the end).") var saveEvery: Int = 100
    @Option(help: "Checkpoints kept.") var keep: Int = 2

    func validate() throws {
        if resume == nil {
            guard model != nil, data != nil, output != nil else { throw ValidationError("give --model, --data FILE and --output DIR (or --resume a run)") }
        } else if model != nil || data != nil || evalData != nil {
            throw ValidationError("--resume continues a run with its own model, data, adapter and settings; leave out --model, --data and --eval-data")
        }
        guard maxLength >= 2 else { throw ValidationError("--max-length must be at least 2") }
        guard epochs > 0 else { throw ValidationError("--epochs must be positive") }
        guard evalFraction > 0, evalFraction < 1 else { throw ValidationError("--eval-fraction must be between 0 and 1") }
    }

    /// With --resume: the trainer continued from its checkpoint (its objective must pass `accepts`,
    /// else the error names `command`) and the run's folder.
    func resumed(_ parallelism: Parallelism, accepts: (Trainer) -> Bool, command: String) throws -> (Trainer, CheckpointFolder)? {
        guard let resume else { return nil }
        let checkpoint = try CheckpointFolder.locate(resume)
        let trainer = try Trainer.resume(from: checkpoint, steps: steps, parallelism: parallelism)
        guard accepts(trainer) else { throw CommandError("\(resume) was not written by ember \(command); continue it with the command that started it") }
        if parallelism.isLeader { printError("resuming \(checkpoint) at step \(trainer.step) of \(trainer.settings.steps)") }
        return (trainer, CheckpointFolder(output: output ?? CheckpointFolder.run(of: resume, checkpoint: checkpoint)))
    }

    /// The new run's output folder, refused when it already holds a run.
    func newOutput() throws -> String {
        let output = self.output!
        guard !FileManager.default.fileExists(atPath: output + "/latest") else {
            throw CommandError("\(output) already holds a run; continue it with --resume \(output), or choose another --output")
        }
        return output
    }

    /// The model to train from `path`: a LoRA over it when `lora` is given (with a score head for a
    /// reward model), else the whole model; its prompting and the tokenizer files its checkpoints carry.
    func load(_ path: String, lora: LoRAConfiguration?, parallelism: Parallelism, valueHead: Bool = false) throws
        -> (model: TrainableLlama, prompting: Prompting, tokenizerFiles: [String]) {
        if let lora {
            let adapted = try TrainableLlama.withLoRA(base: path, lora: lora, seed: seed, valueHead: valueHead)
            return (adapted.model, try adapted.base.prompting(), adapted.base.gguf == nil ? SupervisedObjective.tokenizerFiles(in: path) : [])
        }
        guard !path.hasSuffix(".gguf") else {
            throw CommandError("\(path): a GGUF model trains through an adapter only (QLoRA: give --lora-rank); full fine-tuning starts from a Hugging Face folder")
        }
        return (try TrainableLlama(directory: path, layout: parallelism.layout), try LoadedModel.prompting(directory: path), SupervisedObjective.tokenizerFiles(in: path))
    }

    /// The run's settings, one step long until `steps(for:)` says how many.
    func settings(defaultLR: Float, fineTuning: FineTuningSettings) -> TrainingSettings {
        TrainingSettings(
            data: absolute(data!), steps: 1, batchSize: batchSize, sequenceLength: maxLength, gradientAccumulation: gradAccum,
            learningRate: lr ?? defaultLR, minimumLearningRate: minLr, warmup: warmup, weightDecay: weightDecay, gradientClip: gradClip,
            recompute: recompute, precision: precision, seed: seed, evalEvery: evalEvery, saveEvery: saveEvery, keepCheckpoints: keep, fineTuning: fineTuning)
    }

    /// --steps, or enough steps for --epochs over `rows` training rows.
    func steps(for rows: Int) -> Int {
        steps ?? max(1, Int((epochs * Double(rows) / Double(batchSize * gradAccum)).rounded(.up)))
    }

    /// The held-out data's settings.
    var heldOut: (data: String?, fraction: Double) { (evalData.map(absolute), evalFraction) }

    /// Says what the model is (leader only).
    func describe(_ weights: TrainableLlama, from path: String, say: (String) -> Void) {
        let c = weights.configuration
        if let lora = weights.lora, let base = weights.base {
            let types = Set(base.blocks.flatMap { [$0.query.type, $0.up.type, $0.down.type] }.map(\.rawValue)).sorted().joined(separator: "/")
            say(String(format: "model: LoRA rank %d, alpha %g on %@%@: %.2fM trained parameters over the frozen %@ base (hidden %d, %d layers) from %@",
                       lora.rank, lora.alpha, lora.targets.map(\.rawValue).joined(separator: ","),
                       weights.score != nil ? " and a score head" : weights.valueHead != nil ? " and a value head" : "",
                       Double(weights.parameterCount) / 1e6, types, c.hiddenSize, c.layerCount, path))
        } else {
            say(String(format: "model: %.1fM parameters (hidden %d, %d layers, vocabulary %d) from %@", Double(weights.parameterCount) / 1e6,
                       c.hiddenSize, c.layerCount, c.vocabularySize, path))
        }
    }
}

func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
