import EmberInference
import EmberModels
import EmberTensor
import Foundation
import Testing

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }
    nonisolated(unsafe) static let model = Result { try LoadedModel.load(path: path(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")) }
}

/// What one request produced.
struct Outcome {
    var tokens: [[Int]]
    var texts: [String]
    var reasons: [FinishReason?]
    var cachedTokens = 0
}

func run(_ engine: Engine, _ prompt: [Int], _ parameters: SamplingParameters) async throws -> Outcome {
    let (_, events) = try engine.submit(prompt: prompt, parameters: parameters)
    var o = Outcome(tokens: Array(repeating: [], count: parameters.n), texts: Array(repeating: "", count: parameters.n),
                    reasons: Array(repeating: nil, count: parameters.n))
    for await event in events {
        switch event {
        case .started(_, let cached): o.cachedTokens = cached
        case .delta(let c, let text, let tokens, _):
            o.tokens[c] += tokens
            o.texts[c] += text
        case .finished(let c, let reason, _): o.reasons[c] = reason
        case .failed(let message): Issue.record("the engine failed: \(message)")
        }
    }
    return o
}

func waitForIdle(_ engine: Engine) async {
    for _ in 0..<500 where engine.activeRequests > 0 || engine.freeBlocks != engine.configuration.blockCount {
        try? await Task.sleep(nanoseconds: 10_000_000)
    }
}

/// The engine with the real model: batching must not change results, and every scenario must give
/// all KV blocks back.
@Suite(.serialized) struct EngineTests {
    static func engine(maxBatchedTokens: Int = 64, blocks: Int = 512) throws -> Engine {
        let loaded = try Fixtures.model.get()
        var c = Engine.Configuration(blockCount: blocks, maxModelLength: 2048)
        c.maxBatchedTokens = maxBatchedTokens
        c.maxSequences = 16
        let engine = Engine(model: loaded.model, tokenizer: try loaded.requireTokenizer(), configuration: c)
        engine.start()
        return engine
    }

    static let prompts = [
        "The capital of France is", "Once upon a time", "def fibonacci(n):", "List three colours:",
        "Water boils at", "The quick brown fox", "In 1969, astronauts", "A haiku about autumn:\n",
        "Q: What is 12 times 12?\nA:", "import numpy as np\n", "Dear customer,", "The largest planet is",
        "Translate to French: good morning", "SELECT name FROM", "My favourite book is", "Photosynthesis converts",
    ]

    @Test func concurrentGreedyRequestsEqualTheirSoloRuns() async throws {
        let engine = try Self.engine()
        defer { engine.stop() }
        let tokenizer = engine.tokenizer
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = 24
        p.ignoreEOS = true
        let prompts = Self.prompts.map { tokenizer.encode($0) }
        var alone: [[Int]] = []
        for prompt in prompts { alone.append(try await run(engine, prompt, p).tokens[0]) }
        let together = try await withThrowingTaskGroup(of: (Int, [Int]).self) { group in
            for (i, prompt) in prompts.enumerated() {
                group.addTask { [engine, p] in (i, try await run(engine, prompt, p).tokens[0]) }
            }
            var out = [[Int]](repeating: [], count: prompts.count)
            for try await (i, tokens) in group { out[i] = tokens }
            return out
        }
        let equal = zip(alone, together).filter { $0 == $1 }.count
        print("16 concurrent greedy requests: \(equal)/16 equal to their solo runs")
        #expect(equal == 16)
        #expect(alone.allSatisfy { $0.count == 24 })
        await waitForIdle(engine)
        #expect(engine.freeBlocks == engine.configuration.blockCount)
    }

    @Test func seedsReproduceAndChoicesShareThePrompt() async throws {
        let engine = try Self.engine()
        defer { engine.stop() }
        let prompt = engine.tokenizer.encode("Write a short poem about the sea.")
        var p = SamplingParameters()
        p.temperature = 1
        p.maxTokens = 16
        p.seed = 42
        p.n = 3
        let a = try await run(engine, prompt, p), b = try await run(engine, prompt, p)
        #expect(a.tokens == b.tokens)
        #expect(a.reasons.allSatisfy { $0 != nil })
        #expect(Set(a.tokens.map { $0 }).count > 1, "three samples at temperature 1 should not all agree")
        #expect(b.cachedTokens > 0 || prompt.count <= 16)  // the second run found the prompt's blocks
        p.seed = 7
        let c = try await run(engine, prompt, p)
        #expect(c.tokens != a.tokens)
        await waitForIdle(engine)
        #expect(engine.freeBlocks == engine.configuration.blockCount)
    }

    @Test func stopStringsEndTextEvenAcrossTokens() async throws {
        let engine = try Self.engine()
        defer { engine.stop() }
        let tokenizer = engine.tokenizer
        let prompt = tokenizer.encode("The capital of France is")
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = 20
        p.ignoreEOS = true
        let free = try await run(engine, prompt, p)
        // A stop string made of the end of one token and the start of the next.
        let pieces = free.tokens[0].map { String(decoding: tokenizer.bytes(of: $0), as: UTF8.self) }
        let k = try #require(pieces.indices.dropFirst(2).first { pieces[$0 - 1].count >= 2 && pieces[$0].count >= 2 })
        let stop = String(pieces[k - 1].suffix(2)) + String(pieces[k].prefix(2))
        p.stop = [stop]
        let stopped = try await run(engine, prompt, p)
        let expected = try #require(free.texts[0].range(of: stop)).lowerBound
        #expect(stopped.texts[0] == String(free.texts[0][..<expected]))
        #expect(stopped.reasons[0] == .stop)
        await waitForIdle(engine)
        #expect(engine.freeBlocks == engine.configuration.blockCount)
    }

    @Test func cancellingFreesEveryBlock() async throws {
        let engine = try Self.engine()
        defer { engine.stop() }
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = 2000
        p.ignoreEOS = true
        let (id, events) = try engine.submit(prompt: engine.tokenizer.encode("Count from one to a thousand:"), parameters: p)
        var seen = 0
        var reason: FinishReason?
        for await event in events {
            if case .delta = event { seen += 1; if seen == 5 { engine.cancel(id) } }
            if case .finished(_, let r, _) = event { reason = r }
        }
        #expect(reason == .cancelled)
        await waitForIdle(engine)
        #expect(engine.freeBlocks == engine.configuration.blockCount)
    }

    @Test func refusesWhatCannotRun() throws {
        let engine = try Self.engine(blocks: 8)
        defer { engine.stop() }
        var p = SamplingParameters()
        #expect(throws: RequestError.self) { try engine.submit(prompt: [], parameters: p) }
        #expect(throws: RequestError.self) { try engine.submit(prompt: [999_999], parameters: p) }
        p.maxTokens = 200  // 8 blocks of 16 cannot hold it
        #expect(throws: RequestError.self) { try engine.submit(prompt: [1, 2, 3], parameters: p) }
        p.maxTokens = 10
        p.n = 100
        #expect(throws: RequestError.self) { try engine.submit(prompt: [1, 2, 3], parameters: p) }
    }
}

/// Flash-Decoding against the unsplit kernel and a double-precision softmax.
@Suite struct PagedAttentionTests {
    @Test(arguments: [1000, 4100])
    func splitEqualsUnsplit(keys: Int) {
        let H = 9, kvHeads = 3, D = 64, blockSize = 16
        var random = SplitMix64(seed: UInt64(keys))
        func value() -> Float { Float(random.nextUnit() * 2 - 1) }
        let blocks = (keys + blockSize - 1) / blockSize
        // A shuffled block table: pages need not be in order.
        var table = Array(0..<blocks).map { Int32($0) }
        table.shuffle(using: &random)
        let kv = (0..<blocks * blockSize * kvHeads * D).map { _ in Float16(value()) }
        let q = (0..<H * D).map { _ in value() * 3 }
        var split = [Float](repeating: 0, count: H * D), whole = split
        let sequence = PagedSequence(rows: 0..<1, start: keys - 1, blocks: table)
        kv.withUnsafeBufferPointer { k in
            pagedAttentionForward(q: q, keys: k.baseAddress!, values: k.baseAddress!, out: &split, sequences: [sequence], blockSize: blockSize,
                                  heads: H, kvHeads: kvHeads, headDim: D, splitKeys: 256)
            pagedAttentionForward(q: q, keys: k.baseAddress!, values: k.baseAddress!, out: &whole, sequences: [sequence], blockSize: blockSize,
                                  heads: H, kvHeads: kvHeads, headDim: D, splitKeys: nil)
        }
        // Reference in double.
        var reference = [Double](repeating: 0, count: H * D)
        for h in 0..<H {
            let g = h / (H / kvHeads)
            var scores = [Double](repeating: 0, count: keys)
            for p in 0..<keys {
                // Keys are transposed within their block: [blocks, Hkv, D, blockSize].
                let keyBase = (Int(table[p / blockSize]) * kvHeads + g) * D * blockSize + p % blockSize
                var s = 0.0
                for d in 0..<D { s += Double(q[h * D + d]) * Double(kv[keyBase + d * blockSize]) }
                scores[p] = s / Double(D).squareRoot()
            }
            let m = scores.max()!
            let e = scores.map { exp($0 - m) }
            let z = e.reduce(0, +)
            for p in 0..<keys {
                let slot = Int(table[p / blockSize]) * blockSize + p % blockSize
                for d in 0..<D { reference[h * D + d] += e[p] / z * Double(kv[(slot * kvHeads + g) * D + d]) }
            }
        }
        let splitError = zip(split, reference).map { abs(Double($0) - $1) }.max()!
        let wholeError = zip(whole, reference).map { abs(Double($0) - $1) }.max()!
        let difference = zip(split, whole).map { abs($0 - $1) }.max()!
        print("paged attention, \(keys) keys: split vs unsplit max |Δ| \(difference); vs double: split \(splitError), unsplit \(wholeError)")
        #expect(difference < 1e-5)
        #expect(splitError < 1e-5 && wholeError < 1e-5)
    }
}
