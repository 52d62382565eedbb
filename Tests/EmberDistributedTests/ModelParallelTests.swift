import Foundation
import Testing

/// Tensor and pipeline parallelism under mpirun against the single process at the same global
/// batch (two accumulated micro-batches), on the same small LLaMA with grouped-query attention and
/// a 777-token vocabulary (padded to 778 at T=2).
///
/// Where a layout changes only which rank computes what, the bits are the same. Tensor
/// parallelism also changes the order of sums: a row-parallel product adds two partial sums of
/// K/2 terms each instead of K terms in a row, so each output differs by rounding (a few ulps,
/// relative ~1e-7); AdamW's normalised steps carry such differences into the weights at the same
/// relative size, and over 20 steps they stay near 1e-7, two orders under the 1e-5 bound. A real
/// mistake (a gradient left unsummed) moves them by far more, as the negative control shows.
@Suite(.serialized) struct ModelParallelTests {
    static let tolerance = 1e-5

    /// The largest relative loss difference over the steps and the relative Frobenius difference
    /// of the final weights, of `run` against `reference`.
    static func compare(_ folder: String, _ run: String, _ reference: String = "single") throws -> (loss: Double, weights: Double) {
        let a = try Runs.losses(folder + "/" + run), b = try Runs.losses(folder + "/" + reference)
        try #require(a.count == b.count, "\(run): \(a.count) steps logged, \(b.count) expected")
        let loss = zip(a, b).map { abs($0[0] - $1[0]) / $1[0] }.max()!
        return (loss, try Runs.relativeDifference(folder + "/" + run, folder + "/" + reference))
    }

    /// The tensor-parallel group's bytes on the wire per step, measured and in theory.
    static func tensorWire(_ log: String) -> (measured: Double, theory: Double)? {
        guard let m = log.firstMatch(of: /tensor-parallel group ([0-9.]+) MB on the wire per step; tensor theory ([0-9.]+) MB/) else { return nil }
        return (Double(m.1)!, Double(m.2)!)
    }

    /// TP=2 (column-parallel Q/K/V and gate/up, row-parallel O and down, vocabulary-parallel
    /// embedding and cross-entropy over a padded vocabulary), with and without sequence
    /// parallelism, and DP2×TP2 on four ranks: within the bound of the single process; the
    /// tensor group's traffic equals its theory. Without the all-reduce of the sequence-parallel
    /// norm gradients (the negative control) the same comparison fails.
    @Test(.enabled(if: Runs.available, Runs.reason))
    func tensorParallelMatchesTheSingleProcess() throws {
        let folder = NSTemporaryDirectory() + "ember-tp-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        _ = try Runs.single(try Runs.arguments(output: folder + "/single"))
        let runs: [(name: String, ranks: Int, flags: [String])] = [
            ("tp2", 2, ["--tensor-parallel", "2"]),
            ("tp2-sp", 2, ["--tensor-parallel", "2", "--sequence-parallel"]),
            ("dp2-tp2", 4, ["--tensor-parallel", "2"]),
            ("dp2-tp2-zero1", 4, ["--tensor-parallel", "2", "--zero-stage", "1"]),
        ]
        for run in runs {
            let log = try Runs.parallel(run.ranks, try Runs.arguments(output: folder + "/" + run.name) + run.flags)
            let wire = try #require(Self.tensorWire(log))
            let (loss, weights) = try Self.compare(folder, run.name)
            print("\(run.name): largest relative loss difference \(loss), relative Frobenius difference of the weights \(weights); tensor group \(wire.measured) MB/step on the wire (theory \(wire.theory))")
            #expect(loss <= Self.tolerance && weights <= Self.tolerance)
            #expect(abs(wire.measured - wire.theory) <= 0.001 * wire.theory)
        }
        _ = try Runs.parallel(2, try Runs.arguments(output: folder + "/tp2-sp-unreduced") + ["--tensor-parallel", "2", "--sequence-parallel",
                                                                                              "--drop-sequence-parallel-norm-reduction"])
        let control = try Self.compare(folder, "tp2-sp-unreduced")
        print("negative control, sequence parallel without the norm-gradient all-reduce: loss \(control.loss), weights \(control.weights)")
        #expect(control.loss > Self.tolerance || control.weights > Self.tolerance)
    }

    /// A layout the model cannot take is refused at once, naming the reason.
    @Test(.enabled(if: Runs.available, Runs.reason))
    func headsThatDoNotDivideAreRefused() throws {
        let folder = NSTemporaryDirectory() + "ember-tp-heads-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let (status, output) = try MPI.launch(4, [Runs.ember] + Runs.arguments(output: folder) + ["--tensor-parallel", "4", "--threads", "1"], seconds: 60)
        print(output.split(separator: "\n").filter { $0.contains("Error") }.first ?? "")
        #expect(status != 0)
        #expect(output.contains("4 heads and 2 key/value heads, and both must divide by 4"))
    }

    /// A ZeRO-3 checkpoint of two ranks resumes as TP=2, and a TP=2 checkpoint (assembled into the
    /// single process's files) resumes in one process: the next 10 steps match the uninterrupted run.
    @Test(.enabled(if: Runs.available, Runs.reason))
    func checkpointsMoveBetweenTensorAndDataLayouts() throws {
        let folder = NSTemporaryDirectory() + "ember-tp-resume-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        _ = try Runs.single(try Runs.arguments(output: folder + "/single"))
        _ = try Runs.parallel(2, try Runs.arguments(output: folder + "/zero3") + ["--zero-stage", "3"])
        _ = try Runs.parallel(2, try Runs.arguments(output: folder + "/tp2") + ["--tensor-parallel", "2"])
        _ = try Runs.parallel(2, ["pretrain", "--resume", folder + "/zero3/checkpoints/step-000010", "--output", folder + "/zero3-then-tp2",
                                  "--tensor-parallel", "2"])
        _ = try Runs.single(["pretrain", "--resume", folder + "/tp2/checkpoints/step-000010", "--output", folder + "/tp2-then-single"])
        for run in ["zero3-then-tp2", "tp2-then-single"] {
            let (loss, weights) = try Self.compare(folder, run)
            print("\(run): steps 11–20 largest relative loss difference \(loss), relative Frobenius difference of the weights \(weights)")
            #expect(loss <= Self.tolerance && weights <= Self.tolerance)
        }
    }
}
