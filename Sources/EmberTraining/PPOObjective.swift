import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// What a PPO run trains with (TRL's `PPOConfig` names and defaults in the comments); saved in
/// every checkpoint with the run's other settings.
public struct PPOSettings: Codable, Sendable, Equatable {
    /// The reward model (a `LlamaForSequenceClassification` folder, as `ember train-reward` writes
    /// its model/) that scores prompt + response.
    public var rewardModel: String
    /// Tokens of the longest response (`response_length`, 53).
    public var responseLength: Int
    /// Sampling temperature of the rollouts, which also divides the logits of every
    /// log-probability, old, new and the reference's (`temperature`, 0.7).
    public var temperature: Double
    /// The per-token KL penalty's coefficient (`kl_coef`, 0.05) and estimator (`kl_estimator`, k1).
    public var klCoef: Double
    public var klEstimator: PPO.KLEstimator
    /// The policy ratio's clip (`cliprange`, 0.2) and the value's (`cliprange_value`, 0.2).
    public var clipRange: Double
    public var clipRangeValue: Double
    /// The value loss's weight in the loss (`vf_coef`, 0.1).
    public var valueCoef: Double
    /// GAE's discount (`gamma`, 1) and λ (`lam`, 0.95).
    public var gamma: Double
    public var lambda: Double
    /// Passes over each rollout batch (`num_ppo_epochs`, 4), each in this many optimizer steps
    /// (`num_mini_batches`, 1).
    public var epochs: Int
    public var miniBatches: Int
    /// Whitens the shaped rewards before GAE (`whiten_rewards`, false).
    public var whitenRewards: Bool
    /// Subtracted from the score of a response that reached `responseLength` without its end
    /// token (`missing_eos_penalty`; nil: none).
    public var missingEOSPenalty: Double?

    public init(rewardModel: String, responseLength: Int = 53, temperature: Double = 0.7, klCoef: Double = 0.05,
                klEstimator: PPO.KLEstimator = .k1, clipRange: Double = 0.2, clipRangeValue: Double = 0.2, valueCoef: Double = 0.1,
                gamma: Double = 1, lambda: Double = 0.95, epochs: Int = 4, miniBatches: Int = 1, whitenRewards: Bool = false,
                missingEOSPenalty: Double? = nil) {
        self.rewardModel = rewardModel
        self.responseLength = responseLength
        self.temperature = temperature
        self.klCoef = klCoef
        self.klEstimator = klEstimator
        self.clipRange = clipRange
        self.clipRangeValue = clipRangeValue
        self.valueCoef = valueCoef
        self.gamma = gamma
        self.lambda = lambda
        self.epochs = epochs
        self.miniBatches = miniBatches
        self.whitenRewards = whitenRewards
        self.missingEOSPenalty = missingEOSPenalty
    }

    public func validate() throws {
        guard responseLength >= 1 else { throw TrainingError("the response length must be at least 1") }
        guard temperature > 0, temperature.isFinite else { throw TrainingError("the sampling temperature must be positive") }
        guard klCoef >= 0, clipRange >= 0, clipRangeValue >= 0, valueCoef >= 0 else {
            throw TrainingError("the KL coefficient, the clip ranges and the value coefficient must not be negative")
        }
        guard (0...1).contains(gamma), (0...1).contains(lambda) else { throw TrainingError("γ and λ must be in [0, 1]") }
        guard epochs >= 1, miniBatches >= 1 else { throw TrainingError("PPO needs at least one epoch and one mini-batch per rollout batch") }
        if let p = missingEOSPenalty, !p.isFinite { throw TrainingError("the missing-EOS penalty must be a finite number") }
    }
}

/// Proximal policy optimisation against a reward model (TRL's `PPOTrainer` as of TRL 1.12), with
/// the policy a LoRA over a frozen base and a value head on the policy's own final hidden states.
///
/// Each rollout batch draws batchSize × gradientAccumulation × miniBatches prompts and samples one
/// response of each from the current weights through `RolloutEngine`, at the temperature, up to
/// the response length; the end-of-turn token ends it and belongs to it (TRL's example with
/// `stop_token` eos). One pass without a backward then gives, per response token, the old
/// log-probabilities (of logits / temperature) and values; the base with the adapter off gives the
/// reference's; the reward model scores prompt + response. The shaped rewards are −klCoef · KL
/// per token with the score added one position past the response's last token (at the last when
/// the response is as long as allowed: TRL's placement, whose value is still learned); GAE gives
/// advantages, whitened over the batch's response tokens, and returns (advantages + values).
/// The batch then serves epochs × miniBatches optimizer steps, each over a mini-batch of a
/// seeded shuffle per epoch, of loss = clipped policy loss + valueCoef · clipped value loss, each
/// the mean over its micro-batch's tokens (gradient accumulation averages the micro-batches).
///
/// Validation samples one greedy response per held-out prompt; its metric is the reward model's
/// mean score (`val_score`), and the validation loss is the negated mean score.
public final class PPOObjective: TrainingObjective {
    public let settings: PPOSettings
    public let training: [GRPOPrompt]
    public let validation: [GRPOPrompt]
    public let skipped: SupervisedTokenizer.Skipped
    public let tokenizerFiles: [String]
    public let rollouts: RolloutEngine
    let rewardModel: Llama
    let padding: Int32
    let seed: UInt64
    private var order: EpochOrder
    private var batch: Rollout?
    private var rolloutCount = 0
    public private(set) var validationMetrics: [String: Float] = [:]
    public private(set) var lastStepTokens: Int?
    /// The last validation's prompts, responses and scores.
    public private(set) var lastValidation: [(prompt: GRPOPrompt, response: RolloutEngine.Completion, score: Double)] = []

    /// A rollout batch and how many optimizer steps it has served. Per row: `old` and
    /// `advantages` have one value per response token, `values` and `returns` one more when the
    /// response is shorter than the longest allowed (the position that reads its last token).
    struct Rollout {
        var rows: [SupervisedSequence]
        var promptLengths: [Int]
        var old: [[Double]]
        var values: [[Double]]
        var advantages: [[Double]]
        var returns: [[Double]]
        var metrics: [String: Double]
        var order: [Int] = []
        var uses = 0
    }

    public init(settings: PPOSettings, training: [GRPOPrompt], validation: [GRPOPrompt], skipped: SupervisedTokenizer.Skipped = .init(),
                policy: TrainableLlama, prompting: Prompting, tokenizerFiles: [String], maximumLength: Int, seed: UInt64,
                state: String? = nil) throws {
        try settings.validate()
        guard policy.lora != nil, policy.valueHead != nil else {
            throw TrainingError("PPO trains a LoRA with a value head: the reference is its base with the adapter off")
        }
        guard !training.isEmpty, !validation.isEmpty else { throw TrainingError("PPO needs prompts to train on and prompts held out") }
        self.settings = settings
        self.training = training
        self.validation = validation
        self.skipped = skipped
        self.tokenizerFiles = tokenizerFiles
        self.seed = seed
        rewardModel = try GRPOObjective.rewardModel(settings.rewardModel, for: prompting, vocabulary: policy.configuration.vocabularySize)
        padding = Int32(prompting.paddingToken)
        rollouts = try RolloutEngine(policy: policy, prompting: prompting, maxLength: maximumLength, maxSequences: 64)
        order = try EpochOrder(count: training.count, seed: seed, state: state, what: "training prompts")
    }

    /// Reads and tokenizes the run's prompts (`s.data`, held out as `f` says) and builds the objective.
    public convenience init(settings s: TrainingSettings, fineTuning f: FineTuningSettings, ppo: PPOSettings, policy: TrainableLlama,
                            prompting: Prompting, tokenizerFiles: [String], state: String? = nil) throws {
        let (train, held, skipped) = try SupervisedTokenizer(prompting: prompting)
            .prompts(settings: s, fineTuning: f, completionLength: ppo.responseLength, context: policy.configuration.maxPositionEmbeddings)
        try self.init(settings: ppo, training: train, validation: held, skipped: skipped, policy: policy, prompting: prompting,
                      tokenizerFiles: tokenizerFiles, maximumLength: s.sequenceLength, seed: s.seed, state: state)
    }

    public var checkpointState: String { order.state }

    public var curves: [(file: String, metric: String, validation: String?, title: String)] {
        [("score.svg", "objective/scores", "score", "reward model score (training: sampled; validation: greedy)"),
         ("kl.svg", "objective/kl", nil, "KL to the reference (sum over a response's tokens)")]
    }

    /// The rows one rollout batch has: prompts drawn per batch.
    public static func rolloutRows(_ s: TrainingSettings, _ ppo: PPOSettings) -> Int { s.batchSize * s.gradientAccumulation * ppo.miniBatches }

    func sampling(greedy: Bool) -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = greedy ? 0 : Float(settings.temperature)
        p.maxTokens = settings.responseLength
        p.seed = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(rolloutCount) &* 1_000_003
        return p
    }

    /// The reward model's score of each prompt + response (its end token included when it stopped).
    func scores(_ prompts: [GRPOPrompt], _ responses: [RolloutEngine.Completion]) throws -> [Double] {
        try zip(prompts, responses).map { p, r in Double(try rewardModel.scores((p.ids + r.tokens).map(Int.init))[0]) }
    }

    /// The response-token log-probabilities (of logits / temperature) and the values each row
    /// needs (`valueCounts`), flat, row after row.
    func policyAndValues(_ tape: Tape, _ model: TrainableLlama, _ rows: [SupervisedSequence], promptLengths: [Int], valueCounts: [Int],
                         recompute: TrainableLlama.Recompute = .none) -> (logps: Variable, values: Variable) {
        let batch = SupervisedObjective.tokenRows(rows.map { SupervisedObjective.Row([$0]) }, packed: false, padding: padding)
        let (logits, values) = model.forwardWithValues(tape, inputs: batch.inputs, batch: batch.rows, tokens: batch.length,
                                                       logitScale: Float(1 / (settings.temperature + 1e-7)), recompute: recompute)
        let all = tape.tokenLogProbabilities(logits, targets: batch.targets)
        let scored = batch.targets.indices.filter { batch.targets[$0] >= 0 }
        // The value read at the position before each response token, and at the last token's own.
        let picks = promptLengths.indices.flatMap { r in (0..<valueCounts[r]).map { r * batch.length + promptLengths[r] - 1 + $0 } }
        return (tape.segmentSums(all, scored.map { $0..<$0 + 1 }), tape.segmentSums(values, picks.map { $0..<$0 + 1 }))
    }

    /// Flat values cut into rows of `counts`.
    static func split(_ flat: [Double], _ counts: [Int]) -> [[Double]] {
        var out: [[Double]] = [], at = 0
        for n in counts {
            out.append(Array(flat[at..<at + n]))
            at += n
        }
        return out
    }

    /// Log-probabilities and values of `rows` without a backward, in micro-batches; `adapter`
    /// false runs the policy as its base (the reference).
    private func forwardOnly(_ model: TrainableLlama, _ rows: [SupervisedSequence], promptLengths: [Int], valueCounts: [Int],
                             micro: Int, adapter: Bool) -> (logps: [[Double]], values: [[Double]]) {
        let wasEnabled = model.adapterEnabled
        model.adapterEnabled = adapter && wasEnabled
        defer { model.adapterEnabled = wasEnabled }
        var logps: [[Double]] = [], values: [[Double]] = []
        for start in stride(from: 0, to: rows.count, by: micro) {
            let part = start..<min(start + micro, rows.count)
            let tape = Tape(pool: .shared, recording: false)
            let (l, v) = policyAndValues(tape, model, Array(rows[part]), promptLengths: Array(promptLengths[part]),
                                         valueCounts: Array(valueCounts[part]))
            logps += Self.split(l.values.map(Double.init), part.map { rows[$0].count - promptLengths[$0] })
            values += Self.split(v.values.map(Double.init), Array(valueCounts[part]))
        }
        return (logps, values)
    }

    /// The next rollout batch: prompts drawn, responses sampled and scored, advantages and returns.
    private func rollOut(model: TrainableLlama, settings s: TrainingSettings) throws -> Rollout {
        let prompts = (0..<Self.rolloutRows(s, settings)).map { _ in training[order.next()] }
        rolloutCount += 1
        let responses = try rollouts.generate(prompts.map(\.ids), n: 1, parameters: sampling(greedy: false)).map { $0[0] }
        let seconds = rollouts.lastSeconds
        let W = settings.responseLength
        let rows = zip(prompts, responses).map { p, r in
            SupervisedSequence(ids: p.ids + r.tokens, learned: p.ids.map { _ in false } + r.tokens.map { _ in true })
        }
        let promptLengths = prompts.map(\.ids.count), lengths = responses.map(\.tokens.count)
        let valueCounts = lengths.map { min($0 + 1, W) }
        let (old, values) = forwardOnly(model, rows, promptLengths: promptLengths, valueCounts: valueCounts, micro: s.batchSize, adapter: true)
        let reference = forwardOnly(model, rows, promptLengths: promptLengths, valueCounts: valueCounts, micro: s.batchSize, adapter: false).logps
        let modelScores = try self.scores(prompts, responses), penalty = settings.missingEOSPenalty ?? 0
        let scores = zip(modelScores, responses).map { score, r in r.stopped ? score : score - penalty }
        // Past the last token the log-probabilities are equal (0): no KL there.
        func padded(_ x: [[Double]]) -> [[Double]] { zip(x, valueCounts).map { $0 + [Double](repeating: 0, count: $1 - $0.count) } }
        var (kl, rewards) = PPO.rewards(logprobs: padded(old), reference: padded(reference), scores: scores,
                                        scoreIndex: valueCounts.map { $0 - 1 }, klCoef: settings.klCoef, estimator: settings.klEstimator)
        let allValid = valueCounts.map { [Bool](repeating: true, count: $0) }
        if settings.whitenRewards { rewards = PPO.whiten(rewards, valid: allValid, shiftMean: false) }
        let (rawAdvantages, returns) = PPO.advantages(rewards: rewards, values: values, gamma: settings.gamma, lambda: settings.lambda)
        let responseTokens = zip(valueCounts, lengths).map { n, l in (0..<n).map { $0 < l } }
        let advantages = zip(PPO.whiten(rawAdvantages, valid: responseTokens), lengths).map { Array($0.prefix($1)) }

        let n = Double(rows.count)
        func mean(_ x: [Double]) -> Double { x.reduce(0, +) / Double(max(x.count, 1)) }
        let klSums = kl.map { $0.reduce(0, +) }
        let meanKL = mean(klSums), meanScore = mean(scores)
        var metrics: [String: Double] = [
            "objective/kl": meanKL,
            "objective/entropy": mean(old.map { -$0.reduce(0, +) }),
            "objective/non_score_reward": -settings.klCoef * meanKL,
            "objective/rlhf_reward": meanScore - settings.klCoef * meanKL,
            "objective/scores": meanScore,
            "val/num_eos_tokens": Double(responses.filter(\.stopped).count),
            "completions/mean_length": Double(lengths.reduce(0, +)) / n,
            "rollout/seconds": seconds,
            "rollout/tokens_per_second": Double(lengths.reduce(0, +)) / max(seconds, 1e-9),
        ]
        if penalty != 0 { metrics["objective/scores_without_penalty"] = mean(modelScores) }
        return Rollout(rows: rows, promptLengths: promptLengths, old: old, values: values, advantages: advantages, returns: returns, metrics: metrics)
    }

    public func nextStep(settings s: TrainingSettings, share: DataShare) throws -> [MicroBatch] {
        let stepsPerBatch = settings.epochs * settings.miniBatches
        if batch == nil || batch!.uses >= stepsPerBatch {
            batch = nil  // the old batch's memory goes before the next one is made
            batch = try rollOut(model: rollouts.policy, settings: s)
        }
        let uses = batch!.uses
        if uses % settings.miniBatches == 0 {
            // A new epoch over the batch: a seeded shuffle of its rows.
            var random = SplitMix64(seed: seed &+ UInt64(rolloutCount) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(uses / settings.miniBatches))
            batch!.order = EpochOrder.shuffled(batch!.rows.count, &random)
        }
        batch!.uses += 1
        let b = batch!, size = s.batchSize * s.gradientAccumulation, first = (uses % settings.miniBatches) * size
        let picked = Array(b.order[first..<first + size])
        lastStepTokens = picked.reduce(0) { $0 + b.rows[$1].count }
        let parts = share.microBatches(rows: size, micro: s.batchSize)
        let p = settings
        return parts.map { part in
            let rows = part.map { picked[$0] }
            return MicroBatch(divisor: Float(parts.count)) { tape, model in
                let valueCounts = rows.map { b.values[$0].count }
                let (logps, values) = self.policyAndValues(tape, model, rows.map { b.rows[$0] }, promptLengths: rows.map { b.promptLengths[$0] },
                                                           valueCounts: valueCounts, recompute: s.recompute)
                var metrics = b.metrics
                let old = rows.map { b.old[$0] }
                let policy = tape.externalLoss(logps) { flat in
                    let new = Self.split(flat, old.map(\.count))
                    let valid = old.map { [Bool](repeating: true, count: $0.count) }
                    let r = PPO.policyLoss(new: new, old: old, advantages: rows.map { b.advantages[$0] }, valid: valid, clip: p.clipRange)
                    let differences = zip(new, old).flatMap { zip($0, $1).map { $0 - $1 } }
                    let count = Double(max(differences.count, 1))
                    metrics["loss/policy_avg"] = r.loss
                    metrics["policy/clipfrac_avg"] = r.clipFraction
                    metrics["policy/approxkl_avg"] = differences.reduce(0) { $0 + 0.5 * $1 * $1 } / count
                    metrics["val/ratio"] = differences.reduce(0) { $0 + exp($1) } / count
                    return (r.loss, r.gradient.flatMap { $0 })
                }
                let value = tape.externalLoss(values) { flat in
                    let new = Self.split(flat, valueCounts)
                    let r = PPO.valueLoss(new: new, old: rows.map { b.values[$0] }, returns: rows.map { b.returns[$0] },
                                          valid: valueCounts.map { [Bool](repeating: true, count: $0) }, clip: p.clipRangeValue)
                    metrics["loss/value_avg"] = r.loss
                    metrics["val/clipfrac_avg"] = r.clipFraction
                    return (p.valueCoef * r.loss, r.gradient.flatMap { $0.map { p.valueCoef * $0 } })
                }
                return (tape.add(policy, value), metrics.mapValues(Float.init))
            }
        }
    }

    /// One greedy response of each held-out prompt, scored by the reward model; the negated mean score.
    public func validationLoss(model: TrainableLlama, settings s: TrainingSettings, pool: ThreadPool) throws -> Float {
        let responses = try rollouts.generate(validation.map(\.ids), n: 1, parameters: sampling(greedy: true)).map { $0[0] }
        let scores = try self.scores(validation, responses)
        let score = scores.reduce(0, +) / Double(scores.count)
        validationMetrics = ["score": Float(score),
                             "completions/mean_length": Float(responses.reduce(0) { $0 + $1.tokens.count }) / Float(responses.count)]
        lastValidation = validation.indices.map { (validation[$0], responses[$0], scores[$0]) }
        return Float(-score)
    }
}
