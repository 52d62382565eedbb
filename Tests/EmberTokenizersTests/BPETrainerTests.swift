import EmberTokenizers
import Foundation
import Testing

/// A vocabulary trained by Ember, written as tokenizer.json, must encode held-out text to the same
/// ids in Hugging Face `tokenizers` (run from the .cache/venv that `make test` prepares) as in Ember.
@Suite struct BPETrainerTests {
    @Test(arguments: [PreTokenizer.gpt2, .llama3])
    func trainedTokenizerRoundTripsThroughHuggingFace(pre: PreTokenizer) throws {
        let corpus = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/text/licenses.txt"), encoding: .utf8)
        let heldOut = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/text/tokenizer.txt"), encoding: .utf8)
            + String(contentsOfFile: Fixtures.path("Tests/Fixtures/text/parity.txt"), encoding: .utf8)
        let start = Date()
        let result = ByteLevelBPETrainer(vocabularySize: 1200, preTokenizer: pre, specialTokens: ["<|endoftext|>"]).train([corpus])
        let seconds = Date().timeIntervalSince(start)
        #expect(result.tokens.count == 1200 && result.tokens[0] == "<|endoftext|>")

        let path = NSTemporaryDirectory() + "ember-trained-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try result.tokenizerJSON(preTokenizer: pre).write(to: URL(fileURLWithPath: path))
        let ember = try TokenizerJSON.load(path: path)
        let text = heldOut + "<|endoftext|>"
        let ids = ember.encode(text, parseSpecial: true)
        #expect(ember.decode(ids) == text)

        let python = Fixtures.path(".cache/venv/bin/python")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", """
            import json, sys
            from tokenizers import Tokenizer
            text = sys.stdin.buffer.read().decode("utf-8")
            print(json.dumps(Tokenizer.from_file(sys.argv[1]).encode(text, add_special_tokens=False).ids))
            """, path]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(python) with tokenizers is needed: make test installs it")
        let reference = try JSONSerialization.jsonObject(with: data) as! [Int]
        print("trained \(pre) BPE, 1200 tokens from \(corpus.utf8.count) bytes in \(String(format: "%.2f", seconds)) s; held-out text: \(ids.count) ids, tokenizers agrees: \(ids == reference)")
        #expect(ids == reference)
    }
}
