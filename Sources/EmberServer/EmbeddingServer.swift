import EmberModels
import EmberTokenizers
import EmberTensor
import Foundation
import Hummingbird
import NIOCore

/// OpenAI's embeddings API for a sentence encoder: `POST /v1/embeddings` (`input` a string, a list of
/// strings, a list of token ids or a list of such lists; `encoding_format` float or base64;
/// `dimensions` only as the model's own size), `GET /v1/models`, `POST /tokenize`, `GET /health`.
/// The generating endpoints answer 400. The inputs of one request run as one batch; requests take
/// turns on the encoder.
public struct EmbeddingServer: Sendable {
    public let encoder: SentenceEncoder
    public let modelName: String
    public let apiKey: String?
    public let limits: ServerLimits
    /// Places for requests: one computing and `limits.maxQueuedRequests` waiting.
    let admission: Admission
    /// Most inputs in one request (OpenAI's limit).
    public static let maxInputs = 2048
    /// Most tokens in one forward pass; a request with more runs in several.
    public static let batchTokens = 8192
    private let queue = DispatchQueue(label: "ember.embeddings")

    public init(encoder: SentenceEncoder, modelName: String, apiKey: String?, limits: ServerLimits = ServerLimits()) {
        self.encoder = encoder
        self.modelName = modelName
        self.apiKey = apiKey
        self.limits = limits
        admission = Admission(capacity: 1 + limits.maxQueuedRequests)
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.middlewares.add(ErrorShapeMiddleware(apiKey: apiKey))
        router.get("health") { _, _ in Response(status: .ok) }
        router.get("v1/models") { _, _ in
            let card = JinjaValue.object([("id", .string(modelName)), ("object", "model"), ("created", .int(OpenAIServer.started)),
                                          ("owned_by", "ember"), ("root", .string(modelName)), ("parent", .none),
                                          ("max_model_len", .int(encoder.maxSequenceLength))])
            return OpenAIServer.json(.object([("object", "list"), ("data", .list([card]))]))
        }
        router.get("openapi.json") { _, _ in try OpenAPIDocument.response() }
        router.post("v1/embeddings") { request, _ in
            let f = try await OpenAIServer.fields(request, limit: limits.maxBodyBytes)
            let ticket = try admission.take(1, retryAfter: limits.retryAfter)
            defer { ticket.release() }
            return try await embeddings(f)
        }
        router.post("tokenize") { request, _ in
            let f = try await OpenAIServer.fields(request, limit: limits.maxBodyBytes)
            guard let prompt = try f.string("prompt") else { throw APIError.badRequest("give 'prompt' (a string)", param: "prompt") }
            let ids = try f.bool("add_special_tokens") ?? true ? encoder.tokens(prompt) : encoder.tokenizer.encode(prompt, parseSpecial: false)
            return OpenAIServer.json(.object([("count", .int(ids.count)), ("max_model_len", .int(encoder.maxSequenceLength)),
                                              ("tokens", .list(ids.map { .int($0) }))]))
        }
        for path in ["v1/chat/completions", "v1/completions", "infill", "pooling"] {
            router.post(RouterPath(path)) { _, _ -> Response in
                throw APIError.badRequest("\(modelName) is an embedding model: it answers POST /v1/embeddings and does not generate")
            }
        }
        return router
    }

    /// The token sequences of `input`, each with [CLS] and [SEP] and cut at the model's length.
    func sequences(_ input: JinjaValue?) throws -> [[Int]] {
        let vocabulary = encoder.configuration.vocabularySize
        func ids(_ items: [JinjaValue], _ what: String) throws -> [Int] { try tokenIDs(items, vocabulary: vocabulary, what: what, param: "input") }
        switch input {
        case .string(let text)?:
            return [encoder.tokens(text)]
        case .list(let items)? where items.isEmpty:
            throw APIError.badRequest("'input' is an empty list", param: "input")
        case .list(let items)? where items.allSatisfy({ if case .int = $0 { true } else { false } }):
            return [encoder.sequence(try ids(items, "'input'"))]
        case .list(let items)?:
            guard items.count <= Self.maxInputs else {
                throw APIError.badRequest("'input' has \(items.count) items; at most \(Self.maxInputs) per request", param: "input")
            }
            return try items.enumerated().map { i, item in
                switch item {
                case .string(let text): return encoder.tokens(text)
                case .list(let tokens): return encoder.sequence(try ids(tokens, "input[\(i)]"))
                default: throw APIError.badRequest("input[\(i)] must be a string or a list of token ids", param: "input")
                }
            }
        case nil:
            throw APIError.badRequest("'input' is required: a string, a list of strings or of token ids", param: "input")
        default:
            throw APIError.badRequest("'input' must be a string, a list of strings or of token ids", param: "input")
        }
    }

    private func embeddings(_ f: Fields) async throws -> Response {
        if let model = try f.string("model"), model != modelName {
            throw APIError(status: 404, message: "the model '\(model)' does not exist; this server embeds with '\(modelName)'", param: "model",
                           code: "model_not_found")
        }
        let format = try f.string("encoding_format") ?? "float"
        guard format == "float" || format == "base64" else {
            throw APIError.badRequest("'encoding_format' must be float or base64", param: "encoding_format")
        }
        if let dimensions = try f.int("dimensions"), dimensions != encoder.dimensions {
            throw APIError.badRequest("\(modelName) gives \(encoder.dimensions) dimensions and cannot shorten them (it was not trained for 'dimensions')",
                                      param: "dimensions")
        }
        let inputs = try sequences(f["input"])
        let vectors = try await embed(inputs)
        let data: [JinjaValue] = vectors.enumerated().map { i, vector in
            let embedding: JinjaValue = format == "float"
                ? .list(vector.map { .double(Double($0)) })
                : .string(vector.withUnsafeBytes { Data($0).base64EncodedString() })  // little-endian f32, as OpenAI's
            return .object([("object", "embedding"), ("index", .int(i)), ("embedding", embedding)])
        }
        let count = inputs.reduce(0) { $0 + $1.count }
        return OpenAIServer.json(.object([("object", "list"), ("data", .list(data)), ("model", .string(modelName)),
                                          ("usage", .object([("prompt_tokens", .int(count)), ("total_tokens", .int(count))]))]))
    }

    /// Runs the batches of one request on the encoder's queue, off the concurrency pool.
    private func embed(_ inputs: [[Int]]) async throws -> [[Float]] {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                do {
                    continuation.resume(returning: try SentenceEncoder.batches(inputs, tokens: Self.batchTokens).flatMap { try encoder.embed(sequences: $0) })
                } catch {
                    continuation.resume(throwing: APIError.badRequest("\(error)", param: "input"))
                }
            }
        }
    }
}
