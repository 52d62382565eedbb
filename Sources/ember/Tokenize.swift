import ArgumentParser
import EmberFormats
import EmberModels
import EmberTokenizers
import Foundation

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Split text into token ids with a model's tokenizer.",
        discussion: """
        TOKENIZER is a Hugging Face tokenizer.json, a SentencePiece .model file, or a .gguf
        model (its vocabulary is used).
        Text comes from --text, --file, or standard input. Special tokens written in the text
        (<|im_start|>, [CLS]) become their ids, as Hugging Face's Tokenizer.encode(text,
        add_special_tokens=False) and llama-tokenize do; --no-parse-special tokenizes them as text.
        A .model file encodes as SentencePieceProcessor.encode(text) does: special-token text
        stays text.

        Examples:
          ember tokenize --tokenizer tokenizer.json --text "Hello world"
          ember tokenize --tokenizer model.gguf --file notes.txt --tokens
          echo "Hello" | ember tokenize --tokenizer tokenizer.json --json
        """)

    @Option(help: ArgumentHelp("A tokenizer.json, a SentencePiece .model or a .gguf file.", valueName: "path"))
    var tokenizer: String

    @Option(help: "The text to tokenize.")
    var text: String?

    @Option(help: ArgumentHelp("A UTF-8 file to tokenize.", valueName: "path"))
    var file: String?

    @Flag(help: "Print ids, space-separated (the default).")
    var ids = false

    @Flag(help: "Print the token strings instead of ids, one per line.")
    var tokens = false

    @Flag(help: "Print {\"ids\": [...]} (with --tokens, also \"tokens\").")
    var json = false

    @Flag(name: .customLong("no-parse-special"), help: "Tokenize special-token text as ordinary text.")
    var noParseSpecial = false

    @Flag(help: "Print only the token count and the encoding speed (to standard error).")
    var stats = false

    func validate() throws {
        guard !(text != nil && file != nil) else { throw ValidationError("give --text or --file, not both") }
        guard !(ids && tokens) else { throw ValidationError("give --ids or --tokens, not both") }
    }

    func run() throws {
        let tokenizer = try loadTokenizer(self.tokenizer)
        let input: String
        if let text {
            input = text
        } else {
            let data = file.map { FileManager.default.contents(atPath: $0) } ?? FileHandle.standardInput.readDataToEndOfFile()
            guard let data else { throw CommandError("cannot read \(file!)") }
            do {
                input = try validatedText([UInt8](data))
            } catch let error as TokenizerError {
                throw CommandError("\(file ?? "standard input"): \(error.message)")
            }
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let result = tokenizer.encode(input, parseSpecial: !noParseSpecial && !self.tokenizer.hasSuffix(".model"))
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        if stats {
            let megabytes = Double(input.utf8.count) / 1e6
            printError(String(format: "%d tokens from %.2f MB in %.3f s: %.2f MB/s", result.count, megabytes, seconds, megabytes / seconds))
            return
        }
        if json {
            // Written out directly: a JSON library's object tree costs seconds for millions of ids.
            var out = "{\"ids\":[" + result.map(String.init).joined(separator: ",") + "]"
            if tokens {
                out += ",\"tokens\":[" + result.map { JinjaValue.string(tokenizer.token($0) ?? "").jsonText() ?? "\"\"" }.joined(separator: ",") + "]"
            }
            print(out + "}")
        } else if tokens {
            for id in result { print(tokenizer.token(id) ?? "") }
        } else {
            print(result.map(String.init).joined(separator: " "))
        }
    }
}

/// A tokenizer from a tokenizer.json, a SentencePiece .model or a GGUF file's vocabulary.
func loadTokenizer(_ path: String) throws -> any Tokenizer {
    guard FileManager.default.fileExists(atPath: path) else { throw CommandError("\(path): no such file") }
    if path.hasSuffix(".json") { return try TokenizerJSON.load(path: path) }
    if path.hasSuffix(".model") { return try SentencePieceModel.load(path: path) }
    return try GGUFTokenizer.load(GGUFFile(path: path))
}
