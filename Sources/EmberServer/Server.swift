import EmberInference
import EmberModels
import EmberTokenizers
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// An OpenAI-compatible HTTP front end for an `Engine`: `/v1/chat/completions`, `/v1/completions`,
/// `/v1/models`, `/tokenize`, `/detokenize`, `/health` and `/metrics`, with server-sent-event
/// streaming and OpenAI's error shape; for models with fill-in-the-middle tokens also llama.cpp's
/// `/infill` and OpenAI's `suffix` on `/v1/completions`.
public struct OpenAIServer: Sendable {
    public typealias Limits = ServerLimits

    public let engine: Engine
    public let modelName: String
    public let prompting: Prompting
    public let apiKey: String?
    public let limits: Limits
    /// LoRA adapters served beside the base, each under its own model name (vLLM's --lora-modules),
    /// and those loaded at run time from inside `loraRoot`.
    let adapters: AdapterRegistry
    /// The model's fill-in-the-middle tokens (nil: /infill and `suffix` are refused), and whether
    /// infill prompts are in SPM order (llama-server's --spm-infill).
    public let fim: FillInTheMiddle?
    public let spmInfill: Bool
    /// Places for generation requests: the running batch and `limits.maxQueuedRequests` more.
    let admission: Admission

    public init(engine: Engine, modelName: String, prompting: Prompting, apiKey: String?, limits: Limits = Limits(), adapters: [InferenceAdapter] = [],
                loraRoot: String? = nil, fim: FillInTheMiddle? = nil, spmInfill: Bool = false) {
        self.engine = engine
        self.fim = fim
        self.spmInfill = spmInfill
        self.modelName = modelName
        self.adapters = AdapterRegistry(adapters, root: loraRoot)
        self.prompting = prompting
        self.apiKey = apiKey
        self.limits = limits
        admission = Admission(capacity: engine.configuration.maxSequences + limits.maxQueuedRequests)
    }

    var tokenizer: any Tokenizer { engine.tokenizer }

    /// The router with every endpoint.
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.middlewares.add(ErrorShapeMiddleware(apiKey: apiKey))
        router.get("health") { _, _ in Response(status: .ok) }
        router.get("openapi.json") { _, _ in try OpenAPIDocument.response() }
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: engine.metrics.prometheus(model: modelName))))
        }
        router.get("v1/models") { _, _ in
            func card(_ id: String, parent: String?) -> JinjaValue {
                .object([("id", .string(id)), ("object", "model"), ("created", .int(Self.started)), ("owned_by", "ember"),
                         ("root", .string(parent == nil ? modelName : id)), ("parent", parent.map { .string($0) } ?? .none),
                         ("max_model_len", .int(engine.configuration.maxModelLength))])
            }
            let cards = [card(modelName, parent: nil)] + adapters.all.map { card($0.name, parent: modelName) }
            return Self.json(.object([("object", "list"), ("data", .list(cards))]))
        }
        router.post("tokenize") { request, _ in try await handle { try tokenize(try await body(request)) } }
        router.post("detokenize") { request, _ in try await handle { try detokenize(try await body(request)) } }
        router.post("v1/chat/completions") { request, _ in try await handle { try await completion(try await body(request), chat: true) } }
        router.post("v1/completions") { request, _ in try await handle { try await completion(try await body(request), chat: false) } }
        router.post("infill") { request, _ in try await handle { try await infill(try await body(request)) } }
        router.post("pooling") { request, _ in try await handle { try await pooling(try await body(request)) } }
        router.post("v1/load_lora_adapter") { request, _ in
            let f = try await body(request)
            guard let name = try f.string("lora_name") else { throw APIError.badRequest("'lora_name' (a string) is required", param: "lora_name") }
            guard let path = try f.string("lora_path") else { throw APIError.badRequest("'lora_path' (a string) is required", param: "lora_path") }
            let model = engine.model, base = modelName, adapters = adapters
            try await Task.detached { try adapters.load(name: name, path: path, baseName: base, model: model) }.value
            return Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' added successfully.")))
        }
        router.post("v1/unload_lora_adapter") { request, _ in
            let f = try await body(request)
            guard let name = try f.string("lora_name") else { throw APIError.badRequest("'lora_name' (a string) is required", param: "lora_name") }
            try adapters.unload(name: name)
            return Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' removed successfully.")))
        }
        router.post("v1/embeddings") { _, _ -> Response in
            throw APIError.badRequest("\(modelName) is a generative model; POST /v1/embeddings answers on a server of an embedding model (a BERT sentence-transformers folder)")
        }
        return router
    }

    static let started = Int(Date().timeIntervalSince1970)

    // MARK: Pooling

    /// vLLM's pooling endpoint for a reward model: `input` (a string, a list of strings, a list of
    /// token ids or a list of such lists) or `messages` (one conversation through the chat
    /// template, without a generation prompt), each scored at its last non-pad token.
    private func pooling(_ f: Fields) async throws -> Response {
        guard engine.model.weights.score != nil else {
            throw APIError.badRequest("\(modelName) has no score head; POST /pooling scores with a reward model (a LlamaForSequenceClassification folder, as `ember train-reward` writes)")
        }
        if let model = try f.string("model"), model != modelName {
            throw APIError(status: 404, message: "the model '\(model)' does not exist; this server scores with '\(modelName)'", param: "model", code: "model_not_found")
        }
        var inputs: [[Int]] = []
        if f["messages"] != nil {
            inputs = [try promptTokens(chat: f, generationPrompt: false)]
        } else {
            func tokens(_ value: JinjaValue, _ what: String) throws -> [Int] {
                switch value {
                case .string(let text): return prompting.tokens(text)
                case .list(let items):
                    return try tokenIDs(items, vocabulary: tokenizer.vocabularySize, what: what, param: "input")
                default: throw APIError.badRequest("\(what) must be a string or a list of token ids", param: "input")
                }
            }
            switch f["input"] {
            case .string?: inputs = [try tokens(f["input"]!, "'input'")]
            case .list(let items)? where items.contains(where: { if case .int = $0 { false } else { true } }):
                inputs = try items.enumerated().map { try tokens($1, "input[\($0)]") }
            case .list?: inputs = [try tokens(f["input"]!, "'input'")]
            default: throw APIError.badRequest("give 'input' (a string, a list of strings or of token ids) or 'messages'", param: "input")
            }
        }
        guard !inputs.isEmpty else { throw APIError.badRequest("'input' is an empty list", param: "input") }
        let limit = engine.model.configuration.maxPositionEmbeddings
        for (i, ids) in inputs.enumerated() {
            guard !ids.isEmpty else { throw APIError.badRequest("input \(i) has no tokens", param: "input") }
            guard ids.count <= limit else { throw APIError.badRequest("input \(i) has \(ids.count) tokens; the model's context is \(limit)", param: "input") }
        }
        let ticket = try admission.take(1, retryAfter: limits.retryAfter)
        defer { ticket.release() }
        let model = engine.model
        let scores = try await Task.detached { try inputs.map { try model.scores($0)[0] } }.value
        let data: [JinjaValue] = scores.enumerated().map { i, score in
            .object([("index", .int(i)), ("object", "pooling"), ("data", .list([.double(Double(score))]))])
        }
        let count = inputs.reduce(0) { $0 + $1.count }
        return Self.json(.object([("id", .string("pool-\(UInt64.random(in: 0...UInt64.max))")), ("object", "list"), ("created", .int(Int(Date().timeIntervalSince1970))),
                                  ("model", .string(modelName)), ("data", .list(data)),
                                  ("usage", .object([("prompt_tokens", .int(count)), ("total_tokens", .int(count)), ("completion_tokens", .int(0))]))]))
    }

    private func body(_ request: Request) async throws -> Fields { try await Self.fields(request, limit: limits.maxBodyBytes) }

    /// A JSON request body of at most `limit` bytes (413 above it).
    static func fields(_ request: Request, limit: Int) async throws -> Fields {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw APIError(status: 413, message: "the request body is larger than \(limit) bytes")
        }
        return try Fields(body: Array(buffer.readableBytesView))
    }

    private func handle(_ work: () async throws -> Response) async throws -> Response {
        do {
            return try await work()
        } catch let error as APIError {
            return Self.error(error)
        }
    }

    static func error(_ e: APIError) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let seconds = e.retryAfter { headers[.retryAfter] = String(seconds) }
        return Response(status: HTTPResponse.Status(code: e.status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: e.body)))
    }

    static func json(_ value: JinjaValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: value.jsonText() ?? "{}")))
    }

    // MARK: Tokenize

    private func tokenize(_ f: Fields) throws -> Response {
        let ids: [Int]
        if f["messages"] != nil {
            ids = try promptTokens(chat: f)
        } else {
            guard let prompt = try f.string("prompt") else { throw APIError.badRequest("give 'prompt' (a string) or 'messages'", param: "prompt") }
            let special = try f.bool("add_special_tokens") ?? true
            ids = special ? prompting.tokens(prompt) : tokenizer.encode(prompt, parseSpecial: true)
        }
        return Self.json(.object([("count", .int(ids.count)), ("max_model_len", .int(engine.configuration.maxModelLength)),
                                  ("tokens", .list(ids.map { .int($0) }))]))
    }

    private func detokenize(_ f: Fields) throws -> Response {
        guard f["tokens"] != nil else { throw APIError.badRequest("'tokens' (a list of token ids) is required", param: "tokens") }
        let ids = try f.intList("tokens")
        guard ids.allSatisfy({ (0..<tokenizer.vocabularySize).contains($0) }) else {
            throw APIError.badRequest("token ids must be between 0 and \(tokenizer.vocabularySize - 1)", param: "tokens")
        }
        return Self.json(.object([("prompt", .string(tokenizer.decode(ids, skipSpecial: false)))]))
    }


    // MARK: Completions

    /// The chat prompt's tokens: messages (and tools) through the model's chat template, with the
    /// generation prompt unless `add_generation_prompt` says otherwise (its default is `generationPrompt`).
    private func promptTokens(chat f: Fields, generationPrompt: Bool = true) throws -> [Int] {
        guard case .list(let messages)? = f["messages"], !messages.isEmpty else {
            throw APIError.badRequest("'messages' must be a non-empty list of message objects", param: "messages")
        }
        var normalized: [JinjaValue] = []
        for (i, m) in messages.enumerated() {
            guard case .dict(var d) = m, case .string? = d["role"] else {
                throw APIError.badRequest("messages[\(i)] must be an object with a string 'role'", param: "messages")
            }
            switch d["content"] {
            case .string?, .none?, nil: break
            case .list(let parts)?:
                // Text parts join into one string; templates expect text.
                var text = ""
                for part in parts {
                    guard case .dict(let p) = part, p["type"]?.text == "text", case .string(let t)? = p["text"] else {
                        throw APIError.badRequest("messages[\(i)].content parts must be {\"type\": \"text\", \"text\": ...}", param: "messages")
                    }
                    text += t
                }
                d["content"] = .string(text)
            default: throw APIError.badRequest("messages[\(i)].content must be a string or a list of text parts", param: "messages")
            }
            normalized.append(.dict(d))
        }
        var tools: JinjaValue?
        if let t = f["tools"] {
            guard case .list = t else { throw APIError.badRequest("'tools' must be a list", param: "tools") }
            tools = t
        }
        let addGenerationPrompt = try f.bool("add_generation_prompt") ?? generationPrompt
        do {
            return try prompting.tokens(chat: .list(normalized), tools: tools, addGenerationPrompt: addGenerationPrompt)
        } catch let error as JinjaError {
            throw APIError.badRequest(error.raisedByTemplate ? error.message : "the chat template failed: \(error.message)", param: "messages")
        }
    }

    /// The adapter the request's `model` names (nil: the base).
    private func adapter(_ f: Fields) throws -> InferenceAdapter? {
        guard let model = try f.string("model"), model != modelName else { return nil }
        guard let named = adapters.named(model) else {
            throw APIError(status: 404, message: "The model `\(model)` does not exist.", param: "model", code: "model_not_found")
        }
        return named
    }

    /// The fill-in-the-middle prompt of a prefix and suffix in llama.cpp's layout, over a window of
    /// min(2048, context / 2) tokens: llama-server's default batch of 2048 at contexts from 4096,
    /// and room for other files at smaller ones.
    private func infillPrompt(_ fim: FillInTheMiddle, prefix: String, suffix: String, extra: [FillInTheMiddle.ExtraFile] = [],
                              prompt: [Int] = [], maxTokens: Int) -> [Int] {
        let context = engine.configuration.maxModelLength
        return fim.prompt(prefix: prefix, suffix: suffix, extra: extra, prompt: prompt,
                          bos: prompting.addBOS ? tokenizer.bosTokenID : nil, spm: spmInfill,
                          window: min(2048, context / 2), context: context, maxTokens: maxTokens) { tokenizer.encode($0, parseSpecial: false) }
    }

    /// A reward model scores and does not generate.
    private func refuseRewardModel() throws {
        if engine.model.weights.score != nil {
            throw APIError.badRequest("\(modelName) is a reward model (LlamaForSequenceClassification): it scores texts on POST /pooling and does not generate")
        }
    }

    /// Most prompts in one `/v1/completions` request.
    static let maxPrompts = 2048

    private func completion(_ f: Fields, chat: Bool) async throws -> Response {
        try refuseRewardModel()
        let adapter = try adapter(f)
        var parameters = try f.sampling(vocabularySize: tokenizer.vocabularySize)
        // echo (completions only): the prompt comes back before the completion, with its tokens'
        // log-probabilities when logprobs are asked for; max_tokens 0 then scores the prompt alone.
        let echo = chat ? false : try f.bool("echo") ?? false
        let requested = try f.int("max_completion_tokens") ?? f.int("max_tokens")
        if let requested, requested < (echo ? 0 : 1) {
            throw APIError.badRequest("'max_tokens' must be at least 1 (0 only with 'echo')", param: "max_tokens")
        }
        // Each prompt's tokens, and its text when it came as text.
        var prompts: [(tokens: [Int], text: String?)]
        if chat {
            prompts = [(try promptTokens(chat: f), nil)]
            parameters.logprobs = try f.bool("logprobs") ?? false
            parameters.topLogprobs = try f.int("top_logprobs", in: 0...20) ?? 0
            if parameters.topLogprobs > 0 && !parameters.logprobs {
                throw APIError.badRequest("'top_logprobs' needs 'logprobs' set to true", param: "top_logprobs")
            }
        } else if let suffix = try f.string("suffix") {
            guard let fim else { throw APIError.badRequest("this model has no fill-in-the-middle tokens, so 'suffix' cannot be used", param: "suffix") }
            guard case .string(let prefix)? = f["prompt"] else { throw APIError.badRequest("with 'suffix', 'prompt' must be a string", param: "prompt") }
            prompts = [(infillPrompt(fim, prefix: prefix, suffix: suffix, maxTokens: requested ?? engine.configuration.maxTokensLimit), nil)]
            parameters.stopTokenIDs.formUnion(fim.endOfGeneration)
        } else {
            prompts = try completionPrompts(f["prompt"])
            if let n = try f.int("logprobs", in: 0...20) {
                parameters.logprobs = true
                parameters.topLogprobs = n
            }
        }
        let context = engine.configuration.maxModelLength
        for (i, prompt) in prompts.enumerated() where prompt.tokens.count >= context {
            throw APIError.badRequest("\(prompts.count > 1 ? "prompt \(i)" : "the prompt") has \(prompt.tokens.count) tokens but the model's context is \(context) tokens",
                                      param: chat ? "messages" : "prompt")
        }
        let stream = try f.bool("stream") ?? false
        if stream && (prompts.count > 1 || echo) {
            throw APIError.badRequest("a stream takes one prompt without 'echo'", param: "stream")
        }
        var includeUsage = false
        if case .dict(let options)? = f["stream_options"] {
            if case .bool(let b)? = options["include_usage"] { includeUsage = b }
        } else if f["stream_options"] != nil {
            throw APIError.badRequest("'stream_options' must be an object", param: "stream_options")
        }

        guard prompts.count <= admission.capacity else {
            throw APIError.badRequest("'prompt' has \(prompts.count) prompts; this server runs or queues at most \(admission.capacity) at once", param: "prompt")
        }
        let ticket = try admission.take(prompts.count, retryAfter: limits.retryAfter)
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        // Every prompt goes to the engine first, so that they run in the same batches; then each is collected.
        var requests: [(builder: ResponseBuilder, submitted: (id: Int, events: AsyncStream<GenerationEvent>)?)] = []
        for (k, prompt) in prompts.enumerated() {
            var p = parameters
            p.maxTokens = requested ?? min(context - prompt.tokens.count, engine.configuration.maxTokensLimit)
            var builder = ResponseBuilder(id: id, chat: chat, model: adapter?.name ?? modelName, tokenizer: tokenizer, n: p.n,
                                          logprobs: p.logprobs, promptTokens: prompt.tokens.count)
            builder.firstIndex = k * p.n
            if p.maxTokens == 0 { builder.finishWithoutGenerating() }
            requests.append((builder, p.maxTokens > 0 ? try submit(prompt.tokens, p, adapter) : nil))
        }
        let deadline = Deadline(seconds: limits.requestTimeout, engine: engine, requests: requests.compactMap { $0.submitted?.id })
        if stream, let submitted = requests[0].submitted {
            let engine = engine, includeUsage = includeUsage, response = requests[0].builder, limits = limits
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                            body: ResponseBody { writer in
                                var finished = false
                                defer {
                                    if !finished { engine.cancel(submitted.id) }
                                    _ = deadline.finish()
                                    ticket.release()
                                }
                                var builder = response
                                for chunk in builder.streamStart() { try await writer.write(ByteBuffer(string: chunk)) }
                                for await event in submitted.events {
                                    for chunk in builder.stream(event) { try await writer.write(ByteBuffer(string: chunk)) }
                                }
                                if deadline.finish() {
                                    let error = Deadline.error(limits.requestTimeout, retryAfter: limits.retryAfter)
                                    try await writer.write(ByteBuffer(string: "data: \(error.body)\n\n"))
                                }
                                finished = builder.allFinished
                                if includeUsage { try await writer.write(ByteBuffer(string: builder.usageChunk())) }
                                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                                try await writer.finish(nil)
                            })
        }
        defer { _ = deadline.finish() }
        var builders: [ResponseBuilder] = []
        for (k, request) in requests.enumerated() {
            var builder = request.builder
            if echo {
                let prompt = prompts[k], model = engine.model, top = parameters.topLogprobs
                let logprobs = parameters.logprobs
                    ? try await Task.detached { try model.promptLogprobs(prompt.tokens, top: top, adapter: adapter) }.value : []
                builder.echo = (prompt.text ?? tokenizer.decode(prompt.tokens, skipSpecial: false), prompt.tokens, logprobs)
            }
            if let submitted = request.submitted { builder = try await collect(submitted, into: builder) }
            builders.append(builder)
        }
        if deadline.finish() { throw Deadline.error(limits.requestTimeout, retryAfter: limits.retryAfter) }
        ticket.release()
        return Self.json(ResponseBuilder.merged(builders))
    }

    /// The prompts of `/v1/completions`: a string, a list of token ids, or a list of either.
    private func completionPrompts(_ value: JinjaValue?) throws -> [(tokens: [Int], text: String?)] {
        func ids(_ items: [JinjaValue], _ what: String) throws -> [Int] {
            try tokenIDs(items, vocabulary: tokenizer.vocabularySize, what: what, param: "prompt")
        }
        switch value {
        case .string(let s)?:
            return [(prompting.tokens(s), s)]
        case .list(let l)? where !l.isEmpty && l.allSatisfy({ if case .int = $0 { true } else { false } }):
            return [(try ids(l, "'prompt'"), nil)]
        case .list(let l)? where !l.isEmpty:
            guard l.count <= Self.maxPrompts else { throw APIError.badRequest("'prompt' has \(l.count) prompts; at most \(Self.maxPrompts) per request", param: "prompt") }
            return try l.enumerated().map { i, item in
                switch item {
                case .string(let s): return (prompting.tokens(s), s)
                case .list(let tokens) where !tokens.isEmpty: return (try ids(tokens, "prompt \(i)"), nil)
                default: throw APIError.badRequest("prompt \(i) must be a string or a non-empty list of token ids", param: "prompt")
                }
            }
        default:
            throw APIError.badRequest("'prompt' must be a string, a list of token ids, or a list of those", param: "prompt")
        }
    }

    /// The request handed to the engine; what the engine refuses is a 400.
    private func submit(_ prompt: [Int], _ parameters: SamplingParameters, _ adapter: InferenceAdapter?) throws -> (id: Int, events: AsyncStream<GenerationEvent>) {
        do {
            return try engine.submit(prompt: prompt, parameters: parameters, adapter: adapter)
        } catch let error as RequestError {
            throw APIError.badRequest(error.message)
        }
    }

    /// Every event of a request gathered into its response (the request is cancelled if the client goes away).
    private func collect(_ submitted: (id: Int, events: AsyncStream<GenerationEvent>), into response: ResponseBuilder) async throws -> ResponseBuilder {
        var builder = response
        try await withTaskCancellationHandler {
            for await event in submitted.events { builder.collect(event) }
        } onCancel: { [engine] in
            engine.cancel(submitted.id)
        }
        if let failure = builder.failure { throw APIError(status: 500, message: failure, type: "internal_error") }
        return builder
    }

    // MARK: Infill

    /// llama.cpp's `POST /infill`: `input_prefix` and `input_suffix` (required), `input_extra`
    /// (other files, `[{"filename", "text"}]`) and `prompt` (text the middle starts with), with
    /// the sampling fields of the completions and `n_predict`; answered in llama-server's shape.
    private func infill(_ f: Fields) async throws -> Response {
        try refuseRewardModel()
        guard let fim else {
            throw APIError(status: 501, message: "Infill is not supported by this model: it has no fill-in-the-middle prefix, suffix and middle tokens",
                           type: "not_supported_error")
        }
        guard let prefix = try f.string("input_prefix") else { throw APIError.badRequest("\"input_prefix\" is required", param: "input_prefix") }
        guard let suffix = try f.string("input_suffix") else { throw APIError.badRequest("\"input_suffix\" is required", param: "input_suffix") }
        var extra: [FillInTheMiddle.ExtraFile] = []
        switch f["input_extra"] {
        case nil: break
        case .list(let chunks)?:
            for (i, chunk) in chunks.enumerated() {
                guard case .dict(let d) = chunk, case .string(let text)? = d["text"] else {
                    throw APIError.badRequest("input_extra[\(i)] must be an object with a string \"text\"", param: "input_extra")
                }
                var filename = "tmp"
                switch d["filename"] {
                case nil, .none?: break
                case .string(let name)?: filename = name
                default: throw APIError.badRequest("input_extra[\(i)].filename must be a string", param: "input_extra")
                }
                extra.append(.init(filename: filename, text: text))
            }
        default: throw APIError.badRequest("\"input_extra\" must be an array of {\"filename\": string, \"text\": string}", param: "input_extra")
        }
        guard try !(f.bool("stream") ?? false) else {
            throw APIError.badRequest("/infill answers whole; for a stream use /v1/completions with \"prompt\", \"suffix\" and \"stream\"", param: "stream")
        }
        let adapter = try adapter(f)
        var parameters = try f.sampling(vocabularySize: tokenizer.vocabularySize)
        parameters.stopTokenIDs.formUnion(fim.endOfGeneration)
        let context = engine.configuration.maxModelLength
        var requested = try f.int("n_predict") ?? f.int("max_tokens")
        if let n = requested, n < 0 { requested = nil }  // llama.cpp: -1 is "until the context ends"
        if requested == 0 { throw APIError.badRequest("'n_predict' must be at least 1", param: "n_predict") }
        let prompt = infillPrompt(fim, prefix: prefix, suffix: suffix, extra: extra, prompt: tokenizer.encode(try f.string("prompt") ?? "", parseSpecial: true),
                                  maxTokens: requested ?? engine.configuration.maxTokensLimit)
        guard prompt.count < context else {
            throw APIError.badRequest("the infill prompt has \(prompt.count) tokens but the model's context is \(context) tokens", param: "input_extra")
        }
        parameters.maxTokens = min(requested ?? engine.configuration.maxTokensLimit, context - prompt.count, engine.configuration.maxTokensLimit)
        let ticket = try admission.take(1, retryAfter: limits.retryAfter)
        defer { ticket.release() }
        let submitted = try submit(prompt, parameters, adapter)
        let deadline = Deadline(seconds: limits.requestTimeout, engine: engine, requests: [submitted.id])
        defer { _ = deadline.finish() }
        let response = ResponseBuilder(id: "infill", chat: false, model: adapter?.name ?? modelName, tokenizer: tokenizer, n: parameters.n,
                                       logprobs: false, promptTokens: prompt.count)
        let collected = try await collect(submitted, into: response)
        if deadline.finish() { throw Deadline.error(limits.requestTimeout, retryAfter: limits.retryAfter) }
        return Self.json(collected.infillResponse())
    }
}

/// Accepts only requests with the API key (when one is set) and gives every error OpenAI's shape.
struct ErrorShapeMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let apiKey: String?

    /// The method each path answers: another method on it is 405 with `Allow`, not 404.
    static let methods: [String: String] = {
        var methods: [String: String] = [:]
        for path in ["/health", "/metrics", "/v1/models", "/openapi.json"] { methods[path] = "GET" }
        for path in ["/tokenize", "/detokenize", "/v1/chat/completions", "/v1/completions", "/infill", "/pooling", "/v1/embeddings",
                     "/v1/load_lora_adapter", "/v1/unload_lora_adapter"] { methods[path] = "POST" }
        return methods
    }()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let apiKey, request.uri.path != "/health" {
            guard constantTimeEquals(request.headers[.authorization], "Bearer \(apiKey)") else {
                return OpenAIServer.error(APIError(status: 401, message: "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                                   code: "invalid_api_key"))
            }
        }
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return OpenAIServer.error(error)
        } catch let error as any HTTPResponseError {
            if error.status == .notFound, let allowed = Self.methods[request.uri.path], allowed != request.method.rawValue {
                var response = OpenAIServer.error(APIError(status: 405, message: "\(request.uri.path) answers \(allowed), not \(request.method)"))
                response.headers[.allow] = allowed
                return response
            }
            let message = error.status == .notFound ? "no route for \(request.method) \(request.uri.path)" : "\(error.status)"
            return OpenAIServer.error(APIError(status: error.status.code, message: message,
                                               type: error.status.code >= 500 ? "server_error" : "invalid_request_error"))
        } catch {
            return OpenAIServer.error(APIError(status: 500, message: "internal error: \(error)", type: "server_error"))
        }
    }
}
