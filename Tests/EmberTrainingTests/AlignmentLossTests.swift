import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// The reward, DPO, GRPO and PPO losses against TRL (`scripts/fixtures/alignment-reference.py`:
/// TRL 1.16's own loss code on fixed float64 tensors, PPO transcribed from TRL 1.12): values,
/// TRL's metrics, and the gradients torch's autograd gives. Where a standard deviation enters
/// (GRPO's advantages, PPO's whitening) TRL's Bessel factor count / (count − 1) is a float32
/// division, which moves the results by about 3e-8 relative; those are compared at 1e-7.
@Suite struct AlignmentLossTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func fixture(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: root.appendingPathComponent("Tests/Fixtures/alignment/\(name).json"))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func numbers(_ value: Any?) -> [Double] { (value as? [Any] ?? []).map { ($0 as? NSNumber)?.doubleValue ?? .nan } }
    static func matrix(_ value: Any?) -> [[Double]] { (value as? [Any] ?? []).map(numbers) }
    static func flags(_ value: Any?) -> [[Bool]] { matrix(value).map { $0.map { $0 != 0 } } }
    static func number(_ value: Any?) -> Double { (value as? NSNumber)?.doubleValue ?? .nan }

    static func difference(_ a: [Double], _ b: [Double]) -> Double {
        precondition(a.count == b.count, "\(a.count) values against \(b.count)")
        return zip(a, b).map { abs($0 - $1) }.max() ?? 0
    }

    /// The largest difference of the metrics TRL logs (some in float32, hence the 1e-6 bound on them).
    static func metricsDifference(_ ours: [String: Double], _ theirs: Any?) -> Double {
        let expected = theirs as? [String: Any] ?? [:]
        return expected.map { key, value in abs((ours[key] ?? .nan) - number(value)) }.max() ?? 0
    }

    @Test func rewardModelLoss() throws {
        let f = try Self.fixture("reward")
        let chosen = Self.numbers(f["rewards_chosen"]), rejected = Self.numbers(f["rewards_rejected"]), margins = Self.numbers(f["margin"])
        for (name, value) in try #require(f["cases"] as? [String: [String: Any]]).sorted(by: { $0.key < $1.key }) {
            let result = RewardModelLoss.compute(chosen: chosen, rejected: rejected, margins: value["margin"] as? Bool == true ? margins : nil,
                                                 centering: (value["center_rewards_coefficient"] as? NSNumber)?.doubleValue)
            let loss = abs(result.loss - Self.number(value["loss"]))
            let gradient = max(Self.difference(result.dChosen, Self.numbers(value["grad_chosen"])),
                               Self.difference(result.dRejected, Self.numbers(value["grad_rejected"])))
            let metrics = Self.metricsDifference(result.metrics, value["metrics"])
            print("reward loss \(name): loss \(result.loss) (difference \(loss)), gradients \(gradient), metrics \(metrics)")
            #expect(loss < 1e-12 && gradient < 1e-12 && metrics < 1e-12)
        }
    }

    @Test func dpoLosses() throws {
        let f = try Self.fixture("dpo")
        let pc = Self.numbers(f["policy_chosen_logps"]), pr = Self.numbers(f["policy_rejected_logps"])
        let rc = Self.numbers(f["reference_chosen_logps"]), rr = Self.numbers(f["reference_rejected_logps"])
        let nc = Self.numbers(f["chosen_tokens"]).map { Int($0) }, nr = Self.numbers(f["rejected_tokens"]).map { Int($0) }
        for (name, value) in try #require(f["cases"] as? [String: [String: Any]]).sorted(by: { $0.key < $1.key }) {
            let kind = try #require(DPOLoss.Kind(rawValue: value["loss_type"] as? String ?? ""))
            let dpo = DPOLoss(kind: kind, beta: Self.number(value["beta"]), labelSmoothing: kind == .robust ? Self.number(value["label_smoothing"]) : 0)
            let sameAsReference = value["policy_is_reference"] as? Bool == true
            let result = dpo.compute(policyChosen: sameAsReference ? rc : pc, policyRejected: sameAsReference ? rr : pr,
                                     referenceChosen: rc, referenceRejected: rr, chosenTokens: nc, rejectedTokens: nr)
            let loss = abs(result.loss - Self.number(value["loss"]))
            let gradient = max(Self.difference(result.dChosen, Self.numbers(value["grad_policy_chosen"])),
                               Self.difference(result.dRejected, Self.numbers(value["grad_policy_rejected"])))
            let metrics = Self.metricsDifference(result.metrics, value["metrics"])
            print("DPO \(name): loss \(result.loss) (difference \(loss)), gradients \(gradient), metrics \(metrics)")
            #expect(loss < 1e-12 && gradient < 1e-12 && metrics < 1e-6)
            if sameAsReference {
                #expect(abs(result.loss - log(2)) < 1e-12)
                #expect(result.metrics["rewards/accuracies"] == 0)
            }
        }
    }

    @Test func grpoAdvantagesAndLosses() throws {
        let f = try Self.fixture("grpo")
        let rewards = Self.numbers(f["rewards"]), groupSize = Int(Self.number(f["num_generations"]))
        for (name, value) in try #require(f["advantages"] as? [String: [String: Any]]).sorted(by: { $0.key < $1.key }) {
            let scale = try #require(GRPO.RewardScale(rawValue: name))
            let (advantages, metrics) = GRPO.advantages(rewards: rewards, groupSize: groupSize, scale: scale)
            let a = Self.difference(advantages, Self.numbers(value["advantages"])), m = Self.metricsDifference(metrics, value["metrics"])
            print("GRPO advantages, scale \(name): difference \(a), metrics \(m) (frac_reward_zero_std \(metrics["frac_reward_zero_std"]!))")
            #expect(a < 1e-7 && m < 1e-6)
        }
        // Ragged rows: each sequence's completion tokens.
        let lengths = Self.numbers(f["completion_lengths"]).map { Int($0) }
        func rows(_ key: String) -> [[Double]] { zip(Self.matrix(f[key]), lengths).map { Array($0.prefix($1)) } }
        let logps = rows("policy_logps"), old = rows("old_logps"), reference = rows("ref_logps")
        let advantages = GRPO.advantages(rewards: rewards, groupSize: groupSize, scale: .group).advantages
        for (name, value) in try #require(f["losses"] as? [String: [String: Any]]).sorted(by: { $0.key < $1.key }) {
            let aggregation = try #require(GRPO.Aggregation(rawValue: value["loss_type"] as? String ?? ""))
            let policy = GRPO.PolicyLoss(epsilonLow: Self.number(f["epsilon"]), epsilonHigh: Self.number(f["epsilon_high"]), beta: Self.number(f["beta"]),
                                         aggregation: aggregation, maxCompletionLength: Int(Self.number(value["max_completion_length"])),
                                         biasCorrectedKL: value["use_bias_correction_kl"] as? Bool ?? true)
            let result = policy.compute(logps: logps, old: old, reference: reference, advantages: advantages)
            let expected = zip(Self.matrix(value["grad_policy"]), lengths).map { Array($0.prefix($1)) }
            let loss = abs(result.loss - Self.number(value["loss"]))
            let gradient = Self.difference(result.gradient.flatMap { $0 }, expected.flatMap { $0 })
            let metrics = Self.metricsDifference(result.metrics, value["metrics"])
            print("GRPO loss \(name): \(result.loss) (difference \(loss)), gradients \(gradient), metrics \(metrics)")
            #expect(loss < 1e-7 && gradient < 1e-7 && metrics < 1e-6)
        }
    }

    @Test func ppoAdvantagesAndLosses() throws {
        let f = try Self.fixture("ppo")
        let padding = Self.flags(f["padding_mask"]), paddingAfter = Self.flags(f["padding_mask_p1"])
        let valid = padding.map { $0.map(!) }, valueValid = paddingAfter.map { $0.map(!) }
        let logprobs = Self.matrix(f["logprobs"]), reference = Self.matrix(f["ref_logprobs"]), values = Self.matrix(f["values"])
        let scoreIndex = Self.numbers(f["score_index"]).map { Int($0) }
        func zeroed(_ x: [[Double]], _ keep: [[Bool]]) -> [[Double]] { zip(x, keep).map { zip($0, $1).map { $1 ? $0 : 0 } } }
        for (name, value) in try #require(f["cases"] as? [String: [String: Any]]).sorted(by: { $0.key < $1.key }) {
            let estimator = try #require(PPO.KLEstimator(rawValue: value["kl_estimator"] as? String ?? ""))
            var (kl, rewards) = PPO.rewards(logprobs: logprobs, reference: reference, scores: Self.numbers(f["scores"]), scoreIndex: scoreIndex,
                                            klCoef: Self.number(value["kl_coef"]), estimator: estimator)
            if value["whiten_rewards"] as? Bool == true { rewards = zeroed(PPO.whiten(rewards, valid: valueValid, shiftMean: false), valueValid) }
            var (advantages, returns) = PPO.advantages(rewards: rewards, values: values, gamma: Self.number(value["gamma"]), lambda: Self.number(value["lam"]))
            let raw = advantages
            advantages = zeroed(PPO.whiten(advantages, valid: valid), valid)
            let policy = PPO.policyLoss(new: Self.matrix(f["new_logprobs"]), old: logprobs, advantages: advantages, valid: valid, clip: Self.number(f["cliprange"]))
            let critic = PPO.valueLoss(new: Self.matrix(f["new_values"]), old: values, returns: returns, valid: valueValid, clip: Self.number(f["cliprange_value"]))
            func d(_ ours: [[Double]], _ key: String) -> Double { Self.difference(ours.flatMap { $0 }, Self.matrix(value[key]).flatMap { $0 }) }
            let shaping = max(d(kl, "kl"), d(rewards, "rewards"), d(raw, "advantages_raw"), d(returns, "returns"), d(advantages, "advantages"))
            let losses = max(abs(policy.loss - Self.number(value["pg_loss"])), abs(critic.loss - Self.number(value["vf_loss"])),
                             abs(policy.loss + Self.number(f["vf_coef"]) * critic.loss - Self.number(value["loss"])))
            let gradients = max(d(policy.gradient, "grad_pg_new_logprobs"), d(critic.gradient, "grad_vf_new_values"))
            let metrics = value["loss_metrics"] as? [String: Any] ?? [:]
            let clipping = max(abs(policy.clipFraction - Self.number(metrics["policy/clipfrac"])), abs(critic.clipFraction - Self.number(metrics["val/clipfrac"])))
            print("PPO \(name): KL-shaped rewards, GAE, returns and whitening \(shaping); policy and value losses \(losses); gradients \(gradients); clip fractions \(clipping)")
            #expect(shaping < 1e-7 && losses < 1e-7 && gradients < 1e-7 && clipping < 1e-6)
        }
    }

    /// The path DPO's gradient takes, logits → token log-probabilities → per-sequence sums → the
    /// loss computed outside the tape, against central differences (in Double: the loss is
    /// evaluated on the f32 logits).
    @Test func dpoGradientThroughTheTape() {
        var random = SplitMix64(seed: 5)
        let vocabulary = 11, tokens = 14
        let logits = Variable(shape: [tokens, vocabulary], values: (0..<tokens * vocabulary).map { _ in Float(random.nextNormal()) })
        let targets = (0..<tokens).map { i in i % 5 == 0 ? Int32(-1) : Int32(random.next() % UInt64(vocabulary)) }
        // Two pairs: chosen 0..<4 and 4..<7, rejected 7..<11 and 11..<14.
        let segments = [0..<4, 4..<7, 7..<11, 11..<14]
        let reference = [-9.0, -7.5, -8.0, -6.0]
        for kind in DPOLoss.Kind.allCases {
            let dpo = DPOLoss(kind: kind, beta: 0.1, labelSmoothing: kind == .robust ? 0.1 : 0)
            func loss(_ tape: Tape) -> Variable {
                let sums = tape.segmentSums(tape.tokenLogProbabilities(logits, targets: targets), segments)
                return tape.externalLoss(sums) { s in
                    let r = dpo.compute(policyChosen: [s[0], s[1]], policyRejected: [s[2], s[3]], referenceChosen: [reference[0], reference[1]],
                                        referenceRejected: [reference[2], reference[3]], chosenTokens: [3, 3], rejectedTokens: [4, 2])
                    return (r.loss, r.dChosen + r.dRejected)
                }
            }
            logits.zeroGradient()
            let tape = Tape()
            tape.backward(loss(tape))
            let analytic = logits.gradient.values
            var worst = 0.0
            let epsilon: Float = 1e-2
            for j in stride(from: 0, to: logits.count, by: 7) {
                let saved = logits.pointer[j]
                logits.pointer[j] = saved + epsilon
                let plus = Double(loss(Tape(recording: false)).values[0])
                logits.pointer[j] = saved - epsilon
                let minus = Double(loss(Tape(recording: false)).values[0])
                logits.pointer[j] = saved
                worst = max(worst, abs((plus - minus) / Double(2 * epsilon) - Double(analytic[j])))
            }
            let scale = Double(analytic.map(abs).max()!)
            print("DPO \(kind) through the tape: worst finite-difference error \(worst / scale) of the largest gradient (\(scale))")
            #expect(scale > 0 && worst / scale < 1e-2)
        }
    }
}
