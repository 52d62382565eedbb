import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// What a supervised fine-tuning run reads besides `TrainingSettings` (whose `data` is the JSONL
/// file and `sequenceLength` the maximum length); saved in every checkpoint with them.
public struct FineTuningSettings: Codable, Sendable, Equatable {
    /// A JSONL file of held-out examples; without one, `validationFraction` of the data is held out.
    public var validationData: String?
    public var validationFraction: Double
    /// Best-fit-decreasing packing of the examples into rows of the maximum length.
    public var packing: Bool
    public var learned: LearnedTokens
    public var overlong: OverlongExamples
    /// The fraction of plain-text documents that get the fill-in-the-middle transformation, and
    /// the fraction of those in SPM order (nil: none).
    public var fimRate: Double?
    public var fimSPMRate: Double?
    /// Where the transformation cuts (nil: anywhere, `.character`).
    public var fimSpan: FIMTransform.Span?
    /// The most lines in a middle with `.line` (nil: no limit).
    public var fimMaxLines: Int?
    /// The layout of SPM documents (nil: StarCoder's).
    public var fimSPMStyle: FIMTransform.SPMStyle?
    /// A reward model or DPO instead of supervised fine-tuning (the data are then preference pairs).
    public var preference: PreferenceSettings?
    /// GRPO instead (the data are then prompts).
    public var grpo: GRPOSettings?
    /// PPO instead (the data are then prompts).
    public var ppo: PPOSettings?

    public init(validationData: String? = nil, validationFraction: Double = 0.05, packing: Bool = false, learned: LearnedTokens = .completion,
                overlong: OverlongExamples = .drop, fimRate: Double? = nil, fimSPMRate: Double? = nil, fimSpan: FIMTransform.Span? = nil, fimMaxLines: Int? = nil, fimSPMStyle: FIMTransform.SPMStyle? = nil,
                preference: PreferenceSettings? = nil,
                grpo: GRPOSettings? = nil, ppo: PPOSettings? = nil) {
        self.validationData = validationData
        self.validationFraction = validationFraction
        self.packing = packing
        self.learned = learned
        self.overlong = overlong
        self.fimRate = fimRate
        self.fimSPMRate = fimSPMRate
        self.fimSpan = fimSpan
        self.fimMaxLines = fimMaxLines
        self.fimSPMStyle = fimSPMStyle
        self.preference = preference
        self.grpo = grpo
        self.ppo = ppo
    }
}

/// Supervised fine-tuning (TRL's `SFTTrainer`): the examples' sequences, packed or one to a row,
/// drawn in a seeded shuffle per epoch; the loss is the mean cross-entropy over every learned token
/// of the step's accumulated batch (each micro-batch's mean weighted by its share of those tokens,
/// TRL's `num_items_in_batch`). Packed rows restart positions at each sequence, which attends only
/// to itself, and the first token of a sequence is not predicted from the one before it.
/// Validation: the masked NLL and the token accuracy (the argmax is the target) over the held-out
/// examples' learned tokens.
public final class SupervisedObjective: TrainingObjective {
    /// One row of a micro-batch: sequences one after another.
    public struct Row: Sendable {
        public var inputs: [Int32] = []
        public var targets: [Int32] = []
        public var positions: [Int32] = []
        public var scored: Int { targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) } }

        public init(_ sequences: [SupervisedSequence]) {
            for s in sequences {
                inputs += s.ids
                positions += (0..<s.count).map(Int32.init)
                targets += (0..<s.count).map { t in t + 1 < s.count && s.learned[t + 1] ? s.ids[t + 1] : -1 }
            }
        }
    }

    public let training: [Row]
    public let validation: [Row]
    public let skipped: SupervisedTokenizer.Skipped
    /// The examples (sequences) behind the rows.
    public let trainingExamples: Int
    public let packed: Bool
    let padding: Int32
    public let tokenizerFiles: [String]
    /// Position in the data: the epoch and the next row of its shuffled order.
    private var order: EpochOrder
    public private(set) var validationMetrics: [String: Float] = [:]
    public private(set) var lastStepTokens: Int?

    /// `state` is a checkpoint's `checkpointState`, to continue where it stopped.
    public init(settings s: TrainingSettings, fineTuning f: FineTuningSettings, prompting: Prompting, tokenizerFiles: [String],
                configuration c: LlamaConfiguration, state: String? = nil) throws {
        guard s.sequenceLength <= c.maxPositionEmbeddings else {
            throw TrainingError("the maximum length \(s.sequenceLength) is longer than the model's context (\(c.maxPositionEmbeddings))")
        }
        guard prompting.tokenizer.vocabularySize <= c.vocabularySize else {
            throw TrainingError("the tokenizer's vocabulary (\(prompting.tokenizer.vocabularySize)) does not fit the model's (\(c.vocabularySize))")
        }
        var tokenizer = SupervisedTokenizer(prompting: prompting, learned: f.learned)
        if let rate = f.fimRate, rate > 0 {
            guard let tokens = FillInTheMiddle(tokenizer: prompting.tokenizer) else {
                throw TrainingError("fill-in-the-middle training needs <fim_prefix>, <fim_suffix> and <fim_middle> in the vocabulary; this tokenizer has none")
            }
            tokenizer.fim = FIMTransform(rate: rate, spmRate: f.fimSPMRate ?? 0.5, span: f.fimSpan ?? .character, maxLines: f.fimMaxLines,
                                        spmStyle: f.fimSPMStyle ?? .starcoder, seed: s.seed, tokens: tokens)
        }
        let dataset = try FineTuningDataset.load(path: s.data)
        if tokenizer.fim != nil, dataset.format != .languageModeling || dataset.conversational {
            throw TrainingError("\(s.data): fill-in-the-middle transforms plain-text documents ({\"text\": ...}); this file is \(dataset.format.rawValue)\(dataset.conversational ? ", conversational" : "")")
        }
        let data = try tokenizer.sequences(dataset, maximumLength: s.sequenceLength, overlong: f.overlong)
        var train = data.sequences, held: [SupervisedSequence]
        let skipped = data.skipped
        if let path = f.validationData {
            let more = try tokenizer.sequences(FineTuningDataset.load(path: path), maximumLength: s.sequenceLength, overlong: f.overlong)
            held = more.sequences
            guard !held.isEmpty else { throw TrainingError("\(path): no example is left to validate on (\(more.skipped))") }
        } else {
            (train, held) = try holdOut(train, fraction: f.validationFraction, seed: s.seed, what: "examples", path: s.data, skipped: skipped)
        }
        guard !train.isEmpty else { throw TrainingError("\(s.data): no example is left to train on (\(skipped))") }
        self.skipped = skipped
        trainingExamples = train.count
        packed = f.packing
        if f.packing {
            training = packBestFitDecreasing(lengths: train.map(\.count), capacity: s.sequenceLength).map { Row($0.map { train[$0] }) }
        } else {
            training = train.map { Row([$0]) }
        }
        validation = held.map { Row([$0]) }
        padding = Int32(prompting.paddingToken)
        self.tokenizerFiles = tokenizerFiles
        order = try EpochOrder(count: training.count, seed: s.seed, state: state, what: "training rows")
    }

    public var checkpointState: String { order.state }

    /// The tokenizer files of a model folder that a fine-tuned model carries on.
    public static func tokenizerFiles(in directory: String) -> [String] {
        ["tokenizer.json", "tokenizer_config.json"].map { directory + "/" + $0 }.filter { FileManager.default.fileExists(atPath: $0) }
    }

    /// The step's global batch is batchSize × gradientAccumulation rows in the epoch's order
    /// (running on into the next epoch).
    public func nextStep(settings s: TrainingSettings, share: DataShare) -> [MicroBatch] {
        let count = s.batchSize * s.gradientAccumulation
        let rows = (0..<count).map { _ in training[order.next()] }
        let total = rows.reduce(0) { $0 + $1.scored }
        lastStepTokens = rows.reduce(0) { $0 + $1.inputs.count }
        return share.microBatches(rows: count, micro: s.batchSize).map { part in
            let batch = batchRows(Array(rows[part]))
            let scored = batch.targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) }
            return MicroBatch(divisor: scored == 0 ? .infinity : Float(total) / Float(scored), tokens: batch) { tape, model in
                let logits = model.forward(tape, inputs: batch.inputs, batch: batch.rows, tokens: batch.length, positions: batch.positions,
                                           recompute: s.recompute)
                let loss = model.loss(tape, logits: logits, targets: batch.targets)
                var metrics: [String: Float] = ["learned_tokens": Float(total)]
                if model.tensor == nil { metrics["mean_token_accuracy"] = Self.accuracy(logits, batch.targets).accuracy }
                return (loss, metrics)
            }
        }
    }

    /// Rows padded to the longest (padding predicts nothing, and under packing is a sequence of
    /// its own); positions only for packed rows, whose sequences must not see each other.
    func batchRows(_ rows: [Row]) -> TokenRows { Self.tokenRows(rows, packed: packed, padding: padding) }

    public static func tokenRows(_ rows: [Row], packed: Bool, padding: Int32) -> TokenRows {
        let T = rows.map(\.inputs.count).max()!
        var out = TokenRows(inputs: [], targets: [], rows: rows.count, positions: packed ? [] : nil)
        for r in rows {
            let pad = T - r.inputs.count
            out.inputs += r.inputs + [Int32](repeating: padding, count: pad)
            out.targets += r.targets + [Int32](repeating: -1, count: pad)
            if packed { out.positions! += r.positions + (0..<pad).map(Int32.init) }
        }
        return out
    }

    /// The fraction of the scored targets whose logit is the largest of their row, and their count.
    static func accuracy(_ logits: Variable, _ targets: [Int32]) -> (accuracy: Float, count: Int) {
        let V = logits.shape.last!
        var count = 0, correct = 0
        for (r, target) in targets.enumerated() where target >= 0 {
            let row = logits.pointer + r * V
            var best = 0
            for j in 1..<V where row[j] > row[best] { best = j }
            count += 1
            if row[best] == row[Int(target)] { correct += 1 }
        }
        return (count == 0 ? 0 : Float(correct) / Float(count), count)
    }

    /// The masked NLL over the held-out examples' learned tokens (token-weighted), and their token
    /// accuracy in `validationMetrics`.
    public func validationLoss(model: TrainableLlama, settings s: TrainingSettings, pool: ThreadPool) -> Float {
        var nll = 0.0, count = 0, correct = 0.0
        for start in stride(from: 0, to: validation.count, by: s.batchSize) {
            let batch = batchRows(Array(validation[start..<min(start + s.batchSize, validation.count)]))
            let tape = Tape(pool: pool, recording: false)
            let logits = model.forward(tape, inputs: batch.inputs, batch: batch.rows, tokens: batch.length, positions: batch.positions)
            let n = batch.targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) }
            nll += Double(model.loss(tape, logits: logits, targets: batch.targets).values[0]) * Double(n)
            count += n
            if model.tensor == nil { correct += Double(Self.accuracy(logits, batch.targets).accuracy) * Double(n) }
        }
        // Under tensor parallelism each rank holds a slice of the vocabulary: no accuracy.
        validationMetrics = model.tensor == nil ? ["token_accuracy": Float(correct / Double(max(count, 1)))] : [:]
        return Float(nll / Double(max(count, 1)))
    }
}
