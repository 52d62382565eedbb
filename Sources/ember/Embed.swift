import ArgumentParser
import EmberModels
import EmberTensor
import Foundation

struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn texts into sentence embeddings with a BERT encoder (a sentence-transformers folder or a GGUF bert file).",
        discussion: """
        The model is a sentence-transformers folder: config.json (model_type bert), model.safetensors, tokenizer.json, and the modules.json, 1_Pooling/config.json and sentence_bert_config.json that set the pooling (mean, CLS or max), the normalisation and the length inputs are cut at. all-MiniLM-L6-v2 is such a folder. A GGUF bert file, as llama.cpp's convert_hf_to_gguf.py writes one, works too (pooling from its metadata, normalised, inputs cut at its context).

        Texts come from --text (repeatable), or one per line from --file or standard input. Each embedding is printed as a JSON line {"index", "tokens", "embedding"}; --json prints one object in the shape of OpenAI's /v1/embeddings answer. Texts run in batches of --batch-tokens tokens.

        Examples:
          ember embed --model .cache/models/all-minilm-l6-v2 --text "A cat sits on the mat." --text "A dog lies on the rug."
          ember embed --model .cache/models/all-minilm-l6-v2 --file sentences.txt --json > embeddings.json
        """)

    @OptionGroup var options: ModelOptions

    @Option(help: "A text to embed (repeatable).")
    var text: [String] = []

    @Option(help: ArgumentHelp("A file of texts, one per line (- for standard input).", valueName: "path"))
    var file: String?

    @Option(help: "Most tokens in one forward pass.")
    var batchTokens = 8192

    @Flag(help: "Print one JSON object in the shape of OpenAI's embeddings answer.")
    var json = false

    @Flag(help: "Print the throughput on standard error.")
    var stats = false

    func validate() throws {
        guard batchTokens >= 1 else { throw ValidationError("--batch-tokens must be at least 1") }
    }

    func run() throws {
        ThreadPool.configureShared(threadCount: options.threads)
        guard SentenceEncoder.isEncoder(path: options.model) else {
            throw CommandError("\(options.model): not an embedding model (ember embed runs BERT: a sentence-transformers folder whose config.json has model_type bert, or a GGUF bert file)")
        }
        let encoder = try SentenceEncoder(path: options.model)
        var texts = text
        if let file {
            let data = file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileHandle(forReadingAtPath: file)?.readDataToEndOfFile()
            guard let data else { throw CommandError("cannot read \(file)") }
            guard let content = String(data: data, encoding: .utf8) else { throw CommandError("\(file) is not valid UTF-8") }
            texts += content.split(separator: "\n", omittingEmptySubsequences: false).map { String($0.hasSuffix("\r") ? $0.dropLast() : $0) }
            if texts.last == "" { texts.removeLast() }
        } else if text.isEmpty {
            let data = FileHandle.standardInput.readDataToEndOfFile()
            guard let content = String(data: data, encoding: .utf8) else { throw CommandError("standard input is not valid UTF-8") }
            texts = content.split(separator: "\n").map(String.init)
        }
        guard !texts.isEmpty else { throw CommandError("no texts to embed: give --text, --file or lines on standard input") }
        let started = Date()
        let sequences = texts.map(encoder.tokens)
        var embeddings: [[Float]] = []
        for batch in SentenceEncoder.batches(sequences, tokens: batchTokens) { embeddings += try encoder.embed(sequences: batch) }
        let seconds = Date().timeIntervalSince(started)
        func list(_ v: [Float]) -> String { "[" + v.map { "\($0)" }.joined(separator: ",") + "]" }
        if json {
            let data = embeddings.enumerated().map { i, e in "{\"object\":\"embedding\",\"index\":\(i),\"embedding\":\(list(e))}" }
            let count = sequences.reduce(0) { $0 + $1.count }
            print("{\"object\":\"list\",\"data\":[\(data.joined(separator: ","))],\"model\":\(jsonString(URL(fileURLWithPath: options.model).lastPathComponent)),\"usage\":{\"prompt_tokens\":\(count),\"total_tokens\":\(count)}}")
        } else {
            for (i, e) in embeddings.enumerated() { print("{\"index\":\(i),\"tokens\":\(sequences[i].count),\"embedding\":\(list(e))}") }
        }
        if stats {
            let tokens = sequences.reduce(0) { $0 + $1.count }
            printError(String(format: "%d texts, %d tokens in %.3f s: %.1f texts/s, %.0f tokens/s (%d threads)", texts.count, tokens, seconds,
                              Double(texts.count) / seconds, Double(tokens) / seconds, options.threads))
        }
    }

    private func jsonString(_ s: String) -> String {
        String(data: try! JSONSerialization.data(withJSONObject: s, options: .fragmentsAllowed), encoding: .utf8)!
    }
}
