import Foundation

/// A metric's value over a task's items and its standard error, as lm-evaluation-harness reports them.
public struct MetricValue: Sendable, Codable, Equatable {
    public var value: Double
    public var stderr: Double
}

public enum Metrics {
    /// The mean and its standard error: the sample standard deviation (n − 1) over √n, the
    /// harness's `mean_stderr` (0 for one item).
    public static func mean(_ values: [Double]) -> MetricValue {
        let n = Double(values.count), mean = values.reduce(0, +) / n
        guard values.count > 1 else { return MetricValue(value: mean, stderr: 0) }
        let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)
        return MetricValue(value: mean, stderr: (variance / n).squareRoot())
    }

    /// The unbiased estimator of pass@k from n samples of which c pass (Chen et al., 2021):
    /// 1 − C(n−c, k) / C(n, k), computed as a product to stay exact in floating point.
    public static func passAtK(n: Int, c: Int, k: Int) -> Double {
        precondition(k >= 1 && k <= n && (0...n).contains(c))
        if n - c < k { return 1 }
        if c == 0 { return 0 }
        var product = 1.0
        for i in (n - c + 1)...n { product *= 1 - Double(k) / Double(i) }
        return 1 - product
    }

    /// A ratio of sums, Σ numerator / Σ denominator over items, through `transform` (the harness's
    /// weighted perplexities), with a bootstrap standard error: the standard deviation of the
    /// metric over `resamples` resamplings of the items with replacement, drawn from `seed`.
    public static func weighted(_ pairs: [(numerator: Double, denominator: Double)], resamples: Int = 1000, seed: UInt64 = 1234,
                                transform: (Double) -> Double) -> MetricValue {
        func metric(_ indices: [Int]) -> Double {
            let n = indices.reduce(0) { $0 + pairs[$1].numerator }, d = indices.reduce(0) { $0 + pairs[$1].denominator }
            return transform(n / d)
        }
        let value = metric(Array(pairs.indices))
        guard pairs.count > 1 else { return MetricValue(value: value, stderr: 0) }
        var state = seed
        func next() -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(pairs.count))
        }
        let draws = (0..<resamples).map { _ in metric((0..<pairs.count).map { _ in next() }) }
        let spread = mean(draws).stderr * Double(resamples).squareRoot()  // the draws' sample standard deviation
        return MetricValue(value: value, stderr: spread)
    }

    /// The harness's choice metrics for one item: `acc` (the most likely choice is the target) and
    /// `acc_norm` (the same with each log-likelihood divided by its choice's length in characters,
    /// as `len(choice)` counts them; for ASCII choices, bytes).
    public static func choiceScores(logprobs: [Double], choices: [String], target: Int) -> (acc: Double, accNorm: Double) {
        let best = logprobs.indices.max { logprobs[$0] < logprobs[$1] }!
        let normalized = zip(logprobs, choices).map { $0 / Double(max(1, $1.unicodeScalars.count)) }
        let bestNormalized = normalized.indices.max { normalized[$0] < normalized[$1] }!
        return (best == target ? 1 : 0, bestNormalized == target ? 1 : 0)
    }
}

/// Exact match as the harness scores generations: the answer taken from the output by a regular
/// expression (its `regex` filter; `[invalid]` when nothing matches), then both it and the target
/// normalised (`regexes_to_ignore` removed, case folded, punctuation removed) and compared.
public struct ExactMatch: @unchecked Sendable {  // immutable; NSRegularExpression is thread-safe
    let answerPattern: NSRegularExpression?
    let last: Bool
    let ignoreCase: Bool
    let ignorePunctuation: Bool
    let ignoreRegexes: [NSRegularExpression]

    /// The task's patterns, compiled once (the task checked that they compile).
    public init(task: EvaluationTask) {
        answerPattern = task.answerPattern.flatMap { try? NSRegularExpression(pattern: $0) }
        last = task.answerMatch == "last"
        ignoreCase = task.ignoreCase
        ignorePunctuation = task.ignorePunctuation
        ignoreRegexes = task.ignoreRegexes.compactMap { try? NSRegularExpression(pattern: $0) }
    }

    /// The answer in `output`: the chosen match's first non-empty group (or the whole match), trimmed.
    public func extract(_ output: String) -> String {
        guard let regex = answerPattern else { return output }
        let range = NSRange(output.startIndex..., in: output)
        let matches = regex.matches(in: output, range: range)
        guard let match = last ? matches.last : matches.first else { return "[invalid]" }
        let groups = (1..<max(match.numberOfRanges, 1)).compactMap { Range(match.range(at: $0), in: output) }.map { String(output[$0]) }
        let text = match.numberOfRanges > 1 ? groups.first { !$0.isEmpty } ?? "" : Range(match.range, in: output).map { String(output[$0]) } ?? ""
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public func normalize(_ text: String) -> String {
        var s = text
        for regex in ignoreRegexes {
            s = regex.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s), withTemplate: "")
        }
        if ignoreCase { s = s.lowercased() }
        if ignorePunctuation {
            let punctuation = Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
            s.removeAll { punctuation.contains($0) }
        }
        return s
    }

    /// 1 when the answer taken from `output` equals `target` after normalisation, else 0.
    public func score(_ output: String, target: String) -> (answer: String, score: Double) {
        let answer = extract(output)
        return (answer, normalize(answer) == normalize(target) ? 1 : 0)
    }
}
