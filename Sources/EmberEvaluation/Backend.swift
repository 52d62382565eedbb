import EmberInference
import EmberModels
import EmberTokenizers
import Foundation

/// One generation asked of a backend: the prompt, the stop strings, and the sampling.
public struct GenerationAsk: Sendable {
    public var prompt: String
    public var until: [String]
    public var maxTokens: Int
    public var temperature: Float
    public var seed: UInt64
}

/// A context and the continuations scored after it (a multiple-choice question's choices).
public struct Question: Sendable {
    public var context: String
    public var continuations: [String]
    public init(context: String, continuations: [String]) {
        self.context = context
        self.continuations = continuations
    }
}

/// What an evaluation asks of a model, lm-evaluation-harness's three request types.
public protocol EvaluationBackend: AnyObject {
    /// For each question, the score of each continuation after its context (the harness's
    /// `loglikelihood`, a question's choices asked together).
    func loglikelihoods(_ questions: [Question]) async throws -> [[ContinuationScore]]
    /// The text generated for each ask, stopped before the first stop string (`generate_until`).
    func generate(_ asks: [GenerationAsk]) async throws -> [String]
    /// The log-likelihood of a whole text, every token after the first predicted from those before
    /// it, in windows of the model's length (`loglikelihood_rolling`), and the tokens scored.
    func rollingLoglikelihood(_ text: String) async throws -> (logprob: Double, tokens: Int)
    /// The summed log-likelihood and the tokens scored of `text` in chunks of `context` tokens,
    /// the second half of each scored (llama-perplexity's way, and `ember perplexity`'s).
    func chunkedLoglikelihood(_ text: String, context: Int) async throws -> (logprob: Double, tokens: Int)
    /// The chat template's prompt for one user message.
    func chatPrompt(_ text: String) throws -> String
    /// Words for results.json: what ran.
    var summary: [String: String] { get }
}

/// The harness's split of (context, continuation) pairs: the context's trailing whitespace moves
/// to each continuation; the context's tokens are its own encoding (one for every continuation),
/// each continuation's those of the whole text past the context's length (an empty context is the
/// end-of-text token).
func encodeQuestion(_ context: String, _ continuations: [String], encode: (String) -> [Int], endOfText: Int?) -> (context: [Int], continuations: [[Int]]) {
    let spaces = trailingWhitespace(context)
    let kept = String(context.dropLast(spaces)), moved = String(context.suffix(spaces))
    let contextTokens = kept.isEmpty ? [] : encode(kept)
    let wholes = continuations.map { encode(kept + moved + $0) }
    return kept.isEmpty ? ([endOfText ?? 0], wholes) : (contextTokens, wholes.map { Array($0.dropFirst(contextTokens.count)) })
}

/// A model Ember loads, evaluated in this process: each question's choices share the cached
/// computation of its context (`Llama.continuationScores`), several questions run as one batch,
/// and generations run as one continuous batch through the serving engine.
public final class InProcessBackend: EvaluationBackend, @unchecked Sendable {
    public let model: Llama
    public let prompting: Prompting
    public let engine: Engine
    /// Off: every choice computes its context again (the way a plain forward per request works).
    public let sharedContext: Bool
    let name: String

    public init(model: Llama, prompting: Prompting, name: String, sharedContext: Bool = true, maxSequences: Int = 16) {
        self.model = model
        self.prompting = prompting
        self.sharedContext = sharedContext
        self.name = name
        let length = model.configuration.maxPositionEmbeddings
        var configuration = Engine.Configuration(blockCount: maxSequences * ((min(length, 4096) + 15) / 16), maxModelLength: length)
        configuration.maxSequences = maxSequences
        configuration.maxTokensLimit = length
        engine = Engine(model: model, tokenizer: prompting.tokenizer, configuration: configuration)
        engine.start()
    }

    deinit { engine.stop() }

    public var summary: [String: String] {
        ["backend": "in-process", "model": name, "shared_context": String(sharedContext)]
    }

    func encode(_ text: String) -> [Int] { prompting.tokenizer.encode(text, parseSpecial: true) }

    public func loglikelihoods(_ questions: [Question]) async throws -> [[ContinuationScore]] {
        let bos = prompting.addBOS ? prompting.tokenizer.bosTokenID : nil
        func withBOS(_ tokens: [Int]) -> [Int] { bos.map { tokens.first == $0 ? tokens : [$0] + tokens } ?? tokens }
        var encoded: [(context: [Int], continuations: [[Int]])] = []
        for q in questions {
            let (context, continuations) = encodeQuestion(q.context, q.continuations, encode: encode, endOfText: prompting.tokenizer.eosTokenID)
            for (i, tokens) in continuations.enumerated() where tokens.isEmpty {
                throw EvaluationError("choice \(i + 1) ('\(q.continuations[i])') has no tokens after the context")
            }
            encoded.append((withBOS(context), continuations))
        }
        if sharedContext { return try model.continuationScores(questions: encoded) }
        // Each choice with its own copy of the context: the same batches, nothing shared.
        let alone = try model.continuationScores(questions: encoded.flatMap { q in q.continuations.map { (q.context, [$0]) } })
        var rest = alone[...]
        return encoded.map { q in q.continuations.map { _ in rest.popFirst()![0] } }
    }

    public func generate(_ asks: [GenerationAsk]) async throws -> [String] {
        try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for (i, ask) in asks.enumerated() {
                var p = SamplingParameters()
                p.temperature = ask.temperature
                p.maxTokens = ask.maxTokens
                p.stop = ask.until
                p.seed = ask.seed
                let prompt = prompting.tokens(ask.prompt)
                let (_, events) = try engine.submit(prompt: prompt, parameters: p)
                group.addTask {
                    var text = ""
                    for await event in events {
                        switch event {
                        case .delta(_, let piece, _, _): text += piece
                        case .failed(let message): throw EvaluationError("generation failed: \(message)")
                        default: break
                        }
                    }
                    return (i, text)
                }
            }
            var texts = [String](repeating: "", count: asks.count)
            for try await (i, text) in group { texts[i] = text }
            return texts
        }
    }

    public func rollingLoglikelihood(_ text: String) async throws -> (logprob: Double, tokens: Int) {
        var tokens = encode(text)
        if let bos = prompting.tokenizer.bosTokenID ?? prompting.tokenizer.eosTokenID { tokens.insert(bos, at: 0) }
        // Windows of the model's length, each predicting the tokens it has not scored yet, the
        // first token of every window after the first conditioned on the previous window's end.
        let length = model.configuration.maxPositionEmbeddings
        var total = 0.0, scored = 1
        while scored < tokens.count {
            let end = min(tokens.count, scored + length - 1)
            let start = max(0, end - length)
            let context = Array(tokens[start..<scored]), continuation = Array(tokens[scored..<end])
            total += try model.continuationScores(context: context, continuations: [continuation])[0].logprob
            scored = end
        }
        return (total, tokens.count - 1)
    }

    public func chunkedLoglikelihood(_ text: String, context: Int) async throws -> (logprob: Double, tokens: Int) {
        let tokens = prompting.tokens(text, parseSpecial: false)
        let bos = prompting.addBOS ? prompting.tokenizer.bosTokenID : nil
        let result = try model.perplexity(tokens: tokens, context: context, bosTokenID: bos)
        return (-log(result.perplexity) * Double(result.tokens), result.tokens)
    }

    public func chatPrompt(_ text: String) throws -> String {
        try prompting.chatFormat.prompt([ChatFormat.Message(role: "user", content: text)])
    }
}

/// How many characters of whitespace end `text` (what Python's `rstrip()` removes).
func trailingWhitespace(_ text: String) -> Int { text.reversed().prefix { $0.isWhitespace }.count }
