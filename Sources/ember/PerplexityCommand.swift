import ArgumentParser
import EmberModels
import Foundation

struct Perplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure a model's perplexity on a text file, scored as llama.cpp's llama-perplexity scores it.",
        discussion: """
        The text is cut into chunks of --context tokens; the second half of every chunk is scored.
        The file needs at least twice --context tokens.
        """)

    @OptionGroup var options: ModelOptions
    @OptionGroup var arithmetic: ArithmeticOption
    @OptionGroup var adapter: AdapterOption

    @Option(help: ArgumentHelp("The text file to score.", valueName: "path"))
    var file: String

    @Option(help: "Tokens per chunk.")
    var context = 512

    @Flag(help: "Print {\"perplexity\": P, \"tokens\": N, \"chunks\": C} instead of text.")
    var json = false

    func validate() throws {
        guard context >= 4 else { throw ValidationError("--context must be at least 4") }
    }

    func run() throws {
        let loaded = try options.load()
        let tokenizer = try loaded.requireTokenizer()
        guard let data = FileManager.default.contents(atPath: file) else { throw CommandError("cannot read \(file)") }
        guard let text = String(data: data, encoding: .utf8) else { throw CommandError("\(file) is not valid UTF-8") }
        guard context <= loaded.model.configuration.maxPositionEmbeddings else {
            throw CommandError("--context \(context) exceeds the model's context length \(loaded.model.configuration.maxPositionEmbeddings)")
        }
        var tokens = tokenizer.encode(text)
        if loaded.addBOS, let bos = tokenizer.bosTokenID { tokens.insert(bos, at: 0) }
        let start = Date()
        let result = try loaded.model.perplexity(tokens: tokens, context: context, bosTokenID: loaded.addBOS ? tokenizer.bosTokenID : nil,
                                                 arithmetic: arithmetic.arithmetic, adapter: try adapter.load(for: loaded)) {
            chunk, total, running in
            printError(String(format: "\r[%d/%d] perplexity %.4f", chunk, total, running), terminator: chunk == total ? "\n" : "")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(String(format: "perplexity %.4f over %d scored tokens in %d chunks of %d (%.1f s)",
                         result.perplexity, result.tokens, result.chunks, context, Date().timeIntervalSince(start)))
        }
    }
}
