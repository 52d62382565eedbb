import ArgumentParser
import EmberModels
import EmberTensor
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt-processing and generation speed the way llama-bench does.",
        discussion: """
        pp: one batch of --prompt-tokens random tokens from an empty cache.
        tg: --gen-tokens single-token steps from an empty cache, each feeding a random token.
        Each test runs once to warm up, then --repetitions times; the result is the mean of the
        per-run tokens/s, with its standard deviation.
        """)

    @OptionGroup var options: ModelOptions

    @Option(name: .customLong("prompt-tokens"), help: "Tokens in the prompt-processing test (0 skips it).")
    var promptTokens = 512

    @Option(name: .customLong("gen-tokens"), help: "Tokens in the generation test (0 skips it).")
    var genTokens = 128

    @Option(help: "Timed runs of each test.")
    var repetitions = 5

    @Flag(help: "Print {\"pp_tokens_per_s\": …, \"tg_tokens_per_s\": …} instead of a table.")
    var json = false

    func validate() throws {
        guard promptTokens >= 0, genTokens >= 0 else { throw ValidationError("token counts must not be negative") }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be at least 1") }
    }

    func run() throws {
        let loaded = try options.load()
        let model = loaded.model
        let V = model.configuration.vocabularySize
        guard promptTokens + genTokens <= model.configuration.maxPositionEmbeddings else {
            throw CommandError("the tests need \(promptTokens + genTokens) positions but the model's context is \(model.configuration.maxPositionEmbeddings)")
        }
        var random = SplitMix64(seed: 42)
        let cache = model.makeCache(capacity: max(promptTokens, genTokens, 1))

        func measure(_ tokens: Int, _ body: () throws -> Void) throws -> (mean: Double, deviation: Double) {
            try body()  // warm-up
            var rates: [Double] = []
            for _ in 0..<repetitions {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                rates.append(Double(tokens) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
            }
            let mean = rates.reduce(0, +) / Double(rates.count)
            let variance = rates.count > 1 ? rates.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(rates.count - 1) : 0
            return (mean, variance.squareRoot())
        }

        var pp: (mean: Double, deviation: Double)?
        var tg: (mean: Double, deviation: Double)?
        if promptTokens > 0 {
            let prompt = (0..<promptTokens).map { _ in Int(random.next() % UInt64(V)) }
            pp = try measure(promptTokens) {
                cache.reset()
                _ = try model.forward(prompt, cache: cache)
            }
        }
        if genTokens > 0 {
            tg = try measure(genTokens) {
                cache.reset()
                var token = Int(random.next() % UInt64(V))
                for _ in 0..<genTokens {
                    _ = try model.forward([token], cache: cache)
                    token = Int(random.next() % UInt64(V))
                }
            }
        }
        if json {
            var fields: [String] = []
            if let pp { fields.append(String(format: "\"pp_tokens_per_s\": %.2f", pp.mean)) }
            if let tg { fields.append(String(format: "\"tg_tokens_per_s\": %.2f", tg.mean)) }
            print("{" + fields.joined(separator: ", ") + "}")
        } else {
            print("| model | threads | test | tokens/s |")
            print("| --- | ---: | --- | ---: |")
            let name = (loaded.path as NSString).lastPathComponent
            if let pp { print(String(format: "| %@ | %d | pp%d | %.2f ± %.2f |", name, options.threads, promptTokens, pp.mean, pp.deviation)) }
            if let tg { print(String(format: "| %@ | %d | tg%d | %.2f ± %.2f |", name, options.threads, genTokens, tg.mean, tg.deviation)) }
        }
    }
}
