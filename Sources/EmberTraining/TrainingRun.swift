import EmberFormats
import Dispatch
import EmberDistributed
import EmberNN
import Foundation
import Synchronization

/// A whole training run around a `Trainer`, everything but the command line: the step loop,
/// evaluation and checkpoint cadence, the guard against a loss or gradient that stops being finite,
/// stopping cleanly on SIGINT/SIGTERM, `log.jsonl` (rewritten on resume to the steps the checkpoint
/// holds), and, at the end, the published `model/` folder and `loss.svg`. With several ranks, the
/// first one writes the log, checkpoints and model while every rank trains, and the ranks agree on
/// stopping and on whether a save succeeded, so that none waits for another forever.
public final class TrainingRun {
    public let trainer: Trainer
    public let folder: CheckpointFolder

    /// What each step reports to whoever shows progress.
    public struct Progress: Sendable {
        public let record: StepRecord
        public let tokensPerSecond: Double
        /// The validation loss, on steps that evaluate.
        public let validationLoss: Float?
        /// Seconds since the run (or the resumed part of it) started, and the steps done in that time.
        public let elapsed: Double
        public let stepsDone: Int
    }

    public enum Outcome: Sendable {
        /// All steps done; the final model's folder.
        case finished(model: String)
        /// Stopped on a signal after saving `checkpoint`.
        case stopped(step: Int, checkpoint: String)
    }

    public init(trainer: Trainer, folder: CheckpointFolder) {
        self.trainer = trainer
        self.folder = folder
    }

    public var logPath: String { folder.output + "/log.jsonl" }

    /// Trains to the last step. With `stopOnSignals`, the first SIGINT or SIGTERM saves a checkpoint
    /// after the current step and returns `.stopped` (a second one ends the process at once).
    public func run(stopOnSignals: Bool = true, progress: (Progress) -> Void = { _ in }) throws -> Outcome {
        let s = trainer.settings, output = folder.output
        let world = trainer.parallelism.world, leader = trainer.parallelism.isLeader
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var handle: FileHandle?
        if leader {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            var log = Data()
            for r in trainer.history { log += try encoder.encode(r) + Data("\n".utf8) }
            try writeFile(log, to: logPath)
            handle = FileHandle(forWritingAtPath: logPath)
            guard let handle else { throw TrainingError("cannot open \(logPath)") }
            try handle.seekToEnd()
        }
        defer { try? handle?.close() }
        let stop = stopOnSignals ? StopRequest() : nil
        let start = Date(), firstStep = trainer.step
        var lastCheckpoint: String?
        while trainer.step < s.steps {
            let began = Date()
            let record: StepRecord
            do { record = try trainer.trainStep() } catch let error as TrainingError {
                // Nothing of the failed step was applied: the last checkpoint is where to continue from.
                let saved = (try? CheckpointFolder.locate(output)).map { "; the last checkpoint is \($0)" } ?? ""
                throw TrainingError("step \(trainer.step + 1): \(error)\(saved)")
            }
            guard record.loss.isFinite, record.gradientNorm.isFinite else {
                let saved = (try? CheckpointFolder.locate(output)).map { "; the last checkpoint is \($0)" } ?? ""
                let what = record.loss.isNaN || record.gradientNorm.isNaN ? "not a number" : "infinite"
                throw TrainingError("the loss or gradient became \(what) at step \(record.step) (try a lower --lr or --grad-clip)\(saved)")
            }
            let speed = Double(trainer.tokensPerStep) / Date().timeIntervalSince(began)
            trainer.recordSpeed(speed)
            var validation: Float?
            if (s.evalEvery > 0 && record.step % s.evalEvery == 0) || record.step == s.steps {
                validation = try trainer.evaluate()
                trainer.recordValidation(validation!)
            }
            try handle?.write(contentsOf: encoder.encode(trainer.history.last!) + Data("\n".utf8))
            if leader {
                progress(Progress(record: record, tokensPerSecond: speed, validationLoss: validation,
                                  elapsed: Date().timeIntervalSince(start), stepsDone: trainer.step - firstStep))
            }
            // A signal reaches the ranks at different moments: they stop after the same step.
            var stopping = stop?.requested ?? false
            if world.size > 1 { stopping = try world.sum(stopping ? 1 : 0 as Int64) > 0 }
            if (s.saveEvery > 0 && trainer.step % s.saveEvery == 0) || trainer.step == s.steps || stopping {
                lastCheckpoint = try folder.save(trainer, keep: s.keepCheckpoints)
            }
            if stopping && trainer.step < s.steps { return .stopped(step: trainer.step, checkpoint: lastCheckpoint ?? output) }
        }
        var model = output + "/model"
        try world.everyRankSucceeds("publishing the model") {
            if leader { model = try folder.publishModel(from: lastCheckpoint ?? CheckpointFolder.locate(output)) }
        }
        if leader {
            let name = (output as NSString).lastPathComponent
            try writeFile(Data(lossCurveSVG(trainer.history, title: "loss, \(name)").utf8), to: output + "/loss.svg")
            for c in trainer.objective.curves {
                try writeFile(Data(metricCurveSVG(trainer.history, metric: c.metric, validation: c.validation, title: "\(c.title), \(name)").utf8),
                              to: output + "/" + c.file)
            }
        }
        return .finished(model: model)
    }
}

/// SIGINT and SIGTERM during training: the first asks the loop to save a checkpoint after the
/// current step and stop; a second one ends the process at once (checkpoints are atomic anyway).
final class StopRequest: @unchecked Sendable {
    private let flag = Atomic<Bool>(false)
    private var sources: [DispatchSourceSignal] = []

    init() {
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [unowned self] in
                if self.flag.exchange(true, ordering: .sequentiallyConsistent) { exit(130) }
                FileHandle.standardError.write(Data("\nstopping after this step and saving a checkpoint (again to quit at once)\n".utf8))
            }
            source.resume()
            sources.append(source)
        }
    }

    deinit {
        sources.forEach { $0.cancel() }
        for number in [SIGINT, SIGTERM] { signal(number, SIG_DFL) }
    }

    var requested: Bool { flag.load(ordering: .sequentiallyConsistent) }
}
