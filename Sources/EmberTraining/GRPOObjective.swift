import EmberModels
import EmberTokenizers
import EmberNN
import EmberTensor
import Foundation

/// What a GRPO run trains with (TRL's `GRPOConfig` names in the comments); saved in every
/// checkpoint with the run's other settings.
public struct GRPOSettings: Codable, Sendable, Equatable {
    /// A reward function: the final number against the example's answer, a format regex, an
    /// outside program (`ExternalReward`), or a reward model (a `LlamaForSequenceClassification`
    /// folder, as `ember train-reward` writes it) scoring prompt + completion.
    public enum Reward: Codable, Sendable, Equatable {
        case finalNumber
        case format(String)
        case command([String], timeout: Double)
        case model(String)

        public var name: String {
            switch self {
            case .finalNumber: "final_number"
            case .format: "format"
            case .command: "command"
            case .model: "reward_model"
            }
        }
    }

    public var rewards: [Reward]
    /// The weight of each reward in the sum (`reward_weights`; nil: all 1).
    public var rewardWeights: [Double]?
    /// Completions per prompt, G (`num_generations`).
    public var generations: Int
    public var maxCompletionLength: Int
    public var temperature: Double
    public var topP: Double
    public var topK: Int
    public var scale: GRPO.RewardScale
    public var aggregation: GRPO.Aggregation
    public var epsilonLow: Double
    public var epsilonHigh: Double?
    /// The KL coefficient (`beta`); 0 needs no reference.
    public var beta: Double
    /// Optimizer steps on each generated batch, μ (`num_iterations`).
    public var iterations: Int
    /// The reference when the whole model trains and β > 0: the model folder it started from (with
    /// LoRA the reference is the base with the adapter off).
    public var reference: String?

    public init(rewards: [Reward], rewardWeights: [Double]? = nil, generations: Int = 8, maxCompletionLength: Int = 256, temperature: Double = 1,
                topP: Double = 1, topK: Int = 0, scale: GRPO.RewardScale = .group, aggregation: GRPO.Aggregation = .dapo, epsilonLow: Double = 0.2,
                epsilonHigh: Double? = nil, beta: Double = 0, iterations: Int = 1, reference: String? = nil) {
        self.rewards = rewards
        self.rewardWeights = rewardWeights
        self.generations = generations
        self.maxCompletionLength = maxCompletionLength
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.scale = scale
        self.aggregation = aggregation
        self.epsilonLow = epsilonLow
        self.epsilonHigh = epsilonHigh
        self.beta = beta
        self.iterations = iterations
        self.reference = reference
    }

    var policyLoss: GRPO.PolicyLoss {
        GRPO.PolicyLoss(epsilonLow: epsilonLow, epsilonHigh: epsilonHigh, beta: beta, aggregation: aggregation, maxCompletionLength: maxCompletionLength)
    }

    /// Each reward's name in the log: its kind, numbered when two are of one kind.
    var rewardNames: [String] {
        rewards.enumerated().map { i, r in
            rewards.filter { $0.name == r.name }.count > 1 ? "\(r.name)_\(rewards[..<i].filter { $0.name == r.name }.count + 1)" : r.name
        }
    }

    public func validate() throws {
        guard !rewards.isEmpty else { throw TrainingError("GRPO needs at least one reward") }
        if let w = rewardWeights, w.count != rewards.count || !w.allSatisfy(\.isFinite) {
            throw TrainingError("give one finite reward weight for each of the \(rewards.count) rewards")
        }
        guard generations >= 2 else { throw TrainingError("GRPO compares completions within a group: at least 2 generations per prompt") }
        guard maxCompletionLength >= 1 else { throw TrainingError("the maximum completion length must be at least 1") }
        guard temperature > 0, temperature.isFinite else { throw TrainingError("the sampling temperature must be positive") }
        guard topP > 0, topP <= 1, topK >= 0 else { throw TrainingError("top-p must be in (0, 1] and top-k at least 0") }
        guard epsilonLow >= 0, (epsilonHigh ?? 0) >= 0, beta >= 0, iterations >= 1 else {
            throw TrainingError("ε must not be negative, β must not be negative, and the iterations must be at least 1")
        }
    }
}

/// A prompt of a GRPO run: its tokens (the chat template's rendering with the generation prompt,
/// or the plain text), its text as reward functions see it, and the answer its line carries.
public struct GRPOPrompt: Sendable, Equatable {
    public var ids: [Int32]
    public var text: String
    public var answer: String?
    public var line: Int
    public init(ids: [Int32], text: String, answer: String?, line: Int) {
        self.ids = ids
        self.text = text
        self.answer = answer
        self.line = line
    }
}

extension SupervisedTokenizer {
    /// The prompts of prompt-only data (`{"prompt": ..., "answer": ...}`), each with room for
    /// `completionLength` tokens within `maximumLength`; longer ones are left out and counted.
    public func prompts(_ data: FineTuningDataset, maximumLength: Int, completionLength: Int) throws -> (prompts: [GRPOPrompt], skipped: Skipped) {
        guard data.format == .promptOnly else {
            throw TrainingError("\(data.path): GRPO reads prompt-only data ({\"prompt\": ..., \"answer\": ...}); this file is \(data.format.rawValue)")
        }
        var out: [GRPOPrompt] = [], skipped = Skipped()
        for example in data.examples {
            let text: String
            switch example.prompt {
            case .text(let plain)?: text = plain
            case .messages(let messages)?:
                do {
                    text = try prompting.chatFormat.prompt(messages: .list(messages), tools: example.tools, addGenerationPrompt: true)
                } catch let error as JinjaError {
                    throw TrainingError("\(data.path):\(example.line): the chat template cannot render this prompt: \(error.message)")
                }
            case nil: continue
            }
            let ids = prompting.tokens(text).map(Int32.init)
            guard !ids.isEmpty else { skipped.emptyPrompt += 1; continue }
            guard ids.count + completionLength <= maximumLength else { skipped.tooLong += 1; continue }
            out.append(GRPOPrompt(ids: ids, text: text, answer: example.answer, line: example.line))
        }
        return (out, skipped)
    }
}

extension SupervisedTokenizer {
    /// The prompts of a run (`s.data`) with room for `completionLength` tokens each, and those held
    /// out (`f.validationData`, or `f.validationFraction` of them).
    func prompts(settings s: TrainingSettings, fineTuning f: FineTuningSettings, completionLength: Int, context: Int) throws
        -> (training: [GRPOPrompt], validation: [GRPOPrompt], skipped: Skipped) {
        guard s.sequenceLength <= context else {
            throw TrainingError("the maximum length \(s.sequenceLength) is longer than the model's context (\(context))")
        }
        guard completionLength < s.sequenceLength else {
            throw TrainingError("the maximum completion length \(completionLength) leaves no room for a prompt within the maximum length \(s.sequenceLength)")
        }
        var (train, skipped) = try prompts(FineTuningDataset.load(path: s.data), maximumLength: s.sequenceLength, completionLength: completionLength)
        let held: [GRPOPrompt]
        if let path = f.validationData {
            let more = try prompts(FineTuningDataset.load(path: path), maximumLength: s.sequenceLength, completionLength: completionLength)
            guard !more.prompts.isEmpty else { throw TrainingError("\(path): no prompt is left to validate on (skipped \(more.skipped))") }
            held = more.prompts
        } else {
            (train, held) = try holdOut(train, fraction: f.validationFraction, seed: s.seed, what: "prompts", path: s.data, skipped: skipped)
        }
        guard !train.isEmpty else { throw TrainingError("\(s.data): no prompt is left to train on (skipped \(skipped))") }
        return (train, held, skipped)
    }
}

/// Group relative policy optimisation (TRL's `GRPOTrainer`) on prompts and reward functions.
///
/// Each generation draws batchSize × gradientAccumulation / G prompts in the epoch's order and
/// samples G completions of each from the current weights through `RolloutEngine`. Their rewards
/// (the weighted sum of the reward functions) give group-normalised advantages
/// (`GRPO.advantages`), and the rows prompt + completion, learning the completion's tokens, are
/// the step's micro-batches; the loss is `GRPO.PolicyLoss` of the completion tokens'
/// log-probabilities. With μ iterations the batch serves μ optimizer steps, the log-probabilities
/// at generation being the old policy's; with β > 0 the reference's (the base with the adapter
/// off for LoRA, or a frozen copy) give the k3 KL. Groups whose rewards are all equal have zero
/// advantage and teach nothing; their fraction is logged (`frac_reward_zero_std`).
///
/// Validation samples one greedy completion per held-out prompt; the metrics are the mean reward
/// and each reward's mean (`val_reward`, `val_rewards/<name>/mean`), and the validation loss is
/// the negated mean reward.
public final class GRPOObjective: TrainingObjective {
    public let settings: GRPOSettings
    public let training: [GRPOPrompt]
    public let validation: [GRPOPrompt]
    public let skipped: SupervisedTokenizer.Skipped
    public let tokenizerFiles: [String]
    public let rollouts: RolloutEngine
    let reference: TrainableLlama?
    /// The reward models of `settings.rewards`, by path.
    let rewardModels: [String: Llama]
    let padding: Int32
    let seed: UInt64
    private var order: EpochOrder
    private var generation: Generation?
    private var generationCount = 0
    public private(set) var validationMetrics: [String: Float] = [:]
    public private(set) var lastStepTokens: Int?

    /// A generated batch and how many optimizer steps it has served.
    struct Generation {
        var rows: [SupervisedSequence]
        var advantages: [Double]
        var old: [[Double]]?
        var reference: [[Double]]?
        var metrics: [String: Double]
        var uses = 0
    }

    public init(settings: GRPOSettings, training: [GRPOPrompt], validation: [GRPOPrompt], skipped: SupervisedTokenizer.Skipped = .init(),
                policy: TrainableLlama, prompting: Prompting, tokenizerFiles: [String], reference: TrainableLlama? = nil,
                maximumLength: Int, seed: UInt64, state: String? = nil) throws {
        try settings.validate()
        guard !training.isEmpty, !validation.isEmpty else { throw TrainingError("GRPO needs prompts to train on and prompts held out") }
        guard settings.beta == 0 || reference != nil || policy.lora != nil else {
            throw TrainingError("GRPO with β > 0 needs a reference: the base under a LoRA, or a frozen copy of the model")
        }
        self.settings = settings
        self.training = training
        self.validation = validation
        self.skipped = skipped
        self.tokenizerFiles = tokenizerFiles
        self.reference = reference
        self.seed = seed
        var models: [String: Llama] = [:]
        for case .model(let path) in settings.rewards {
            models[path] = try Self.rewardModel(path, for: prompting, vocabulary: policy.configuration.vocabularySize)
        }
        rewardModels = models
        padding = Int32(prompting.paddingToken)
        rollouts = try RolloutEngine(policy: policy, prompting: prompting, maxLength: maximumLength,
                                 maxSequences: max(16, min(64, settings.generations * 4)))
        order = try EpochOrder(count: training.count, seed: seed, state: state, what: "training prompts")
    }

    /// Reads and tokenizes the run's prompts (`s.data`, held out as `f` says) and builds the objective.
    public convenience init(settings s: TrainingSettings, fineTuning f: FineTuningSettings, grpo: GRPOSettings, policy: TrainableLlama,
                            prompting: Prompting, tokenizerFiles: [String], reference: TrainableLlama? = nil, state: String? = nil) throws {
        guard (s.batchSize * s.gradientAccumulation) % grpo.generations == 0 else {
            throw TrainingError("a step's \(s.batchSize * s.gradientAccumulation) completions (batch size × accumulation) must be whole groups of \(grpo.generations) generations")
        }
        let (train, held, skipped) = try SupervisedTokenizer(prompting: prompting)
            .prompts(settings: s, fineTuning: f, completionLength: grpo.maxCompletionLength, context: policy.configuration.maxPositionEmbeddings)
        try self.init(settings: grpo, training: train, validation: held, skipped: skipped, policy: policy, prompting: prompting,
                      tokenizerFiles: tokenizerFiles, reference: reference, maximumLength: s.sequenceLength, seed: s.seed, state: state)
    }

    public var checkpointState: String { order.state }

    /// The reward model at `path`, refused unless it is one and reads the policy's tokens as the
    /// policy writes them (it scores the policy's token ids as they are).
    static func rewardModel(_ path: String, for prompting: Prompting, vocabulary: Int) throws -> Llama {
        let loaded = try LoadedModel.load(path: path)
        guard loaded.model.weights.score != nil else {
            throw TrainingError("\(path) is not a reward model (a LlamaForSequenceClassification with one label, as ember train-reward writes it)")
        }
        let theirs = try loaded.prompting().tokenizer, ours = prompting.tokenizer
        guard theirs.vocabularySize == ours.vocabularySize else {
            throw TrainingError("the reward model \(path) has a vocabulary of \(theirs.vocabularySize) tokens and the policy one of \(ours.vocabularySize): a reward model scores the policy's tokens, so it must share the policy's tokenizer")
        }
        if let id = (0..<ours.vocabularySize).first(where: { theirs.bytes(of: $0) != ours.bytes(of: $0) }) {
            throw TrainingError("the reward model \(path) reads token \(id) as \(String(decoding: theirs.bytes(of: id), as: UTF8.self).debugDescription) and the policy as \(String(decoding: ours.bytes(of: id), as: UTF8.self).debugDescription): a reward model scores the policy's tokens, so it must share the policy's tokenizer")
        }
        guard loaded.model.configuration.vocabularySize == vocabulary else {
            throw TrainingError("the reward model \(path) embeds \(loaded.model.configuration.vocabularySize) tokens and the policy \(vocabulary): a reward model scores the policy's tokens, so it must share the policy's vocabulary")
        }
        return loaded.model
    }

    /// The rewards of `completions` of `prompts` (completion k of prompt k / per), each function's
    /// values and their weighted sum.
    func rewards(_ prompts: [GRPOPrompt], _ completions: [RolloutEngine.Completion], per: Int) throws -> (total: [Double], each: [[Double]]) {
        let items = completions.enumerated().map { k, c in RewardItem(prompt: prompts[k / per].text, completion: c.text, answer: prompts[k / per].answer) }
        let each = try settings.rewards.map { reward -> [Double] in
            switch reward {
            case .finalNumber: try items.map(VerifiableReward.finalNumber.reward)
            case .format(let pattern): try items.map(VerifiableReward.format(pattern).reward)
            case .command(let command, let timeout): try ExternalReward(command: command, timeout: timeout).rewards(items)
            case .model(let path):
                // The score of prompt + completion (its end-of-turn token included when it stopped).
                try completions.enumerated().map { k, c in Double(try rewardModels[path]!.scores((prompts[k / per].ids + c.tokens).map(Int.init))[0]) }
            }
        }
        let weights = settings.rewardWeights ?? Array(repeating: 1, count: each.count)
        let total = items.indices.map { k in zip(weights, each).reduce(0) { $0 + $1.0 * $1.1[k] } }
        return (total, each)
    }

    /// Sampling as the settings say, seeded by the run's seed and the generation's number.
    func sampling(greedy: Bool) -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = greedy ? 0 : Float(settings.temperature)
        p.topP = Float(settings.topP)
        p.topK = settings.topK
        p.maxTokens = settings.maxCompletionLength
        p.seed = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(generationCount) &* 1_000_003
        return p
    }

    /// The next generated batch: prompts drawn, G completions each, rewards and advantages.
    private func generate(model: TrainableLlama, settings s: TrainingSettings) throws -> Generation {
        let G = settings.generations, count = s.batchSize * s.gradientAccumulation
        let prompts = (0..<count / G).map { _ in training[order.next()] }
        generationCount += 1
        let generated = try rollouts.generate(prompts.map(\.ids), n: G, parameters: sampling(greedy: false))
        let seconds = rollouts.lastSeconds
        let completions = generated.flatMap { $0 }
        let (total, each) = try rewards(prompts, completions, per: G)
        let (advantages, rewardMetrics) = GRPO.advantages(rewards: total, groupSize: G, scale: settings.scale)
        let rows = completions.enumerated().map { k, c in
            let prompt = prompts[k / G].ids
            return SupervisedSequence(ids: prompt + c.tokens, learned: prompt.map { _ in false } + c.tokens.map { _ in true })
        }
        var metrics = rewardMetrics
        for (name, values) in zip(settings.rewardNames, each) { metrics["rewards/\(name)/mean"] = values.reduce(0, +) / Double(values.count) }
        let lengths = completions.map { Double($0.tokens.count) }
        metrics["completions/mean_length"] = lengths.reduce(0, +) / Double(lengths.count)
        metrics["completions/clipped_ratio"] = Double(completions.filter { !$0.stopped }.count) / Double(completions.count)
        metrics["rollout/seconds"] = seconds
        metrics["rollout/tokens_per_second"] = lengths.reduce(0, +) / max(seconds, 1e-9)
        var batch = Generation(rows: rows, advantages: advantages, metrics: metrics)
        if settings.iterations > 1 { batch.old = completionLogProbabilities(model, rows, settings: s, adapter: true) }
        if settings.beta > 0 { batch.reference = completionLogProbabilities(reference ?? model, rows, settings: s, adapter: reference != nil) }
        return batch
    }

    /// Each row's completion-token log-probabilities under `model` (no backward), in micro-batches;
    /// `adapter` false runs a LoRA model as its base.
    private func completionLogProbabilities(_ model: TrainableLlama, _ rows: [SupervisedSequence], settings s: TrainingSettings, adapter: Bool) -> [[Double]] {
        let wasEnabled = model.adapterEnabled
        model.adapterEnabled = adapter && wasEnabled
        defer { model.adapterEnabled = wasEnabled }
        var out: [[Double]] = []
        for start in stride(from: 0, to: rows.count, by: s.batchSize) {
            let part = Array(rows[start..<min(start + s.batchSize, rows.count)])
            let tape = Tape(pool: .shared, recording: false)
            out += Self.split(logProbabilities(tape, model, part).values.map(Double.init), part)
        }
        return out
    }

    /// The completion tokens' log-probabilities of `rows`, one value each, row after row.
    private func logProbabilities(_ tape: Tape, _ model: TrainableLlama, _ rows: [SupervisedSequence], recompute: TrainableLlama.Recompute = .none)
        -> Variable {
        let batch = SupervisedObjective.tokenRows(rows.map { SupervisedObjective.Row([$0]) }, packed: false, padding: padding)
        let logits = model.forward(tape, inputs: batch.inputs, batch: batch.rows, tokens: batch.length, recompute: recompute)
        let all = tape.tokenLogProbabilities(logits, targets: batch.targets)
        let scored = batch.targets.indices.filter { batch.targets[$0] >= 0 }
        return tape.segmentSums(all, scored.map { $0..<$0 + 1 })
    }

    /// Flat completion-token values cut into one array per row.
    static func split(_ flat: [Double], _ rows: [SupervisedSequence]) -> [[Double]] {
        var out: [[Double]] = [], at = 0
        for r in rows {
            let n = r.scoredCount
            out.append(Array(flat[at..<at + n]))
            at += n
        }
        return out
    }

    public func nextStep(settings s: TrainingSettings, share: DataShare) throws -> [MicroBatch] {
        if generation == nil || generation!.uses >= settings.iterations {
            generation = nil  // the old batch's memory goes before the next one is made
            generation = try generate(model: rollouts.policy, settings: s)
        }
        generation!.uses += 1
        let batch = generation!, count = batch.rows.count, loss = settings.policyLoss
        let tokens = batch.rows.reduce(0) { $0 + $1.scoredCount }
        lastStepTokens = batch.rows.reduce(0) { $0 + $1.count }
        return share.microBatches(rows: count, micro: s.batchSize).map { part in
            let rows = Array(batch.rows[part])
            let microTokens = rows.reduce(0) { $0 + $1.scoredCount }
            let divisor = settings.aggregation == .dapo ? Float(tokens) / Float(max(microTokens, 1)) : Float(count) / Float(part.count)
            return MicroBatch(divisor: divisor) { tape, model in
                let logps = self.logProbabilities(tape, model, rows, recompute: s.recompute)
                var metrics = batch.metrics
                let value = tape.externalLoss(logps) { flat in
                    let current = Self.split(flat, rows)
                    let result = loss.compute(logps: current, old: batch.old.map { Array($0[part]) } ?? current,
                                              reference: batch.reference.map { Array($0[part]) }, advantages: Array(batch.advantages[part]))
                    for name in ["kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"] { metrics[name] = result.metrics[name] }
                    return (result.loss, result.gradient.flatMap { $0 })
                }
                if self.settings.beta == 0 { metrics["kl"] = nil }
                return (value, metrics.mapValues(Float.init))
            }
        }
    }

    /// One greedy completion of each held-out prompt, scored; the negated mean reward.
    public func validationLoss(model: TrainableLlama, settings s: TrainingSettings, pool: ThreadPool) throws -> Float {
        let completions = try rollouts.generate(validation.map(\.ids), n: 1, parameters: sampling(greedy: true)).flatMap { $0 }
        let (total, each) = try rewards(validation, completions, per: 1)
        var metrics: [String: Float] = ["reward": Float(total.reduce(0, +) / Double(total.count)),
                                        "completions/mean_length": Float(completions.reduce(0) { $0 + $1.tokens.count }) / Float(completions.count)]
        for (name, values) in zip(settings.rewardNames, each) { metrics["rewards/\(name)/mean"] = Float(values.reduce(0, +) / Double(values.count)) }
        validationMetrics = metrics
        lastValidation = Array(zip(validation, completions))
        return -metrics["reward"]!
    }

    /// The last validation's prompts and completions (for a look at what the model writes).
    public private(set) var lastValidation: [(GRPOPrompt, RolloutEngine.Completion)] = []
}
