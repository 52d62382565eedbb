import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// What a training step minimises and the data it reads: the seam where objectives other than
/// next-token prediction (SFT, DPO, GRPO) plug into `Trainer` and `TrainingRun` without their
/// own loop. The trainer runs `gradientAccumulation` micro-batches per step, each loss scaled by
/// 1 / gradientAccumulation, then clipping and the optimizer step; `TrainingRun` logs the loss and
/// the objective's named metrics (averaged over the micro-batches) in `log.jsonl`.
public protocol TrainingObjective: AnyObject {
    /// The loss of the next micro-batch, recorded on `tape`, and named metrics to log.
    func microBatchLoss(_ tape: Tape, model: TrainableLlama, settings: TrainingSettings) -> (loss: Variable, metrics: [String: Float])
    /// The held-out loss (nothing is recorded for a backward).
    func validationLoss(model: TrainableLlama, settings: TrainingSettings, pool: ThreadPool) -> Float
    /// What a checkpoint must keep to continue exactly where the data stopped, as text.
    var checkpointState: String { get }
    /// The tokenizer file that checkpoints and the published model carry, when there is one.
    var tokenizerPath: String? { get }
}

/// Next-token prediction (pretraining): random windows of `sequenceLength + 1` tokens from the
/// training split, the mean cross-entropy of every position; validation on windows spread evenly
/// over the validation split.
public final class NextTokenObjective: TrainingObjective {
    public let dataset: TokenDataset
    public internal(set) var sampler: WindowSampler

    public init(dataset: TokenDataset, configuration c: LlamaConfiguration, settings: TrainingSettings, samplerSeed: UInt64? = nil) throws {
        guard settings.sequenceLength <= c.maxPositionEmbeddings else {
            throw TrainingError("sequence length \(settings.sequenceLength) is longer than the model's context (\(c.maxPositionEmbeddings))")
        }
        guard dataset.description.vocabularySize <= c.vocabularySize else {
            throw TrainingError("the data's vocabulary (\(dataset.description.vocabularySize)) does not fit the model's (\(c.vocabularySize))")
        }
        for (name, file) in [("training", dataset.train), ("validation", dataset.validation)] where file.count <= settings.sequenceLength {
            throw TrainingError("\(dataset.directory): the \(name) split holds \(file.count) tokens, fewer than one sequence of \(settings.sequenceLength) + 1")
        }
        self.dataset = dataset
        sampler = WindowSampler(seed: samplerSeed ?? settings.seed, length: settings.sequenceLength)
    }

    public func microBatchLoss(_ tape: Tape, model: TrainableLlama, settings s: TrainingSettings) -> (loss: Variable, metrics: [String: Float]) {
        let (inputs, targets) = sampler.next(batch: s.batchSize, from: dataset.train)
        return (model.loss(tape, inputs: inputs, targets: targets, batch: s.batchSize, recompute: s.recompute), [:])
    }

    public func validationLoss(model: TrainableLlama, settings s: TrainingSettings, pool: ThreadPool) -> Float {
        let windows = min(s.evalWindows, max(1, dataset.validation.count - s.sequenceLength))
        let (inputs, targets) = WindowSampler.evenlySpaced(windows, length: s.sequenceLength, from: dataset.validation)
        var total: Float = 0
        var done = 0
        while done < windows {
            let n = min(s.batchSize, windows - done)
            let range = done * s.sequenceLength..<(done + n) * s.sequenceLength
            let l = model.loss(Tape(pool: pool, recording: false), inputs: Array(inputs[range]), targets: Array(targets[range]), batch: n)
            total += l.values[0] * Float(n)
            done += n
        }
        return total / Float(windows)
    }

    /// The sampler's generator state (UInt64 as text: JSON numbers lose bits past 2⁵³).
    public var checkpointState: String { String(sampler.generator.state) }

    public var tokenizerPath: String? { dataset.tokenizerPath }
}
