import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// What a preference run trains: a reward model (TRL's `RewardTrainer`) or a policy by DPO
/// (TRL's `DPOTrainer`); saved in every checkpoint with the run's other settings.
public struct PreferenceSettings: Codable, Sendable, Equatable {
    public enum Objective: String, Codable, Sendable { case reward, dpo }
    public var objective: Objective
    /// The reward model's centring coefficient: c · mean((r_chosen + r_rejected)²) is added.
    public var centering: Double?
    /// DPO's loss.
    public var dpo: DPOLoss?
    /// DPO's reference when the whole model trains: the model folder it started from (with LoRA the
    /// reference is the base with the adapter off).
    public var reference: String?

    public init(objective: Objective, centering: Double? = nil, dpo: DPOLoss? = nil, reference: String? = nil) {
        self.objective = objective
        self.centering = centering
        self.dpo = dpo
        self.reference = reference
    }
}

/// A preference pair as two training sequences: prompt + chosen and prompt + rejected, each with
/// its completion's tokens marked learned (what DPO sums the log-probabilities over).
public struct PreferencePair: Sendable, Equatable {
    public var chosen: SupervisedSequence
    public var rejected: SupervisedSequence
    /// The line of the file it came from.
    public var line: Int
    public init(chosen: SupervisedSequence, rejected: SupervisedSequence, line: Int) {
        self.chosen = chosen
        self.rejected = rejected
        self.line = line
    }
}

extension Prompting {
    /// The token that pads training rows: the chat format's EOS, as TRL pads when the tokenizer
    /// has no pad token (the tokenizer's EOS, or 0, without one).
    public var paddingToken: Int { chatFormat.eosToken.flatMap(tokenizer.id(of:)) ?? tokenizer.eosTokenID ?? 0 }
}

extension SupervisedTokenizer {
    /// The pairs of preference data, tokenized as TRL's trainers do: with a prompt, each answer is
    /// a prompt-completion example (the chat template's rendering of prompt + answer for messages;
    /// prompt + answer + EOS for plain text), its completion the tokens after the prompt's; without
    /// one (TRL's implicit prompt), each answer is the whole sequence and the completion follows the
    /// tokens both answers share. Pairs whose answers are the same tokens, that are longer than
    /// `maximumLength` (either answer), or that have an empty answer are left out and counted.
    public func pairs(_ data: FineTuningDataset, maximumLength: Int) throws -> (pairs: [PreferencePair], skipped: Skipped) {
        guard data.format == .preference else {
            throw TrainingError("\(data.path): preference training reads {\"prompt\", \"chosen\", \"rejected\"} pairs; this file is \(data.format.rawValue)")
        }
        var whole = self
        whole.learned = .all
        var out: [PreferencePair] = [], skipped = Skipped()
        for example in data.examples {
            func fail(_ message: String) -> TrainingError { TrainingError("\(data.path):\(example.line): \(message)") }
            func answer(_ content: FineTuningDataset.Content?) throws -> SupervisedSequence? {
                var e = example
                if example.prompt != nil {
                    e.completion = content
                    return try sequence(e, fail: fail, skipped: &skipped)
                }
                (e.prompt, e.completion) = (content, nil)
                return try whole.sequence(e, fail: fail, skipped: &skipped)
            }
            guard var chosen = try answer(example.completion), var rejected = try answer(example.rejected) else { continue }
            if example.prompt == nil {
                let start = commonPrefixLength(chosen.ids, rejected.ids)
                chosen.learned = chosen.ids.indices.map { $0 >= start }
                rejected.learned = rejected.ids.indices.map { $0 >= start }
            }
            if chosen.ids == rejected.ids { skipped.identicalAnswers += 1; continue }
            if max(chosen.count, rejected.count) > maximumLength { skipped.tooLong += 1; continue }
            guard chosen.scoredCount > 0, rejected.scoredCount > 0 else { skipped.nothingLearned += 1; continue }
            out.append(PreferencePair(chosen: chosen, rejected: rejected, line: example.line))
        }
        return (out, skipped)
    }
}

/// The held-out part of `items`: `fraction` of them (at least one) drawn by `seed`, in their
/// order, and the rest; an error when too few are left to train on.
func holdOut<T>(_ items: [T], fraction: Double, seed: UInt64, what: String, path: String, skipped: SupervisedTokenizer.Skipped) throws
    -> (train: [T], held: [T]) {
    guard fraction > 0, fraction < 1 else { throw TrainingError("the held-out fraction must be between 0 and 1") }
    let count = max(1, Int((fraction * Double(items.count)).rounded()))
    guard items.count > count else {
        throw TrainingError("\(path): \(items.count) usable \(what) are too few to hold out \(count) for validation\(skipped.total > 0 ? " (skipped \(skipped))" : "")")
    }
    var random = SplitMix64(seed: seed ^ 0x5EED_F00D)
    let chosen = Set(EpochOrder.shuffled(items.count, &random).prefix(count))
    return (items.indices.filter { !chosen.contains($0) }.map { items[$0] }, chosen.sorted().map { items[$0] })
}

/// Preference training on pairs, one micro-batch of `batchSize` pairs at a time, each pair's two
/// answers as two rows (chosen rows first), right-padded:
///
/// - **reward**: the model ends in a score head; each row's score is read at its last token
///   (the last non-pad token, as `LlamaForSequenceClassification` reads it), and the loss is the
///   Bradley–Terry loss (`RewardModelLoss`), a mean over the step's pairs. Validation: the
///   held-out pairs' loss, accuracy (chosen scored higher) and margin.
/// - **dpo**: each row's log-probability is the sum over its completion's tokens; the reference's
///   (the frozen start: the base with the adapter off for LoRA, or `reference`) is computed once
///   per pair, the first time the pair is drawn, and kept. The loss is `DPOLoss`, a mean over
///   the step's pairs, with TRL's metrics. Validation: the held-out pairs' loss and metrics.
public final class PreferenceObjective: TrainingObjective {
    public let settings: PreferenceSettings
    public let training: [PreferencePair]
    public let validation: [PreferencePair]
    public let skipped: SupervisedTokenizer.Skipped
    public let tokenizerFiles: [String]
    /// The token that pads rows (the EOS, as TRL pads without a pad token). A reward model reads
    /// each row's score at its last token that is not this one, as transformers does.
    public let padding: Int32
    /// The whole model DPO compares with, when the policy is not a LoRA over a frozen base.
    let reference: TrainableLlama?
    private var order: EpochOrder
    /// The reference's log-probabilities of each pair's answers (training pairs, then held-out).
    private var referenceLogps: [Int: (chosen: Double, rejected: Double)] = [:]
    public private(set) var validationMetrics: [String: Float] = [:]
    public private(set) var lastStepTokens: Int?

    public init(settings: PreferenceSettings, training: [PreferencePair], validation: [PreferencePair], skipped: SupervisedTokenizer.Skipped = .init(),
                padding: Int32, tokenizerFiles: [String], reference: TrainableLlama? = nil, seed: UInt64, state: String? = nil) throws {
        guard !training.isEmpty, !validation.isEmpty else { throw TrainingError("preference training needs pairs to train on and pairs held out") }
        guard settings.objective == .reward || settings.dpo != nil else { throw TrainingError("DPO needs its loss settings") }
        self.settings = settings
        self.training = training
        self.validation = validation
        self.skipped = skipped
        self.padding = padding
        self.tokenizerFiles = tokenizerFiles
        self.reference = reference
        order = try EpochOrder(count: training.count, seed: seed, state: state, what: "training pairs")
    }

    /// Reads and tokenizes the run's pairs (`s.data`, held out as `f` says) and builds the objective.
    public convenience init(settings s: TrainingSettings, fineTuning f: FineTuningSettings, preference: PreferenceSettings, prompting: Prompting,
                            tokenizerFiles: [String], configuration c: LlamaConfiguration, reference: TrainableLlama? = nil, state: String? = nil) throws {
        guard s.sequenceLength <= c.maxPositionEmbeddings else {
            throw TrainingError("the maximum length \(s.sequenceLength) is longer than the model's context (\(c.maxPositionEmbeddings))")
        }
        guard prompting.tokenizer.vocabularySize <= c.vocabularySize else {
            throw TrainingError("the tokenizer's vocabulary (\(prompting.tokenizer.vocabularySize)) does not fit the model's (\(c.vocabularySize))")
        }
        let tokenizer = SupervisedTokenizer(prompting: prompting)
        var (train, skipped) = try tokenizer.pairs(FineTuningDataset.load(path: s.data), maximumLength: s.sequenceLength)
        let held: [PreferencePair]
        if let path = f.validationData {
            let more = try tokenizer.pairs(FineTuningDataset.load(path: path), maximumLength: s.sequenceLength)
            guard !more.pairs.isEmpty else { throw TrainingError("\(path): no pair is left to validate on (skipped \(more.skipped))") }
            held = more.pairs
        } else {
            (train, held) = try holdOut(train, fraction: f.validationFraction, seed: s.seed, what: "pairs", path: s.data, skipped: skipped)
        }
        guard !train.isEmpty else { throw TrainingError("\(s.data): no pair is left to train on (skipped \(skipped))") }
        let padding = Int32(prompting.paddingToken)
        try self.init(settings: preference, training: train, validation: held, skipped: skipped, padding: padding, tokenizerFiles: tokenizerFiles,
                      reference: reference, seed: s.seed, state: state)
    }

    public var checkpointState: String { order.state }

    /// The rows of `pairs`: every chosen answer, then every rejected one.
    func rows(_ pairs: [PreferencePair]) -> TokenRows {
        SupervisedObjective.tokenRows(pairs.map { SupervisedObjective.Row([$0.chosen]) } + pairs.map { SupervisedObjective.Row([$0.rejected]) },
                                      packed: false, padding: padding)
    }

    /// The step's global batch is batchSize × gradientAccumulation pairs in the epoch's order.
    public func nextStep(settings s: TrainingSettings, share: DataShare) -> [MicroBatch] {
        let count = s.batchSize * s.gradientAccumulation
        let indices = (0..<count).map { _ in order.next() }
        lastStepTokens = indices.reduce(0) { $0 + training[$1].chosen.count + training[$1].rejected.count }
        return share.microBatches(rows: count, micro: s.batchSize).map { part in
            let chosen = Array(indices[part])
            return MicroBatch(divisor: Float(count) / Float(part.count)) { tape, model in
                let (loss, metrics) = self.loss(tape, model, pairs: chosen.map { self.training[$0] }, keys: chosen, recompute: s.recompute)
                return (loss, metrics.mapValues(Float.init))
            }
        }
    }

    /// The mean loss of `pairs` (their indices into the reference cache are `keys`) and its metrics.
    public func loss(_ tape: Tape, _ model: TrainableLlama, pairs: [PreferencePair], keys: [Int], recompute: TrainableLlama.Recompute = .none)
        -> (loss: Variable, metrics: [String: Double]) {
        let batch = rows(pairs), n = pairs.count, T = batch.length
        switch settings.objective {
        case .reward:
            precondition(model.score != nil, "a reward model needs a score head")
            let scores = model.forward(tape, inputs: batch.inputs, batch: batch.rows, tokens: T, recompute: recompute)
            let lasts = (pairs.map(\.chosen) + pairs.map(\.rejected)).enumerated().map { r, s in r * T + Self.scoredPosition(s.ids, padding: padding) }
            let picked = tape.segmentSums(scores, lasts.map { $0..<$0 + 1 })
            var metrics: [String: Double] = [:]
            let loss = tape.externalLoss(picked) { r in
                let result = RewardModelLoss.compute(chosen: Array(r[..<n]), rejected: Array(r[n...]), centering: settings.centering)
                metrics = result.metrics.filter { ["accuracy", "margin", "mean_reward"].contains($0.key) }
                return (result.loss, result.dChosen + result.dRejected)
            }
            return (loss, metrics)
        case .dpo:
            let references = referenceLogProbabilities(model, pairs: pairs, keys: keys, tape: tape)
            let logits = model.forward(tape, inputs: batch.inputs, batch: batch.rows, tokens: T, recompute: recompute)
            let sums = tape.segmentSums(tape.tokenLogProbabilities(logits, targets: batch.targets), (0..<2 * n).map { $0 * T..<($0 + 1) * T })
            var metrics: [String: Double] = [:]
            let loss = tape.externalLoss(sums) { logps in
                let result = settings.dpo!.compute(policyChosen: Array(logps[..<n]), policyRejected: Array(logps[n...]),
                                                   referenceChosen: references.map(\.chosen), referenceRejected: references.map(\.rejected),
                                                   chosenTokens: pairs.map(\.chosen.scoredCount), rejectedTokens: pairs.map(\.rejected.scoredCount))
                metrics = result.metrics
                return (result.loss, result.dChosen + result.dRejected)
            }
            return (loss, metrics)
        }
    }

    /// Where a reward model reads a sequence's score: its last token that is not the pad token
    /// (transformers' rule; the last token when all are).
    public static func scoredPosition<T: BinaryInteger>(_ ids: [T], padding: T) -> Int {
        ids.lastIndex { $0 != padding } ?? ids.count - 1
    }

    /// The reference's summed log-probabilities of each pair's answers, from the cache or, when any
    /// is missing, computed now (no backward) for the whole micro-batch, in the very rows and sums
    /// the policy's pass makes: at the start, policy and reference agree to the bit.
    private func referenceLogProbabilities(_ model: TrainableLlama, pairs: [PreferencePair], keys: [Int], tape: Tape)
        -> [(chosen: Double, rejected: Double)] {
        if keys.contains(where: { referenceLogps[$0] == nil }) {
            precondition(reference != nil || model.lora != nil, "DPO's reference is a frozen model, or the base under a LoRA")
            let wasEnabled = model.adapterEnabled
            if reference == nil { model.adapterEnabled = false }
            defer { model.adapterEnabled = wasEnabled }
            let batch = rows(pairs), T = batch.length, n = pairs.count
            let frozen = Tape(pool: tape.pool, recording: false)
            let logits = (reference ?? model).forward(frozen, inputs: batch.inputs, batch: batch.rows, tokens: T)
            let sums = frozen.segmentSums(frozen.tokenLogProbabilities(logits, targets: batch.targets), (0..<2 * n).map { $0 * T..<($0 + 1) * T })
            for (j, key) in keys.enumerated() { referenceLogps[key] = (Double(sums.pointer[j]), Double(sums.pointer[n + j])) }
        }
        return keys.map { referenceLogps[$0]! }
    }

    /// The held-out pairs' mean loss; their metrics (pair-weighted) in `validationMetrics`.
    public func validationLoss(model: TrainableLlama, settings s: TrainingSettings, pool: ThreadPool) -> Float {
        var total = 0.0, sums: [String: Double] = [:]
        for start in stride(from: 0, to: validation.count, by: s.batchSize) {
            let range = start..<min(start + s.batchSize, validation.count)
            let (loss, metrics) = loss(Tape(pool: pool, recording: false), model, pairs: Array(validation[range]), keys: range.map { training.count + $0 })
            total += Double(loss.values[0]) * Double(range.count)
            for (name, value) in metrics { sums[name, default: 0] += value * Double(range.count) }
        }
        let n = Double(validation.count)
        validationMetrics = sums.mapValues { Float($0 / n) }
        return Float(total / n)
    }
}
