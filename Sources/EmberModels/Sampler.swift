import EmberTensor
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

    /// The most likely token every time.
    public static var greedy: SamplingParameters {
        var p = SamplingParameters()
        p.temperature = 0
        return p
    }
}

/// A chosen token's log-probability and the most likely alternatives at that step.
public struct TokenLogprob: Sendable {
    public let token: Int
    public let logprob: Float
    public let top: [(token: Int, logprob: Float)]
}

/// Chooses each next token of one sequence from the model's logits, as every command and the server
/// do: logit bias, repetition penalty, presence and frequency penalties, then greedy at temperature 0
/// or temperature, top-k, top-p and min-p filtering and a draw from a generator seeded per sequence
/// (same seed and parameters, same tokens).
public struct Sampler: Sendable {
    private var generator: SplitMix64
    public let parameters: SamplingParameters

    public init(parameters: SamplingParameters, seed: UInt64) {
        self.parameters = parameters
        generator = SplitMix64(seed: seed)
    }

    /// The next token. `seen` holds prompt and output tokens (repetition penalty), `counts` how often
    /// each token was generated (presence and frequency penalties).
    public mutating func sample(_ raw: [Float], seen: Set<Int> = [], counts: [Int: Int] = [:], banned: Set<Int> = []) -> (token: Int, logprob: TokenLogprob?) {
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
        // Only the filters need the candidates in order; a draw from them all does not.
        if p.topK > 0 || p.topP < 1 || p.minP > 0 {
            candidates.sort { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
        }
        if p.topK > 0, p.topK < candidates.count { candidates.removeSubrange(p.topK...) }
        let top = maximum / p.temperature  // the best candidate's logit, sorted or not
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
    public static func logprobs(_ logits: [Float], chosen: Int, top: Int) -> TokenLogprob {
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
