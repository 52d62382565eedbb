import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// What a training step minimises and the data it reads: the seam where objectives other than
/// next-token prediction (SFT, DPO, GRPO) plug into `Trainer` and `TrainingRun` without their
/// own loop. Each step the objective draws the step's global batch and hands this rank its share
/// as micro-batches; the trainer runs them (each loss scaled by 1 / its divisor, so that the step's
/// loss is the global batch's), sums the gradients over the micro-batches and the data-parallel
/// ranks, then clips and steps the optimizer; `TrainingRun` logs the loss and the objective's named
/// metrics (weighted the same way) in `log.jsonl`.
public protocol TrainingObjective: AnyObject {
    /// This rank's micro-batches of the next step. Every rank draws the same global batch, so the
    /// data order does not depend on how many ranks share it.
    func nextStep(settings: TrainingSettings, share: DataShare) throws -> [MicroBatch]
    /// The held-out loss (nothing is recorded for a backward).
    func validationLoss(model: TrainableLlama, settings: TrainingSettings, pool: ThreadPool) throws -> Float
    /// What a checkpoint must keep to continue exactly where the data stopped, as text.
    var checkpointState: String { get }
    /// The tokenizer files (tokenizer.json, tokenizer_config.json) that checkpoints and the
    /// published model carry.
    var tokenizerFiles: [String] { get }
    /// Metrics of the last `validationLoss` besides the loss (logged with a `val_` prefix).
    var validationMetrics: [String: Float] { get }
    /// The tokens of the last step's global batch, when they are not batch size × sequence
    /// length × accumulation (rows of examples, each as long as it is).
    var lastStepTokens: Int? { get }
    /// Curves a finished run draws besides loss.svg: the file, the logged metric, the validation
    /// metric drawn as points (logged with `val_`), and the title.
    var curves: [(file: String, metric: String, validation: String?, title: String)] { get }
}

extension TrainingObjective {
    public var validationMetrics: [String: Float] { [:] }
    public var lastStepTokens: Int? { nil }
    public var curves: [(file: String, metric: String, validation: String?, title: String)] { [] }
}

/// Which part of each step's global batch a data-parallel rank computes: `rank` of `ranks`.
public struct DataShare: Sendable, Equatable {
    public var rank: Int
    public var ranks: Int
    public static let whole = DataShare(rank: 0, ranks: 1)
    public init(rank: Int, ranks: Int) {
        self.rank = rank
        self.ranks = ranks
    }

    /// This rank's rows of a global batch of `rows`, cut into micro-batches of at most `micro` rows.
    /// The shares are contiguous and differ by at most one row, so that two ranks of one micro-batch
    /// each compute exactly the micro-batch a single process would.
    public func microBatches(rows: Int, micro: Int) -> [Range<Int>] {
        let counts = (0..<ranks).map { rows / ranks + ($0 < rows % ranks ? 1 : 0) }
        let start = counts[..<rank].reduce(0, +), end = start + counts[rank]
        return stride(from: start, to: end, by: micro).map { $0..<min($0 + micro, end) }
    }
}

/// A seeded shuffle of `count` items per epoch, read in order and running on into the next
/// epoch: the data order of fine-tuning. Its state (the epoch and the next position in its order)
/// is what a checkpoint keeps.
public struct EpochOrder: Sendable {
    public let count: Int
    let seed: UInt64
    public private(set) var epoch = 0, position = 0
    private var order: [Int] = []

    /// `state` is a checkpoint's `state`, to continue where it stopped; `what` names the items in its error.
    public init(count: Int, seed: UInt64, state: String? = nil, what: String = "items") throws {
        precondition(count > 0)
        self.count = count
        self.seed = seed
        if let state {
            let parts = state.split(separator: " ").compactMap { Int($0) }
            guard parts.count == 2, parts[0] >= 0, (0...count).contains(parts[1]) else {
                throw TrainingError("the checkpoint's data position '\(state)' does not fit \(count) \(what)")
            }
            (epoch, position) = (parts[0], parts[1])
        }
        order = Self.order(count, seed: seed, epoch: epoch)
    }

    public var state: String { "\(epoch) \(position)" }

    /// The next item's index.
    public mutating func next() -> Int {
        if position == count {
            epoch += 1
            position = 0
            order = Self.order(count, seed: seed, epoch: epoch)
        }
        position += 1
        return order[position - 1]
    }

    private static func order(_ n: Int, seed: UInt64, epoch: Int) -> [Int] {
        var random = SplitMix64(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        return shuffled(n, &random)
    }

    /// A Fisher–Yates shuffle of 0..<n.
    static func shuffled(_ n: Int, _ random: inout SplitMix64) -> [Int] {
        var a = Array(0..<n)
        for i in stride(from: n - 1, to: 0, by: -1) { a.swapAt(i, Int(random.next() % UInt64(i + 1))) }
        return a
    }
}

/// One micro-batch: its loss recorded on a tape, and the divisor that makes it a part of the
/// global batch's loss (the global batch's rows over its own; 1 / gradientAccumulation per
/// micro-batch for one process).
public struct MicroBatch {
    public let divisor: Float
    public let loss: (Tape, TrainableLlama) -> (loss: Variable, metrics: [String: Float])
    /// The rows of tokens and their targets, when the loss is the mean cross-entropy of the model's
    /// logits over them: what a pipeline needs to run the micro-batch stage by stage.
    public let tokens: TokenRows?
    public init(divisor: Float, tokens: TokenRows? = nil, loss: @escaping (Tape, TrainableLlama) -> (loss: Variable, metrics: [String: Float])) {
        self.divisor = divisor
        self.tokens = tokens
        self.loss = loss
    }
}

/// `rows` sequences of tokens (row-major) and the token each position predicts (negative: not scored);
/// `positions` when rows hold packed sequences (each restarting at 0, seeing only itself).
public struct TokenRows: Sendable {
    public var inputs: [Int32]
    public var targets: [Int32]
    public var rows: Int
    public var positions: [Int32]?
    public init(inputs: [Int32], targets: [Int32], rows: Int, positions: [Int32]? = nil) {
        self.inputs = inputs
        self.targets = targets
        self.rows = rows
        self.positions = positions
    }
    public var length: Int { inputs.count / rows }
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

    /// The step's global batch is batchSize × gradientAccumulation windows, drawn in order.
    public func nextStep(settings s: TrainingSettings, share: DataShare) -> [MicroBatch] {
        let rows = s.batchSize * s.gradientAccumulation, T = s.sequenceLength
        let (inputs, targets) = sampler.next(batch: rows, from: dataset.train)
        return share.microBatches(rows: rows, micro: s.batchSize).map { part in
            let range = part.lowerBound * T..<part.upperBound * T
            let tokens = TokenRows(inputs: Array(inputs[range]), targets: Array(targets[range]), rows: part.count)
            return MicroBatch(divisor: Float(rows) / Float(part.count), tokens: tokens) { tape, model in
                (model.loss(tape, inputs: tokens.inputs, targets: tokens.targets, batch: tokens.rows, recompute: s.recompute), [:])
            }
        }
    }

    public func validationLoss(model: TrainableLlama, settings s: TrainingSettings, pool: ThreadPool) -> Float {
        validationLoss(settings: s) { batch in
            model.loss(Tape(pool: pool, recording: false), inputs: batch.inputs, targets: batch.targets, batch: batch.rows).values[0]
        }
    }

    /// The mean of `loss` over the validation windows, taken in batches of at most `batchSize`
    /// rows (`loss` gives a batch's mean): one process's forward, or a pipeline's.
    public func validationLoss(settings s: TrainingSettings, loss: (TokenRows) throws -> Float) rethrows -> Float {
        let windows = min(s.evalWindows, max(1, dataset.validation.count - s.sequenceLength))
        let (inputs, targets) = WindowSampler.evenlySpaced(windows, length: s.sequenceLength, from: dataset.validation)
        var total: Float = 0
        var done = 0
        while done < windows {
            let n = min(s.batchSize, windows - done)
            let range = done * s.sequenceLength..<(done + n) * s.sequenceLength
            total += try loss(TokenRows(inputs: Array(inputs[range]), targets: Array(targets[range]), rows: n)) * Float(n)
            done += n
        }
        return total / Float(windows)
    }

    /// The sampler's generator state (UInt64 as text: JSON numbers lose bits past 2⁵³).
    public var checkpointState: String { String(sampler.generator.state) }

    public var tokenizerFiles: [String] { [dataset.tokenizerPath] }
}
