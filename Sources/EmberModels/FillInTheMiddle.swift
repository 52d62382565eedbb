import EmberFormats
import EmberTokenizers

/// The fill-in-the-middle tokens of a code model. Asked for the code between a prefix and a
/// suffix, the model reads `<PRE> prefix <SUF> suffix <MID>` (PSM order) and writes the middle,
/// then an end-of-sequence token.
///
/// They are found as llama.cpp finds them: a GGUF file's `tokenizer.ggml.fim_*_token_id` keys
/// first, then the vocabulary by the spellings of the model families that have them
/// (`<fim_prefix>` as StarCoder and Ember's FIM fine-tuning write it, `<|fim_prefix|>` of
/// Qwen2.5-Coder, DeepSeek's, CodeLlama's `▁<PRE>` and others).
public struct FillInTheMiddle: Sendable, Equatable {
    public var prefix: Int
    public var suffix: Int
    public var middle: Int
    /// Padding of FIM training; it also ends generation.
    public var pad: Int?
    /// Repository-level markers (`<|repo_name|>`, `<|file_sep|>`): extra files of an infill request
    /// are introduced with them where the vocabulary has them.
    public var repository: Int?
    public var fileSeparator: Int?

    public init(prefix: Int, suffix: Int, middle: Int, pad: Int? = nil, repository: Int? = nil, fileSeparator: Int? = nil) {
        self.prefix = prefix
        self.suffix = suffix
        self.middle = middle
        self.pad = pad
        self.repository = repository
        self.fileSeparator = fileSeparator
    }

    /// The tokens Ember adds to a vocabulary that has none, in this order: prefix, middle, suffix, pad.
    public static let addedNames = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]

    /// The GGUF key and the spellings llama.cpp recognizes of each role: prefix, suffix, middle,
    /// pad, repository, file separator.
    static let roles: [(key: String, names: [String])] = [
        ("tokenizer.ggml.fim_pre_token_id", ["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"]),
        ("tokenizer.ggml.fim_suf_token_id", ["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"]),
        ("tokenizer.ggml.fim_mid_token_id", ["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"]),
        ("tokenizer.ggml.fim_pad_token_id", ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]),
        ("tokenizer.ggml.fim_rep_token_id", ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"]),
        ("tokenizer.ggml.fim_sep_token_id", ["<|file_sep|>"]),
    ]

    /// GGUF metadata keys of the six roles.
    public static var ggufKeys: [String] { roles.map(\.key) }

    /// The model's FIM tokens, or nil when it lacks a prefix, suffix or middle token.
    public init?(tokenizer: any Tokenizer, gguf: GGUFFile? = nil) {
        let ids: [Int?] = Self.roles.map { role in
            if let id = gguf?.int(role.key), (0..<tokenizer.vocabularySize).contains(id) { return id }
            return role.names.lazy.compactMap(tokenizer.id(of:)).first
        }
        guard let prefix = ids[0], let suffix = ids[1], let middle = ids[2] else { return nil }
        self.init(prefix: prefix, suffix: suffix, middle: middle, pad: ids[3], repository: ids[4], fileSeparator: ids[5])
    }

    /// The tokens that end an infill besides the end-of-sequence ones (llama.cpp's: pad, repository, file separator).
    public var endOfGeneration: [Int] { [pad, repository, fileSeparator].compactMap { $0 } }

    /// The ids of the six roles in `ggufKeys` order (nil where the model has none).
    public var ggufValues: [Int?] { [prefix, suffix, middle, pad, repository, fileSeparator] }

    /// A file given as context besides the one being completed (llama.cpp's `input_extra`).
    public struct ExtraFile: Sendable {
        public var filename: String
        public var text: String
        public init(filename: String, text: String) {
            self.filename = filename
            self.text = text
        }
    }

    /// What an infill prompt without extra files starts with, llama-server's placeholders for the
    /// repository and the file where the vocabulary has their markers: FIM training puts the same
    /// before each transformed document, so that the model meets at `/infill` what it learned on.
    public func contextHeader(encode: (String) -> [Int]) -> [Int] { repositoryHeader(encode: encode) + fileHeader(encode: encode) }
    private func repositoryHeader(encode: (String) -> [Int]) -> [Int] { repository.map { [$0] + encode("myproject\n") } ?? [] }
    private func fileHeader(encode: (String) -> [Int]) -> [Int] { fileSeparator.map { [$0] + encode("filename\n") } ?? [] }

    /// The prompt llama.cpp's server builds for `/infill`:
    ///
    ///     [<|repo_name|>myproject\n] (<|file_sep|>filename\n text | "\n\n--- snippet ---\n\n" text)…
    ///     [<|file_sep|>filename\n] [BOS] <PRE> prefix prompt <SUF> suffix <MID>
    ///
    /// (SPM order, `spm`: `<SUF> suffix <PRE> prefix prompt <MID>`). The prefix keeps at most its
    /// last 3/4 of `window` tokens and the suffix its first `window/4 − 2 − prompt` tokens; the extra
    /// files fill what is left of `context` after `window` and twice `maxTokens`, the latest kept.
    /// `encode` tokenizes text without reading special tokens.
    public func prompt(prefix: String, suffix: String, extra: [ExtraFile], prompt: [Int], bos: Int?, spm: Bool,
                       window: Int, context: Int, maxTokens: Int, encode: (String) -> [Int]) -> [Int] {
        var extraTokens = repositoryHeader(encode: encode)
        for file in extra {
            if let fileSeparator {
                extraTokens += [fileSeparator] + encode(file.filename + "\n")
            } else {
                extraTokens += encode("\n\n--- snippet ---\n\n")
            }
            extraTokens += encode(file.text)
        }
        extraTokens += fileHeader(encode: encode)

        var head = encode(prefix), tail = encode(suffix)
        head = Array(head.suffix(min(head.count, 3 * (window / 4))))
        tail = Array(tail.prefix(max(0, min(tail.count, window / 4 - (2 + prompt.count)))))
        let extraTake = min(max(0, context - window - 2 * min(max(maxTokens, 0), context)), extraTokens.count)
        head = [self.prefix] + head + prompt
        tail = [self.suffix] + tail
        var tokens = spm ? tail : head
        if let bos { tokens.insert(bos, at: 0) }
        return Array(extraTokens.suffix(extraTake)) + tokens + (spm ? head : tail) + [middle]
    }
}
