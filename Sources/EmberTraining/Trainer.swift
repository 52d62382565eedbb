import EmberDistributed
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
    /// The matrix products' precision (nil: f32, as in checkpoints written before the setting).
    public var precision: Precision?
    public var seed: UInt64
    public var evalEvery: Int
    public var evalWindows: Int
    public var saveEvery: Int
    public var keepCheckpoints: Int
    /// Supervised fine-tuning on `data` (a JSONL file) instead of pretraining on a token folder.
    public var fineTuning: FineTuningSettings?

    /// The defaults of every run (and of `ember pretrain`, whose --help prints them from here).
    public static let defaults = TrainingSettings(data: "")

    public init(data: String, steps: Int = 1000, batchSize: Int = 16, sequenceLength: Int = 128, gradientAccumulation: Int = 1,
                learningRate: Float = 3e-3, minimumLearningRate: Float = 3e-4, warmup: Int = 30, weightDecay: Float = 0.1, decayEverything: Bool = false,
                gradientClip: Float = 1, recompute: TrainableLlama.Recompute = .none, precision: Precision? = nil, seed: UInt64 = 1, evalEvery: Int = 50,
                evalWindows: Int = 32, saveEvery: Int = 100, keepCheckpoints: Int = 2, fineTuning: FineTuningSettings? = nil) {
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
        self.precision = precision
        self.seed = seed
        self.evalEvery = evalEvery
        self.evalWindows = evalWindows
        self.saveEvery = saveEvery
        self.keepCheckpoints = keepCheckpoints
        self.fineTuning = fineTuning
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

/// One line of the run's history (and of its JSON log): the fixed fields, and the objective's
/// named metrics as further keys of the same object.
public struct StepRecord: Codable, Sendable, Equatable {
    public var step: Int
    public var loss: Float
    public var learningRate: Float
    public var gradientNorm: Float
    public var validationLoss: Float?
    public var tokensPerSecond: Double?
    public var metrics: [String: Float]

    public init(step: Int, loss: Float, learningRate: Float, gradientNorm: Float, validationLoss: Float? = nil,
                tokensPerSecond: Double? = nil, metrics: [String: Float] = [:]) {
        self.step = step
        self.loss = loss
        self.learningRate = learningRate
        self.gradientNorm = gradientNorm
        self.validationLoss = validationLoss
        self.tokensPerSecond = tokensPerSecond
        self.metrics = metrics
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case step, loss
        case learningRate = "lr"
        case gradientNorm = "grad_norm"
        case validationLoss = "val_loss"
        case tokensPerSecond = "tokens_per_s"
    }

    struct MetricKey: CodingKey {
        let stringValue: String
        init(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        step = try c.decode(Int.self, forKey: .step)
        loss = try c.decode(Float.self, forKey: .loss)
        learningRate = try c.decode(Float.self, forKey: .learningRate)
        gradientNorm = try c.decode(Float.self, forKey: .gradientNorm)
        validationLoss = try c.decodeIfPresent(Float.self, forKey: .validationLoss)
        tokensPerSecond = try c.decodeIfPresent(Double.self, forKey: .tokensPerSecond)
        let fixed = Set(CodingKeys.allCases.map(\.rawValue))
        let others = try decoder.container(keyedBy: MetricKey.self)
        metrics = [:]
        for key in others.allKeys where !fixed.contains(key.stringValue) {
            metrics[key.stringValue] = try others.decode(Float.self, forKey: key)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(step, forKey: .step)
        try c.encode(loss, forKey: .loss)
        try c.encode(learningRate, forKey: .learningRate)
        try c.encode(gradientNorm, forKey: .gradientNorm)
        try c.encodeIfPresent(validationLoss, forKey: .validationLoss)
        try c.encodeIfPresent(tokensPerSecond, forKey: .tokensPerSecond)
        var others = encoder.container(keyedBy: MetricKey.self)
        for (name, value) in metrics { try others.encode(value, forKey: MetricKey(stringValue: name)) }
    }
}

public struct TrainingError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One optimizer step at a time: the objective's micro-batch losses (accumulated), the gradients
/// summed over the data-parallel ranks, global-norm clipping, AdamW with the warmup + cosine
/// schedule; evaluation through the objective.
public final class Trainer {
    public let model: TrainableLlama
    public let optimizer: AdamW
    public let objective: any TrainingObjective
    /// The objective's tokenizer files (name, contents), written into every checkpoint.
    private let tokenizer: [(name: String, data: Data)]
    public let settings: TrainingSettings
    public let parallelism: Parallelism
    /// Steps completed.
    public internal(set) var step = 0
    public internal(set) var history: [StepRecord] = []
    public let pool: ThreadPool
    private let buckets: GradientBuckets?
    /// Under ZeRO-3: the parameters outside this rank's shard, gathered unit by unit.
    private let partition: ParameterPartition?
    /// Under pipeline parallelism: this rank's stage and its 1F1B schedule.
    let pipeline: Pipeline?
    /// Every rank's part of the flat parameters under ZeRO, and this rank's (what its optimizer updates).
    private let shards: [Range<Int>]
    public let shard: Range<Int>?
    /// The sum of the step's earlier micro-batches, when a rank runs more than one.
    private lazy var accumulator = FloatBuffer(count: model.arena.count)

    public init(model: TrainableLlama, objective: any TrainingObjective, settings: TrainingSettings, parallelism: Parallelism = .single,
                pool: ThreadPool = .shared) throws {
        try settings.validate()
        let ranks = parallelism.data.size, rows = settings.batchSize * settings.gradientAccumulation
        guard (0...3).contains(parallelism.zeroStage) else {
            throw TrainingError("ZeRO stage \(parallelism.zeroStage) does not exist (stages 0, 1, 2 and 3 do)")
        }
        guard model.layout == parallelism.layout else {
            throw TrainingError("the model holds the part \(model.layout) of the whole, but this rank's part is \(parallelism.layout)")
        }
        guard model.lora == nil || (parallelism.layout.isWhole && parallelism.zeroStage == 0) else {
            throw TrainingError("LoRA trains with plain data parallelism (its state is small): leave out tensor, pipeline and ZeRO parallelism")
        }
        guard parallelism.zeroStage == 0 || model.gpt2 == nil else {
            throw TrainingError("ZeRO partitions LLaMA models; GPT-2 trains with plain data parallelism (leave out --zero-stage)")
        }
        guard parallelism.zeroStage < 3 || model.layout.isWhole else {
            throw TrainingError("ZeRO stage 3 partitions whole models; with tensor or pipeline parallelism use stage 1 or 2")
        }
        let microBatches = parallelism.share.microBatches(rows: rows, micro: settings.batchSize).count
        if parallelism.pipeline.size > 1, let wanted = parallelism.microBatches, wanted != microBatches {
            throw TrainingError("--micro-batches \(wanted) over \(ranks) data-parallel ranks needs --grad-accum \(wanted * ranks) (each micro-batch is --batch-size sequences); now each pipeline runs \(microBatches)")
        }
        guard rows >= ranks else {
            throw TrainingError("a global batch of \(rows) sequences (batch size × gradient accumulation) cannot be shared by \(ranks) data-parallel ranks")
        }
        // Read now: a resumed run's tokenizer files lie in a checkpoint that rotation deletes later.
        tokenizer = try objective.tokenizerFiles.map { path in
            guard let data = FileManager.default.contents(atPath: path) else { throw TrainingError("\(path): cannot read the tokenizer file") }
            return ((path as NSString).lastPathComponent, data)
        }
        self.model = model
        self.objective = objective
        self.settings = settings
        self.parallelism = parallelism
        self.pool = pool
        keepFreedMemory()
        shards = parallelism.zeroStage >= 1 ? parallelism.shards(of: model.arena.count) : []
        shard = shards.isEmpty ? nil : shards[parallelism.data.rank]
        optimizer = AdamW(parameters: model.parameters, decays: model.parameters.map { settings.decayEverything || TrainableLlama.decays($0.name) },
                          settings: .init(weightDecay: settings.weightDecay), range: shard)
        let thread = ranks > 1 && parallelism.overlap ? CommunicationThread() : nil
        buckets = ranks > 1 ? GradientBuckets(gradients: model.arena.gradients, communicator: parallelism.data, bucketBytes: parallelism.bucketBytes,
                                              thread: thread, shards: shard == nil ? nil : shards, releasing: parallelism.zeroStage >= 2) : nil
        partition = parallelism.zeroStage == 3 ? ParameterPartition(model: model, communicator: parallelism.data, shards: shards, thread: thread) : nil
        model.residency = partition
        pipeline = parallelism.pipeline.size > 1 ? Pipeline(communicator: parallelism.pipeline) : nil
        model.precision = settings.precision ?? .f32
        model.tensor = parallelism.tensor.size > 1 ? TensorGroup(communicator: parallelism.tensor, sequenceParallel: parallelism.sequenceParallel) : nil
        replicatedNorms = parallelism.sequenceParallel ? model.slices.indices.filter { model.slices[$0].slice.axis == nil && model.slices[$0].tensor.role != .embedding } : []
    }

    /// Under sequence parallelism: the parameters replicated over the tensor group (the norms),
    /// whose gradients each rank makes from its own rows only and the group sums.
    private let replicatedNorms: [Int]

    /// Bytes of model state this rank holds now: parameters, gradients and AdamW moments that
    /// occupy memory (resident pages), the figure ZeRO's stages cut.
    public var modelStateBytes: Int {
        model.arena.values.residentBytes() + model.arena.gradients.residentBytes() + 8 * optimizer.range.count
    }

    /// Under ZeRO-3, the most model-state bytes this rank held at once during its steps (parameters
    /// and gradients sampled at every unit, plus the moments); otherwise `modelStateBytes`.
    public var peakModelStateBytes: Int {
        guard let partition else { return modelStateBytes }
        return partition.peakBytes + 8 * optimizer.range.count
    }

    /// The bytes one rank's data-parallel collectives put on the wire per step in theory (ring
    /// algorithms, 4-byte values): 2(N−1)/N·Ψ for an all-reduce or a reduce-scatter and all-gather
    /// of the gradients; under ZeRO-3, (N−1)/N·(Ψ reduce-scattered + the values gathered per step),
    /// which is 3(N−1)/N·Ψ less the few weights a backward does not read.
    public var wireTheory: Double {
        let n = Double(parallelism.data.size), psi = Double(model.arena.count)
        if let partition { return (n - 1) / n * 4 * (psi + Double(partition.gatheredPerStep)) }
        return 2 * (n - 1) / n * 4 * psi
    }

    /// Runs `body` with every parameter present: under ZeRO-3 the units are gathered first (a
    /// collective: every rank calls it) and partitioned again after.
    public func withWholeModel<T>(_ body: () throws -> T) throws -> T {
        guard let partition else { return try body() }
        try partition.gatherAll()
        defer { partition.releaseAll() }
        return try body()
    }

    /// Pretraining: next-token prediction on `dataset`.
    public convenience init(model: TrainableLlama, dataset: TokenDataset, settings: TrainingSettings, parallelism: Parallelism = .single,
                            pool: ThreadPool = .shared) throws {
        try settings.validate()
        try self.init(model: model, objective: NextTokenObjective(dataset: dataset, configuration: model.configuration, settings: settings),
                      settings: settings, parallelism: parallelism, pool: pool)
    }

    /// Tokens of the global batch of one step (over every data-parallel rank).
    public var tokensPerStep: Int { objective.lastStepTokens ?? settings.batchSize * settings.sequenceLength * settings.gradientAccumulation }

    /// Seconds this rank spent finishing gradient reductions after its backward ended, over the steps of this process.
    public var exposedCommunicationSeconds: Double { buckets?.exposedSeconds ?? 0 }
    /// Steps this process ran, and the bytes its data-parallel collectives put on the wire in them.
    public private(set) var stepsRun = 0
    public private(set) var wireBytes = 0.0
    /// Tokens of this rank's data-parallel share of a step (what its tensor group and pipeline compute).
    private var tokensPerReplica: Int {
        let s = settings
        return parallelism.share.microBatches(rows: s.batchSize * s.gradientAccumulation, micro: s.batchSize).reduce(0) { $0 + $1.count } * s.sequenceLength
    }

    /// The bytes the tensor-parallel group's collectives put on the wire in those steps.
    public private(set) var tensorWireBytes = 0.0

    /// The tensor-parallel group's bytes on the wire per step in theory (ring algorithms, 4-byte
    /// values), for R rows (tokens) of C values that this rank's replica computes per step: per
    /// layer two all-reduces of R·C forward (after the row-parallel O and down) and two backward
    /// (the gradients entering Q/K/V and gate/up), 8(T−1)/T·R·C values in all; the embedding's
    /// all-reduce and the output's gradient, R·C each; the cross-entropy's 3R; the clipping's
    /// sum of squares. Sequence parallelism turns each all-reduce into an all-gather and a
    /// reduce-scatter of the same total, and adds the norm gradients' all-reduce.
    public var tensorWireTheory: Double {
        let t = Double(parallelism.tensor.size)
        guard t > 1 else { return 0 }
        let R = Double(tokensPerReplica), C = Double(model.configuration.hiddenSize), L = Double(model.blocks.count)
        let layout = model.layout, f = 2 * (t - 1) / t
        var values = 4 * L * R * C
        if layout.isFirstStage { values += R * C }
        if layout.isLastStage { values += R * C + 3 * R }
        if parallelism.sequenceParallel && parallelism.reduceNormGradients { values += C * (2 * L + (layout.isLastStage ? 1 : 0)) }
        return f * (4 * values + 8)
    }

    /// Runs one optimizer step and returns its record. Each micro-batch's gradients are made apart
    /// and added to the sum of the earlier ones, so that two ranks of one micro-batch each, summed
    /// by the all-reduce, give the same bits as one process accumulating two.
    public func trainStep() throws -> StepRecord {
        let s = settings
        let wireBefore = parallelism.data.traffic.wireBytes(size: parallelism.data.size)
        let tensorBefore = parallelism.tensor.traffic.wireBytes(size: parallelism.tensor.size)
        let pipelineBefore = parallelism.pipeline.traffic.sent
        let parts = try objective.nextStep(settings: s, share: parallelism.share), data = parallelism.data
        let arena = model.arena
        let gradients = arena.gradients.pointer, sum = parts.count > 1 ? accumulator.pointer : nil
        let releasing = parallelism.zeroStage >= 2 && data.size > 1
        arena.zeroGradients(releasing: releasing)
        var loss: Float = 0
        var metrics: [String: Float] = [:]
        /// Before micro-batch k's backward: the earlier ones' gradients are added up apart; before
        /// the last one, the buckets start (during it, with `overlapping`).
        func beforeBackward(_ k: Int, overlapping: Bool) {
            if k > 0, let sum {
                if k == 1 { sum.update(from: gradients, count: arena.count) } else { for i in 0..<arena.count { sum[i] += gradients[i] } }
                arena.zeroGradients(releasing: releasing)
            }
            if overlapping, k == parts.count - 1, let buckets {
                buckets.begin(accumulated: k > 0 ? accumulator : nil)
                model.gradientsReady = buckets.ready
            }
        }
        if let pipeline {
            // Gradient sync waits for the last backward of the schedule.
            loss = try pipeline.run(parts, model: model, recompute: s.recompute, pool: pool) { beforeBackward($0, overlapping: false) }
            try model.tensor?.check()
            if let sum { for i in 0..<arena.count { gradients[i] += sum[i] } }
            try reduceTiedEmbedding()
            loss = try parallelism.pipeline.sum(loss)  // the last stage's
            if let buckets {
                buckets.begin(accumulated: nil)
                try buckets.finish()
            }
        } else {
            for (k, part) in parts.enumerated() {
                beforeBackward(k, overlapping: true)
                let tape = Tape(pool: pool)
                let (l, named) = part.loss(tape, model)
                tape.backward(l, seed: 1 / part.divisor)
                model.gradientsReady = nil
                loss += l.values[0] / part.divisor
                for (name, value) in named { metrics[name, default: 0] += value / part.divisor }
            }
            try partition?.check()
            try model.tensor?.check()
            if let buckets {
                try buckets.finish()
            } else if let sum {
                for i in 0..<arena.count { gradients[i] += sum[i] }
            }
        }
        if data.size > 1 {
            let names = metrics.keys.sorted()
            var values = [loss] + names.map { metrics[$0]! }
            try data.allReduce(&values, count: values.count, .sum)
            loss = values[0]
            for (name, value) in zip(names, values.dropFirst()) { metrics[name] = value }
        }
        if parallelism.reduceNormGradients && !replicatedNorms.isEmpty { try reduceNormGradients() }
        // Every parameter counted once: a norm on tensor rank 0, a tied embedding on the first stage.
        let tensorRank = parallelism.tensor.rank, firstStage = model.layout.isFirstStage
        let norm = try arena.clipGradients(maximum: s.gradientClip, in: shard, counted: { [slices = model.slices] i in
            slices.isEmpty || (tensorRank == 0 || slices[i].slice.axis != nil) && (firstStage || slices[i].tensor.role != .embedding)
        }) { squares in
            var total = squares
            if parallelism.tensor.size > 1 { try parallelism.tensor.allReduce(&total, count: 1, .sum) }
            if parallelism.pipeline.size > 1 { try parallelism.pipeline.allReduce(&total, count: 1, .sum) }
            if shard != nil { try data.allReduce(&total, count: 1, .sum) }
            return total
        }
        let lr = s.schedule(step)
        optimizer.update(learningRate: lr, pool: pool)
        if let shard, data.size > 1, partition == nil {
            // Every rank updated its shard: gather the whole model back on every rank.
            try data.allGather(arena.values.pointer + shard.lowerBound, into: arena.values.pointer, counts: shards.map(\.count))
        }
        step += 1
        stepsRun += 1
        wireBytes += data.traffic.wireBytes(size: data.size) - wireBefore
        tensorWireBytes += parallelism.tensor.traffic.wireBytes(size: parallelism.tensor.size) - tensorBefore
        pipelineSentBytes += Double(parallelism.pipeline.traffic.sent - pipelineBefore)
        let record = StepRecord(step: step, loss: loss, learningRate: lr, gradientNorm: norm, metrics: metrics)
        history.append(record)
        return record
    }

    /// With tied embeddings over several stages: the first stage's embedding (the input) and the
    /// last stage's copy (the output) receive their gradients apart; each sends its own to the
    /// other and adds what it receives, so both hold the same sum and stay the same weights.
    private func reduceTiedEmbedding() throws {
        guard let pipeline, model.configuration.tieWordEmbeddings, model.layout.isFirstStage || model.layout.isLastStage,
              let i = model.slices.firstIndex(where: { $0.tensor.role == .embedding }) else { return }
        let range = model.arena.range(of: i), g = model.arena.gradients.pointer + range.lowerBound
        let other = FloatBuffer(uninitializedCount: range.count), peer = model.layout.isFirstStage ? pipeline.stages - 1 : 0
        if model.layout.isFirstStage {
            try parallelism.pipeline.send(g, count: range.count, to: peer, tag: 3_000_000)
            try parallelism.pipeline.receive(other.pointer, count: range.count, from: peer, tag: 3_000_000)
        } else {
            try parallelism.pipeline.receive(other.pointer, count: range.count, from: peer, tag: 3_000_000)
            try parallelism.pipeline.send(g, count: range.count, to: peer, tag: 3_000_000)
        }
        for j in 0..<range.count { g[j] += other.pointer[j] }
    }

    /// The bytes this stage sends its neighbours per step in theory: for every micro-batch, its
    /// output activations to the next stage and the gradient of its input to the previous one
    /// (R·C values each for R tokens of C; a tensor-parallel-th of that under sequence
    /// parallelism); with tied embeddings, the first and last stage's embedding gradients.
    public var pipelineSentTheory: Double {
        guard pipeline != nil else { return 0 }
        let layout = model.layout, C = model.configuration.hiddenSize
        var tokens = tokensPerReplica
        if parallelism.sequenceParallel { tokens = tokens / parallelism.tensor.size + (parallelism.tensor.rank < tokens % parallelism.tensor.size ? 1 : 0) }
        let neighbours = (layout.isFirstStage ? 0 : 1) + (layout.isLastStage ? 0 : 1)
        var values = neighbours * tokens * C
        if model.configuration.tieWordEmbeddings && (layout.isFirstStage || layout.isLastStage),
           let i = model.slices.firstIndex(where: { $0.tensor.role == .embedding }) { values += model.arena.range(of: i).count }
        return Double(4 * values)
    }

    /// The last step's 1F1B schedule on every stage, as lines to print, and as a Chrome trace
    /// (chrome://tracing, Perfetto: one row per stage); a collective of the pipeline group.
    public func pipelineReport() throws -> (lines: [String], chromeTrace: Data)? {
        guard let pipeline else { return nil }
        let traces = try pipeline.gatherTraces(), P = pipeline.stages, M = traces[0].events.count / 2
        var lines: [String] = [], events: [[String: Any]] = []
        for (r, t) in traces.enumerated() {
            let order = t.events.map { ($0.backward ? "B" : "F") + String($0.micro) }.joined(separator: " ")
            let busy = t.events.reduce(0) { $0 + $1.end - $1.start }
            lines.append(String(format: "stage %d: %@; at most %d of %d micro-batches in flight (bound min(P−r, M) = %d); busy %.3f of %.3f s, idle %.1f%%",
                                r, order, t.mostInFlight, M, min(P - r, M), busy, t.elapsed, 100 * (1 - busy / max(t.elapsed, 1e-9))))
            for e in t.events {
                events.append(["name": (e.backward ? "backward " : "forward ") + String(e.micro), "ph": "X", "pid": 0, "tid": r,
                               "ts": e.start * 1e6, "dur": (e.end - e.start) * 1e6])
            }
        }
        let idle = traces.map { t in 1 - t.events.reduce(0) { $0 + $1.end - $1.start } / max(t.elapsed, 1e-9) }.reduce(0, +) / Double(P)
        lines.append(String(format: "pipeline bubble: %.1f%% of the step idle on average over the stages; 1F1B with equal stages: (P−1)/(M+P−1) = %.1f%%",
                            100 * idle, 100 * Pipeline.bubble(stages: P, microBatches: M)))
        return (lines, try JSONSerialization.data(withJSONObject: ["traceEvents": events], options: [.sortedKeys]))
    }

    /// Bytes this stage sent its neighbours in the steps of this process.
    public private(set) var pipelineSentBytes = 0.0

    /// Sums the gradients of the replicated norms over the tensor group (their parts in this
    /// rank's shard under ZeRO), one all-reduce for all of them.
    private func reduceNormGradients() throws {
        let own = shard ?? 0..<model.arena.count
        let ranges = replicatedNorms.map { model.arena.range(of: $0).clamped(to: own) }.filter { !$0.isEmpty }
        var packed = [Float]()
        let g = model.arena.gradients.pointer
        for r in ranges { packed += UnsafeBufferPointer(start: g + r.lowerBound, count: r.count) }
        try parallelism.tensor.allReduce(&packed, count: packed.count, .sum)
        var k = 0
        for r in ranges {
            for j in r { g[j] = packed[k]; k += 1 }
        }
    }

    /// The objective's held-out loss (for pretraining: the mean loss over `evalWindows` windows
    /// spread evenly over the validation split).
    public func evaluate() throws -> Float {
        if let pipeline {
            guard let objective = objective as? NextTokenObjective else { throw TrainingError("this objective cannot evaluate in a pipeline") }
            let loss = try objective.validationLoss(settings: settings) { try pipeline.evaluate($0, model: model, pool: pool) }
            try model.tensor?.check()
            return try parallelism.pipeline.sum(loss)
        }
        let loss = try objective.validationLoss(model: model, settings: settings, pool: pool)
        try partition?.check()
        try model.tensor?.check()
        return loss
    }

    /// Notes the validation loss, and the objective's other validation metrics (`val_` + name),
    /// in the last history record.
    public func recordValidation(_ loss: Float) {
        guard !history.isEmpty else { return }
        history[history.count - 1].validationLoss = loss
        for (name, value) in objective.validationMetrics { history[history.count - 1].metrics["val_" + name] = value }
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
        if !model.layout.isWhole { return try writeAssembledCheckpoint(into: directory) }
        try withWholeModel {
            guard parallelism.isLeader else { return }
            try model.save(to: directory)
            try copyTokenizerFiles(into: directory)
            try writeState(into: directory)
        }
        let range = optimizer.range, ranks = parallelism.data.size
        if shard != nil && ranks > 1 {
            // Each rank writes the moments of its shard of the flat parameters.
            let tensors = [("exp_avg", optimizer.flatMoments), ("exp_avg_sq", optimizer.flatSquares)].map { name, buffer in
                SafetensorsWriter.Tensor(name: name, shape: [range.count], data: UnsafeBufferPointer(start: buffer.pointer, count: range.count))
            }
            let metadata = ["step": String(optimizer.step), "start": String(range.lowerBound), "end": String(range.upperBound), "total": String(model.arena.count)]
            try SafetensorsWriter.write(tensors, metadata: metadata, to: directory + "/" + Self.shardFile(parallelism.data.rank, of: ranks))
        } else if parallelism.isLeader {
            var tensors: [SafetensorsWriter.Tensor] = []
            for (i, p) in model.parameters.enumerated() {
                let offset = model.arena.offsets[i]
                tensors.append(.init(name: "exp_avg." + p.name, shape: p.shape, data: UnsafeBufferPointer(start: optimizer.flatMoments.pointer + offset, count: p.count)))
                tensors.append(.init(name: "exp_avg_sq." + p.name, shape: p.shape, data: UnsafeBufferPointer(start: optimizer.flatSquares.pointer + offset, count: p.count)))
            }
            try SafetensorsWriter.write(tensors, metadata: ["step": String(optimizer.step)], to: directory + "/optimizer.safetensors")
        }
    }

    private func copyTokenizerFiles(into directory: String) throws {
        for (name, data) in tokenizer { try writeFile(data, to: directory + "/" + name) }
    }

    /// trainer_state.json and the tokenizer (the leader's part of every checkpoint besides the tensors).
    private func writeState(into directory: String) throws {
        let state = State(step: step, samplerState: objective.checkpointState, settings: settings, history: history)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFile(encoder.encode(state), to: directory + "/trainer_state.json")
    }

    /// A checkpoint of a model split by tensor or pipeline parallelism, in the same files as one
    /// process writes (so that any layout resumes it): the first data-parallel replica's ranks
    /// send their parameters and whole AdamW moments (gathered over the data group under ZeRO) to
    /// rank 0, which puts every slice in its place and writes the whole model and optimizer.
    private func writeAssembledCheckpoint(into directory: String) throws {
        let arena = model.arena, count = arena.count, data = parallelism.data
        var moments = [optimizer.flatMoments, optimizer.flatSquares]
        if let shard, data.size > 1 {
            moments = try moments.map { part in
                let whole = FloatBuffer(uninitializedCount: count)
                (whole.pointer + shard.lowerBound).update(from: part.pointer, count: shard.count)
                try data.allGather(whole.pointer + shard.lowerBound, into: whole.pointer, counts: shards.map(\.count))
                return whole
            }
        }
        guard data.rank == 0 else { return }
        let world = parallelism.world, c = model.configuration
        let T = parallelism.tensor.size, P = parallelism.pipeline.size, D = data.size
        let sources = [arena.values] + moments
        guard parallelism.isLeader else {
            for (k, buffer) in sources.enumerated() { try world.send(buffer.pointer, count: count, to: 0, tag: 100 + k) }
            return
        }
        let all = LlamaTensor.all(c)
        let whole = (0..<3).map { _ in all.map { FloatBuffer(uninitializedCount: $0.shape.reduce(1, *)) } }
        let index = Dictionary(uniqueKeysWithValues: all.enumerated().map { ($1, $0) })
        for p in 0..<P {
            for t in 0..<T {
                let layout = ModelLayout(tensorRank: t, tensorSize: T, stage: p, stages: P)
                let held = all.compactMap { tensor in layout.slice(tensor, shape: tensor.shape, c).map { (tensor, $0) } }
                let total = held.reduce(0) { $0 + $1.1.localShape.reduce(1, *) }
                let rank = p * T * D + t
                let received = try sources.enumerated().map { k, own -> FloatBuffer in
                    if rank == 0 { return own }
                    let buffer = FloatBuffer(uninitializedCount: total)
                    try world.receive(buffer.pointer, count: total, from: rank, tag: 100 + k)
                    return buffer
                }
                var offset = 0
                for (tensor, slice) in held {
                    let i = index[tensor]!
                    for k in 0..<3 { ModelLayout.place(received[k].pointer + offset, shape: tensor.shape, slice, into: whole[k][i].pointer) }
                    offset += slice.localShape.reduce(1, *)
                }
            }
        }
        func tensors(_ k: Int) -> [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] {
            zip(all, whole[k]).map { ($0.name(.huggingFace), $0.shape, UnsafeBufferPointer(start: UnsafePointer($1.pointer), count: $1.count)) }
        }
        // The pointers below are into `whole`, which must outlive every write.
        defer { withExtendedLifetime(whole) {} }
        try TrainableLlama.save(tensors(0), configuration: c, to: directory)
        try copyTokenizerFiles(into: directory)
        try writeState(into: directory)
        let (first, second) = (tensors(1), tensors(2))
        let optimizerTensors = zip(first, second).flatMap { m, v in
            [SafetensorsWriter.Tensor(name: "exp_avg." + m.name, shape: m.shape, data: m.values),
             SafetensorsWriter.Tensor(name: "exp_avg_sq." + v.name, shape: v.shape, data: v.values)]
        }
        try SafetensorsWriter.write(optimizerTensors, metadata: ["step": String(optimizer.step)], to: directory + "/optimizer.safetensors")
    }

    /// The file of rank `rank`'s optimizer shard in a checkpoint saved by `ranks` ZeRO ranks.
    static func shardFile(_ rank: Int, of ranks: Int) -> String { String(format: "optimizer-%05d-of-%05d.safetensors", rank, ranks) }

    /// A trainer that continues exactly where `checkpoint` stopped.
    public static func resume(from checkpoint: String, steps: Int? = nil, parallelism: Parallelism = .single, pool: ThreadPool = .shared) throws -> Trainer {
        let statePath = checkpoint + "/trainer_state.json"
        guard let data = FileManager.default.contents(atPath: statePath) else { throw TrainingError("\(checkpoint): no trainer_state.json; not a checkpoint") }
        let state: State
        do { state = try JSONDecoder().decode(State.self, from: data) } catch { throw TrainingError("\(statePath): not a valid trainer state") }
        var settings = state.settings
        if let steps { settings.steps = steps }
        let model: TrainableLlama, prompting: () throws -> Prompting
        if FileManager.default.fileExists(atPath: checkpoint + "/adapter_config.json") {
            let lora = try LoRAConfiguration.load(path: checkpoint + "/adapter_config.json")
            let adapted = try TrainableLlama.withLoRA(base: lora.baseModel, lora: lora, adapter: checkpoint)
            model = adapted.model
            prompting = adapted.base.prompting
        } else {
            model = try TrainableLlama(directory: checkpoint, layout: parallelism.layout)
            prompting = { try LoadedModel.prompting(directory: checkpoint) }
        }
        let objective: any TrainingObjective
        if let fineTuning = settings.fineTuning, let ppo = fineTuning.ppo {
            objective = try PPOObjective(settings: settings, fineTuning: fineTuning, ppo: ppo, policy: model, prompting: prompting(),
                                         tokenizerFiles: SupervisedObjective.tokenizerFiles(in: checkpoint), state: state.samplerState)
        } else if let fineTuning = settings.fineTuning, let grpo = fineTuning.grpo {
            objective = try GRPOObjective(settings: settings, fineTuning: fineTuning, grpo: grpo, policy: model, prompting: prompting(),
                                          tokenizerFiles: SupervisedObjective.tokenizerFiles(in: checkpoint),
                                          reference: grpo.reference.map { try TrainableLlama(directory: $0) }, state: state.samplerState)
        } else if let fineTuning = settings.fineTuning, let preference = fineTuning.preference {
            objective = try PreferenceObjective(settings: settings, fineTuning: fineTuning, preference: preference, prompting: prompting(),
                                                tokenizerFiles: SupervisedObjective.tokenizerFiles(in: checkpoint), configuration: model.configuration,
                                                reference: preference.reference.map { try TrainableLlama(directory: $0) }, state: state.samplerState)
        } else if let fineTuning = settings.fineTuning {
            objective = try SupervisedObjective(settings: settings, fineTuning: fineTuning, prompting: prompting(),
                                                tokenizerFiles: SupervisedObjective.tokenizerFiles(in: checkpoint),
                                                configuration: model.configuration, state: state.samplerState)
        } else {
            guard let samplerState = UInt64(state.samplerState) else { throw TrainingError("\(statePath): bad sampler_state") }
            objective = try NextTokenObjective(dataset: TokenDataset(directory: settings.data), configuration: model.configuration,
                                               settings: settings, samplerSeed: samplerState)
        }
        let trainer = try Trainer(model: model, objective: objective, settings: settings, parallelism: parallelism, pool: pool)
        let optimizerStep = try loadMoments(from: checkpoint, into: trainer)
        trainer.optimizer.step = optimizerStep
        trainer.step = state.step
        trainer.history = state.history
        return trainer
    }

    /// Reads this trainer's part of the AdamW moments from a checkpoint, whichever layout saved
    /// them (one optimizer.safetensors, or one shard file per ZeRO rank) and whichever this trainer
    /// has: each of its parameters is cut from the whole tensor, then its range kept; returns the
    /// optimizer step.
    static func loadMoments(from checkpoint: String, into trainer: Trainer) throws -> Int {
        let model = trainer.model, arena = model.arena, range = trainer.optimizer.range
        if model.lora != nil || model.gpt2 != nil { return try loadMomentsByName(from: checkpoint, into: trainer) }
        let source = try MomentFiles(checkpoint, configuration: model.configuration)
        for (prefix, target) in [("exp_avg", trainer.optimizer.flatMoments), ("exp_avg_sq", trainer.optimizer.flatSquares)] {
            for (i, held) in model.slices.enumerated() {
                let part = arena.range(of: i), wanted = part.clamped(to: range)
                guard !wanted.isEmpty else { continue }
                let full = try source.values(prefix, held.tensor)
                let local = FloatBuffer(uninitializedCount: part.count)
                full.withUnsafeBufferPointer { ModelLayout.cut($0.baseAddress!, shape: held.tensor.shape, held.slice, into: local.pointer) }
                (target.pointer + (wanted.lowerBound - range.lowerBound)).update(from: local.pointer + (wanted.lowerBound - part.lowerBound), count: wanted.count)
            }
        }
        return source.step
    }
}

extension Trainer {
    /// An adapter's or a GPT-2 model's AdamW moments (one process's optimizer.safetensors, tensor
    /// by tensor, by name).
    static func loadMomentsByName(from checkpoint: String, into trainer: Trainer) throws -> Int {
        let path = checkpoint + "/optimizer.safetensors"
        let file = try SafetensorsFile(path: path)
        guard let step = file.metadata["step"].flatMap(Int.init) else { throw TrainingError("\(path): no step in its metadata") }
        for (prefix, target) in [("exp_avg", trainer.optimizer.flatMoments), ("exp_avg_sq", trainer.optimizer.flatSquares)] {
            for (i, p) in trainer.model.parameters.enumerated() {
                guard let entry = file.entries[prefix + "." + p.name], entry.dtype == .f32, entry.shape == p.shape else {
                    throw TrainingError("\(path): \(prefix).\(p.name) is missing or has the wrong shape")
                }
                (target.pointer + trainer.model.arena.offsets[i]).update(from: file.data(of: entry).assumingMemoryBound(to: Float.self), count: p.count)
            }
        }
        return step
    }
}

/// The AdamW moments of a checkpoint, whole tensor by whole tensor: from optimizer.safetensors
/// (one tensor per parameter and moment), or from the shard files of ZeRO ranks, each a flat
/// range of the whole model's parameters in Hugging Face's order.
struct MomentFiles {
    let checkpoint: String
    let configuration: LlamaConfiguration
    let whole: SafetensorsFile?
    /// The shard files and the flat range each holds.
    let shards: [(file: SafetensorsFile, path: String, range: Range<Int>)]
    let step: Int

    init(_ checkpoint: String, configuration c: LlamaConfiguration) throws {
        self.checkpoint = checkpoint
        configuration = c
        let wholePath = checkpoint + "/optimizer.safetensors"
        if FileManager.default.fileExists(atPath: wholePath) {
            let file = try SafetensorsFile(path: wholePath)
            guard let step = file.metadata["step"].flatMap(Int.init) else { throw TrainingError("\(wholePath): no step in its metadata") }
            whole = file
            shards = []
            self.step = step
            return
        }
        whole = nil
        let total = LlamaTensor.all(c).reduce(0) { $0 + $1.shape.reduce(1, *) }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: checkpoint)) ?? []).filter { $0.hasPrefix("optimizer-") }.sorted()
        guard let first = names.first, let ranks = Int(first.dropFirst("optimizer-00000-of-".count).prefix(5)) else {
            throw TrainingError("\(checkpoint): no optimizer.safetensors and no optimizer shards")
        }
        guard names == (0..<ranks).map({ Trainer.shardFile($0, of: ranks) }) else {
            throw TrainingError("\(checkpoint): the optimizer shards are incomplete (\(names.count) files for \(ranks) ranks)")
        }
        var covered = 0, step: Int?, shards: [(SafetensorsFile, String, Range<Int>)] = []
        for name in names {
            let path = checkpoint + "/" + name
            let file = try SafetensorsFile(path: path)
            let m = file.metadata
            guard let start = m["start"].flatMap(Int.init), let end = m["end"].flatMap(Int.init), m["total"] == String(total),
                  start == covered, end >= start, let s = m["step"].flatMap(Int.init), step == nil || step == s else {
                throw TrainingError("\(path): its shard does not continue the shards before it for a model of \(total) parameters")
            }
            for moment in ["exp_avg", "exp_avg_sq"] {
                guard let entry = file.entries[moment], entry.dtype == .f32, entry.shape == [end - start] else {
                    throw TrainingError("\(path): \(moment) is missing or has the wrong shape")
                }
            }
            shards.append((file, path, start..<end))
            covered = end
            step = s
        }
        guard covered == total, let step else { throw TrainingError("\(checkpoint): the optimizer shards cover \(covered) of \(total) parameters") }
        self.shards = shards
        self.step = step
    }

    /// The moment `prefix` (exp_avg or exp_avg_sq) of the whole tensor `tensor`.
    func values(_ prefix: String, _ tensor: LlamaTensor) throws -> [Float] {
        let name = tensor.name(.huggingFace), count = tensor.shape.reduce(1, *)
        var out = [Float](repeating: 0, count: count)
        if let whole {
            guard let entry = whole.entries[prefix + "." + name], entry.dtype == .f32, entry.shape == tensor.shape else {
                throw TrainingError("\(checkpoint)/optimizer.safetensors: \(prefix).\(name) is missing or has the wrong shape")
            }
            out.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: whole.data(of: entry), count: 4 * count)) }
            return out
        }
        let all = LlamaTensor.all(configuration)
        let start = all.prefix(while: { $0 != tensor }).reduce(0) { $0 + $1.shape.reduce(1, *) }, wanted = start..<start + count
        for shard in shards {
            let part = wanted.clamped(to: shard.range)
            guard !part.isEmpty, let entry = shard.file.entries[prefix] else { continue }
            let data = shard.file.data(of: entry) + 4 * (part.lowerBound - shard.range.lowerBound)
            out.withUnsafeMutableBytes { ($0.baseAddress! + 4 * (part.lowerBound - start)).copyMemory(from: data, byteCount: 4 * part.count) }
        }
        return out
    }
}
