import EmberModels
import Foundation

/// How one request's tokens are chosen and when generation stops (OpenAI's parameters).
public struct SamplingParameters: Sendable {
    /// 0 picks the most likely token (greedy).
    public var temperature: Float = 1
    /// Keep the k most likely tokens; 0 keeps all.
    public var topK = 0
    public var topP: Float = 1
    /// Drop tokens less likely than `minP` times the most likely one.
    public var minP: Float = 0
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// Divides positive logits (multiplies negative ones) of every token seen in prompt or output.
    public var repetitionPenalty: Float = 1
    public var logitBias: [Int: Float] = [:]
    /// Same seed, same output; nil draws a seed.
    public var seed: UInt64?
    public var stop: [String] = []
    public var stopTokenIDs: Set<Int> = []
    public var maxTokens = 16
    public var n = 1
    /// Log-probabilities of the chosen token (and `topLogprobs` alternatives) under the model.
    public var logprobs = false
    public var topLogprobs = 0
    public var ignoreEOS = false
    public init() {}
}

/// A chosen token's log-probability and the most likely alternatives at that step.
public struct TokenLogprob: Sendable {
    public let token: Int
    public let logprob: Float
    public let top: [(token: Int, logprob: Float)]
}

/// Applies the sampling parameters to one step's logits for one choice.
struct ChoiceSampler {
    private var generator: SplitMix64
    let parameters: SamplingParameters

    init(parameters: SamplingParameters, seed: UInt64) {
        self.parameters = parameters
        generator = SplitMix64(seed: seed)
    }

    /// The next token. `seen` holds prompt and output tokens (repetition penalty), `counts` how often
    /// each token was generated (presence and frequency penalties).
    mutating func sample(_ raw: [Float], seen: Set<Int>, counts: [Int: Int], banned: Set<Int>) -> (token: Int, logprob: TokenLogprob?) {
        let p = parameters
        var logits = raw
        for (id, bias) in p.logitBias where logits.indices.contains(id) { logits[id] += bias }
        if p.repetitionPenalty != 1 {
            for id in seen where logits.indices.contains(id) {
                logits[id] = logits[id] > 0 ? logits[id] / p.repetitionPenalty : logits[id] * p.repetitionPenalty
            }
        }
        if p.presencePenalty != 0 || p.frequencyPenalty != 0 {
            for (id, count) in counts where logits.indices.contains(id) {
                logits[id] -= p.frequencyPenalty * Float(count) + p.presencePenalty
            }
        }
        for id in banned where logits.indices.contains(id) { logits[id] = -.infinity }
        let token: Int
        if p.temperature <= 0 {
            var best = 0
            for i in logits.indices where logits[i] > logits[best] { best = i }
            token = best
        } else {
            token = draw(logits)
        }
        return (token, p.logprobs ? Self.logprobs(raw, chosen: token, top: p.topLogprobs) : nil)
    }

    private mutating func draw(_ logits: [Float]) -> Int {
        let p = parameters
        let maximum = logits.max() ?? 0
        // A token 40·T below the best has probability below e⁻⁴⁰ relative to it: left out.
        let floor = maximum - 40 * p.temperature
        var candidates: [(id: Int, logit: Float)] = []
        for (i, l) in logits.enumerated() where l >= floor && l > -.infinity { candidates.append((i, l / p.temperature)) }
        candidates.sort { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
        if p.topK > 0, p.topK < candidates.count { candidates.removeSubrange(p.topK...) }
        let top = candidates[0].logit
        var probabilities = candidates.map { Double(expf($0.logit - top)) }
        var total = probabilities.reduce(0, +)
        if p.topP < 1 {
            var cumulative = 0.0
            var keep = probabilities.count
            for (i, q) in probabilities.enumerated() {
                cumulative += q / total
                if cumulative >= Double(p.topP) { keep = i + 1; break }
            }
            probabilities.removeSubrange(keep...)
            candidates.removeSubrange(keep...)
        }
        if p.minP > 0 {
            let keep = probabilities.firstIndex { $0 < Double(p.minP) * probabilities[0] } ?? probabilities.count
            probabilities.removeSubrange(max(1, keep)...)
            candidates.removeSubrange(max(1, keep)...)
        }
        total = probabilities.reduce(0, +)
        var r = generator.nextUnit() * total
        for (i, q) in probabilities.enumerated() {
            r -= q
            if r < 0 { return candidates[i].id }
        }
        return candidates[candidates.count - 1].id
    }

    /// log-softmax of the model's logits: the chosen token's value and the `top` best.
    static func logprobs(_ logits: [Float], chosen: Int, top: Int) -> TokenLogprob {
        let maximum = logits.max() ?? 0
        var sum = 0.0
        for l in logits { sum += Double(expf(l - maximum)) }
        let logZ = Float(Double(maximum) + log(sum))
        var best: [(token: Int, logprob: Float)] = []
        if top > 0 {
            // The `top` largest, kept sorted (best first, lower id on ties) in one pass.
            var kept: [(token: Int, logit: Float)] = []
            for (i, l) in logits.enumerated() where kept.count < top || l > kept[kept.count - 1].logit {
                let at = kept.firstIndex { l > $0.logit } ?? kept.count
                kept.insert((i, l), at: at)
                if kept.count > top { kept.removeLast() }
            }
            best = kept.map { ($0.token, $0.logit - logZ) }
        }
        return TokenLogprob(token: chosen, logprob: logits[chosen] - logZ, top: best)
    }
}

/// Finds stop strings in generated text, including ones that span tokens, and holds back text that
/// might still turn into one. Only the held-back bytes are kept: released text can never be part of
/// a later match, because everything that could start one is held.
struct StopMatcher {
    private let stops: [[UInt8]]
    private var pending: [UInt8] = []

    init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty }.map { Array($0.utf8) } }

    /// Adds decoded text; returns the text now safe to release and whether a stop string ended it.
    mutating func append(_ piece: String) -> (release: String, stopped: Bool) {
        pending += piece.utf8
        if stops.isEmpty { return (flush(), false) }
        var earliest: Int?
        for s in stops where s.count <= pending.count {
            for i in 0...(pending.count - s.count) where pending[i] == s[0] && pending[i..<i + s.count].elementsEqual(s) {
                earliest = min(earliest ?? i, i)
                break
            }
        }
        if let earliest {
            defer { pending = [] }
            return (String(decoding: pending[..<earliest], as: UTF8.self), true)
        }
        // Hold back the longest suffix that is a prefix of a stop string, in whole characters.
        var hold = 0
        for s in stops {
            for k in stride(from: min(s.count - 1, pending.count), to: hold, by: -1)
            where pending[(pending.count - k)...].elementsEqual(s[..<k]) {
                hold = k
                break
            }
        }
        var end = pending.count - hold
        while end > 0, end < pending.count, pending[end] & 0xC0 == 0x80 { end -= 1 }
        defer { pending.removeFirst(end) }
        return (String(decoding: pending[..<end], as: UTF8.self), false)
    }

    /// Releases whatever was held back (generation ended for another reason).
    mutating func flush() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }
}
