import EmberFormats
import EmberModels
import EmberTensor
import EmberTokenizers
import EmberTraining
import Foundation
import Testing

/// Fill-in-the-middle: the added vocabulary against transformers' `add_special_tokens` and
/// `resize_token_embeddings` (`scripts/fixtures/fim-reference.py`), StarCoder's transformation,
/// llama.cpp's infill prompt layout, and the GGUF keys llama.cpp reads.
@Suite struct FillInTheMiddleTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func fixture(_ name: String) -> String { root.appendingPathComponent("Tests/Fixtures/fim/" + name).path }

    struct Reference: Decodable {
        let ids: [String: Int]
        let vocab_size: Int
        let texts: [String]
        let encodings: [[Int]]
    }

    static func temporaryFolder(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("ember-fim-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
    }

    static func values(_ file: SafetensorsFile, _ name: String) throws -> [Float] {
        let entry = try #require(file.entries[name], "\(name) is missing")
        return dequantize(entry.dtype, from: file.data(of: entry), count: entry.shape.reduce(1, *))
    }

    @Test func addedVocabularyMatchesTransformers() throws {
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: Self.fixture("reference.json"))))
        let output = Self.temporaryFolder("vocabulary")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let tokens = try FIMVocabulary.add(to: Self.fixture("base"), output: output)

        let prompting = try LoadedModel.prompting(directory: output)
        for name in FillInTheMiddle.addedNames { #expect(prompting.tokenizer.id(of: name) == reference.ids[name], "\(name)") }
        #expect(try #require(FillInTheMiddle(tokenizer: prompting.tokenizer)) == tokens)
        #expect(tokens.prefix == reference.ids["<fim_prefix>"] && tokens.middle == reference.ids["<fim_middle>"]
            && tokens.suffix == reference.ids["<fim_suffix>"] && tokens.pad == reference.ids["<fim_pad>"])
        for (text, expected) in zip(reference.texts, reference.encodings) {
            #expect(prompting.tokenizer.encode(text, parseSpecial: true) == expected, "\(text.debugDescription)")
        }
        #expect(try LlamaConfiguration.load(configPath: output + "/config.json").vocabularySize == reference.vocab_size)

        // The old rows are kept; the new ones are transformers' (its draws around the mean).
        let before = try Self.values(SafetensorsFile(path: Self.fixture("base/model.safetensors")), "model.embed_tokens.weight")
        let after = try Self.values(SafetensorsFile(path: output + "/model.safetensors"), "model.embed_tokens.weight")
        let expected = try Self.values(SafetensorsFile(path: Self.fixture("reference.safetensors")), "embed_tokens")
        #expect(after.count == expected.count)
        #expect(Array(after[..<before.count]) == before)
        let added = maxDifference(Array(after[before.count...]), Array(expected[before.count...]))
        print("FIM vocabulary: ids \(tokens.prefix)–\(tokens.prefix + 3) as transformers gives them; encodings equal; new embedding rows: max difference \(added) from transformers' mean resizing")
        #expect(added < 1e-3)

        #expect(throws: TrainingError.self) { try FIMVocabulary.add(to: output, output: Self.temporaryFolder("again")) }
    }

    /// Encodes each Unicode scalar as its value, so that pieces can be read back from the ids.
    static func scalars(_ text: String) -> [Int] { text.unicodeScalars.map { Int($0.value) } }
    static let tokens = FillInTheMiddle(prefix: -1, suffix: -2, middle: -3, pad: -4)

    @Test func starCoderTransformation() throws {
        let text = "def f(x):\n    return x * 2  # é\n"
        var seen = (psm: 0, spm: 0, whole: 0)
        var cuts = [Int](repeating: 0, count: text.unicodeScalars.count + 1)
        let transform = FIMTransform(rate: 0.6, spmRate: 0.3, seed: 7, tokens: Self.tokens)
        let documents = 4000
        for document in 0..<documents {
            guard let split = transform.split(text, document: document) else { seen.whole += 1; continue }
            #expect(split.prefix + split.middle + split.suffix == text)
            // Both cut points, each uniform over the 33 places.
            cuts[split.prefix.unicodeScalars.count] += 1
            cuts[split.prefix.unicodeScalars.count + split.middle.unicodeScalars.count] += 1
            let ids = try #require(transform.apply(text, document: document, encode: Self.scalars))
            let (p, m, s) = (Self.scalars(split.prefix), Self.scalars(split.middle), Self.scalars(split.suffix))
            switch split.order {
            case .psm:
                seen.psm += 1
                #expect(ids == [-1] + p + [-2] + s + [-3] + m)
            case .spm:
                seen.spm += 1
                #expect(ids == [-1, -2] + s + [-3] + p + m)
            }
            #expect(transform.apply(text, document: document, encode: Self.scalars) == ids, "the same document, the same draws")
        }
        let transformed = Double(seen.psm + seen.spm)
        let rate = transformed / Double(documents), spm = Double(seen.spm) / transformed
        print("FIM transformation over \(documents) documents at rate 0.6, SPM 0.3: \(rate) transformed, \(spm) of them SPM; cut points at 0...\(cuts.count - 1) each drawn \(cuts.min()!)–\(cuts.max()!) times (expected \(Int(2 * transformed) / cuts.count))")
        #expect(abs(rate - 0.6) < 4 * (0.6 * 0.4 / Double(documents)).squareRoot())
        #expect(abs(spm - 0.3) < 4 * (0.3 * 0.7 / transformed).squareRoot())
        let expected = 2 * transformed / Double(cuts.count)
        #expect(cuts.allSatisfy { abs(Double($0) - expected) < 0.4 * expected })
        #expect(FIMTransform(rate: 0, spmRate: 0.5, seed: 7, tokens: Self.tokens).split(text, document: 3) == nil)
        #expect(FIMTransform(rate: 1, spmRate: 0, seed: 7, tokens: Self.tokens).split("", document: 3).map { $0.prefix + $0.middle + $0.suffix } == "")
    }

    /// `--fim-spm-style llama-server` trains on what `/infill` serves with `--spm-infill`.
    @Test func llamaServerSPMIsTheServedPrompt() throws {
        let text = "def f(x):\n    y = x * 2\n    return y\n"
        let transform = FIMTransform(rate: 1, spmRate: 1, span: .line, maxLines: 1, spmStyle: .llamaServer, seed: 2, tokens: Self.tokens)
        for document in 0..<20 {
            let split = try #require(transform.split(text, document: document))
            #expect(split.order == .spm)
            let served = Self.tokens.prompt(prefix: split.prefix, suffix: split.suffix, extra: [], prompt: [], bos: nil, spm: true,
                                            window: 2048, context: 8192, maxTokens: 64, encode: Self.scalars)
            #expect(transform.apply(text, document: document, encode: Self.scalars) == served + Self.scalars(split.middle))
        }
    }

    @Test func lineSpansAreWholeLines() throws {
        let text = "def f(x):\n    y = x * 2\n\n    return y\n"
        let starts = [0, 10, 24, 25], ends = [9, 23, 24, 37]  // each line's first character and its newline
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        // Without a limit the middle runs from the first of two drawn lines to the other: line k
        // starts it with probability (2(n-k)-1)/n² and ends it with probability (2k+1)/n².
        var first = [Int](repeating: 0, count: 4), last = first
        let documents = 4000
        let transform = FIMTransform(rate: 1, spmRate: 0, span: .line, seed: 3, tokens: Self.tokens)
        for document in 0..<documents {
            let split = try #require(transform.split(text, document: document))
            #expect(split.prefix + split.middle + split.suffix == text)
            let a = try #require(starts.firstIndex(of: split.prefix.unicodeScalars.count), "the middle starts at a line")
            let b = try #require(ends.firstIndex(of: split.prefix.unicodeScalars.count + split.middle.unicodeScalars.count), "the middle ends before a newline")
            #expect(split.suffix.hasPrefix("\n"))
            first[a] += 1
            last[b] += 1
        }
        print("line spans: first lines \(first), last lines \(last)")
        for k in 0..<4 {
            #expect(abs(Double(first[k]) - Double(documents * (7 - 2 * k)) / 16) < 0.2 * Double(documents * (7 - 2 * k)) / 16)
            #expect(abs(Double(last[k]) - Double(documents * (2 * k + 1)) / 16) < 0.2 * Double(documents * (2 * k + 1)) / 16)
        }
        // --fim-max-lines 1: the middle is one line, each about as often; 2: one or two lines.
        var chosen: [String: Int] = [:]
        for document in 0..<documents {
            let one = try #require(FIMTransform(rate: 1, spmRate: 0, span: .line, maxLines: 1, seed: 5, tokens: Self.tokens).split(text, document: document))
            #expect(one.prefix + one.middle + one.suffix == text)
            #expect(starts.contains(one.prefix.unicodeScalars.count) && lines.contains(one.middle))
            chosen[one.middle, default: 0] += 1
            let two = try #require(FIMTransform(rate: 1, spmRate: 0, span: .line, maxLines: 2, seed: 5, tokens: Self.tokens).split(text, document: document))
            #expect(two.middle.filter { $0 == "\n" }.count <= 1 && two.suffix.hasPrefix("\n"))
        }
        print("single lines: \(chosen.sorted { $0.key < $1.key })")
        #expect(chosen.count == 4 && chosen.values.allSatisfy { abs(Double($0) - 1000) < 0.2 * 1000 })
        // A last line without a newline ends at the document's end.
        let unterminated = try #require(FIMTransform(rate: 1, spmRate: 0, span: .line, seed: 1, tokens: Self.tokens).split("a\nb", document: 0))
        #expect(unterminated.prefix + unterminated.middle + unterminated.suffix == "a\nb")
        #expect([0, 2].contains(unterminated.prefix.unicodeScalars.count))
        #expect([1, 3].contains(unterminated.prefix.unicodeScalars.count + unterminated.middle.unicodeScalars.count))
    }

    @Test func fineTuningSequencesEndWithEOSAfterTheMiddle() throws {
        let output = Self.temporaryFolder("sft")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let tokens = try FIMVocabulary.add(to: Self.fixture("base"), output: output)
        let prompting = try LoadedModel.prompting(directory: output)
        let data = output + "/data.jsonl"
        let documents = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n<|im_end|>"]
        let lines = try documents.map { String(decoding: try JSONSerialization.data(withJSONObject: ["text": $0]), as: UTF8.self) }
        FileManager.default.createFile(atPath: data, contents: Data(lines.joined(separator: "\n").utf8))
        let eos = try #require(prompting.tokenizer.id(of: "<|im_end|>"))
        let fim = FIMTransform(rate: 1, spmRate: 0, seed: 1, tokens: tokens)
        let sequences = try SupervisedTokenizer(prompting: prompting, fim: fim).sequences(FineTuningDataset.load(path: data), maximumLength: 512).sequences
        for (line, (document, sequence)) in zip(documents, sequences).enumerated() {
            let body = document.replacingOccurrences(of: "<|im_end|>", with: "")
            let split = try #require(fim.split(body, document: line + 1))
            let encode = { (s: String) in prompting.tokenizer.encode(s, parseSpecial: true) }
            let expected = [tokens.prefix] + encode(split.prefix) + [tokens.suffix] + encode(split.suffix) + [tokens.middle] + encode(split.middle) + [eos]
            #expect(sequence.ids.map(Int.init) == expected)
            #expect(sequence.learned.allSatisfy { $0 })
        }
        // With a repository marker in the vocabulary, each document starts as an infill prompt
        // does (llama-server's placeholder repository), and that header is not learned.
        var marked = tokens
        marked.repository = try #require(prompting.tokenizer.id(of: "<|im_start|>"))
        let header = [marked.repository!] + prompting.tokenizer.encode("myproject\n", parseSpecial: false)
        #expect(marked.contextHeader(encode: { prompting.tokenizer.encode($0, parseSpecial: false) }) == header)
        let markedFIM = FIMTransform(rate: 1, spmRate: 0, seed: 1, tokens: marked)
        let withHeader = try SupervisedTokenizer(prompting: prompting, fim: markedFIM).sequences(FineTuningDataset.load(path: data), maximumLength: 512).sequences
        for (plain, headed) in zip(sequences, withHeader) {
            #expect(headed.ids.map(Int.init) == header + plain.ids.map(Int.init))
            #expect(headed.learned == Array(repeating: false, count: header.count) + plain.learned)
        }

        // Without the transformation the documents are plain text.
        let plain = try SupervisedTokenizer(prompting: prompting).sequences(FineTuningDataset.load(path: data), maximumLength: 512).sequences
        #expect(plain[0].ids.map(Int.init) == prompting.tokens(documents[0]) + [eos])

        // FIM needs plain text, and a vocabulary with the tokens.
        let pairs = output + "/pairs.jsonl"
        FileManager.default.createFile(atPath: pairs, contents: Data(#"{"prompt": "a", "completion": "b"}"#.utf8))
        let configuration = try LlamaConfiguration.load(configPath: output + "/config.json")
        func objectiveError(_ path: String, _ prompting: Prompting) -> String? {
            let settings = TrainingSettings(data: path, steps: 1, batchSize: 1, sequenceLength: 32)
            let fineTuning = FineTuningSettings(validationFraction: 0.5, fimRate: 0.5, fimSPMRate: 0.5)
            do {
                _ = try SupervisedObjective(settings: settings, fineTuning: fineTuning, prompting: prompting, tokenizerFiles: [], configuration: configuration)
                return nil
            } catch { return "\(error)" }
        }
        let wrongData = objectiveError(pairs, prompting), noTokens = objectiveError(data, try LoadedModel.prompting(directory: Self.fixture("base")))
        print("FIM on prompt-completion data: \(wrongData ?? "no error")\nFIM without the tokens: \(noTokens ?? "no error")")
        #expect(wrongData?.contains("fill-in-the-middle transforms plain-text documents") == true)
        #expect(noTokens?.contains("needs <fim_prefix>, <fim_suffix> and <fim_middle>") == true)
    }

    /// A FIM run resumed from a checkpoint keeps its transformation, and keeps saving after the
    /// checkpoint it resumed from (whose tokenizer files it carries) is rotated away.
    @Test func resumedFIMRunOutlivesItsFirstCheckpoint() throws {
        let output = Self.temporaryFolder("resume")
        defer { try? FileManager.default.removeItem(atPath: output) }
        try FIMVocabulary.add(to: Self.fixture("base"), output: output + "/base")
        let documents = (0..<12).map { "def f\($0)(x):\n    return x * \($0) + \($0 % 5)\n" }
        let lines = try documents.map { String(decoding: try JSONSerialization.data(withJSONObject: ["text": $0]), as: UTF8.self) }
        FileManager.default.createFile(atPath: output + "/data.jsonl", contents: Data(lines.joined(separator: "\n").utf8))
        let fineTuning = FineTuningSettings(validationFraction: 0.2, fimRate: 0.9, fimSPMRate: 0.5)
        let settings = TrainingSettings(data: output + "/data.jsonl", steps: 4, batchSize: 2, sequenceLength: 48, gradientAccumulation: 1,
                                        learningRate: 1e-3, warmup: 0, evalEvery: 0, fineTuning: fineTuning)
        let model = try TrainableLlama(directory: output + "/base")
        let objective = try SupervisedObjective(settings: settings, fineTuning: fineTuning, prompting: LoadedModel.prompting(directory: output + "/base"),
                                                tokenizerFiles: SupervisedObjective.tokenizerFiles(in: output + "/base"), configuration: model.configuration)
        let trainer = try Trainer(model: model, objective: objective, settings: settings)
        let run = CheckpointFolder(output: output + "/run")
        _ = try trainer.trainStep()
        try run.save(trainer, keep: 1)
        let resumed = try Trainer.resume(from: CheckpointFolder.locate(output + "/run"))
        let fim = try #require(resumed.objective as? SupervisedObjective)
        #expect(resumed.settings.fineTuning?.fimRate == 0.9)
        #expect(fim.training.map(\.inputs) == objective.training.map(\.inputs), "the same documents, transformed the same way")
        for _ in 0..<3 {
            _ = try resumed.trainStep()
            try run.save(resumed, keep: 1)
        }
        let latest = try CheckpointFolder.locate(output + "/run")
        #expect(FileManager.default.fileExists(atPath: latest + "/tokenizer.json"))
        #expect(try FillInTheMiddle(tokenizer: LoadedModel.prompting(directory: latest).tokenizer) != nil)
    }

    /// llama.cpp's `format_prompt_infill` (tools/server/server-common.cpp), spelled out.
    @Test func infillPromptFollowsLlamaServer() {
        let fim = FillInTheMiddle(prefix: -1, suffix: -2, middle: -3)
        let encode = Self.scalars
        func prompt(_ fim: FillInTheMiddle, prefix: String = "def f(", suffix: String = "):\n", extra: [FillInTheMiddle.ExtraFile] = [],
                    prompt: [Int] = [], bos: Int? = nil, spm: Bool = false, window: Int = 2048) -> [Int] {
            fim.prompt(prefix: prefix, suffix: suffix, extra: extra, prompt: prompt, bos: bos, spm: spm, window: window, context: 8192, maxTokens: 64,
                       encode: encode)
        }
        let (p, s) = (encode("def f("), encode("):\n"))
        #expect(prompt(fim) == [-1] + p + [-2] + s + [-3])
        #expect(prompt(fim, spm: true) == [-2] + s + [-1] + p + [-3])
        #expect(prompt(fim, prompt: [7, 8], bos: 0) == [0, -1] + p + [7, 8, -2] + s + [-3])
        let extra = [FillInTheMiddle.ExtraFile(filename: "a.py", text: "x = 1\n")]
        #expect(prompt(fim, extra: extra, bos: 0) == encode("\n\n--- snippet ---\n\n") + encode("x = 1\n") + [0, -1] + p + [-2] + s + [-3])
        var repository = fim
        (repository.repository, repository.fileSeparator) = (-5, -6)
        #expect(prompt(repository, extra: extra)
            == [-5] + encode("myproject\n") + [-6] + encode("a.py\n") + encode("x = 1\n") + [-6] + encode("filename\n") + [-1] + p + [-2] + s + [-3])
        // A window of 16: the prefix keeps its last 12 tokens, the suffix its first 16/4 − 2 − 1 (one prompt token).
        let long = String(repeating: "a", count: 20) + "bcd", tail = "xyz" + String(repeating: "z", count: 20)
        #expect(prompt(fim, prefix: long, suffix: tail, prompt: [7], window: 16) == [-1] + encode(String(long.suffix(12))) + [7, -2] + encode("x") + [-3])
    }

    @Test func ggufExportWritesTheFIMKeys() throws {
        let output = Self.temporaryFolder("gguf")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let tokens = try FIMVocabulary.add(to: Self.fixture("base"), output: output)
        try GGUFExport.write(directory: output, to: output + "/model.gguf", type: .f32)
        let gguf = try GGUFFile(path: output + "/model.gguf")
        #expect(gguf.int("tokenizer.ggml.fim_pre_token_id") == tokens.prefix)
        #expect(gguf.int("tokenizer.ggml.fim_suf_token_id") == tokens.suffix)
        #expect(gguf.int("tokenizer.ggml.fim_mid_token_id") == tokens.middle)
        #expect(gguf.int("tokenizer.ggml.fim_pad_token_id") == tokens.pad)
        #expect(gguf.int("tokenizer.ggml.fim_rep_token_id") == nil)
        let types = gguf.metadata["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 0 } ?? []
        #expect([tokens.prefix, tokens.middle, tokens.suffix, tokens.pad!].allSatisfy { types[$0] == 3 }, "control tokens")
        let loaded = try LoadedModel.load(path: output + "/model.gguf")
        #expect(loaded.fillInTheMiddle == tokens)
        // Without FIM tokens the export has no keys, and the model none.
        try GGUFExport.write(directory: Self.fixture("base"), to: output + "/plain.gguf", type: .f32)
        #expect(try GGUFFile(path: output + "/plain.gguf").int("tokenizer.ggml.fim_pre_token_id") == nil)
        #expect(try LoadedModel.load(path: output + "/plain.gguf").fillInTheMiddle == nil)
    }
}
