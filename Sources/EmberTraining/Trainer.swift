import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import Foundation

/// Everything that decides a training run besides the model's shape; saved in every checkpoint so
/// that a resumed run continues with the same settings.
public struct TrainingSettings: Codable, Sendable, Equatable {
    public var data: String
    public var steps: Int
    public var batchSize: Int
    public var sequenceLength: Int
    public var gradientAccumulation: Int
    public var learningRate: Float
    public var minimumLearningRate: Float
    public var warmup: Int
    public var weightDecay: Float
    /// Whether norms and embeddings take weight decay too (by default only the projections do).
    public var decayEverything: Bool
    public var gradientClip: Float
    public var recompute: TrainableLlama.Recompute
    public var seed: UInt64
    public var evalEvery: Int
    public var evalWindows: Int
    public var saveEvery: Int
    public var keepCheckpoints: Int

    /// The defaults of every run (and of `ember pretrain`, whose --help prints them from here).
    public static let defaults = TrainingSettings(data: "")

    public init(data: String, steps: Int = 1000, batchSize: Int = 16, sequenceLength: Int = 128, gradientAccumulation: Int = 1,
                learningRate: Float = 3e-3, minimumLearningRate: Float = 3e-4, warmup: Int = 30, weightDecay: Float = 0.1, decayEverything: Bool = false,
                gradientClip: Float = 1, recompute: TrainableLlama.Recompute = .none, seed: UInt64 = 1, evalEvery: Int = 50,
                evalWindows: Int = 32, saveEvery: Int = 100, keepCheckpoints: Int = 2) {
        self.data = data
        self.steps = steps
        self.batchSize = batchSize
        self.sequenceLength = sequenceLength
        self.gradientAccumulation = gradientAccumulation
        self.learningRate = learningRate
        self.minimumLearningRate = minimumLearningRate
        self.warmup = warmup
        self.weightDecay = weightDecay
        self.decayEverything = decayEverything
        self.gradientClip = gradientClip
        self.recompute = recompute
        self.seed = seed
        self.evalEvery = evalEvery
        self.evalWindows = evalWindows
        self.saveEvery = saveEvery
        self.keepCheckpoints = keepCheckpoints
    }

    public var schedule: LearningRateSchedule {
        LearningRateSchedule(maximum: learningRate, minimum: minimumLearningRate, warmup: warmup, total: steps)
    }

    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw TrainingError(message) } }
        try check(steps >= 1, "steps must be at least 1")
        try check(batchSize >= 1, "batch size must be at least 1")
        try check(sequenceLength >= 2, "sequence length must be at least 2")
        try check(gradientAccumulation >= 1, "gradient accumulation must be at least 1")
        try check(learningRate > 0 && learningRate.isFinite, "learning rate must be positive")
        try check(minimumLearningRate >= 0 && minimumLearningRate <= learningRate, "the minimum learning rate must be between 0 and the learning rate")
        try check(warmup >= 0, "warmup must not be negative")
        try check(weightDecay >= 0, "weight decay must not be negative")
        try check(gradientClip > 0, "gradient clip must be positive")
        try check(evalEvery >= 0 && saveEvery >= 0, "eval-every and save-every must not be negative")
        try check(keepCheckpoints >= 1, "keep at least one checkpoint")
    }
}

/// One line of the run's history (and of its JSON log).
public struct StepRecord: Codable, Sendable, Equatable {
    public var step: Int
    public var loss: Float
    public var learningRate: Float
    public var gradientNorm: Float
    public var validationLoss: Float?
    public var tokensPerSecond: Double?

    enum CodingKeys: String, CodingKey {
        case step, loss
        case learningRate = "lr"
        case gradientNorm = "grad_norm"
        case validationLoss = "val_loss"
        case tokensPerSecond = "tokens_per_s"
    }
}

public struct TrainingError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The training loop: sample windows, forward and backward (accumulated over micro-batches),
/// clip, AdamW with the warmup + cosine schedule; evaluation on fixed validation windows.
public final class Trainer {
    public let model: TrainableLlama
    public let optimizer: AdamW
    public let dataset: TokenDataset
    public let settings: TrainingSettings
    /// Steps completed.
    public private(set) var step = 0
    public private(set) var sampler: WindowSampler
    public private(set) var history: [StepRecord] = []
    public let pool: ThreadPool

    public init(model: TrainableLlama, dataset: TokenDataset, settings: TrainingSettings, pool: ThreadPool = .shared) throws {
        try settings.validate()
        let c = model.configuration
        guard settings.sequenceLength <= c.maxPositionEmbeddings else {
            throw TrainingError("sequence length \(settings.sequenceLength) is longer than the model's context (\(c.maxPositionEmbeddings))")
        }
        guard dataset.description.vocabularySize <= c.vocabularySize else {
            throw TrainingError("the data's vocabulary (\(dataset.description.vocabularySize)) does not fit the model's (\(c.vocabularySize))")
        }
        for (name, file) in [("training", dataset.train), ("validation", dataset.validation)] where file.count <= settings.sequenceLength {
            throw TrainingError("\(dataset.directory): the \(name) split holds \(file.count) tokens, fewer than one sequence of \(settings.sequenceLength) + 1")
        }
        self.model = model
        self.dataset = dataset
        self.settings = settings
        self.pool = pool
        keepFreedMemory()
        optimizer = AdamW(parameters: model.parameters, decays: model.parameters.map { settings.decayEverything || TrainableLlama.decays($0.name) },
                          settings: .init(weightDecay: settings.weightDecay))
        sampler = WindowSampler(seed: settings.seed, length: settings.sequenceLength)
    }

    public var tokensPerStep: Int { settings.batchSize * settings.sequenceLength * settings.gradientAccumulation }

    /// Runs one optimizer step and returns its record.
    public func trainStep() -> StepRecord {
        let s = settings
        model.arena.zeroGradients()
        var loss: Float = 0
        for _ in 0..<s.gradientAccumulation {
            let (inputs, targets) = sampler.next(batch: s.batchSize, from: dataset.train)
            let tape = Tape(pool: pool)
            let l = model.loss(tape, inputs: inputs, targets: targets, batch: s.batchSize, recompute: s.recompute)
            tape.backward(l, seed: 1 / Float(s.gradientAccumulation))
            loss += l.values[0] / Float(s.gradientAccumulation)
        }
        let norm = clipGradientNorm(model.parameters, maximum: s.gradientClip)
        let lr = s.schedule(step)
        optimizer.update(learningRate: lr, pool: pool)
        step += 1
        let record = StepRecord(step: step, loss: loss, learningRate: lr, gradientNorm: norm)
        history.append(record)
        return record
    }

    /// Mean loss over `evalWindows` windows spread evenly over the validation split.
    public func evaluate() -> Float {
        let s = settings
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

    /// Notes the validation loss in the last history record.
    public func recordValidation(_ loss: Float) {
        if !history.isEmpty { history[history.count - 1].validationLoss = loss }
    }

    public func recordSpeed(_ tokensPerSecond: Double) {
        if !history.isEmpty { history[history.count - 1].tokensPerSecond = tokensPerSecond }
    }

    // MARK: Checkpoints

    /// What a checkpoint keeps besides weights and optimizer moments.
    struct State: Codable {
        var step: Int
        var samplerState: String  // UInt64 as text: JSON numbers lose bits past 2⁵³
        var settings: TrainingSettings
        var history: [StepRecord]
        enum CodingKeys: String, CodingKey {
            case step, settings, history
            case samplerState = "sampler_state"
        }
    }

    /// Writes a checkpoint into `directory` (which must exist): the model as a Hugging Face folder
    /// (model.safetensors, config.json, the tokenizer), optimizer.safetensors and trainer_state.json.
    func writeCheckpoint(into directory: String) throws {
        try model.save(to: directory)
        let tokenizer = dataset.tokenizerPath
        try FileManager.default.copyItem(atPath: tokenizer, toPath: directory + "/" + (tokenizer as NSString).lastPathComponent)
        var tensors: [SafetensorsWriter.Tensor] = []
        for (i, p) in model.parameters.enumerated() {
            tensors.append(.init(name: "exp_avg." + p.name, shape: p.shape, data: UnsafeBufferPointer(start: optimizer.moments[i].pointer, count: p.count)))
            tensors.append(.init(name: "exp_avg_sq." + p.name, shape: p.shape, data: UnsafeBufferPointer(start: optimizer.squares[i].pointer, count: p.count)))
        }
        try SafetensorsWriter.write(tensors, metadata: ["step": String(optimizer.step)], to: directory + "/optimizer.safetensors")
        let state = State(step: step, samplerState: String(sampler.generator.state), settings: settings, history: history)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFile(encoder.encode(state), to: directory + "/trainer_state.json")
    }

    /// A trainer that continues exactly where `checkpoint` stopped.
    public static func resume(from checkpoint: String, steps: Int? = nil, pool: ThreadPool = .shared) throws -> Trainer {
        let statePath = checkpoint + "/trainer_state.json"
        guard let data = FileManager.default.contents(atPath: statePath) else { throw TrainingError("\(checkpoint): no trainer_state.json; not a checkpoint") }
        let state: State
        do { state = try JSONDecoder().decode(State.self, from: data) } catch { throw TrainingError("\(statePath): not a valid trainer state") }
        guard let samplerState = UInt64(state.samplerState) else { throw TrainingError("\(statePath): bad sampler_state") }
        var settings = state.settings
        if let steps { settings.steps = steps }
        let model = try TrainableLlama(directory: checkpoint)
        let trainer = try Trainer(model: model, dataset: TokenDataset(directory: settings.data), settings: settings, pool: pool)
        let moments = try SafetensorsFile(path: checkpoint + "/optimizer.safetensors")
        for (i, p) in model.parameters.enumerated() {
            for (prefix, target) in [("exp_avg.", trainer.optimizer.moments[i]), ("exp_avg_sq.", trainer.optimizer.squares[i])] {
                guard let entry = moments.entries[prefix + p.name], entry.dtype == .f32, entry.shape == p.shape else {
                    throw TrainingError("\(checkpoint)/optimizer.safetensors: \(prefix + p.name) is missing or has the wrong shape")
                }
                UnsafeMutableRawPointer(target.pointer).copyMemory(from: moments.data(of: entry), byteCount: 4 * p.count)
            }
        }
        guard let optimizerStep = moments.metadata["step"].flatMap(Int.init) else {
            throw TrainingError("\(checkpoint)/optimizer.safetensors: no step in its metadata")
        }
        trainer.optimizer.step = optimizerStep
        trainer.step = state.step
        trainer.sampler = WindowSampler(seed: samplerState, length: settings.sequenceLength)
        trainer.history = state.history
        return trainer
    }
}
