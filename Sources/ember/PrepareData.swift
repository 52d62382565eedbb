import ArgumentParser
import EmberTraining
import Foundation

struct PrepareData: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare-data",
        abstract: "Tokenize text files into a training data folder.",
        discussion: """
        Each input file is one document, ended by the tokenizer's end-of-text token. The folder gets train.bin and val.bin (token files, described in docs/formats.md), dataset.json and a copy of the tokenizer; `ember pretrain --data DIR` reads it memory-mapped.

        Example:
          ember prepare-data --tokenizer tokenizer.json --input a.txt --input b.txt --output data
        """)

    @Option(help: ArgumentHelp("tokenizer.json, a SentencePiece .model or a .gguf vocabulary.", valueName: "path"))
    var tokenizer: String

    @Option(help: ArgumentHelp("A UTF-8 text file (repeatable).", valueName: "path"))
    var input: [String]

    @Option(help: ArgumentHelp("The data folder to write (made if missing).", valueName: "dir"))
    var output: String

    @Option(name: .customLong("val-fraction"), help: "Share of the documents held out for validation.")
    var valFraction = 0.05

    func validate() throws {
        guard !input.isEmpty else { throw ValidationError("give at least one --input file") }
        guard (0..<1).contains(valFraction) else { throw ValidationError("--val-fraction must be at least 0 and below 1") }
    }

    func run() throws {
        let start = Date()
        let description = try prepareData(tokenizer: loadTokenizer(tokenizer), tokenizerPath: tokenizer, inputs: input, output: output,
                                          validationFraction: valFraction) { done, total, tokens in
            showProgress(Double(done) / Double(total), "\(done)/\(total) files, \(tokens) tokens")
        }
        endProgress()
        let train = description.tokens["train"] ?? 0, validation = description.tokens["val"] ?? 0
        printError(String(format: "%d training and %d validation tokens in %.1f s; wrote %@", train, validation, Date().timeIntervalSince(start), output))
    }
}

/// Whether standard error is a terminal (progress bars are drawn only there).
let interactiveStandardError = isatty(2) != 0

/// "\r[#####     ] text", for progress on standard error.
func progressBar(_ fraction: Double, _ text: String, width: Int = 30) -> String {
    let filled = max(0, min(width, Int(fraction * Double(width))))
    return "\r[" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled) + "] " + text + "\u{1B}[K"
}

/// Redraws a progress bar on a terminal; elsewhere (a log file) prints nothing.
func showProgress(_ fraction: Double, _ text: String) {
    if interactiveStandardError { printError(progressBar(fraction, text), terminator: "") }
}

/// Ends a progress bar's line on a terminal.
func endProgress() {
    if interactiveStandardError { printError("") }
}

/// "1h02m", "3m05s", "12s".
func duration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s >= 3600 { return String(format: "%dh%02dm", s / 3600, s % 3600 / 60) }
    if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
    return "\(s)s"
}
