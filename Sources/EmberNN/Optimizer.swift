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
    /// First and second moments, one view per parameter into `flatMoments` and `flatSquares`, which
    /// lay them out parameter after parameter (a `ParameterArena`'s order).
    public let moments: [FloatBuffer]
    public let squares: [FloatBuffer]
    public let flatMoments: FloatBuffer
    public let flatSquares: FloatBuffer
    /// Steps taken so far.
    public var step = 0

    public init(parameters: [Variable], decays: [Bool], settings: Settings = Settings()) {
        precondition(parameters.count == decays.count)
        self.parameters = parameters
        self.decays = decays
        self.settings = settings
        let total = parameters.reduce(0) { $0 + $1.count }
        flatMoments = FloatBuffer(count: total)
        flatSquares = FloatBuffer(count: total)
        var offset = 0, moments: [FloatBuffer] = [], squares: [FloatBuffer] = []
        for p in parameters {
            moments.append(FloatBuffer(viewing: flatMoments, offset: offset, count: p.count))
            squares.append(FloatBuffer(viewing: flatSquares, offset: offset, count: p.count))
            offset += p.count
        }
        self.moments = moments
        self.squares = squares
    }

    /// One update with learning rate `lr` from the parameters' current gradients.
    public func update(learningRate lr: Float, pool: ThreadPool = .shared) {
        step += 1
        let s = settings
        let correction1 = 1 - powf(s.beta1, Float(step)), correction2 = (1 - powf(s.beta2, Float(step))).squareRoot()
        let stepSize = lr / correction1
        for (i, p) in parameters.enumerated() where p.requiresGradient && p.hasGradient {
            let w = p.pointer, g = p.gradient.pointer, m = moments[i].pointer, v = squares[i].pointer
            let decay: Float = decays[i] ? 1 - lr * s.weightDecay : 1
            pool.parallelRanges(p.count, minimumChunk: 4096) { r in
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

/// Scales all gradients together so that their global L2 norm is at most `maximum`, as
/// `torch.nn.utils.clip_grad_norm_` does; returns the norm before clipping.
@discardableResult
public func clipGradientNorm(_ parameters: [Variable], maximum: Float) -> Float {
    var total = 0.0
    for p in parameters where p.requiresGradient && p.hasGradient {
        let g = p.gradient.pointer
        var sum = 0.0
        for j in 0..<p.count { sum += Double(g[j]) * Double(g[j]) }
        total += sum
    }
    let norm = Float(total.squareRoot())
    let coefficient = maximum / (norm + 1e-6)
    if coefficient < 1 {
        for p in parameters where p.requiresGradient && p.hasGradient {
            let g = p.gradient.pointer
            for j in 0..<p.count { g[j] *= coefficient }
        }
    }
    return norm
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
