import EmberModels
import EmberTokenizers
import Foundation
import Testing

/// Ember against llama.cpp on the default model, from fixtures written by
/// scripts/fixtures/llama-cpp-reference.sh.
@Suite(.serialized, .enabled(if: Fixtures.hasDefaultModel, "run scripts/fetch-model.sh first"))
struct LlamaCppParityTests {
    static let loaded = Result { try LoadedModel.load(path: Fixtures.defaultModel) }

    @Test func teacherForcedLogitsMatch() throws {
        let loaded = try Self.loaded.get()
        let fixture = try Fixtures.json("Tests/Fixtures/llama.cpp/parity-logits.json") as! [String: Any]
        let tokens = fixture["tokens"] as! [Int]
        let stride = fixture["probe_stride"] as! Int
        let positions = fixture["positions"] as! [[String: Any]]
        let text = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/text/parity.txt"), encoding: .utf8)
        #expect(try loaded.requireTokenizer().encode(text) == tokens, "Ember's tokens differ from llama.cpp's")

        let V = loaded.model.configuration.vocabularySize
        let logits = try loaded.model.forward(tokens, cache: loaded.model.makeCache(capacity: tokens.count), outputs: .all)
        var maxDifference: Float = 0
        var argmaxMismatches: [Int] = []
        let single = try loaded.model.forward([tokens[0]], cache: loaded.model.makeCache(capacity: 4), outputs: .all)
        let p0 = (positions[0]["probe"] as! [Double])
        print("single-token pos0 diff", p0.enumerated().map { abs(single[$0.offset * stride] - Float($0.element)) }.max()!)
        print("batch vs single pos0", (0..<V).map { abs(single[$0] - logits[$0]) }.max()!)
        var perPosition: [Float] = []
        for (t, position) in positions.enumerated() {
            let before = maxDifference
            maxDifference = 0
            defer { perPosition.append(maxDifference); maxDifference = max(before, maxDifference) }
            let row = logits[t * V..<(t + 1) * V]
            let argmax = row.indices.max { row[$0] < row[$1] }! - t * V
            if argmax != position["argmax"] as! Int { argmaxMismatches.append(t) }
            for pair in position["top"] as! [[Double]] {
                maxDifference = max(maxDifference, abs(row[t * V + Int(pair[0])] - Float(pair[1])))
            }
            for (i, value) in (position["probe"] as! [Double]).enumerated() {
                maxDifference = max(maxDifference, abs(row[t * V + i * stride] - Float(value)))
            }
        }
        print(perPosition.prefix(40).map { String(format: "%.2f", $0) }.joined(separator: " "))
        print("llama.cpp parity over \(tokens.count) positions: max |Δlogit| = \(maxDifference), argmax mismatches at \(argmaxMismatches)")
        #expect(argmaxMismatches.isEmpty)
        #expect(maxDifference < 0.5)
    }
}
