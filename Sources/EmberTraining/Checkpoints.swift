import EmberFormats
import EmberModels
import EmberTensor
import Foundation

/// The checkpoints of a run in `output/checkpoints/step-NNNNNN/`, the newest named by `output/latest`.
///
/// A checkpoint is written into a hidden `.step-NNNNNN.partial` folder and renamed into place only
/// when every file is complete, then `latest` is replaced (write and rename). A run killed at any
/// moment therefore leaves the previous checkpoint and `latest` intact; a failed write (a full
/// disk) removes the partial folder and reports the error.
public struct CheckpointFolder: Sendable {
    public let output: String

    public init(output: String) { self.output = output }

    var checkpoints: String { output + "/checkpoints" }

    /// Saves `trainer` and returns the checkpoint's path; keeps the newest `keep` checkpoints.
    /// With several ranks every rank calls it: rank 0 writes the model and trainer state, and under
    /// ZeRO each rank writes its own shard of the optimizer's moments; the checkpoint is renamed
    /// into place only after every rank reports its files complete.
    @discardableResult
    public func save(_ trainer: Trainer, keep: Int) throws -> String {
        let files = FileManager.default
        let world = trainer.parallelism.world, leader = trainer.parallelism.isLeader
        let name = String(format: "step-%06d", trainer.step)
        let final = checkpoints + "/" + name, partial = checkpoints + "/." + name + ".partial"
        /// Every rank learns whether any failed; a failure anywhere leaves the previous checkpoint.
        func agree(_ attempt: () throws -> Void) throws {
            do {
                try world.everyRankSucceeds("writing it", attempt)
            } catch {
                if leader { try? files.removeItem(atPath: partial) }
                throw TrainingError("saving the checkpoint for step \(trainer.step) failed (\(error)); the previous checkpoint is intact")
            }
        }
        try agree {
            if leader {
                try? files.removeItem(atPath: partial)
                try files.createDirectory(atPath: partial, withIntermediateDirectories: true)
            }
        }
        try agree { try trainer.writeCheckpoint(into: partial) }
        try agree {
            guard leader else { return }
            if files.fileExists(atPath: final) { try files.removeItem(atPath: final) }
            guard rename(partial, final) == 0 else {
                throw TrainingError("cannot rename \(partial) to \(final): \(String(cString: strerror(errno)))")
            }
            try writeFile(Data(("checkpoints/" + name + "\n").utf8), to: output + "/latest")
            let all = ((try? files.contentsOfDirectory(atPath: checkpoints)) ?? []).filter { $0.hasPrefix("step-") }.sorted()
            for old in all.dropLast(keep) where old != name { try? files.removeItem(atPath: checkpoints + "/" + old) }
        }
        return final
    }

    /// Copies a checkpoint's model files (weights, config, tokenizer) into `output/model`, a folder
    /// that Hugging Face and `ember generate` load, or its adapter files into `output/adapter`, a
    /// folder that PEFT and `ember serve --lora-modules` load; replaced as a whole.
    public func publishModel(from checkpoint: String) throws -> String {
        let files = FileManager.default
        let adapter = files.fileExists(atPath: checkpoint + "/adapter_config.json")
        let target = output + (adapter ? "/adapter" : "/model"), partial = output + "/.model.partial"
        try? files.removeItem(atPath: partial)
        try files.createDirectory(atPath: partial, withIntermediateDirectories: true)
        do {
            for file in try files.contentsOfDirectory(atPath: checkpoint)
            where file == "model.safetensors" || file == "config.json" || file.hasPrefix("tokenizer") || file.hasPrefix("adapter_")
                || file == TrainableLlama.valueHeadFile {
                try files.copyItem(atPath: checkpoint + "/" + file, toPath: partial + "/" + file)
            }
        } catch {
            try? files.removeItem(atPath: partial)
            throw TrainingError("writing \(target) failed: \(error)")
        }
        try? files.removeItem(atPath: target)
        guard rename(partial, target) == 0 else { throw TrainingError("cannot rename \(partial) to \(target)") }
        return target
    }

    /// The run folder of `path` (a run folder, or `checkpoint`, one of its checkpoints, located
    /// from it): where a resumed run goes on writing.
    public static func run(of path: String, checkpoint: String) -> String {
        FileManager.default.fileExists(atPath: path + "/latest") ? path
            : URL(fileURLWithPath: checkpoint).deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// The checkpoint a path names: a run's output folder (its `latest`) or a checkpoint folder.
    public static func locate(_ path: String) throws -> String {
        let files = FileManager.default
        if files.fileExists(atPath: path + "/trainer_state.json") { return path }
        if let data = files.contents(atPath: path + "/latest"), let name = String(data: data, encoding: .utf8) {
            let checkpoint = path + "/" + name.trimmingCharacters(in: .whitespacesAndNewlines)
            guard files.fileExists(atPath: checkpoint + "/trainer_state.json") else {
                throw TrainingError("\(path)/latest names \(checkpoint), which is not a complete checkpoint")
            }
            return checkpoint
        }
        throw TrainingError("\(path) is neither a checkpoint (no trainer_state.json) nor a run folder (no latest)")
    }
}

/// The loss curve of a run as an SVG: training loss per step, validation loss as points.
public func lossCurveSVG(_ history: [StepRecord], title: String = "loss") -> String {
    curveSVG(title: title, training: history.map { ($0.step, Double($0.loss)) },
             validation: history.compactMap { r in r.validationLoss.map { (r.step, Double($0)) } })
}

/// A metric's curve over a run's steps (`StepRecord.metrics[metric]`, and `val_` + `validation`
/// at the validated steps as points).
public func metricCurveSVG(_ history: [StepRecord], metric: String, validation: String? = nil, title: String) -> String {
    curveSVG(title: title, training: history.compactMap { r in r.metrics[metric].map { (r.step, Double($0)) } },
             validation: validation.map { v in history.compactMap { r in r.metrics["val_" + v].map { (r.step, Double($0)) } } } ?? [])
}

/// Values per step as an SVG line, with validation values as points joined by a second line.
func curveSVG(title: String, training: [(step: Int, value: Double)], validation: [(step: Int, value: Double)]) -> String {
    let width = 720.0, height = 400.0, left = 60.0, right = 20.0, top = 30.0, bottom = 40.0
    let values = (training + validation).map(\.value)
    guard let lastStep = (training + validation).map(\.step).max(), let low = values.min(), let high = values.max() else {
        return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\"/>\n"
    }
    let span = max(high - low, 1e-6), steps = Double(max(lastStep, 1))
    func x(_ step: Int) -> Double { left + Double(step) / steps * (width - left - right) }
    func y(_ value: Double) -> Double { top + (high - value) / span * (height - top - bottom) }
    var svg = """
    <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
    <rect width="100%" height="100%" fill="white"/>
    <text x="\(left)" y="18">\(title)</text>
    <line x1="\(left)" y1="\(height - bottom)" x2="\(width - right)" y2="\(height - bottom)" stroke="black"/>
    <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(height - bottom)" stroke="black"/>

    """
    for k in 0...4 {
        let value = low + span * Double(k) / 4
        svg += String(format: "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", left - 6, y(value) + 4, value)
        let step = Int(steps * Double(k) / 4)
        svg += String(format: "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n", x(step), height - bottom + 16, step)
    }
    svg += String(format: "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step</text>\n", (left + width - right) / 2, height - 6)
    let points = training.map { String(format: "%.1f,%.1f", x($0.step), y($0.value)) }.joined(separator: " ")
    svg += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.2\" points=\"\(points)\"/>\n"
    for r in validation {
        svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", x(r.step), y(r.value))
    }
    if validation.count > 1 {
        let line = validation.map { String(format: "%.1f,%.1f", x($0.step), y($0.value)) }.joined(separator: " ")
        svg += "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"\(line)\"/>\n"
    }
    svg += String(format: "<text x=\"%.0f\" y=\"18\" fill=\"#1f77b4\">training</text>", width - 170)
    if !validation.isEmpty { svg += String(format: "<text x=\"%.0f\" y=\"18\" fill=\"#d62728\">validation</text>", width - 100) }
    return svg + "\n</svg>\n"
}
