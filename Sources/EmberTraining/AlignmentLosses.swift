import Foundation

/// The losses of post-training as TRL defines them, on the scores and log-probabilities a model's
/// forward gives: each returns the loss, its gradient with respect to those inputs (which the
/// trainers hand back to the tape) and TRL's logged metrics. Arithmetic is in Double.

func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)) }
/// log σ(x), stable for large |x|.
func logSigmoid(_ x: Double) -> Double { x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)) }
func mean(_ x: [Double]) -> Double { x.isEmpty ? 0 : x.reduce(0, +) / Double(x.count) }
/// The Bessel-corrected standard deviation (torch's `std`); NaN for fewer than two values.
func standardDeviation(_ x: [Double]) -> Double {
    guard x.count > 1 else { return .nan }
    let m = mean(x)
    return (x.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(x.count - 1)).squareRoot()
}

/// The Bradley–Terry loss of a reward model (TRL's `RewardTrainer`): −mean log σ(r_chosen −
/// r_rejected − margin), plus c · mean((r_chosen + r_rejected)²) with a centring coefficient c.
public enum RewardModelLoss {
    public struct Result {
        public var loss: Double
        public var dChosen: [Double]
        public var dRejected: [Double]
        /// accuracy (r_chosen > r_rejected), margin (mean r_chosen − r_rejected), min/mean/max_reward.
        public var metrics: [String: Double]
    }

    public static func compute(chosen: [Double], rejected: [Double], margins: [Double]? = nil, centering: Double? = nil) -> Result {
        precondition(chosen.count == rejected.count && !chosen.isEmpty && (margins?.count ?? chosen.count) == chosen.count)
        let n = Double(chosen.count)
        var loss = 0.0, dChosen = [Double](repeating: 0, count: chosen.count), dRejected = dChosen
        for i in chosen.indices {
            let d = chosen[i] - rejected[i] - (margins?[i] ?? 0)
            loss -= logSigmoid(d) / n
            let g = -sigmoid(-d) / n
            dChosen[i] = g
            dRejected[i] = -g
            if let c = centering {
                let s = chosen[i] + rejected[i]
                loss += c * s * s / n
                dChosen[i] += 2 * c * s / n
                dRejected[i] += 2 * c * s / n
            }
        }
        let all = chosen + rejected
        let metrics = ["accuracy": mean(zip(chosen, rejected).map { $0 > $1 ? 1 : 0 }), "margin": mean(zip(chosen, rejected).map { $0 - $1 }),
                       "min_reward": all.min()!, "mean_reward": mean(all), "max_reward": all.max()!]
        return Result(loss: loss, dChosen: dChosen, dRejected: dRejected, metrics: metrics)
    }
}

/// Direct preference optimisation (TRL's `DPOTrainer`), from the summed log-probabilities of each
/// pair's completions under the policy and the reference. With Δ = (π_c − ref_c) − (π_r − ref_r):
///
///     sigmoid  −log σ(βΔ)
///     hinge    max(0, 1 − βΔ)
///     ipo      ((π_c − ref_c)/n_c − (π_r − ref_r)/n_r − 1/(2β))²   (n: completion tokens)
///     robust   (−(1 − ε) log σ(βΔ) + ε log σ(−βΔ)) / (1 − 2ε)       (ε: label smoothing)
///
/// averaged over the pairs. Metrics: `rewards/chosen` and `rewards/rejected` (the means of
/// β(π − ref)), `rewards/accuracies` (chosen reward > rejected), `rewards/margins`, and
/// `logps/chosen`, `logps/rejected` (the policy's means).
public struct DPOLoss: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable { case sigmoid, ipo, hinge, robust }

    public var kind: Kind
    public var beta: Double
    /// ε of the robust loss (the other kinds have none, as in TRL).
    public var labelSmoothing: Double

    public init(kind: Kind = .sigmoid, beta: Double = 0.1, labelSmoothing: Double = 0) {
        self.kind = kind
        self.beta = beta
        self.labelSmoothing = labelSmoothing
    }

    public struct Result {
        public var loss: Double
        /// The gradient with respect to the policy's chosen and rejected log-probabilities.
        public var dChosen: [Double]
        public var dRejected: [Double]
        public var metrics: [String: Double]
    }

    public func compute(policyChosen: [Double], policyRejected: [Double], referenceChosen: [Double], referenceRejected: [Double],
                        chosenTokens: [Int], rejectedTokens: [Int]) -> Result {
        let n = policyChosen.count
        precondition(n > 0 && [policyRejected.count, referenceChosen.count, referenceRejected.count, chosenTokens.count, rejectedTokens.count].allSatisfy { $0 == n })
        let b = beta, e = labelSmoothing, count = Double(n)
        var loss = 0.0, dChosen = [Double](repeating: 0, count: n), dRejected = dChosen
        for i in 0..<n {
            let chosen = policyChosen[i] - referenceChosen[i], rejected = policyRejected[i] - referenceRejected[i]
            let delta = chosen - rejected
            let value: Double, dDelta: Double
            switch kind {
            case .sigmoid:
                (value, dDelta) = (-logSigmoid(b * delta), -b * sigmoid(-b * delta))
            case .hinge:
                (value, dDelta) = (max(0, 1 - b * delta), 1 - b * delta > 0 ? -b : 0)
            case .robust:
                value = (-(1 - e) * logSigmoid(b * delta) + e * logSigmoid(-b * delta)) / (1 - 2 * e)
                dDelta = (-(1 - e) * b * sigmoid(-b * delta) - e * b * sigmoid(b * delta)) / (1 - 2 * e)
            case .ipo:
                let nc = Double(max(chosenTokens[i], 1)), nr = Double(max(rejectedTokens[i], 1))
                let h = chosen / nc - rejected / nr - 1 / (2 * b)
                loss += h * h / count
                dChosen[i] = 2 * h / nc / count
                dRejected[i] = -2 * h / nr / count
                continue
            }
            loss += value / count
            dChosen[i] = dDelta / count
            dRejected[i] = -dDelta / count
        }
        let chosenRewards = (0..<n).map { b * (policyChosen[$0] - referenceChosen[$0]) }
        let rejectedRewards = (0..<n).map { b * (policyRejected[$0] - referenceRejected[$0]) }
        let metrics = ["rewards/chosen": mean(chosenRewards), "rewards/rejected": mean(rejectedRewards),
                       "rewards/accuracies": mean(zip(chosenRewards, rejectedRewards).map { $0 > $1 ? 1 : 0 }),
                       "rewards/margins": mean(zip(chosenRewards, rejectedRewards).map { $0 - $1 }),
                       "logps/chosen": mean(policyChosen), "logps/rejected": mean(policyRejected)]
        return Result(loss: loss, dChosen: dChosen, dRejected: dRejected, metrics: metrics)
    }
}

/// Group relative policy optimisation (TRL's `GRPOTrainer`).
public enum GRPO {
    /// How advantages are scaled: by the group's reward std, the whole batch's, or not at all.
    public enum RewardScale: String, Codable, Sendable, CaseIterable { case group, batch, none }
    /// How per-token losses become the loss: per-sequence means averaged (grpo), a sum over
    /// sequences × the maximum completion length (dr_grpo), or a mean over every token (dapo).
    public enum Aggregation: String, Codable, Sendable, CaseIterable {
        case grpo
        case drGRPO = "dr_grpo"
        case dapo
    }

    /// Advantages of rewards laid out group after group (`groupSize` completions per prompt):
    /// r minus its group's mean, divided by std + 1e-4 (the group's, or the batch's) unless the
    /// scale is none. Metrics: `reward` (mean), `reward_std` (the batch's std) and
    /// `frac_reward_zero_std` (the fraction of rewards whose scaling std is zero: all-equal groups).
    public static func advantages(rewards: [Double], groupSize: Int, scale: RewardScale) -> (advantages: [Double], metrics: [String: Double]) {
        precondition(groupSize > 0 && rewards.count % groupSize == 0 && !rewards.isEmpty)
        let groups = stride(from: 0, to: rewards.count, by: groupSize).map { Array(rewards[$0..<$0 + groupSize]) }
        let batchStd = standardDeviation(rewards)
        var advantages: [Double] = [], zero = 0.0
        for group in groups {
            let m = mean(group), std = scale == .batch ? batchStd : standardDeviation(group)
            let isZero = std.isNaN || abs(std) <= 1e-8
            if isZero { zero += Double(group.count) }
            for r in group {
                var a = r - m
                if scale != .none { a /= (std.isNaN ? 0 : std) + 1e-4 }
                advantages.append(a.isNaN ? 0 : a)
            }
        }
        return (advantages, ["reward": mean(rewards), "reward_std": batchStd.isNaN ? 0 : batchStd,
                             "frac_reward_zero_std": zero / Double(rewards.count)])
    }

    /// The clipped-ratio policy loss, per token t of sequence i with advantage A_i:
    /// −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·KL, where ρ = exp(logp − logp_old) and KL is
    /// the k3 estimate exp(ref − logp) − (ref − logp) − 1, multiplied by ρ (`biasCorrectedKL`, TRL's
    /// default).
    public struct PolicyLoss: Sendable {
        public var epsilonLow: Double
        public var epsilonHigh: Double
        public var beta: Double
        public var aggregation: Aggregation
        /// dr_grpo's normaliser.
        public var maxCompletionLength: Int
        public var biasCorrectedKL: Bool

        public init(epsilonLow: Double = 0.2, epsilonHigh: Double? = nil, beta: Double = 0, aggregation: Aggregation = .dapo,
                    maxCompletionLength: Int = 512, biasCorrectedKL: Bool = true) {
            self.epsilonLow = epsilonLow
            self.epsilonHigh = epsilonHigh ?? epsilonLow
            self.beta = beta
            self.aggregation = aggregation
            self.maxCompletionLength = maxCompletionLength
            self.biasCorrectedKL = biasCorrectedKL
        }

        public struct Result {
            public var loss: Double
            /// The gradient with respect to each completion token's log-probability under the policy.
            public var gradient: [[Double]]
            /// kl (token mean), clip_ratio/low_mean, high_mean and region_mean (token means), low_min and
            /// high_max (the least and most clipped sequence).
            public var metrics: [String: Double]
        }

        /// `logps`, `old` and `reference` are per-token log-probabilities of each sequence's
        /// completion tokens (ragged: each row as long as its completion).
        public func compute(logps: [[Double]], old: [[Double]], reference: [[Double]]?, advantages: [Double]) -> Result {
            let sequences = logps.count
            precondition(old.count == sequences && advantages.count == sequences && (reference?.count ?? sequences) == sequences)
            let tokens = logps.reduce(0) { $0 + $1.count }
            var loss = 0.0, klSum = 0.0, low = 0.0, high = 0.0, lowMin = Double.infinity, highMax = 0.0
            var gradient = logps.map { [Double](repeating: 0, count: $0.count) }
            for i in 0..<sequences {
                let a = advantages[i], n = logps[i].count
                var sequenceLow = 0.0, sequenceHigh = 0.0
                let weight: Double = switch aggregation {
                case .grpo: 1 / (Double(max(n, 1)) * Double(sequences))
                case .drGRPO: 1 / (Double(sequences) * Double(maxCompletionLength))
                case .dapo: 1 / Double(max(tokens, 1))
                }
                for t in 0..<n {
                    let ratio = exp(logps[i][t] - old[i][t])
                    let clipped = min(max(ratio, 1 - epsilonLow), 1 + epsilonHigh)
                    // −min(ρA, clip(ρ)A): the unclipped term carries the gradient unless the clipped one is smaller.
                    var value: Double, d: Double
                    if ratio * a <= clipped * a || clipped == ratio {
                        (value, d) = (-ratio * a, -ratio * a)
                    } else {
                        (value, d) = (-clipped * a, 0)
                    }
                    if ratio < 1 - epsilonLow && a < 0 { sequenceLow += 1 }
                    if ratio > 1 + epsilonHigh && a > 0 { sequenceHigh += 1 }
                    if let reference, beta != 0 {
                        let x = reference[i][t] - logps[i][t], k3 = exp(x) - x - 1, dk3 = 1 - exp(x)
                        let kl = biasCorrectedKL ? k3 * ratio : k3
                        value += beta * kl
                        d += beta * (biasCorrectedKL ? dk3 * ratio + k3 * ratio : dk3)
                        klSum += kl
                    }
                    loss += value * weight
                    gradient[i][t] = d * weight
                }
                low += sequenceLow
                high += sequenceHigh
                if n > 0 {
                    lowMin = min(lowMin, sequenceLow / Double(n))
                    highMax = max(highMax, sequenceHigh / Double(n))
                }
            }
            let perToken = Double(max(tokens, 1))
            let metrics = ["kl": klSum / perToken, "clip_ratio/low_mean": low / perToken, "clip_ratio/high_mean": high / perToken,
                           "clip_ratio/region_mean": (low + high) / perToken, "clip_ratio/low_min": lowMin.isFinite ? lowMin : 0,
                           "clip_ratio/high_max": highMax]
            return Result(loss: loss, gradient: gradient, metrics: metrics)
        }
    }
}

/// Proximal policy optimisation over rollouts of a batch of rows × T response tokens (TRL's
/// `PPOTrainer`, as of TRL 1.12, its last release with PPO). `padding` marks positions after a
/// row's last token; `valuePadding` marks those after the position behind it (where the score
/// lands and whose value is still learned).
public enum PPO {
    public enum KLEstimator: String, Codable, Sendable, CaseIterable { case k1, k3 }

    /// (x − mean)/√(var + 1e-8) over the unmasked values of the whole batch (var Bessel-corrected);
    /// the mean added back unless `shiftMean`.
    public static func whiten(_ x: [[Double]], valid: [[Bool]], shiftMean: Bool = true) -> [[Double]] {
        var sum = 0.0, count = 0.0
        for (row, v) in zip(x, valid) { for (a, ok) in zip(row, v) where ok { sum += a; count += 1 } }
        let m = sum / max(count, 1)
        var squares = 0.0
        for (row, v) in zip(x, valid) { for (a, ok) in zip(row, v) where ok { squares += (a - m) * (a - m) } }
        let variance = squares / max(count, 1) * (count > 1 ? count / (count - 1) : 1)
        let scale = 1 / (variance + 1e-8).squareRoot()
        return x.map { $0.map { ($0 - m) * scale + (shiftMean ? 0 : m) } }
    }

    /// The per-token KL estimate (k1: logp − ref; k3: e^(ref−logp) − 1 − (ref − logp)), the
    /// rewards −klCoef·KL, and the score of each row added at `scoreIndex`.
    public static func rewards(logprobs: [[Double]], reference: [[Double]], scores: [Double], scoreIndex: [Int], klCoef: Double,
                               estimator: KLEstimator) -> (kl: [[Double]], rewards: [[Double]]) {
        let kl = zip(logprobs, reference).map { row, ref in
            zip(row, ref).map { p, r -> Double in
                let x = r - p
                return estimator == .k1 ? -x : exp(x) - 1 - x
            }
        }
        var rewards = kl.map { $0.map { -klCoef * $0 } }
        for (i, s) in scores.enumerated() { rewards[i][scoreIndex[i]] += s }
        return (kl, rewards)
    }

    /// Generalised advantage estimation over every position (the value after the last is 0):
    /// δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1}; returns A + V.
    public static func advantages(rewards: [[Double]], values: [[Double]], gamma: Double, lambda: Double) -> (advantages: [[Double]], returns: [[Double]]) {
        var advantages = rewards.map { [Double](repeating: 0, count: $0.count) }
        for i in rewards.indices {
            let T = rewards[i].count
            var last = 0.0
            for t in stride(from: T - 1, through: 0, by: -1) {
                let next = t + 1 < T ? values[i][t + 1] : 0
                last = rewards[i][t] + gamma * next - values[i][t] + gamma * lambda * last
                advantages[i][t] = last
            }
        }
        let returns = zip(advantages, values).map { zip($0, $1).map(+) }
        return (advantages, returns)
    }

    /// The masked mean of a per-token loss over the valid positions, with its gradient and the
    /// fraction of positions the term reports clipped.
    static func maskedMean(_ shape: [[Double]], valid: [[Bool]], _ term: (Int, Int) -> (loss: Double, gradient: Double, clipped: Bool))
        -> (loss: Double, gradient: [[Double]], clipFraction: Double) {
        let count = Double(max(valid.joined().filter { $0 }.count, 1))
        var loss = 0.0, clipped = 0.0
        var gradient = shape.map { [Double](repeating: 0, count: $0.count) }
        for i in shape.indices {
            for t in shape[i].indices where valid[i][t] {
                let (l, g, c) = term(i, t)
                loss += l / count
                gradient[i][t] = g / count
                if c { clipped += 1 }
            }
        }
        return (loss, gradient, clipped / count)
    }

    /// The clipped policy loss: the masked mean of max(−A·ρ, −A·clip(ρ, 1 ± ε)), ρ = exp(new − old),
    /// with its gradient in the new log-probabilities and the fraction of tokens clipped.
    public static func policyLoss(new: [[Double]], old: [[Double]], advantages: [[Double]], valid: [[Bool]], clip: Double)
        -> (loss: Double, gradient: [[Double]], clipFraction: Double) {
        maskedMean(new, valid: valid) { i, t in
            let a = advantages[i][t], ratio = exp(new[i][t] - old[i][t])
            let bounded = min(max(ratio, 1 - clip), 1 + clip)
            let unclippedLoss = -a * ratio, clippedLoss = -a * bounded
            // The gradient follows the larger term; ties (ρ inside the range) pass it whole.
            let gradient = unclippedLoss >= clippedLoss || bounded == ratio ? -a * ratio : 0
            return (max(unclippedLoss, clippedLoss), gradient, clippedLoss > unclippedLoss)
        }
    }

    /// The clipped value loss: ½ the masked mean of max((v − R)², (clip(v, v_old ± ε) − R)²), with
    /// its gradient in the new values and the fraction clipped.
    public static func valueLoss(new: [[Double]], old: [[Double]], returns: [[Double]], valid: [[Bool]], clip: Double)
        -> (loss: Double, gradient: [[Double]], clipFraction: Double) {
        maskedMean(new, valid: valid) { i, t in
            let v = new[i][t], r = returns[i][t]
            let bounded = min(max(v, old[i][t] - clip), old[i][t] + clip)
            let plain = (v - r) * (v - r), limited = (bounded - r) * (bounded - r)
            let gradient: Double
            if plain > limited {
                gradient = v - r
            } else if plain == limited {
                // A tie passes half through each term (all of it when the clip is inactive).
                gradient = ((v - r) + (bounded == v ? (bounded - r) : 0)) / 2
            } else {
                gradient = bounded == v ? bounded - r : 0
            }
            return (0.5 * max(plain, limited), gradient, limited > plain)
        }
    }
}
