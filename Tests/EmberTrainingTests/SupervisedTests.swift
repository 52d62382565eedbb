import EmberFormats
import EmberModels
import EmberNN
import EmberTensor
import EmberTraining
import Foundation
import Testing

/// Supervised fine-tuning against TRL (`scripts/fixtures/sft-reference.py`): the learned-token
/// masks of SFTTrainer's preparation, best-fit-decreasing packing, and the loss and gradients of
/// packed rows against each sequence run alone in PyTorch; and the data reader's errors.
@Suite struct SupervisedTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func fixture(_ name: String) -> String { root.appendingPathComponent("Tests/Fixtures/sft/" + name).path }
    /// SmolLM2-135M-Instruct as a Hugging Face folder with its tokenizer and chat template (`make test` makes it).
    static let base = root.appendingPathComponent(".cache/models/SmolLM2-135M-f32").path
    static let hasBase = FileManager.default.fileExists(atPath: base + "/tokenizer_config.json")

    @Test(.enabled(if: hasBase, "no .cache/models/SmolLM2-135M-f32 with tokenizer files (make test makes it)"),
          arguments: ["text", "prompt-completion", "conversational-prompt-completion", "conversations"])
    func masksMatchTRL(name: String) throws {
        let data = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.fixture("masks.json")))) as! [String: [[String: [Int]]]]
        let expected = try #require(data[name])
        let tokenizer = SupervisedTokenizer(prompting: try LoadedModel.prompting(directory: Self.base))
        let result = try tokenizer.sequences(FineTuningDataset.load(path: Self.fixture("masks/\(name).jsonl")), maximumLength: 1024)
        #expect(result.sequences.count == expected.count && result.skipped.total == 0)
        var idMismatches = 0, maskMismatches = 0, learned = 0
        for (sequence, reference) in zip(result.sequences, expected) {
            let ids = reference["input_ids"]!, labels = reference["labels"]!
            #expect(sequence.ids.map(Int.init) == ids)
            idMismatches += zip(sequence.ids, ids).filter { Int($0) != $1 }.count + abs(sequence.count - ids.count)
            maskMismatches += zip(sequence.learned, labels).filter { $0 != ($1 != -100) }.count
            learned += sequence.learned.filter { $0 }.count
        }
        print("SFT masks \(name): \(result.sequences.count) examples, \(learned) learned tokens; ids differing from TRL: \(idMismatches), learned-mask positions differing: \(maskMismatches)")
        #expect(maskMismatches == 0)
    }

    @Test func bestFitDecreasingMatchesTRL() throws {
        let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.fixture("bfd.json")))) as! [[String: Any]]
        for c in cases {
            let lengths = c["lengths"] as! [Int], capacity = c["capacity"] as! Int, bins = c["bins"] as! [[Int]]
            let ours = packBestFitDecreasing(lengths: lengths, capacity: capacity)
            print("BFD: \(lengths.count) sequences at \(capacity) -> \(ours.count) bins (TRL \(bins.count)), same bins in the same order: \(ours == bins)")
            #expect(ours == bins)
            for bin in ours { #expect(bin.reduce(0) { $0 + lengths[$1] } <= capacity) }
        }
        // TRL's docstring case: [[1,2,3,4,5],[6,7],[8,9,10],[11]] at 4 (the first cut to 4).
        #expect(packBestFitDecreasing(lengths: [4, 2, 3, 1], capacity: 4) == [[0], [2, 3], [1]])
    }

    /// The fixture's sequences, packed into rows of `capacity` (or one to a row), against the mean
    /// over every learned token of each sequence run alone in PyTorch.
    @Test(arguments: [16, 24, 0])
    func packedLossEqualsSeparateSequences(capacity: Int) throws {
        let reference = try SafetensorsFile(path: Self.fixture("packed/reference.safetensors"))
        func values(_ name: String) throws -> [Float] {
            let entry = try #require(reference.entries[name])
            return dequantize(entry.dtype, from: reference.data(of: entry), count: entry.shape.reduce(1, *))
        }
        let lengths = try values("lengths").map { Int($0) }, ids = try values("ids").map { Int32($0) }, learned = try values("learned").map { $0 != 0 }
        var sequences: [SupervisedSequence] = [], start = 0
        for n in lengths {
            sequences.append(SupervisedSequence(ids: Array(ids[start..<start + n]), learned: Array(learned[start..<start + n])))
            start += n
        }
        let packed = capacity > 0
        let rows = packed ? packBestFitDecreasing(lengths: lengths, capacity: capacity).map { SupervisedObjective.Row($0.map { sequences[$0] }) }
            : sequences.map { SupervisedObjective.Row([$0]) }
        let batch = SupervisedObjective.tokenRows(rows, packed: packed, padding: 0)
        let model = try TrainableLlama(directory: Self.fixture("packed"))
        let tape = Tape()
        let loss = model.loss(tape, inputs: batch.inputs, targets: batch.targets, batch: batch.rows, positions: batch.positions)
        tape.backward(loss)
        let expected = try values("loss")[0]
        var worst: Float = 0
        for p in model.parameters {
            let g = try values("grad." + p.name)
            let scale = max(g.map(abs).max()!, 1e-6)
            worst = max(worst, maxDifference(p.gradient.values, g) / scale)
        }
        let what = packed ? "\(rows.count) packed rows of \(capacity)" : "one sequence a row (\(rows.count) rows)"
        print("SFT loss, \(lengths.count) sequences in \(what): \(loss.values[0]) vs PyTorch \(expected) (difference \(abs(loss.values[0] - expected))); gradients: largest difference \(worst) of the largest")
        #expect(abs(loss.values[0] - expected) < 1e-5)
        #expect(worst < 1e-4)
        if packed { #expect(rows.count < lengths.count) }
    }

    /// Writes `lines` to a temporary JSONL file and returns the error reading it gives.
    func readingError(_ lines: [String]) -> String? {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sft-\(UUID().uuidString).jsonl").path
        FileManager.default.createFile(atPath: path, contents: Data(lines.joined(separator: "\n").utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try FineTuningDataset.load(path: path)
            return nil
        } catch {
            return "\(error)".replacingOccurrences(of: path, with: "FILE")
        }
    }

    @Test func malformedDataNamesTheLine() {
        let good = #"{"prompt": "a", "completion": "b"}"#
        let cases: [([String], String)] = [
            ([good, "", #"{"prompt": "a", "completion": "b""#], "FILE:3: invalid JSON"),
            ([good, #"{"prompt": "a"}"#], "FILE:2: a prompt-only example, but the file is prompt-completion (from line 1)"),
            ([good, #"{"prompt": 3, "completion": "b"}"#], "FILE:2: 'prompt' must be a string or a list of messages"),
            ([#"{"messages": [{"role": "user"}]}"#], "FILE:1: 'messages': message 1 has no 'content'"),
            ([#"{"question": "x"}"#], "FILE:1: none of TRL's formats"),
            ([good, #"{"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]}"#],
             "FILE:2: messages, but the examples before are plain text"),
            ([""], "FILE: no examples"),
        ]
        for (lines, expected) in cases {
            let error = readingError(lines)
            print("bad SFT data: \(error ?? "no error")")
            #expect(error?.hasPrefix(expected) == true, "expected \(expected)")
        }
        #expect(readingError([good, #"{"prompt": "c", "completion": "d", "extra": 1}"#]) == nil)
    }

    @Test(.enabled(if: hasBase, "no .cache/models/SmolLM2-135M-f32 with tokenizer files (make test makes it)"))
    func emptyTurnsAndOverlongExamplesAreCountedSkips() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sft-\(UUID().uuidString).jsonl").path
        let long = String(repeating: "word ", count: 300)
        let lines = [
            #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
            #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}"#,
            #"{"messages": [{"role": "user", "content": "\#(long)"}, {"role": "assistant", "content": "ok"}]}"#,
            #"{"messages": [{"role": "user", "content": "Only a question"}]}"#,
        ]
        FileManager.default.createFile(atPath: path, contents: Data(lines.joined(separator: "\n").utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let tokenizer = SupervisedTokenizer(prompting: try LoadedModel.prompting(directory: Self.base))
        let data = try FineTuningDataset.load(path: path)
        let dropped = try tokenizer.sequences(data, maximumLength: 128)
        print("SFT skips at 128 tokens: \(dropped.skipped)")
        #expect(dropped.sequences.count == 1 && dropped.lines == [1])
        #expect(dropped.skipped.emptyAssistantTurn == 1 && dropped.skipped.tooLong == 1 && dropped.skipped.nothingLearned == 1)
        // Truncated instead, the long example keeps only its prompt: nothing is learned from it.
        let truncated = try tokenizer.sequences(data, maximumLength: 128, overlong: .truncate)
        #expect(truncated.sequences.count == 1 && truncated.skipped.tooLong == 0 && truncated.skipped.nothingLearned == 2)
    }
}
