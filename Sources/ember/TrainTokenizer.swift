import ArgumentParser
import EmberTokenizers
import Foundation

struct TrainTokenizer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-tokenizer",
        abstract: "Learn a byte-level BPE tokenizer from text files and write it as tokenizer.json.",
        discussion: """
        The result loads in Hugging Face tokenizers (Tokenizer.from_file) and in Ember, and both
        encode text to the same ids. Special tokens take the first ids, in the order given.

        Example:
          ember train-tokenizer --corpus notes.txt --corpus book.txt --vocab-size 4096 \\
            --special-token "<|endoftext|>" --output tokenizer.json
        """)

    @Option(help: ArgumentHelp("A UTF-8 text file to learn from (repeatable).", valueName: "path"))
    var corpus: [String]

    @Option(name: .customLong("vocab-size"), help: "Tokens in the finished vocabulary, special and byte tokens included.")
    var vocabSize: Int

    @Option(help: ArgumentHelp("Where to write the tokenizer.json.", valueName: "path"))
    var output: String

    @Option(name: .customLong("special-token"), help: "A special token to reserve (repeatable).")
    var specialTokens: [String] = []

    @Option(name: .customLong("pre-tokenizer"), help: "How text is split before merging: gpt2, smollm, llama3 or qwen2.")
    var preTokenizer: String = "gpt2"

    @Option(name: .customLong("min-frequency"), help: "Stop when the most frequent pair occurs fewer times than this.")
    var minFrequency = 2

    func validate() throws {
        guard !corpus.isEmpty else { throw ValidationError("give at least one --corpus file") }
        guard PreTokenizer(rawValue: preTokenizer) != nil else {
            throw ValidationError("--pre-tokenizer must be one of \(PreTokenizer.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard vocabSize >= 256 + specialTokens.count, vocabSize <= 1 << 20 else {
            throw ValidationError("--vocab-size must be between \(256 + specialTokens.count) (the bytes and special tokens) and 1048576")
        }
    }

    func run() throws {
        var texts: [String] = []
        for path in corpus {
            guard let data = FileManager.default.contents(atPath: path) else { throw CommandError("cannot read \(path)") }
            guard let text = String(validating: data, as: UTF8.self) else { throw CommandError("\(path) is not valid UTF-8") }
            texts.append(text)
        }
        let pre = PreTokenizer(rawValue: preTokenizer)!
        let trainer = ByteLevelBPETrainer(vocabularySize: vocabSize, preTokenizer: pre, specialTokens: specialTokens, minimumFrequency: minFrequency)
        let start = Date()
        let result = trainer.train(texts) { done, wanted in
            showProgress(wanted == 0 ? 1 : Double(done) / Double(wanted), "\(done)/\(wanted) merges")
        }
        endProgress()
        let data = try result.tokenizerJSON(preTokenizer: pre)
        let temporary = output + ".partial"
        guard FileManager.default.createFile(atPath: temporary, contents: data), rename(temporary, output) == 0 else {
            try? FileManager.default.removeItem(atPath: temporary)
            throw CommandError("cannot write \(output)")
        }
        let megabytes = Double(texts.reduce(0) { $0 + $1.utf8.count }) / 1e6
        printError(String(format: "%d tokens (%d merges) from %.2f MB in %.1f s; wrote %@",
                          result.tokens.count, result.merges.count, megabytes, Date().timeIntervalSince(start), output))
    }
}
