import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// Reads the tensors `scripts/fixtures/training-reference.py` wrote with PyTorch.
struct Reference {
    let file: SafetensorsFile
    init(_ relative: String) throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        file = try SafetensorsFile(path: root.appendingPathComponent("Tests/Fixtures/training/" + relative).path)
    }
    static func directory(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Tests/Fixtures/training/" + name).path
    }
    func floats(_ name: String) throws -> [Float] {
        let entry = try #require(file.entries[name], "the fixture has no \(name)")
        return dequantize(entry.dtype, from: file.data(of: entry), count: entry.shape.reduce(1, *))
    }
    func ints(_ name: String) throws -> [Int32] { try floats(name).map { Int32($0) } }
}

func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "\(a.count) vs \(b.count) values")
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// The largest difference as a fraction of the reference's largest magnitude.
func maxRelativeDifference(_ a: [Float], _ reference: [Float]) -> Float { maxDifference(a, reference) / reference.map(abs).max()! }

/// Ember's loss, logits and every parameter gradient against transformers' LlamaForCausalLM with
/// PyTorch autograd (the test_gpt2.c pattern), with and without recomputation.
@Suite struct GradientParityTests {
    @Test(arguments: ["untied", "tied"], TrainableLlama.Recompute.allCases)
    func gradientsMatchPyTorch(name: String, recompute: TrainableLlama.Recompute) throws {
        let reference = try Reference(name + "/reference.safetensors")
        let model = try TrainableLlama(directory: Reference.directory(name))
        let inputs = try reference.ints("inputs"), targets = try reference.ints("targets")
        let tape = Tape()
        let logits = model.logits(tape, inputs: inputs, batch: 2, recompute: recompute)
        let loss = tape.crossEntropy(logits, targets: targets)
        tape.backward(loss)

        let expectedLoss = try reference.floats("loss")[0]
        let logitsDifference = maxDifference(logits.values, try reference.floats("logits"))
        print("\(name), recompute \(recompute): loss \(loss.values[0]) vs \(expectedLoss), logits max |Δ| \(logitsDifference)")
        #expect(abs(loss.values[0] - expectedLoss) < 1e-5)
        #expect(logitsDifference < 1e-5)
        func compareGradients(_ label: String) throws {
            var worst: (name: String, difference: Float, relative: Float) = ("", 0, 0)
            for p in model.parameters {
                let expected = try reference.floats("grad." + p.name)
                let difference = maxDifference(p.gradient.values, expected)
                let scale = expected.map(abs).max()!
                if difference / scale > worst.relative { worst = (p.name, difference, difference / scale) }
                #expect(difference <= 1e-5 + 1e-4 * scale, "\(label): \(p.name): max |Δ| \(difference), largest |grad| \(scale)")
            }
            print("\(label): \(model.parameters.count) gradients, worst \(worst.name) max |Δ| \(worst.difference) (relative \(worst.relative))")
        }
        try compareGradients("\(name), recompute \(recompute)")

        // The same through the fused output projection and loss, which never holds the logits.
        model.parameters.forEach { $0.zeroGradient() }
        let fusedTape = Tape()
        let fusedLoss = model.loss(fusedTape, inputs: inputs, targets: targets, batch: 2, recompute: recompute)
        fusedTape.backward(fusedLoss)
        print("\(name), recompute \(recompute), fused loss: \(fusedLoss.values[0]) vs \(expectedLoss)")
        #expect(abs(fusedLoss.values[0] - expectedLoss) < 1e-5)
        try compareGradients("\(name), recompute \(recompute), fused loss")
    }
}

/// bf16 products (operands rounded to bf16, f32 sums) give the loss and gradients of f32 within
/// bf16's precision, on every path this CPU runs, with and without recomputation.
@Suite struct BF16TrainingTests {
    @Test(arguments: TrainableLlama.Recompute.allCases)
    func gradientsNearThoseOfF32(recompute: TrainableLlama.Recompute) throws {
        let reference = try Reference("untied/reference.safetensors")
        let model = try TrainableLlama(directory: Reference.directory("untied"))
        let inputs = try reference.ints("inputs"), targets = try reference.ints("targets")
        model.precision = .bf16
        let tape = Tape()
        let loss = model.loss(tape, inputs: inputs, targets: targets, batch: 2, recompute: recompute)
        tape.backward(loss)
        let expectedLoss = try reference.floats("loss")[0]
        var worst: (name: String, relative: Float) = ("", 0)
        for p in model.parameters {
            let expected = try reference.floats("grad." + p.name)
            let relative = maxRelativeDifference(p.gradient.values, expected)
            if relative > worst.relative { worst = (p.name, relative) }
            #expect(relative < 0.05, "\(p.name): max |Δ| \(relative) of the largest f32 gradient")
        }
        print("bf16 products, recompute \(recompute) (\(hasBF16Instructions ? "AVX-512 BF16" : "SGEMM on rounded operands")): loss \(loss.values[0]) vs f32 \(expectedLoss); worst gradient \(worst.name), max |Δ| \(worst.relative) of its largest")
        #expect(abs(loss.values[0] - expectedLoss) < 1e-2 * expectedLoss)
    }

    /// Against PyTorch's CPU autocast to bf16 (`scripts/fixtures/autocast-reference.py`).
    ///
    /// The tolerance comes from counting roundings. Each rounding to bf16 moves a value by up to
    /// u = 2⁻⁸ of itself; independent roundings along a path add up like a random walk, so a path
    /// with n of them ends about √n·u·c away from the exact result, where the constant c (how the
    /// layers amplify an error) belongs to the model. Autocast's own distance from float32, δ_A,
    /// measured on this very model, calibrates c. On the forward path to the logits Ember rounds
    /// n_E = 18 values to bf16: per layer the input and the weight of the QKV, output, gate-up and
    /// down products (8), and the output projection's two operands. Autocast rounds n_A = 37:
    /// per layer the same 8, the Q/K/V, output, gate, up and down products' outputs (5), RoPE's
    /// result, the scaled QKᵀ (2), the softmax cast, the PV product, SiLU and SiLU·up (17 in all),
    /// and the logits' three. The backward pass goes through the same products on both sides, so
    /// the gradients keep that ratio. Ember's distance from autocast is then about
    /// δ_A·√(1 + n_E/n_A); twice that is the tolerance, for the largest of many elements. The loss
    /// is a log-sum-exp minus one logit, each moving by at most the logits' largest change, so it
    /// gets twice the logits' tolerance.
    @Test func matchesPyTorchAutocast() throws {
        let f32 = try Reference("untied/reference.safetensors"), autocast = try Reference("untied/autocast.safetensors")
        let model = try TrainableLlama(directory: Reference.directory("untied"))
        model.precision = .bf16
        let inputs = try f32.ints("inputs"), targets = try f32.ints("targets")
        let tape = Tape()
        let logits = model.logits(tape, inputs: inputs, batch: 2)
        let loss = tape.crossEntropy(logits, targets: targets)
        tape.backward(loss)

        let widening = 2 * (1 + Float(18) / 37).squareRoot()
        let relative = maxRelativeDifference
        let logitsF32 = try f32.floats("logits"), logitsAutocast = try autocast.floats("logits")
        let logitsTolerance = widening * relative(logitsAutocast, logitsF32)
        let logitsDifference = relative(logits.values, logitsAutocast)
        let lossAutocast = try autocast.floats("loss")[0]
        let lossTolerance = 2 * logitsTolerance * logitsF32.map(abs).max()!
        print("""
            bf16 against PyTorch autocast: loss \(loss.values[0]) vs \(lossAutocast) (f32 \(try f32.floats("loss")[0])), |Δ| \(abs(loss.values[0] - lossAutocast)), tolerance \(lossTolerance)
            logits max |Δ| \(logitsDifference) of the largest (from f32: Ember \(relative(logits.values, logitsF32)), autocast \(relative(logitsAutocast, logitsF32))), tolerance \(logitsTolerance)
            """)
        #expect(logitsDifference <= logitsTolerance)
        #expect(abs(loss.values[0] - lossAutocast) <= lossTolerance)

        let gradients = try model.parameters.map { (p: $0, autocast: try autocast.floats("grad." + $0.name), f32: try f32.floats("grad." + $0.name)) }
        let autocastFromF32 = gradients.map { relative($0.autocast, $0.f32) }.max()!
        let gradientTolerance = widening * autocastFromF32
        var worst: (name: String, relative: Float, fromF32: Float) = ("", 0, 0)
        for (p, expected, fromF32) in gradients {
            let difference = relative(p.gradient.values, expected)
            if difference > worst.relative { worst = (p.name, difference, relative(p.gradient.values, fromF32)) }
            #expect(difference <= gradientTolerance, "\(p.name): max |Δ| \(difference) of the largest autocast gradient")
        }
        print("gradients: worst \(worst.name), max |Δ| \(worst.relative) of its largest (Ember from f32 \(worst.fromF32); autocast from f32 up to \(autocastFromF32)), tolerance \(gradientTolerance)")
    }
}

/// Frozen parameters get no gradient and no update; the others are unchanged by the freezing.
@Suite struct FrozenParameterTests {
    @Test func frozenParametersAreLeftAlone() throws {
        let reference = try Reference("untied/reference.safetensors")
        let model = try TrainableLlama(directory: Reference.directory("untied"))
        let frozen = model.parameters.filter { $0.name == "model.embed_tokens.weight" || $0.name.hasPrefix("model.layers.0.") }
        frozen.forEach { $0.requiresGradient = false }
        let before = frozen.map(\.values)
        let tape = Tape()
        tape.backward(model.loss(tape, inputs: try reference.ints("inputs"), targets: try reference.ints("targets"), batch: 2))
        for p in model.parameters {
            if p.requiresGradient {
                #expect(maxDifference(p.gradient.values, try reference.floats("grad." + p.name)) < 1e-5, "\(p.name)")
            } else {
                #expect(!p.hasGradient, "\(p.name) is frozen but has a gradient")
            }
        }
        let optimizer = AdamW(parameters: model.parameters, decays: model.parameters.map { TrainableLlama.decays($0.name) })
        optimizer.update(learningRate: 1e-2)
        #expect(frozen.map(\.values) == before)
        print("frozen: \(frozen.count) of \(model.parameters.count) parameters kept their values; the rest match PyTorch's gradients")
    }
}

extension FloatBuffer {
    var values: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}
