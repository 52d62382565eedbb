import EmberFormats
import EmberTensor
import Foundation

/// Perplexity over a token stream, scored the way llama.cpp's `llama-perplexity` scores it:
/// the tokens are cut into `tokens.count / context` chunks of `context` tokens; each chunk runs
/// from an empty cache (its first token replaced by BOS when the model adds one); and only the
/// second half of each chunk is scored, every position predicting the token after it, so each
/// scored token sees at least `context / 2` tokens of history.
public struct PerplexityResult: Sendable, Codable {
    public var perplexity: Double
    /// Tokens scored.
    public var tokens: Int
    public var chunks: Int
}

extension Llama {
    public func perplexity(tokens: [Int], context: Int, bosTokenID: Int?, arithmetic: Arithmetic = .fast, adapter: InferenceAdapter? = nil,
                           pool: ThreadPool = .shared,
                           progress: (_ chunk: Int, _ of: Int, _ runningPerplexity: Double) -> Void = { _, _, _ in }) throws -> PerplexityResult {
        let chunks = tokens.count / context
        guard context >= 4, chunks >= 1, tokens.count >= 2 * context else {
            throw FormatError("the text has \(tokens.count) tokens; perplexity with context \(context) needs at least \(2 * context)")
        }
        let V = configuration.vocabularySize
        let first = context / 2
        let cache = arithmetic == .llamaCppExact ? makeCache(capacity: context) : nil
        let paged = arithmetic == .fast ? PagedKVCache(configuration: configuration, blockCount: (context + 15) / 16, blockSize: 16) : nil
        var negativeLogLikelihood = 0.0
        var scored = 0
        for chunk in 0..<chunks {
            var window = Array(tokens[chunk * context..<(chunk + 1) * context])
            if let bosTokenID { window[0] = bosTokenID }
            func score(_ j: Int, _ row: UnsafePointer<Float>) {
                negativeLogLikelihood += logSumExp(row, count: V) - Double(row[tokens[chunk * context + j + 1]])
                scored += 1
            }
            if let cache {
                cache.reset()
                let logits = try forward(window, cache: cache, outputs: .all, adapter: adapter, pool: pool)
                logits.withUnsafeBufferPointer { l in
                    for j in first..<context - 1 { score(j, l.baseAddress! + j * V) }
                }
            } else {
                let rows = try allLogits(window, cache: paged, adapter: adapter, pool: pool)
                for j in first..<context - 1 { rows[j].withUnsafeBufferPointer { score(j, $0.baseAddress!) } }
            }
            progress(chunk + 1, chunks, exp(negativeLogLikelihood / Double(scored)))
        }
        return PerplexityResult(perplexity: exp(negativeLogLikelihood / Double(scored)), tokens: scored, chunks: chunks)
    }
}
