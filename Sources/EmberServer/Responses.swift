import EmberInference
import EmberModels
import EmberTokenizers
import Foundation

/// Builds OpenAI response bodies and stream chunks from engine events.
struct ResponseBuilder: Sendable {
    let id: String
    let chat: Bool
    let model: String
    let tokenizer: any Tokenizer
    let n: Int
    let logprobs: Bool
    let promptTokens: Int
    let created = Int(Date().timeIntervalSince1970)

    private var texts: [String]
    private var tokenLogprobs: [[TokenLogprob]]
    private var reasons: [FinishReason?]
    private var completionTokens: [Int]
    private var cachedTokens = 0
    /// Why the engine could not run the request, when it could not.
    private(set) var failure: String?
    /// `echo`: the prompt's text and tokens put before each choice's, with the prompt tokens'
    /// log-probabilities (the first token has none) when logprobs are asked for.
    var echo: (text: String, tokens: [Int], logprobs: [TokenLogprob])?
    /// The index of this prompt's first choice among a request's prompts (prompt-major).
    var firstIndex = 0

    init(id: String, chat: Bool, model: String, tokenizer: any Tokenizer, n: Int, logprobs: Bool, promptTokens: Int) {
        self.id = id
        self.chat = chat
        self.model = model
        self.tokenizer = tokenizer
        self.n = n
        self.logprobs = logprobs
        self.promptTokens = promptTokens
        texts = Array(repeating: "", count: n)
        tokenLogprobs = Array(repeating: [], count: n)
        reasons = Array(repeating: nil, count: n)
        completionTokens = Array(repeating: 0, count: n)
    }

    var allFinished: Bool { reasons.allSatisfy { $0 != nil } }

    mutating func collect(_ event: GenerationEvent) {
        switch event {
        case .started(_, let cached): cachedTokens = cached
        case .delta(let choice, let text, _, let lp):
            texts[choice] += text
            tokenLogprobs[choice] += lp
        case .finished(let choice, let reason, let tokens):
            reasons[choice] = reason
            completionTokens[choice] = tokens
        case .failed(let message): failure = message
        }
    }

    /// No generation asked for (`max_tokens` 0 with `echo`): every choice ends at once, by length.
    mutating func finishWithoutGenerating() {
        reasons = Array(repeating: .length, count: n)
    }

    /// One answer for several prompts: their choices in order, their usage added up.
    static func merged(_ builders: [ResponseBuilder]) -> JinjaValue {
        guard case .dict(var answer)? = builders.first?.completeResponse() else { return .none }
        var choices: [JinjaValue] = []
        var prompt = 0, completion = 0, cached = 0
        for b in builders {
            if case .dict(let fields) = b.completeResponse(), case .list(let list)? = fields["choices"] { choices += list }
            prompt += b.promptTokens
            completion += b.completionTokens.reduce(0, +)
            cached += b.cachedTokens
        }
        answer["choices"] = .list(choices)
        answer["usage"] = .object([("prompt_tokens", .int(prompt)), ("completion_tokens", .int(completion)), ("total_tokens", .int(prompt + completion)),
                                   ("prompt_tokens_details", .object([("cached_tokens", .int(cached))]))])
        return .dict(answer)
    }

    var usage: JinjaValue {
        let completion = completionTokens.reduce(0, +)
        return .object([("prompt_tokens", .int(promptTokens)), ("completion_tokens", .int(completion)),
                        ("total_tokens", .int(promptTokens + completion)),
                        ("prompt_tokens_details", .object([("cached_tokens", .int(cachedTokens))]))])
    }

    private func header(object: String) -> [(String, JinjaValue)] {
        [("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model))]
    }

    private func tokenText(_ id: Int) -> (String, [UInt8]) {
        let bytes = tokenizer.bytes(of: id)
        return (String(decoding: bytes, as: UTF8.self), bytes)
    }

    /// Chat: {"content": [{token, logprob, bytes, top_logprobs}]}; completions: the legacy lists, the
    /// echoed prompt's tokens first (its first token without a log-probability: null).
    private func logprobsValue(_ items: [TokenLogprob], textOffset: Int = 0) -> JinjaValue {
        guard logprobs else { return .none }
        if chat {
            return .object([("content", .list(items.map { lp in
                let (text, bytes) = tokenText(lp.token)
                let top = lp.top.map { t -> JinjaValue in
                    let (tt, tb) = tokenText(t.token)
                    return .object([("token", .string(tt)), ("logprob", .double(Double(t.logprob))), ("bytes", .list(tb.map { .int(Int($0)) }))])
                }
                return .object([("token", .string(text)), ("logprob", .double(Double(lp.logprob))),
                                ("bytes", .list(bytes.map { .int(Int($0)) })), ("top_logprobs", .list(top))])
            }))])
        }
        var entries: [(token: Int, logprob: TokenLogprob?)] = []
        if let echo {
            entries = echo.tokens.enumerated().map { i, id in (id, i == 0 ? nil : echo.logprobs[i - 1]) }
        }
        entries += items.map { ($0.token, $0) }
        var offsets: [JinjaValue] = []
        var offset = textOffset
        for e in entries {
            offsets.append(.int(offset))
            offset += tokenText(e.token).0.count
        }
        return .object([
            ("tokens", .list(entries.map { .string(tokenText($0.token).0) })),
            ("token_logprobs", .list(entries.map { $0.logprob.map { .double(Double($0.logprob)) } ?? .none })),
            ("top_logprobs", .list(entries.map { e in
                e.logprob.map { lp in .dict(JinjaDict(lp.top.map { (tokenText($0.token).0, .double(Double($0.logprob))) })) } ?? .none
            })),
            ("text_offset", .list(offsets)),
        ])
    }

    func completeResponse() -> JinjaValue {
        let choices: [JinjaValue] = (0..<n).map { i in
            let reason = JinjaValue.str(reasons[i].map { $0 == .cancelled ? "abort" : $0.rawValue })
            if chat {
                return .object([("index", .int(i)), ("message", .object([("role", "assistant"), ("content", .string(texts[i]))])),
                                ("logprobs", logprobsValue(tokenLogprobs[i])), ("finish_reason", reason)])
            }
            return .object([("index", .int(firstIndex + i)), ("text", .string((echo?.text ?? "") + texts[i])),
                            ("logprobs", logprobsValue(tokenLogprobs[i])), ("finish_reason", reason)])
        }
        return .object(header(object: chat ? "chat.completion" : "text_completion") + [("choices", .list(choices)), ("usage", usage)])
    }

    /// llama-server's answer to `/infill` and `/completion`, for the first choice.
    func infillResponse() -> JinjaValue {
        let stopType = switch reasons[0] { case .length?: "limit"; case .stop?: "eos"; default: "none" }
        return .object([("index", .int(0)), ("content", .string(texts[0])), ("tokens", .list([])), ("id_slot", .int(0)), ("stop", .bool(true)),
                        ("model", .string(model)), ("tokens_predicted", .int(completionTokens[0])), ("tokens_evaluated", .int(promptTokens)),
                        ("tokens_cached", .int(cachedTokens)), ("has_new_line", .bool(texts[0].contains("\n"))), ("truncated", .bool(false)),
                        ("stop_type", .string(stopType)), ("stopping_word", "")])
    }

    private func chunk(_ choices: [JinjaValue], usage: JinjaValue? = nil) -> String {
        var pairs = header(object: chat ? "chat.completion.chunk" : "text_completion") + [("choices", .list(choices))]
        if let usage { pairs.append(("usage", usage)) }
        return "data: " + (JinjaValue.object(pairs).jsonText() ?? "{}") + "\n\n"
    }

    /// Chat streams open each choice with the assistant role.
    func streamStart() -> [String] {
        guard chat else { return [] }
        return (0..<n).map { i in
            chunk([.object([("index", .int(i)), ("delta", .object([("role", "assistant"), ("content", "")])), ("logprobs", .none), ("finish_reason", .none)])])
        }
    }

    mutating func stream(_ event: GenerationEvent) -> [String] {
        let before = texts.map(\.count)
        collect(event)
        switch event {
        case .started: return []
        case .failed(let message):
            // OpenAI's streams report an error mid-stream as an event holding the error object.
            return ["data: " + APIError(status: 500, message: message, type: "internal_error").body + "\n\n"]
        case .delta(let choice, let text, _, let lp):
            let lps = logprobsValue(lp, textOffset: before[choice])
            if chat {
                return [chunk([.object([("index", .int(choice)), ("delta", .object([("content", .string(text))])), ("logprobs", lps), ("finish_reason", .none)])])]
            }
            return [chunk([.object([("index", .int(choice)), ("text", .string(text)), ("logprobs", lps), ("finish_reason", .none)])])]
        case .finished(let choice, let reason, _):
            let r = JinjaValue.string(reason == .cancelled ? "abort" : reason.rawValue)
            if chat {
                return [chunk([.object([("index", .int(choice)), ("delta", .object([])), ("logprobs", .none), ("finish_reason", r)])])]
            }
            return [chunk([.object([("index", .int(choice)), ("text", ""), ("logprobs", .none), ("finish_reason", r)])])]
        }
    }

    func usageChunk() -> String { chunk([], usage: usage) }
}
