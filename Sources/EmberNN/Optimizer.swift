import EmberTensor
import Foundation

/// AdamW with decoupled weight decay (Loshchilov & Hutter), step for step as `torch.optim.AdamW`:
///
///     p ← p · (1 − lr · λ)                    (only parameters in the decayed group)
///     m ← m + (g − m)(1 − β₁);   v ← β₂ v + (1 − β₂) g²
///     p ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
///
/// Frozen parameters (`requiresGradient == false`) are skipped.
public final class AdamW {
    public struct Settings: Sendable, Equatable {
        public var beta1: Float = 0.9
        public var beta2: Float = 0.95
        public var epsilon: Float = 1e-8
        public var weightDecay: Float = 0.1
        public init(beta1: Float = 0.9, beta2: Float = 0.95, epsilon: Float = 1e-8, weightDecay: Float = 0.1) {
            self.beta1 = beta1
            self.beta2 = beta2
            self.epsilon = epsilon
            self.weightDecay = weightDecay
        }
    }

    public let parameters: [Variable]
    /// Whether each parameter takes weight decay.
    public let decays: [Bool]
    public let settings: Settings
    /// The part of the flat parameter layout (parameter after parameter, a `ParameterArena`'s
    /// order) this optimizer updates and keeps moments for: all of it, or one rank's shard (ZeRO),
    /// which may begin and end inside a tensor.
    public let range: Range<Int>
    /// First and second moments of `range`, flat. `moments` and `squares` view them one parameter
    /// at a time when the optimizer holds the whole model (empty for a shard).
    public let flatMoments: FloatBuffer
    public let flatSquares: FloatBuffer
    public let moments: [FloatBuffer]
    public let squares: [FloatBuffer]
    /// Where each parameter starts in the flat layout.
    let offsets: [Int]
    /// Steps taken so far.
    public var step = 0

    public init(parameters: [Variable], decays: [Bool], settings: Settings = Settings(), range: Range<Int>? = nil) {
        precondition(parameters.count == decays.count)
        self.parameters = parameters
        self.decays = decays
        self.settings = settings
        var offsets: [Int] = [], total = 0
        for p in parameters {
            offsets.append(total)
            total += p.count
        }
        self.offsets = offsets
        let range = range ?? 0..<total
        precondition(range.lowerBound >= 0 && range.upperBound <= total, "range \(range) is outside the \(total) parameters")
        self.range = range
        flatMoments = FloatBuffer(count: range.count)
        flatSquares = FloatBuffer(count: range.count)
        let whole = range == 0..<total
        moments = whole ? zip(parameters, offsets).map { [flatMoments] p, o in FloatBuffer(viewing: flatMoments, offset: o, count: p.count) } : []
        squares = whole ? zip(parameters, offsets).map { [flatSquares] p, o in FloatBuffer(viewing: flatSquares, offset: o, count: p.count) } : []
    }

    /// One update with learning rate `lr` from the parameters' current gradients (of `range` only).
    public func update(learningRate lr: Float, pool: ThreadPool = .shared) {
        step += 1
        let s = settings
        let correction1 = 1 - powf(s.beta1, Float(step)), correction2 = (1 - powf(s.beta2, Float(step))).squareRoot()
        let stepSize = lr / correction1
        for (i, p) in parameters.enumerated() where p.requiresGradient && p.hasGradient {
            // The part of this parameter inside the range, as offsets into the parameter.
            let first = max(range.lowerBound, offsets[i]) - offsets[i], end = min(range.upperBound, offsets[i] + p.count) - offsets[i]
            guard first < end else { continue }
            let w = p.pointer + first, g = p.gradient.pointer + first
            let m = flatMoments.pointer + (offsets[i] + first - range.lowerBound), v = flatSquares.pointer + (offsets[i] + first - range.lowerBound)
            let decay: Float = decays[i] ? 1 - lr * s.weightDecay : 1
            pool.parallelRanges(end - first, minimumChunk: 4096) { r in
                for j in r {
                    if decays[i] { w[j] *= decay }
                    m[j] += (g[j] - m[j]) * (1 - s.beta1)
                    v[j] = v[j] * s.beta2 + (1 - s.beta2) * g[j] * g[j]
                    w[j] -= stepSize * (m[j] / ((v[j]).squareRoot() / correction2 + s.epsilon))
                }
            }
        }
    }
}

/// Linear warmup to `maximum` over `warmup` steps, then cosine decay to `minimum` at `total` steps
/// (and `minimum` after). Step numbers start at 0:
///     lr(s) = maximum · (s + 1) / warmup                                      s < warmup
///     lr(s) = minimum + ½ (maximum − minimum)(1 + cos(π (s − warmup) / (total − warmup)))
public struct LearningRateSchedule: Sendable, Equatable, Codable {
    public var maximum: Float
    public var minimum: Float
    public var warmup: Int
    public var total: Int

    public init(maximum: Float, minimum: Float, warmup: Int, total: Int) {
        self.maximum = maximum
        self.minimum = minimum
        self.warmup = warmup
        self.total = total
    }

    public func callAsFunction(_ step: Int) -> Float {
        if step < warmup { return maximum * Float(step + 1) / Float(warmup) }
        guard total > warmup else { return minimum }
        let progress = min(1, Double(step - warmup) / Double(total - warmup))
        return minimum + Float(0.5 * Double(maximum - minimum) * (1 + cos(Double.pi * progress)))
    }
}
