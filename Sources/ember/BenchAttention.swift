import ArgumentParser
import EmberModels
import EmberTensor
import Foundation

struct BenchAttention: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-attention",
        abstract: "Time decode attention over a long paged KV cache, with and without Flash-Decoding.",
        discussion: """
        One query per head attends to CONTEXT cached keys laid out in 16-token blocks (the model's
        head counts and head size, random f16 keys and values). "unsplit" gives each head one job;
        "split" cuts the keys into partitions of --split-keys, runs each partition as a job and
        merges the partial softmax results by their log-sum-exp. Reports the median of the
        repetitions and the largest difference between the two outputs.
        """)

    @OptionGroup var options: ModelOptions

    @Option(help: "Context lengths to time, comma-separated.")
    var contexts = "4096,16384"

    @Option(help: "Keys per partition when splitting (a multiple of 64).")
    var splitKeys = 1024

    @Option(help: "Timed runs of each case.")
    var repetitions = 20

    func validate() throws {
        guard splitKeys > 0, splitKeys % 64 == 0 else { throw ValidationError("--split-keys must be a positive multiple of 64") }
        guard contexts.split(separator: ",").allSatisfy({ Int($0).map { $0 > 0 } ?? false }) else {
            throw ValidationError("--contexts takes positive integers separated by commas")
        }
    }

    func run() throws {
        let c = try options.load().model.configuration
        let H = c.headCount, kvHeads = c.kvHeadCount, D = c.headDim, blockSize = 16
        print("| context | unsplit ms | split ms | speed-up | max abs difference |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for context in contexts.split(separator: ",").compactMap({ Int($0) }) {
            var random = SplitMix64(seed: UInt64(context))
            let blocks = (context + blockSize - 1) / blockSize
            let kv = (0..<blocks * blockSize * kvHeads * D).map { _ in Float16(Float(random.nextUnit() * 2 - 1)) }
            let q = (0..<H * D).map { _ in Float(random.nextUnit() * 2 - 1) }
            let sequence = PagedSequence(rows: 0..<1, start: context - 1, blocks: (0..<blocks).map { Int32($0) })
            var outputs: [[Float]] = []
            var times: [Double] = []
            for split in [nil, splitKeys] as [Int?] {
                var out = [Float](repeating: 0, count: H * D)
                var samples: [Double] = []
                kv.withUnsafeBufferPointer { k in
                    for r in 0...repetitions {
                        let start = DispatchTime.now().uptimeNanoseconds
                        pagedAttentionForward(q: q, keys: k.baseAddress!, values: k.baseAddress!, out: &out, sequences: [sequence],
                                              blockSize: blockSize, heads: H, kvHeads: kvHeads, headDim: D, splitKeys: split)
                        if r > 0 { samples.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6) }
                    }
                }
                outputs.append(out)
                times.append(samples.sorted()[samples.count / 2])
            }
            let difference = zip(outputs[0], outputs[1]).map { abs($0 - $1) }.max() ?? 0
            print(String(format: "| %d | %.3f | %.3f | %.2f | %.1e |", context, times[0], times[1], times[0] / times[1], difference))
        }
    }
}
