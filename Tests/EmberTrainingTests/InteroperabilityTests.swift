import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// A model folder written by `ember pretrain` (Tests/Fixtures/training/exported, made by
/// scripts/fixtures/export-reference.py), as transformers.LlamaForCausalLM computes it from those
/// same files, against Ember's training path and its inference path.
@Suite struct InteroperabilityTests {
    @Test func transformersReadsEmbersModel() throws {
        let reference = try Reference("exported/reference.safetensors")
        let inputs = try reference.ints("inputs"), expected = try reference.floats("logits")
        let directory = Reference.directory("exported")

        let trainable = try TrainableLlama(directory: directory)
        let training = trainable.logits(Tape(recording: false), inputs: inputs, batch: 1).values
        let trainingDifference = maxDifference(training, expected)

        let loaded = try LoadedModel.load(path: directory)
        let inference = try loaded.model.forward(inputs.map(Int.init), cache: loaded.model.makeCache(), outputs: .all)
        let inferenceDifference = maxDifference(inference, expected)
        print("transformers vs Ember on Ember's files: training path max |Δ| \(trainingDifference), inference path (f16 KV cache) \(inferenceDifference)")
        #expect(trainingDifference < 1e-5)
        #expect(inferenceDifference < 2e-2)
        #expect(loaded.tokenizer != nil)
    }
}
