import EmberModels
import EmberNN
import EmberTraining
import Foundation
import Testing

/// The training path respects Mistral's sliding window: the tiny Mistral of
/// scripts/fixtures/architectures.py (window 8 over 32 tokens) through `TrainableLlama`'s forward,
/// against transformers' logits (eager attention, which applies the window). Without the window the
/// logits move by up to 5.2 (the fixture's ablation), so agreement shows it is applied.
@Suite struct SlidingWindowTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func trainingForwardAppliesMistralsWindow() throws {
        let folder = Self.root.appendingPathComponent("Tests/Fixtures/architectures/mistral").path
        let reference = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/reference.json"))) as! [String: Any]
        let tokens = (reference["tokens"] as! [Int]).map(Int32.init)
        let expected = (reference["transformers_logits"] as! [[Double]]).map { $0.map(Float.init) }
        let model = try TrainableLlama(directory: folder + "/hf")
        #expect(model.configuration.family == .mistral && model.configuration.slidingWindow == 8)
        let tape = Tape(recording: false)
        let logits = model.forward(tape, inputs: tokens, batch: 1, tokens: tokens.count)
        let V = model.configuration.vocabularySize
        var difference: Float = 0
        for (t, row) in expected.enumerated() {
            for v in 0..<V { difference = max(difference, abs(logits.pointer[t * V + v] - row[v])) }
        }
        print("training forward of the windowed Mistral vs transformers: max |Δlogit| \(difference)")
        #expect(difference < 1e-4)
    }
}
