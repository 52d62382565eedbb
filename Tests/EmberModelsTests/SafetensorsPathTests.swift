import EmberModels
import Foundation
import Testing

/// The default model dequantized to f32 and written as safetensors + config.json
/// (scripts/make-safetensors-model.py) against Hugging Face transformers on the same directory
/// (scripts/fixtures/transformers-logits.py) and against Ember's own GGUF path.
/// Needs the converted directory: `make test` writes it (scripts/make-safetensors-model.py).
@Suite(.serialized) struct SafetensorsPathTests {
    static let directory = Fixtures.path(".cache/models/SmolLM2-135M-f32")

    @Test func logitsMatchTransformersAndTheGGUFPath() throws {
        let fixture = try Fixtures.json("Tests/Fixtures/transformers/logits.json") as! [String: Any]
        let tokens = fixture["tokens"] as! [Int]
        let stride = fixture["probe_stride"] as! Int
        let positions = fixture["positions"] as! [[String: Any]]

        let safetensors = try LoadedModel.load(path: Self.directory).model
        #expect(safetensors.rope.mode == .neox)
        let V = safetensors.configuration.vocabularySize
        let logits = try safetensors.forward(tokens, cache: safetensors.makeCache(capacity: tokens.count), outputs: .all)
        var transformersDifference: Float = 0
        var argmaxMismatches = 0
        for (t, position) in positions.enumerated() {
            let row = logits[t * V..<(t + 1) * V]
            if row.indices.max(by: { row[$0] < row[$1] })! - t * V != position["argmax"] as! Int { argmaxMismatches += 1 }
            for (i, value) in (position["probe"] as! [Double]).enumerated() {
                transformersDifference = max(transformersDifference, abs(row[t * V + i * stride] - Float(value)))
            }
            for pair in position["top"] as! [[Double]] {
                transformersDifference = max(transformersDifference, abs(row[t * V + Int(pair[0])] - Float(pair[1])))
            }
        }

        // The GGUF path quantizes activations to 8 bits per block as llama.cpp does; the f32 path does not.
        let gguf = try LoadedModel.load(path: Fixtures.defaultModel).model
        let ggufLogits = try gguf.forward(tokens, cache: gguf.makeCache(capacity: tokens.count), outputs: .all)
        let formatDifference = zip(logits, ggufLogits).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        var sameArgmax = 0
        for t in 0..<tokens.count {
            let a = logits[t * V..<(t + 1) * V], b = ggufLogits[t * V..<(t + 1) * V]
            if a.indices.max(by: { a[$0] < a[$1] }) == b.indices.max(by: { b[$0] < b[$1] }) { sameArgmax += 1 }
        }
        print("safetensors path vs transformers: max |Δlogit| = \(transformersDifference), argmax mismatches \(argmaxMismatches)/\(tokens.count)")
        print("safetensors path vs GGUF path: max |Δlogit| = \(formatDifference), same argmax at \(sameArgmax)/\(tokens.count)")
        // Weights and activations are f32 on both sides; Ember keeps keys and values in an f16 cache
        // (relative rounding 2⁻¹¹ ≈ 4.9e-4), which on logits of magnitude ~25 moves them by ~1e-2.
        #expect(transformersDifference < 0.03)
        #expect(argmaxMismatches == 0)
        // 8-bit activations move logits by up to ~1 on this model (llama.cpp vs transformers: 0.91 on
        // these tokens); only near-ties may change their argmax.
        #expect(formatDifference < 1.5)
        #expect(sameArgmax >= tokens.count - 4)
    }
}
