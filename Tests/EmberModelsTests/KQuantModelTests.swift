import EmberModels
import EmberTensor
import Foundation
import Testing

/// A tiny random LLaMA (hidden 256) quantized by llama-quantize to every block type Ember reads
/// (scripts/fixtures/kquant-models.py), run on the serving path against llama.cpp's logits of the
/// same file over 16 tokens, at every kernel tier the CPU has.
///
/// Both quantize each product's input to 8 bits the same way (q8_0 blocks, or q8_K for the
/// K-quants and iq4_xs) and form exact integer block sums; they differ in the order the blocks'
/// float terms are added and in the attention's arithmetic, and a one-ulp difference can flip an
/// activation's 8-bit rounding in the next product, which then moves the logits by a quantum. The
/// yardstick is the same weights with unquantized activations (Ember's f32 products of the
/// dequantized blocks), which differ from llama.cpp by 0.39–0.89 on these logits (std ≈ 3.2): the
/// serving path must be within 3/4 of that distance (measured: 0.19–0.28, a third to two thirds),
/// and within a tenth of the logits' spread, with every argmax equal where llama.cpp's top two
/// differ by more than 0.05.
@Suite struct KQuantModelTests {
    /// The model with every matrix dequantized to f32.
    static func dequantized(_ model: Llama) -> Llama {
        func f32(_ m: WeightMatrix) -> WeightMatrix {
            let values = FloatBuffer(count: m.rows * m.columns)
            dequantize(m.type, from: m.data, to: values.pointer, count: m.rows * m.columns)
            return WeightMatrix(type: .f32, rows: m.rows, columns: m.columns, data: UnsafeRawPointer(values.pointer), owner: values)
        }
        var weights = model.weights
        weights.embedding = f32(weights.embedding)
        weights.output = f32(weights.output)
        weights.blocks = weights.blocks.map { b in
            var b = b
            (b.query, b.key, b.value, b.output, b.up, b.down) = (f32(b.query), f32(b.key), f32(b.value), f32(b.output), f32(b.up), f32(b.down))
            b.gate = b.gate.map(f32)
            return b
        }
        return Llama(configuration: model.configuration, weights: weights)
    }

    static let types = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]

    @Test(.enabled(if: WeightMatrix.integerProductsAvailable, "no integer-product kernel tier (the CPU lacks AVX2, or EMBER_KERNEL_TIER=none)"),
          arguments: types)
    func servingPathMatchesLlamaCpp(type: String) throws {
        let reference = try Fixtures.json("Tests/Fixtures/kquants/reference.json") as! [String: Any]
        let tokens = reference["tokens"] as! [Int]
        let file = reference[type] as! [String: Any]
        let expected = (file["logits"] as! [[Double]]).map { $0.map(Float.init) }
        let model = try LoadedModel.load(path: Fixtures.path("Tests/Fixtures/kquants/\(type).gguf")).model
        let all = expected.joined(), mean = all.reduce(0, +) / Float(all.count)
        let spread = (all.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(all.count)).squareRoot()
        // The yardstick: the same weights dequantized to f32, so that no product quantizes its input.
        let V = model.configuration.vocabularySize
        let f32 = Self.dequantized(model)
        let exact = try f32.forward(tokens, cache: f32.makeCache(capacity: 32), outputs: .all)
        var floatDifference: Float = 0
        for (t, theirs) in expected.enumerated() { for v in 0..<V { floatDifference = max(floatDifference, abs(exact[t * V + v] - theirs[v])) } }
        var worst: Float = 0
        for tier in KernelTier.supported where tier != .none {
            let logits = try KernelTier.$override.withValue(tier) { try model.allLogits(tokens) }
            var difference: Float = 0, agree = 0, compared = 0
            for (ours, theirs) in zip(logits, expected) {
                difference = max(difference, zip(ours, theirs).map { abs($0 - $1) }.max()!)
                let sorted = theirs.sorted(by: >)
                guard sorted[0] - sorted[1] > 0.05 else { continue }
                compared += 1
                if ours.indices.max(by: { ours[$0] < ours[$1] }) == theirs.indices.max(by: { theirs[$0] < theirs[$1] }) { agree += 1 }
            }
            worst = max(worst, difference)
            #expect(difference <= 0.75 * floatDifference && difference <= 0.1 * spread,
                    "\(type) at \(tier.name): max |Δ| \(difference) against f32 activations' \(floatDifference), logit spread \(spread)")
            #expect(agree == compared, "\(type) at \(tier.name): argmax \(agree)/\(compared)")
        }
        print("\(type) (\(file["types"]!)): serving path vs llama.cpp max |Δlogit| \(worst) at every tier; f32 activations \(floatDifference); logit std \(spread)")
    }
}
