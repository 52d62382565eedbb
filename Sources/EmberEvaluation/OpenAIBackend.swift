import EmberModels
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Any OpenAI-compatible server, through `POST /v1/completions`: a log-likelihood is the echoed
/// prompt's `token_logprobs` past the context (`text_offset` says where each token starts), and
/// whether the continuation is greedy comes from `top_logprobs`; generations are completions
/// with `stop`. An unreachable server or an answer that is not the API's shape is an error naming
/// the server and what it sent.
public final class OpenAIBackend: EvaluationBackend, @unchecked Sendable {
    public let base: URL
    /// The model name sent; nil: the first model `GET /v1/models` lists, asked once.
    public private(set) var model: String?
    let apiKey: String?
    let session: URLSession

    /// `url` is the server's base URL, with or without `/v1`.
    public init(url: String, model: String?, apiKey: String?) throws {
        var text = url
        while text.hasSuffix("/") { text.removeLast() }
        if !text.hasSuffix("/v1") { text += "/v1" }
        guard let base = URL(string: text), ["http", "https"].contains(base.scheme ?? "") else {
            throw EvaluationError("\(url): not an http(s) URL")
        }
        self.base = base
        self.model = model
        self.apiKey = apiKey
        let configuration = URLSessionConfiguration.default
        configuration.timeoutIntervalForRequest = 600
        session = URLSession(configuration: configuration)
    }

    public var summary: [String: String] { ["backend": "openai-completions", "url": base.absoluteString, "model": model ?? "(the server's first)"] }

    /// A JSON object from `path` (GET without a body, else POST).
    func request(_ path: String, _ body: [String: Any]?) async throws -> [String: Any] {
        var request = URLRequest(url: base.appendingPathComponent(path))
        request.httpMethod = body == nil ? "GET" : "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        if let apiKey { request.setValue("Bearer \(apiKey)", forHTTPHeaderField: "Authorization") }
        if let body { request.httpBody = try JSONSerialization.data(withJSONObject: body) }
        let data: Data, response: URLResponse
        do { (data, response) = try await session.data(for: request) } catch {
            throw EvaluationError("\(base.absoluteString): cannot reach the server (\(error.localizedDescription))")
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        let text = String(decoding: data.prefix(300), as: UTF8.self)
        guard status == 200 else { throw EvaluationError("\(base.absoluteString)/\(path) answered HTTP \(status): \(text)") }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw EvaluationError("\(base.absoluteString)/\(path) answered something that is not a JSON object: \(text)")
        }
        return object
    }

    func post(_ body: [String: Any]) async throws -> [String: Any] {
        if model == nil {
            let list = try await request("models", nil)
            guard let first = (list["data"] as? [[String: Any]])?.first?["id"] as? String else {
                throw EvaluationError("\(base.absoluteString)/models lists no model; name one with --model-name")
            }
            model = first
        }
        var body = body
        body["model"] = model
        return try await request("completions", body)
    }

    /// The response's choices, in `index` order.
    func choices(_ response: [String: Any], count: Int) throws -> [[String: Any]] {
        guard let choices = response["choices"] as? [[String: Any]], choices.count == count else {
            throw EvaluationError("\(base.absoluteString)/completions: expected \(count) choices, the answer has \((response["choices"] as? [Any])?.count ?? 0)")
        }
        return choices.sorted { ($0["index"] as? Int ?? 0) < ($1["index"] as? Int ?? 0) }
    }

    public func loglikelihoods(_ questions: [Question]) async throws -> [[ContinuationScore]] {
        var scores: [[ContinuationScore]] = []
        for q in questions { scores.append(try await loglikelihoods(context: q.context, continuations: q.continuations)) }
        return scores
    }

    func loglikelihoods(context: String, continuations: [String]) async throws -> [ContinuationScore] {
        // As the harness splits them: the context's trailing whitespace belongs to the continuation.
        let kept = String(context.dropLast(trailingWhitespace(context)))
        let prompts = continuations.map { context + $0 }
        let response = try await post(["prompt": prompts, "echo": true, "logprobs": 1, "max_tokens": 0, "temperature": 0])
        return try choices(response, count: prompts.count).map { choice in
            guard let logprobs = choice["logprobs"] as? [String: Any], let offsets = logprobs["text_offset"] as? [Int],
                  let values = logprobs["token_logprobs"] as? [Any], let tokens = logprobs["tokens"] as? [String], values.count == offsets.count else {
                throw EvaluationError("\(base.absoluteString)/completions: no echoed logprobs with text_offset (the server does not support echo with logprobs)")
            }
            let tops = logprobs["top_logprobs"] as? [Any] ?? []
            var score = ContinuationScore(logprob: 0, greedy: true, tokens: 0)
            for i in offsets.indices where offsets[i] >= kept.count {
                guard let value = (values[i] as? NSNumber)?.doubleValue else { throw EvaluationError("\(base.absoluteString): a continuation token has no log-probability") }
                score.logprob += value
                score.tokens += 1
                if i < tops.count, let top = tops[i] as? [String: Any], let best = top.max(by: { (($0.value as? NSNumber)?.doubleValue ?? -.infinity) < (($1.value as? NSNumber)?.doubleValue ?? -.infinity) }) {
                    score.greedy = score.greedy && best.key == tokens[i]
                }
            }
            guard score.tokens > 0 else { throw EvaluationError("\(base.absoluteString): the answer holds no tokens past the context") }
            return score
        }
    }

    public func generate(_ asks: [GenerationAsk]) async throws -> [String] {
        try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for (i, ask) in asks.enumerated() {
                group.addTask {
                    let response = try await self.post(["prompt": ask.prompt, "max_tokens": ask.maxTokens, "temperature": Double(ask.temperature),
                                                        "stop": Array(ask.until.prefix(4)), "seed": ask.seed])
                    guard let text = try self.choices(response, count: 1)[0]["text"] as? String else {
                        throw EvaluationError("\(self.base.absoluteString)/completions: a choice without text")
                    }
                    // Servers take at most four stop strings: the rest are applied here.
                    let cut = ask.until.compactMap { text.range(of: $0)?.lowerBound }.min()
                    return (i, cut.map { String(text[..<$0]) } ?? text)
                }
            }
            var texts = [String](repeating: "", count: asks.count)
            for try await (i, text) in group { texts[i] = text }
            return texts
        }
    }

    public func rollingLoglikelihood(_ text: String) async throws -> (logprob: Double, tokens: Int) {
        let response = try await post(["prompt": text, "echo": true, "logprobs": 0, "max_tokens": 0, "temperature": 0])
        guard let logprobs = try choices(response, count: 1)[0]["logprobs"] as? [String: Any], let values = logprobs["token_logprobs"] as? [Any] else {
            throw EvaluationError("\(base.absoluteString)/completions: no echoed logprobs")
        }
        let scored = values.compactMap { ($0 as? NSNumber)?.doubleValue }
        return (scored.reduce(0, +), scored.count)
    }

    public func chunkedLoglikelihood(_ text: String, context: Int) async throws -> (logprob: Double, tokens: Int) {
        throw EvaluationError("chunk_context scores with the model's own tokens: evaluate with --model")
    }

    public func chatPrompt(_ text: String) throws -> String {
        throw EvaluationError("chat_template needs the model's chat template: evaluate with --model, or leave chat_template out")
    }
}
