import EmberModels
import EmberTokenizers
import Foundation
import Testing

/// Ember against llama.cpp on the default model, from fixtures written by
/// scripts/fixtures/llama-cpp-reference.sh.
/// Needs the default model: `make test` fetches it (scripts/fetch-model.sh).
@Suite(.serialized)
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
        for (t, position) in positions.enumerated() {
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
        print("llama.cpp parity over \(tokens.count) positions: max |Δlogit| = \(maxDifference), argmax mismatches at \(argmaxMismatches)")
        #expect(argmaxMismatches.isEmpty)
        // The fixture prints logits to 6 decimals; Ember follows llama.cpp's arithmetic, so the only
        // expected difference is that print rounding (≤ 5e-7 plus one f32 ulp at |logit| ≈ 16).
        #expect(maxDifference <= 2e-6)
    }

    @Test func greedyCompletionsMatch() throws {
        let loaded = try Self.loaded.get()
        let tokenizer = try loaded.requireTokenizer()
        let cases = try Fixtures.json("Tests/Fixtures/llama.cpp/greedy.json") as! [[String: Any]]
        for c in cases {
            let prompt = c["prompt"] as! String
            let completion = c["completion"] as! [String: Any]
            let expected = completion["tokens"] as! [Int]
            let cache = loaded.model.makeCache(capacity: 256)
            var logits = try loaded.model.forward(tokenizer.encode(prompt), cache: cache)
            var sampler = Sampler(temperature: 0)
            var produced: [Int] = []
            while produced.count < expected.count {
                let next = sampler.sample(logits[...])
                produced.append(next)
                if tokenizer.endOfGenerationIDs.contains(next) { break }
                logits = try loaded.model.forward([next], cache: cache)
            }
            #expect(produced == expected, "prompt \(prompt)")
            #expect(tokenizer.decode(produced) == completion["text"] as! String)
            print("greedy \(prompt.debugDescription): \(produced.count) tokens equal to llama.cpp's: \(produced == expected)")
        }
    }

    @Test func perplexityMatchesLlamaPerplexity() throws {
        let loaded = try Self.loaded.get()
        let reference = try Fixtures.json("Tests/Fixtures/llama.cpp/perplexity.json") as! [String: Any]
        let text = try String(contentsOfFile: Fixtures.path(reference["file"] as! String), encoding: .utf8)
        let context = reference["context"] as! Int
        let result = try loaded.model.perplexity(tokens: try loaded.requireTokenizer().encode(text), context: context, bosTokenID: nil)
        let expected = reference["perplexity"] as! Double
        let relative = abs(result.perplexity - expected) / expected
        print("perplexity: Ember \(result.perplexity) over \(result.chunks) chunks, llama-perplexity \(expected), relative difference \(relative)")
        #expect(result.chunks == reference["chunks"] as! Int)
        #expect(relative < 0.005)
    }
}
