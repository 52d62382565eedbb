import EmberInference
import EmberModels
import EmberTokenizers
import Foundation

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
struct APIError: Error {
    let status: Int
    let message: String
    var type = "invalid_request_error"
    var param: String?
    var code: String?
    /// Seconds after which the client may try again (429 and 503), sent as `Retry-After`.
    var retryAfter: Int?

    static func badRequest(_ message: String, param: String? = nil) -> APIError { APIError(status: 400, message: message, param: param) }

    var body: String {
        let error = JinjaDict([("message", .string(message)), ("type", .string(type)),
                               ("param", param.map { .string($0) } ?? .none), ("code", code.map { .string($0) } ?? .none)])
        return JinjaValue.dict(JinjaDict([("error", .dict(error))])).jsonText() ?? "{}"
    }
}

/// Typed reads of a JSON request body, each failing with a 400 that names the field.
struct Fields {
    let object: JinjaDict

    init(body: [UInt8]) throws {
        guard let text = String(validating: body, as: UTF8.self) else { throw APIError.badRequest("the request body is not valid UTF-8") }
        let value: JinjaValue
        do {
            value = try JinjaValue(json: text)
        } catch let error as JinjaError {
            throw APIError.badRequest("the request body is not valid JSON: \(error.message)")
        }
        guard case .dict(let d) = value else { throw APIError.badRequest("the request body must be a JSON object") }
        object = d
    }

    subscript(key: String) -> JinjaValue? {
        if let v = object[key], case .none = v { return nil }
        return object[key]
    }

    func string(_ key: String) throws -> String? {
        guard let v = self[key] else { return nil }
        guard case .string(let s) = v else { throw APIError.badRequest("'\(key)' must be a string", param: key) }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = self[key] else { return nil }
        guard case .bool(let b) = v else { throw APIError.badRequest("'\(key)' must be a boolean", param: key) }
        return b
    }

    func int(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let v = self[key] else { return nil }
        let n: Int
        switch v {
        case .int(let i): n = i
        case .double(let d) where d == d.rounded() && abs(d) < 1e15: n = Int(d)
        default: throw APIError.badRequest("'\(key)' must be an integer", param: key)
        }
        if let range, !range.contains(n) { throw APIError.badRequest("'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(n)", param: key) }
        return n
    }

    func number(_ key: String, in range: ClosedRange<Double>? = nil) throws -> Double? {
        guard let v = self[key] else { return nil }
        let x: Double
        switch v {
        case .int(let i): x = Double(i)
        case .double(let d): x = d
        default: throw APIError.badRequest("'\(key)' must be a number", param: key)
        }
        guard x.isFinite else { throw APIError.badRequest("'\(key)' must be finite", param: key) }
        if let range, !range.contains(x) { throw APIError.badRequest("'\(key)' must be between \(range.lowerBound) and \(range.upperBound), got \(x)", param: key) }
        return x
    }

    /// `stop`: a string or a list of strings.
    func strings(_ key: String) throws -> [String] {
        switch self[key] {
        case nil: return []
        case .string(let s)?: return [s]
        case .list(let l)?:
            return try l.map {
                guard case .string(let s) = $0 else { throw APIError.badRequest("'\(key)' must be a string or a list of strings", param: key) }
                return s
            }
        default: throw APIError.badRequest("'\(key)' must be a string or a list of strings", param: key)
        }
    }

    func intList(_ key: String) throws -> [Int] {
        switch self[key] {
        case nil: return []
        case .list(let l)?:
            return try l.map {
                guard case .int(let i) = $0 else { throw APIError.badRequest("'\(key)' must be a list of integers", param: key) }
                return i
            }
        default: throw APIError.badRequest("'\(key)' must be a list of integers", param: key)
        }
    }

    /// The sampling parameters common to both endpoints (OpenAI's, plus vLLM's extras).
    func sampling(vocabularySize: Int) throws -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = Float(try number("temperature", in: 0...2) ?? 1)
        p.topP = Float(try number("top_p", in: 0...1) ?? 1)
        guard p.topP > 0 else { throw APIError.badRequest("'top_p' must be greater than 0", param: "top_p") }
        p.topK = max(0, try int("top_k", in: -1...1_000_000) ?? 0)
        p.minP = Float(try number("min_p", in: 0...1) ?? 0)
        p.presencePenalty = Float(try number("presence_penalty", in: -2...2) ?? 0)
        p.frequencyPenalty = Float(try number("frequency_penalty", in: -2...2) ?? 0)
        p.repetitionPenalty = Float(try number("repetition_penalty", in: 0.01...10) ?? 1)
        if let seed = try int("seed") { p.seed = UInt64(bitPattern: Int64(seed)) }
        p.stop = try strings("stop")
        guard p.stop.count <= 16 else { throw APIError.badRequest("at most 16 stop strings", param: "stop") }
        p.stopTokenIDs = Set(try intList("stop_token_ids"))
        p.n = try int("n", in: 1...1_000) ?? 1
        p.ignoreEOS = try bool("ignore_eos") ?? false
        switch self["logit_bias"] {
        case nil: break
        case .dict(let d)?:
            for (key, value) in d.pairs {
                guard let id = Int(key), (0..<vocabularySize).contains(id) else {
                    throw APIError.badRequest("'logit_bias' keys must be token ids below \(vocabularySize), got \(key.debugDescription)", param: "logit_bias")
                }
                let bias: Double
                switch value {
                case .int(let i): bias = Double(i)
                case .double(let x): bias = x
                default: throw APIError.badRequest("'logit_bias' values must be numbers", param: "logit_bias")
                }
                guard (-100...100).contains(bias) else { throw APIError.badRequest("'logit_bias' values must be between -100 and 100", param: "logit_bias") }
                p.logitBias[id] = Float(bias)
            }
        default: throw APIError.badRequest("'logit_bias' must be an object mapping token ids to numbers", param: "logit_bias")
        }
        return p
    }
}

extension JinjaValue {
    static func object(_ pairs: [(String, JinjaValue)]) -> JinjaValue { .dict(JinjaDict(pairs)) }
    static func str(_ s: String?) -> JinjaValue { s.map { .string($0) } ?? .none }
}

/// A request's list of token ids, each checked against the vocabulary (a 400 naming `what` otherwise).
func tokenIDs(_ items: [JinjaValue], vocabulary: Int, what: String, param: String) throws -> [Int] {
    try items.map {
        guard case .int(let id) = $0, (0..<vocabulary).contains(id) else {
            throw APIError.badRequest("\(what) must hold token ids between 0 and \(vocabulary - 1)", param: param)
        }
        return id
    }
}
