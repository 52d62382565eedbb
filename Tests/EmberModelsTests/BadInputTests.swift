import EmberFormats
import EmberModels
import EmberTensor
import Foundation
import Testing

/// Loads a model and returns the error message, or nil when it loaded.
func loadError(_ path: String) -> String? {
    do { _ = try LoadedModel.load(path: path); return nil } catch { return "\(error)" }
}

@Suite struct ModelBadInputTests {
    @Test func tinyModelLoadsAndRuns() throws {
        let path = TinyModel().write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let loaded = try LoadedModel.load(path: path)
        let logits = try loaded.model.forward(try loaded.requireTokenizer().encode("hello"), cache: loaded.model.makeCache(capacity: 16))
        #expect(logits.count == 258 && logits.allSatisfy { $0.isFinite })
    }

    @Test func rejectsUnknownArchitecture() {
        let path = TinyModel(architecture: "falcon").write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let message = loadError(path)
        print("a falcon GGUF: \(message ?? "loaded")")
        #expect(message?.contains("architecture falcon is not supported") == true)
    }

    @Test func rejectsInconsistentHeadCounts() {
        let path = TinyModel(headCount: 4, kvHeadCount: 3).write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(loadError(path)?.contains("not a multiple of the key/value head count 3") == true)
    }

    @Test func rejectsMissingTensor() {
        let path = TinyModel(omitTensor: "blk.1.ffn_up.weight").write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(loadError(path)?.contains("tensor blk.1.ffn_up.weight is missing") == true)
    }

    @Test(arguments: [("llama", "general.architecture"), ("llama", "llama.embedding_length"), ("llama", "llama.block_count"),
                      ("llama", "llama.attention.head_count"), ("qwen3", "qwen3.feed_forward_length"), ("gemma2", "gemma2.embedding_length")])
    func rejectsMissingMetadata(architecture: String, key: String) {
        let path = TinyModel(architecture: architecture, omitMetadata: key).write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let message = loadError(path)
        print("a GGUF without \(key): \(message ?? "loaded")")
        #expect(message?.contains("metadata \(key) is missing") == true)
        #expect(message?.contains("\n") == false)
    }

    @Test func rejectsTensorTypeEmberCannotRead() throws {
        let path = TinyModel(queryType: .q8_K).write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let message = loadError(path)
        print("a q8_K tensor: \(message ?? "loaded")")
        #expect(message?.contains("stored as q8_K, which Ember cannot read") == true)
        // q6_K is read, but its rows must be whole super-blocks of 256: these are 32 long.
        let misshapen = TinyModel(queryType: .q6_K).write()
        defer { try? FileManager.default.removeItem(atPath: misshapen) }
        let refusal = loadError(misshapen)
        print("q6_K rows of 32: \(refusal ?? "loaded")")
        #expect(refusal?.contains("not whole q6_K blocks") == true)
    }

    @Test func rejectsContextOverflowAndBadTokens() throws {
        let path = TinyModel().write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let model = try LoadedModel.load(path: path).model
        #expect(throws: Llama.ForwardError.self) { try model.forward(Array(repeating: 1, count: 9), cache: model.makeCache(capacity: 8)) }
        #expect(throws: Llama.ForwardError.self) { try model.forward([9999], cache: model.makeCache(capacity: 8)) }
    }

    @Test func rejectsInvalidConfigJSON() throws {
        let directory = NSTemporaryDirectory() + "ember-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func write(_ json: String) { _ = FileManager.default.createFile(atPath: directory + "/config.json", contents: Data(json.utf8)) }
        write(#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 4, "vocab_size": 10}"#)
        #expect(loadError(directory)?.contains("not a multiple") == true)
        write(#"{"architectures": ["FalconForCausalLM"]}"#)
        #expect(loadError(directory)?.contains("FalconForCausalLM is not supported") == true)
        write("{")
        #expect(loadError(directory)?.contains("not valid JSON") == true)
        write(#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}"#)
        #expect(loadError(directory)?.contains("missing field") == true)
    }
}

/// The `ember` command as a user runs it: bad input gives one line on standard error and a non-zero exit.
@Suite(.serialized) struct CommandLineBadInputTests {
    static let binary: String? = [".build/release/ember", ".build/debug/ember"].map(Fixtures.path).first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let binary = try #require(Self.binary, "build the ember executable first (swift build -c release)")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile(), stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }

    func expectCleanFailure(_ arguments: [String], mentioning text: String) throws {
        let result = try run(arguments)
        #expect(result.status != 0)
        #expect(result.status < 128, "the process crashed")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(result.stderr)")
        #expect(result.stderr.contains(text), "\(result.stderr)")
    }

    @Test func truncatedModel() throws {
        let full = TinyModel().bytes()
        let path = temporaryFile(Array(full[..<(full.count / 2)]))
        defer { try? FileManager.default.removeItem(atPath: path) }
        try expectCleanFailure(["generate", "--model", path, "--prompt", "hi"], mentioning: "truncated")
    }

    @Test func notAModel() throws {
        let path = temporaryFile(Array("just some text".utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        try expectCleanFailure(["inspect", "--model", path], mentioning: "not a GGUF file")
        try expectCleanFailure(["bench", "--model", "/no/such/model.gguf"], mentioning: "no such file")
    }

    @Test func promptLongerThanContext() throws {
        let path = TinyModel(contextLength: 32).write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try expectCleanFailure(["generate", "--model", path, "--prompt", String(repeating: "a", count: 100), "--temperature", "0"],
                               mentioning: "the prompt has 100 tokens but the context holds 32")
    }

    @Test func textTooShortForPerplexity() throws {
        let model = TinyModel().write()
        let text = temporaryFile(Array("short".utf8), suffix: ".txt")
        defer { [model, text].forEach { try? FileManager.default.removeItem(atPath: $0) } }
        try expectCleanFailure(["perplexity", "--model", model, "--file", text, "--context", "16"], mentioning: "needs at least 32")
    }

    @Test func tokenizeRejectsInvalidUTF8AndBrokenTokenizers() throws {
        let model = TinyModel().write()
        let invalid = temporaryFile([0x61, 0xFF, 0xFE, 0x62], suffix: ".txt")
        let broken = temporaryFile(Array(#"{"model": {"type": "BPE", "vocab": {"#.utf8), suffix: ".json")
        defer { [model, invalid, broken].forEach { try? FileManager.default.removeItem(atPath: $0) } }
        try expectCleanFailure(["tokenize", "--tokenizer", model, "--file", invalid], mentioning: "not valid UTF-8")
        try expectCleanFailure(["tokenize", "--tokenizer", broken, "--text", "hi"], mentioning: "not a JSON object")
        let ok = try run(["tokenize", "--tokenizer", model, "--text", "ab<|im_end|>", "--json"])
        #expect(ok.stdout == "{\"ids\":[97,98,257]}\n", "\(ok.stdout)")
        let spm = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("Tests/Fixtures/tokenizers/sentencepiece/llama.model")))
        let truncated = temporaryFile(Array(spm.prefix(spm.count / 2)), suffix: ".model")
        defer { try? FileManager.default.removeItem(atPath: truncated) }
        try expectCleanFailure(["tokenize", "--tokenizer", truncated, "--text", "hi"], mentioning: "truncated")
        let pieces = try run(["tokenize", "--tokenizer", Fixtures.path("Tests/Fixtures/tokenizers/sentencepiece/llama.model"), "--text", "Hello", "--tokens"])
        #expect(pieces.status == 0 && pieces.stdout.hasPrefix("▁"), "\(pieces.stdout)")
    }

    @Test func tinyModelGeneratesAndInspects() throws {
        let path = TinyModel().write()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let generated = try run(["generate", "--model", path, "--prompt", "ab", "--max-tokens", "5", "--temperature", "0"])
        #expect(generated.status == 0, "\(generated.stderr)")
        let inspected = try run(["inspect", "--model", path])
        #expect(inspected.stdout.contains("blk.1.ffn_down.weight") && inspected.stdout.contains("llama.block_count = 2"))
    }
}
