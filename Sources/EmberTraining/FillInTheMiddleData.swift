import EmberFormats
import EmberModels
import EmberTensor
import EmberTokenizers
import Foundation

/// StarCoder's fill-in-the-middle transformation of training documents (Bavarian et al., 2022).
/// A document is transformed with probability `rate`: two cut points drawn uniformly over its
/// characters (Unicode scalars) split it into prefix, middle and suffix, each tokenized on its
/// own, and it becomes
///
///     PSM:  <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <eos>
///     SPM:  <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle <eos>   (probability spmRate)
///
/// (SPM as StarCoder trains it, the FIM paper's variant that keeps prefix and middle contiguous.)
/// With `spmStyle` `.llamaServer`, SPM is instead the prompt that `/infill` builds in SPM order
/// (`ember serve --spm-infill`, llama-server's `--spm-infill`), with the middle after it:
///
///     SPM:  <fim_suffix> suffix <fim_prefix> prefix <fim_middle> middle <eos>
///
/// With `span` `.line` the middle is whole lines instead, the unit of single-line and multi-line
/// infilling: two lines drawn uniformly are its first and last (or, with `maxLines`, its first line
/// and a length drawn uniformly from 1 to `maxLines`, cut at the document's end). The middle stops
/// before its last line's newline, so the suffix starts with it, as when an editor's cursor is at
/// the end of a line.
/// Every token is learned. The draws of a document depend only on the seed and the document's
/// number, so a resumed run transforms each document as before.
public struct FIMTransform: Sendable {
    public enum Order: Sendable, Equatable { case psm, spm }
    /// Where a document may be cut.
    public enum Span: String, Codable, Sendable, CaseIterable { case character, line }
    /// The layout of SPM documents: StarCoder's, or the prompt of llama-server's `--spm-infill`.
    public enum SPMStyle: String, Codable, Sendable, CaseIterable { case starcoder, llamaServer = "llama-server" }

    public let rate: Double
    public let spmRate: Double
    public let span: Span
    /// The most lines in a middle (nil: up to the whole document); only with `.line`.
    public let maxLines: Int?
    public let spmStyle: SPMStyle
    public let seed: UInt64
    public let tokens: FillInTheMiddle

    public init(rate: Double, spmRate: Double, span: Span = .character, maxLines: Int? = nil, spmStyle: SPMStyle = .starcoder, seed: UInt64,
                tokens: FillInTheMiddle) {
        precondition(maxLines.map { $0 > 0 } ?? true, "maxLines must be positive")
        self.rate = rate
        self.spmRate = spmRate
        self.span = span
        self.maxLines = maxLines
        self.spmStyle = spmStyle
        self.seed = seed
        self.tokens = tokens
    }

    /// The prefix, middle and suffix of document `document`, or nil when it stays whole.
    public func split(_ text: String, document: Int) -> (order: Order, prefix: String, middle: String, suffix: String)? {
        var random = SplitMix64(seed: seed ^ (UInt64(document) &* 0xD1B5_4A32_D192_ED03))
        guard random.nextUnit() < rate else { return nil }
        let scalars = Array(text.unicodeScalars)
        var a: Int, b: Int
        switch span {
        case .character:
            a = Int(random.next() % UInt64(scalars.count + 1))
            b = Int(random.next() % UInt64(scalars.count + 1))
            if a > b { swap(&a, &b) }
        case .line:
            // Line k is starts[k] ..< ends[k]: up to its newline, or to the end of the last line.
            let starts = [0] + scalars.indices.filter { scalars[$0] == "\n" && $0 + 1 < scalars.count }.map { $0 + 1 }
            let ends = starts.dropFirst().map { $0 - 1 } + [scalars.last == "\n" ? scalars.count - 1 : scalars.count]
            var first = Int(random.next() % UInt64(starts.count)), last: Int
            if let maxLines {
                last = min(first + Int(random.next() % UInt64(maxLines)), starts.count - 1)
            } else {
                last = Int(random.next() % UInt64(starts.count))
                if first > last { swap(&first, &last) }
            }
            (a, b) = (starts[first], ends[last])
        }
        func string(_ range: Range<Int>) -> String { String(String.UnicodeScalarView(scalars[range])) }
        let order: Order = random.nextUnit() < spmRate ? .spm : .psm
        return (order, string(0..<a), string(a..<b), string(b..<scalars.count))
    }

    /// The document's tokens after the transformation (nil when it stays whole), without EOS.
    public func apply(_ text: String, document: Int, encode: (String) -> [Int]) -> [Int]? {
        guard let (order, prefix, middle, suffix) = split(text, document: document) else { return nil }
        switch order {
        case .psm: return [tokens.prefix] + encode(prefix) + [tokens.suffix] + encode(suffix) + [tokens.middle] + encode(middle)
        case .spm where spmStyle == .llamaServer:
            return [tokens.suffix] + encode(suffix) + [tokens.prefix] + encode(prefix) + [tokens.middle] + encode(middle)
        case .spm: return [tokens.prefix, tokens.suffix] + encode(suffix) + [tokens.middle] + encode(prefix) + encode(middle)
        }
    }
}

/// Adds `<fim_prefix>`, `<fim_middle>`, `<fim_suffix>` and `<fim_pad>` to a Hugging Face model
/// folder whose vocabulary lacks them, as transformers' `add_special_tokens` and
/// `resize_token_embeddings` do: special added tokens after the last id, in tokenizer.json and
/// tokenizer_config.json, `vocab_size` grown in config.json, and the embedding (and an untied
/// output head) grown by rows equal to the mean of the existing rows (transformers draws them
/// around that mean with a covariance scaled by 1e-9).
public enum FIMVocabulary {
    /// Writes the folder with the tokens added to `output` (config.json, model.safetensors in f32,
    /// tokenizer.json, tokenizer_config.json) and returns the new tokens.
    @discardableResult
    public static func add(to directory: String, output: String) throws -> FillInTheMiddle {
        let tokenizerPath = directory + "/tokenizer.json", configPath = directory + "/config.json"
        guard let tokenizerData = FileManager.default.contents(atPath: tokenizerPath),
              var tokenizerJSON = try? JSONSerialization.jsonObject(with: tokenizerData) as? [String: Any] else {
            throw TrainingError("\(tokenizerPath): cannot read it as a tokenizer.json")
        }
        let tokenizer = try TokenizerJSON.load(data: tokenizerData)
        if let existing = FillInTheMiddle(tokenizer: tokenizer) {
            throw TrainingError("\(directory): the vocabulary already has fill-in-the-middle tokens (\(existing.prefix), \(existing.suffix), \(existing.middle))")
        }
        guard let configData = FileManager.default.contents(atPath: configPath),
              var config = try? JSONSerialization.jsonObject(with: configData) as? [String: Any] else {
            throw TrainingError("\(configPath): cannot read it as a JSON object")
        }
        let configuration = try LlamaConfiguration.load(configPath: configPath)
        let first = max(tokenizer.vocabularySize, configuration.vocabularySize)
        let names = FillInTheMiddle.addedNames
        let newSize = first + names.count

        func entry(_ name: String) -> [String: Any] {
            ["content": name, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true]
        }
        tokenizerJSON["added_tokens"] = (tokenizerJSON["added_tokens"] as? [[String: Any]] ?? [])
            + names.enumerated().map { i, name in ["id": first + i].merging(entry(name)) { a, _ in a } }
        var tokenizerConfig: [String: Any] = [:]
        if let data = FileManager.default.contents(atPath: directory + "/tokenizer_config.json") {
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw TrainingError("\(directory)/tokenizer_config.json: not a JSON object")
            }
            tokenizerConfig = object
            var decoder = object["added_tokens_decoder"] as? [String: Any] ?? [:]
            for (i, name) in names.enumerated() { decoder[String(first + i)] = entry(name) }
            tokenizerConfig["added_tokens_decoder"] = decoder
        }
        config["vocab_size"] = newSize

        let weights = try SafetensorsCollection(directory: directory)
        var buffers: [(name: String, shape: [Int], values: FloatBuffer)] = []
        for name in weights.names {
            let (file, e) = weights.entry(name)!
            let grows = (name == "model.embed_tokens.weight" || name == "lm_head.weight") && e.shape.count == 2
            guard !grows || e.shape[0] == configuration.vocabularySize else {
                throw TrainingError("\(directory): \(name) has \(e.shape[0]) rows for a vocabulary of \(configuration.vocabularySize)")
            }
            let count = e.shape.reduce(1, *)
            let rows = grows ? newSize : (e.shape.first ?? 1)
            let values = FloatBuffer(count: grows ? newSize * e.shape[1] : count)
            dequantize(e.dtype, from: file.data(of: e), to: values.pointer, count: count)
            if grows { meanRows(values.pointer, rows: e.shape[0], columns: e.shape[1], newRows: newSize - e.shape[0]) }
            buffers.append((name, grows ? [rows, e.shape[1]] : e.shape, values))
        }

        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        func json(_ object: Any, _ file: String) throws {
            try writeFile(JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]), to: output + "/" + file)
        }
        try json(config, "config.json")
        try json(tokenizerJSON, "tokenizer.json")
        if !tokenizerConfig.isEmpty { try json(tokenizerConfig, "tokenizer_config.json") }
        try withExtendedLifetime(buffers) {
            try SafetensorsWriter.write(buffers.map { .init(name: $0.name, shape: $0.shape, data: UnsafeBufferPointer(start: $0.values.pointer, count: $0.values.count)) },
                                        to: output + "/model.safetensors")
        }
        return FillInTheMiddle(prefix: first, suffix: first + 2, middle: first + 1, pad: first + 3)
    }

    /// Fills rows `rows ..< rows + newRows` with the mean of the first `rows` (summed in Double).
    static func meanRows(_ p: UnsafeMutablePointer<Float>, rows: Int, columns: Int, newRows: Int) {
        var mean = [Double](repeating: 0, count: columns)
        for r in 0..<rows { for c in 0..<columns { mean[c] += Double(p[r * columns + c]) } }
        for r in rows..<(rows + newRows) { for c in 0..<columns { p[r * columns + c] = Float(mean[c] / Double(rows)) } }
    }
}
