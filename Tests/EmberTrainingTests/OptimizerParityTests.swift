import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Testing

/// Ten AdamW steps with warmup + cosine, global-norm clipping and two accumulated micro-batches,
/// against torch.optim.AdamW from the same weights on the same batches.
@Suite struct OptimizerParityTests {
    @Test func tenStepsMatchTorch() throws {
        let reference = try Reference("adamw/reference.safetensors")
        let model = try TrainableLlama(directory: Reference.directory("adamw"))
        let batches = try reference.ints("batches")  // [10, 2, B, T + 1]
        let expectedLosses = try reference.floats("losses"), expectedNorms = try reference.floats("grad_norms")
        let expectedRates = try reference.floats("learning_rates")
        let steps = 10, micro = 2, B = 2, width = batches.count / (steps * micro * B)
        let optimizer = AdamW(parameters: model.parameters, decays: model.parameters.map { TrainableLlama.decays($0.name) },
                              settings: .init(beta1: 0.9, beta2: 0.95, epsilon: 1e-8, weightDecay: 0.1))
        let schedule = LearningRateSchedule(maximum: 1e-2, minimum: 1e-3, warmup: 3, total: steps)
        var losses: [Float] = [], norms: [Float] = []
        for step in 0..<steps {
            model.parameters.forEach { $0.zeroGradient() }
            var total: Float = 0
            for k in 0..<micro {
                let start = (step * micro + k) * B * width
                var inputs: [Int32] = [], targets: [Int32] = []
                for b in 0..<B {
                    let row = batches[(start + b * width)..<(start + (b + 1) * width)]
                    inputs += row.dropLast()
                    targets += row.dropFirst()
                }
                let tape = Tape()
                let loss = model.loss(tape, inputs: inputs, targets: targets, batch: B)
                tape.backward(loss, seed: 1 / Float(micro))
                total += loss.values[0] / Float(micro)
            }
            norms.append(try model.arena.clipGradients(maximum: 0.5))
            let lr = schedule(step)
            #expect(abs(lr - expectedRates[step]) <= 1e-6 * expectedRates[step])
            optimizer.update(learningRate: lr)
            losses.append(total)
        }
        let lossDifference = maxDifference(losses, expectedLosses), normDifference = maxDifference(norms, expectedNorms)
        print("AdamW: losses \(losses)")
        print("AdamW: losses max |Δ| \(lossDifference), gradient norms max |Δ| \(normDifference)")
        #expect(lossDifference < 1e-4)
        #expect(normDifference < 1e-4)
        var worst: Float = 0
        for p in model.parameters {
            let difference = maxDifference(p.values, try reference.floats("final." + p.name))
            worst = max(worst, difference)
            #expect(difference < 1e-4, "\(p.name): max |Δ| \(difference)")
        }
        print("AdamW: final weights max |Δ| \(worst) over \(model.parameters.count) tensors")
    }
}
