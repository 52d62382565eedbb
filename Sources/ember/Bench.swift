import ArgumentParser
import EmberModels
import EmberTensor
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt-processing and generation speed the way llama-bench does.",
        discussion: """
        pp: one batch of --prompt-tokens random tokens after --depth tokens of context.
        tg: --gen-tokens single-token steps after --depth tokens of context, each feeding a random token.
        Each test runs once to warm up, then --repetitions times; the result is the mean of the
        per-run tokens/s, with its standard deviation. It runs what `ember serve` runs (the batched
        step over a paged KV cache) unless --llama-cpp-exact is given.

        Examples:
          ember bench --model model.gguf --threads 2
          ember bench --model model.gguf --prompt-tokens 0 --depth 4096     # tg128 after a 4,096-token context
        """)

    @OptionGroup var options: ModelOptions
    @OptionGroup var arithmetic: ArithmeticOption

    @Option(help: "Tokens of context already in the cache before each test (llama-bench's -d).")
    var depth = 0

    @Option(name: .customLong("prompt-tokens"), help: "Tokens in the prompt-processing test (0 skips it).")
    var promptTokens = 512

    @Option(name: .customLong("gen-tokens"), help: "Tokens in the generation test (0 skips it).")
    var genTokens = 128

    @Option(help: "Timed runs of each test.")
    var repetitions = 5

    @Flag(help: "Print {\"pp_tokens_per_s\": …, \"tg_tokens_per_s\": …} instead of a table.")
    var json = false

    func validate() throws {
        guard promptTokens >= 0, genTokens >= 0, depth >= 0 else { throw ValidationError("token counts must not be negative") }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be at least 1") }
    }

    func run() throws {
        let loaded = try options.load()
        let model = loaded.model
        let V = model.configuration.vocabularySize
        let positions = depth + max(promptTokens, genTokens, 1)
        guard positions <= model.configuration.maxPositionEmbeddings else {
            throw CommandError("the tests need \(positions) positions but the model's context is \(model.configuration.maxPositionEmbeddings)")
        }
        var random = SplitMix64(seed: 42)
        func randomTokens(_ n: Int) -> [Int] { (0..<n).map { _ in Int(random.next() % UInt64(V)) } }

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

        /// Runs `tokens` at positions `at ..< at + tokens.count`, computing the last token's logits.
        let run: (_ tokens: [Int], _ at: Int) throws -> Void
        switch arithmetic.arithmetic {
        case .fast:
            model.prepareBatches()
            let blocks = (positions + 15) / 16
            let cache = PagedKVCache(configuration: model.configuration, blockCount: blocks, blockSize: 16)
            let table = Array(0..<blocks)
            run = { tokens, at in
                _ = try model.forward(batch: [.init(tokens: tokens, start: at, blocks: table, wantsLogits: true)], cache: cache)
            }
        case .llamaCppExact:
            let cache = model.makeCache(capacity: positions)
            run = { tokens, at in
                cache.truncate(to: at)
                _ = try model.forward(tokens, cache: cache)
            }
        }
        if depth > 0 { try run(randomTokens(depth), 0) }

        var pp: (mean: Double, deviation: Double)?
        var tg: (mean: Double, deviation: Double)?
        if promptTokens > 0 {
            let prompt = randomTokens(promptTokens)
            pp = try measure(promptTokens) { try run(prompt, depth) }
        }
        if genTokens > 0 {
            let steps = randomTokens(genTokens)
            tg = try measure(genTokens) {
                for (i, token) in steps.enumerated() { try run([token], depth + i) }
            }
        }
        if json {
            var fields: [String] = []
            if let pp { fields.append(String(format: "\"pp_tokens_per_s\": %.2f", pp.mean)) }
            if let tg { fields.append(String(format: "\"tg_tokens_per_s\": %.2f", tg.mean)) }
            fields.append("\"arithmetic\": \"\(arithmetic.arithmetic.rawValue)\", \"kernel_tier\": \"\(KernelTier.current.name)\", \"blas_core\": \"\(BLASCore.name)\"")
            print("{" + fields.joined(separator: ", ") + "}")
        } else {
            print("arithmetic \(arithmetic.arithmetic.rawValue); integer products: \(KernelTier.current.name); f32 products: \(BLASCore.summary)")
            print("| model | threads | test | tokens/s |")
            print("| --- | ---: | --- | ---: |")
            let name = (loaded.path as NSString).lastPathComponent
            let depthLabel = depth > 0 ? " @ d\(depth)" : ""
            if let pp { print(String(format: "| %@ | %d | pp%d%@ | %.2f ± %.2f |", name, options.threads, promptTokens, depthLabel, pp.mean, pp.deviation)) }
            if let tg { print(String(format: "| %@ | %d | tg%d%@ | %.2f ± %.2f |", name, options.threads, genTokens, depthLabel, tg.mean, tg.deviation)) }
        }
    }
}
