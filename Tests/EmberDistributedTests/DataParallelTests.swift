import Foundation
import Testing

/// `ember pretrain` under `mpirun -np 2` against the single process at the same global batch, on a
/// corpus made here: a 777-token tokenizer (a vocabulary that divides by neither 2 nor 4) learned
/// from the licenses text, which becomes the data folder.
struct PreparationError: Error, CustomStringConvertible { let description: String }

enum Runs {
    static let ember = MPI.products + "/ember"
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let available = MPI.mpirun != nil && FileManager.default.isExecutableFile(atPath: ember)
    static let reason: Comment = "needs Open MPI's mpirun (scripts/setup.sh installs openmpi-bin) and the ember executable beside the tests"

    static let prepared: Result<String, Error> = Result {
        let folder = NSTemporaryDirectory() + "ember-parallel-data-\(getpid())"
        let text = repository + "/Tests/Fixtures/text/licenses.txt"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        // Plain errors: a failed #require here would pass silently in the tests that see it later.
        for arguments in [["train-tokenizer", "--corpus", text, "--vocab-size", "777", "--special-token", "<|endoftext|>", "--output", folder + "/tokenizer.json"],
                          ["prepare-data", "--tokenizer", folder + "/tokenizer.json", "--input", text, "--output", folder + "/data", "--val-fraction", "0.1"]] {
            let (status, output) = try run([ember] + arguments)
            guard status == 0 else { throw PreparationError(description: "ember \(arguments.joined(separator: " ")) failed:\n\(output)") }
        }
        atexit { try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + "ember-parallel-data-\(getpid())") }
        return folder + "/data"
    }

    /// A small LLaMA with grouped-query attention (4 heads, 2 KV heads), 20 steps of 2 micro-batches.
    static func arguments(output: String, steps: Int = 20, microBatches: Int = 2) throws -> [String] {
        ["pretrain", "--preset", "tiny", "--data", try prepared.get(), "--steps", String(steps), "--grad-accum", String(microBatches), "--batch-size", "4",
         "--seq-len", "64", "--eval-every", "10", "--save-every", "10", "--keep", "2", "--output", output]
    }

    static func single(_ arguments: [String]) throws -> String {
        let threads = arguments[0] == "pretrain" ? ["--threads", "1"] : []
        let (status, output) = try run(["timeout", "-k", "5", "300", ember] + arguments + threads, environment: MPI.environment)
        try #require(status == 0, "ember \(arguments.joined(separator: " ")) failed:\n\(output)")
        return output
    }

    static func parallel(_ ranks: Int, _ arguments: [String]) throws -> String {
        let (status, output) = try MPI.launch(ranks, [ember] + arguments + ["--threads", "1"], seconds: 300)
        try #require(status == 0, "mpirun -np \(ranks) ember \(arguments.joined(separator: " ")) failed:\n\(output)")
        return output
    }

    /// The loss and gradient norm of every step.
    static func losses(_ run: String) throws -> [[Double]] {
        try String(contentsOfFile: run + "/log.jsonl", encoding: .utf8).split(separator: "\n").map { line in
            let record = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return [record["loss"] as! Double, record["grad_norm"] as! Double]
        }
    }

    static func weights(_ run: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: run + "/model/model.safetensors")) }

    /// Rank 0's bytes on the wire per step and the theory (2(N−1)/N·Ψ of 4-byte values, or ZeRO-3's
    /// gathers and reduce-scatter), as `ember pretrain` reports them at the end of a parallel run.
    static func wire(_ log: String) -> (measured: Double, theory: Double)? {
        guard let line = log.split(separator: "\n").first(where: { $0.contains("on the wire per step") }),
              let measured = line.firstMatch(of: /rank 0: ([0-9.]+) MB on the wire/), let theory = line.firstMatch(of: /theory ([0-9.]+) MB/) else { return nil }
        return (Double(measured.1)!, Double(theory.1)!)
    }

    /// Rank 0's model-state MiB as `ember pretrain` reports them: after the last step, the stage's
    /// theory, DDP's, and under ZeRO-3 the peak during a step.
    static func modelState(_ log: String) -> (after: Double, theory: Double, ddp: Double, peak: Double?)? {
        guard let line = log.split(separator: "\n").first(where: { $0.contains("model state") }),
              let m = line.firstMatch(of: /after the last step ([0-9.]+) MiB; ZeRO-[0-9] theory ([0-9.]+) MiB \(DDP ([0-9.]+) MiB\)/) else { return nil }
        return (Double(m.1)!, Double(m.2)!, Double(m.3)!, line.firstMatch(of: /peak during a step ([0-9.]+) MiB/).map { Double($0.1)! })
    }

    /// Peak resident memory of rank 0's process, MiB, from the final line.
    static func peakMemory(_ log: String) -> Double? {
        log.firstMatch(of: /peak memory ([0-9]+) MiB/).map { Double($0.1)! }
    }

    /// A checkpoint's AdamW first and second moments as two flat arrays in parameter order, from
    /// optimizer.safetensors (one tensor per parameter) or the ZeRO ranks' shard files.
    static func flatMoments(_ checkpoint: String) throws -> [[Float]] {
        func tensors(_ path: String) throws -> [(name: String, values: [Float])] {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            let size = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<8 + size)) as! [String: Any]
            let body = data.subdata(in: 8 + size..<data.count)
            return header.compactMap { name, value -> (String, Int, [Float])? in
                guard let offsets = (value as? [String: Any])?["data_offsets"] as? [Int] else { return nil }
                let values = body.subdata(in: offsets[0]..<offsets[1]).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                return (name, offsets[0], values)
            }.sorted { $0.1 < $1.1 }.map { ($0.0, $0.2) }
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: checkpoint).filter { $0.hasPrefix("optimizer") }.sorted()
        let all = try files.flatMap { try tensors(checkpoint + "/" + $0) }
        return ["exp_avg", "exp_avg_sq"].map { kind in
            all.filter { $0.name == kind || $0.name.hasPrefix(kind + ".") }.flatMap(\.values)
        }
    }

    /// ‖a − b‖ / ‖b‖ over every f32 value of two models' model.safetensors (written in the same layout).
    static func relativeDifference(_ a: String, _ b: String) throws -> Double {
        func values(_ run: String) throws -> [Float] {
            let data = try weights(run)
            let header = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            return data.dropFirst(8 + header).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        }
        let x = try values(a), y = try values(b)
        try #require(x.count == y.count)
        let difference = zip(x, y).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
        return (difference / y.reduce(0.0) { $0 + Double($1) * Double($1) }).squareRoot()
    }
}

@Suite(.serialized) struct DataParallelTests {
    /// Two ranks of one micro-batch each sum, in the all-reduce, exactly what one process sums when
    /// it accumulates the same two micro-batches: losses, gradient norms and weights are equal bit
    /// for bit, whether the buckets are reduced during the backward or after it.
    @Test(.enabled(if: Runs.available, Runs.reason))
    func twoRanksEqualTwoAccumulatedMicroBatches() throws {
        let folder = NSTemporaryDirectory() + "ember-ddp-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        _ = try Runs.single(try Runs.arguments(output: folder + "/single"))
        let log = try Runs.parallel(2, try Runs.arguments(output: folder + "/ddp"))
        _ = try Runs.parallel(2, try Runs.arguments(output: folder + "/ddp-small-buckets") + ["--bucket-mb", "0.05", "--no-overlap"])
        let single = try Runs.losses(folder + "/single")
        print("single process, 2 accumulated micro-batches: losses \(single.first![0]) → \(single.last![0])")
        print(log.split(separator: "\n").filter { $0.contains("data parallel") || $0.contains("exposed") }.joined(separator: "\n"))
        let wire = try #require(Runs.wire(log))
        #expect(abs(wire.measured - wire.theory) <= 0.001 * wire.theory)
        for run in ["ddp", "ddp-small-buckets"] {
            let losses = try Runs.losses(folder + "/" + run)
            let differing = zip(single, losses).filter { $0 != $1 }.count
            print("\(run): \(losses.count) steps, \(differing) with a different loss or gradient norm; weights \(try Runs.weights(folder + "/" + run) == Runs.weights(folder + "/single") ? "identical" : "DIFFERENT")")
            #expect(losses == single)
            #expect(try Runs.weights(folder + "/" + run) == Runs.weights(folder + "/single"))
        }
    }

    /// ZeRO stages 1, 2 and 3 at two ranks: each rank keeps and updates its half of the AdamW moments
    /// (stage 2 also receives only its half of the summed gradients, stage 3 holds only its half of
    /// the parameters and gathers each unit when it runs), then the halves of the
    /// parameters are gathered; AdamW works element by element, so the weights, every loss and the
    /// moments in the checkpoint (one shard file per rank) equal the single process's bit for bit. At three ranks
    /// (shards of uneven size, 3 micro-batches) stage 1 matches plain data parallelism at three
    /// within rounding.
    @Test(.enabled(if: Runs.available, Runs.reason))
    func zeroStagesEqualTheSingleProcess() throws {
        let folder = NSTemporaryDirectory() + "ember-zero-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        _ = try Runs.single(try Runs.arguments(output: folder + "/single"))
        let single = try Runs.losses(folder + "/single")
        let optimizer = { (run: String) in try Runs.flatMoments(folder + "/" + run + "/checkpoints/step-000020") }
        for stage in [1, 2, 3] {
            let log = try Runs.parallel(2, try Runs.arguments(output: folder + "/zero\(stage)") + ["--zero-stage", String(stage)])
            print(log.split(separator: "\n").filter { $0.contains("ZeRO") || $0.contains("wire") }.joined(separator: "\n"))
            // Reduce-scatter plus all-gather move what one all-reduce does (and a few bytes of loss);
            // ZeRO-3 gathers each unit twice instead of the parameters once, ≈ 3(N−1)/N·Ψ.
            let wire = try #require(Runs.wire(log))
            #expect(abs(wire.measured - wire.theory) <= 0.001 * wire.theory)
            let losses = try Runs.losses(folder + "/zero\(stage)")
            let same = try (losses == single, Runs.weights(folder + "/zero\(stage)") == Runs.weights(folder + "/single"), optimizer("zero\(stage)") == optimizer("single"))
            print("ZeRO-\(stage), 2 ranks: losses \(same.0 ? "equal" : "DIFFERENT"), weights \(same.1 ? "identical" : "DIFFERENT"), moments \(same.2 ? "identical" : "DIFFERENT")")
            #expect(same.0 && same.1 && same.2)
        }
        _ = try Runs.parallel(3, try Runs.arguments(output: folder + "/ddp3", microBatches: 3))
        _ = try Runs.parallel(3, try Runs.arguments(output: folder + "/zero1-3", microBatches: 3) + ["--zero-stage", "1"])
        // Three ranks sum in another order when they reduce-scatter than when they all-reduce, so
        // the two differ by rounding: each gradient by about an ulp, which AdamW's normalised steps
        // carry into the weights at the same relative size, step after step.
        let ddp3 = try Runs.losses(folder + "/ddp3"), zero3 = try Runs.losses(folder + "/zero1-3")
        let lossDifference = zip(ddp3, zero3).map { abs($0[0] - $1[0]) / $0[0] }.max()!
        let weights = try Runs.relativeDifference(folder + "/zero1-3", folder + "/ddp3")
        print("ZeRO-1 vs data parallel, 3 ranks (uneven shards): largest relative loss difference \(lossDifference), relative Frobenius difference of the weights \(weights)")
        #expect(lossDifference <= 1e-5)
        #expect(weights <= 1e-5)
    }

    /// Model-state bytes per rank at two ranks on the medium preset, measured as the resident pages
    /// of the parameters and gradients plus the moments, against fp32 AdamW's theory: DDP 16Ψ,
    /// ZeRO-1 8Ψ + 8Ψ/N, ZeRO-2 4Ψ + 12Ψ/N, ZeRO-3 16Ψ/N after a step, and during a step 16Ψ/N plus
    /// the units gathered and the gradients not yet reduced, at most 0.55× DDP.
    @Test(.enabled(if: Runs.available, Runs.reason))
    func modelStateMemoryMatchesTheory() throws {
        let folder = NSTemporaryDirectory() + "ember-zero-memory-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        var ddp = 0.0
        for stage in 0...3 {
            let log = try Runs.parallel(2, ["pretrain", "--preset", "medium", "--data", try Runs.prepared.get(), "--steps", "2", "--batch-size", "2",
                                            "--grad-accum", "2", "--seq-len", "64", "--eval-every", "0", "--save-every", "0", "--bucket-mb", "4",
                                            "--output", folder + "/zero\(stage)", "--zero-stage", String(stage)])
            let state = try #require(Runs.modelState(log))
            let rss = Runs.peakMemory(log) ?? .nan
            if stage == 0 { ddp = state.after }
            print(String(format: "ZeRO-%d, 2 ranks: model state %.1f MiB after a step (theory %.1f MiB, %.3f× DDP)%@; peak RSS %.0f MiB", stage, state.after, state.theory,
                         state.after / state.ddp, state.peak.map { String(format: ", %.1f MiB at its peak during a step (%.3f× DDP)", $0, $0 / state.ddp) } ?? "", rss))
            // Pages at the shard's and units' edges count whole: a few KiB.
            #expect(abs(state.after - state.theory) <= 0.002 * state.theory)
            if let peak = state.peak { #expect(peak <= 0.55 * ddp) }
        }
    }

    /// A checkpoint of the two-rank run (plain or ZeRO-2) resumes in one process, and one of a
    /// single process on two ranks (plain or ZeRO-1): the rest of the run is the uninterrupted one.
    @Test(.enabled(if: Runs.available, Runs.reason))
    func checkpointsResumeAtAnotherRankCount() throws {
        let folder = NSTemporaryDirectory() + "ember-ddp-resume-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        _ = try Runs.parallel(2, try Runs.arguments(output: folder + "/ddp"))
        _ = try Runs.single(try Runs.arguments(output: folder + "/single"))
        _ = try Runs.parallel(2, try Runs.arguments(output: folder + "/zero2") + ["--zero-stage", "2"])
        _ = try Runs.single(["pretrain", "--resume", folder + "/ddp/checkpoints/step-000010", "--output", folder + "/ddp-then-single"])
        _ = try Runs.parallel(2, ["pretrain", "--resume", folder + "/single/checkpoints/step-000010", "--output", folder + "/single-then-ddp"])
        _ = try Runs.single(["pretrain", "--resume", folder + "/zero2/checkpoints/step-000010", "--output", folder + "/zero2-then-single"])
        _ = try Runs.parallel(2, ["pretrain", "--resume", folder + "/single/checkpoints/step-000010", "--output", folder + "/single-then-zero1",
                                  "--zero-stage", "1"])
        _ = try Runs.parallel(2, try Runs.arguments(output: folder + "/zero3") + ["--zero-stage", "3"])
        _ = try Runs.single(["pretrain", "--resume", folder + "/zero3/checkpoints/step-000010", "--output", folder + "/zero3-then-single"])
        _ = try Runs.parallel(4, ["pretrain", "--resume", folder + "/zero3/checkpoints/step-000010", "--output", folder + "/zero3-then-4-ranks",
                                  "--zero-stage", "3"])
        let straight = try Runs.losses(folder + "/single")
        for run in ["ddp-then-single", "single-then-ddp", "zero2-then-single", "single-then-zero1", "zero3-then-single"] {
            let resumed = try Runs.losses(folder + "/" + run)
            print("\(run): steps 11–20 \(resumed == straight ? "equal" : "DIFFERENT") to the uninterrupted run")
            #expect(resumed == straight)
            #expect(try Runs.weights(folder + "/" + run) == Runs.weights(folder + "/single"))
        }
        // Four ranks of one 2-row micro-batch each sum the step's gradients in another order than
        // one process accumulating two 4-row micro-batches: equal within rounding.
        let four = try Runs.losses(folder + "/zero3-then-4-ranks")
        let lossDifference = zip(four, straight).map { abs($0[0] - $1[0]) / $1[0] }.max()!
        let weights = try Runs.relativeDifference(folder + "/zero3-then-4-ranks", folder + "/single")
        print("zero3-then-4-ranks (ZeRO-3): steps 11–20 largest relative loss difference \(lossDifference), relative Frobenius difference of the weights \(weights)")
        #expect(four.count == straight.count && lossDifference <= 1e-5 && weights <= 1e-5)
    }
}
