import EmberFormats
import EmberTokenizers

/// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata: `gpt2` (byte-level BPE),
/// `llama` (SentencePiece BPE, read as llama.cpp reads it) or `bert` (WordPiece).
public enum GGUFTokenizer {
    public static func load(_ gguf: GGUFFile) throws -> any Tokenizer {
        let path = gguf.path
        guard let model = gguf.string("tokenizer.ggml.model") else { throw FormatError("\(path): the file holds no tokenizer (tokenizer.ggml.model is missing)") }
        let vocabulary = try Vocabulary(gguf)
        do {
            switch model {
            case "gpt2": return try byteLevel(gguf, vocabulary)
            case "llama": return try sentencePiece(gguf, vocabulary)
            case "bert": return try wordPiece(gguf, vocabulary)
            default: throw FormatError("\(path): tokenizer model \(model) is not supported (gpt2, llama and bert are)")
            }
        } catch let error as TokenizerError {
            throw FormatError("\(path): \(error.message)")
        }
    }

    /// Tokens, types and special ids, checked against each other.
    struct Vocabulary {
        let tokens: [String]
        /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        let types: [Int]
        let gguf: GGUFFile

        init(_ gguf: GGUFFile) throws {
            let path = gguf.path
            guard let values = gguf.metadata["tokenizer.ggml.tokens"]?.array else { throw FormatError("\(path): tokenizer.ggml.tokens is missing") }
            tokens = try values.enumerated().map { i, v in
                guard let s = v.string else { throw FormatError("\(path): tokenizer.ggml.tokens[\(i)] is not a string") }
                return s
            }
            guard !tokens.isEmpty else { throw FormatError("\(path): tokenizer.ggml.tokens is empty") }
            let types = gguf.metadata["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 1 } ?? []
            guard types.isEmpty || types.count == tokens.count else {
                throw FormatError("\(path): tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
            }
            self.types = types.isEmpty ? Array(repeating: 1, count: tokens.count) : types
            self.gguf = gguf
        }

        func id(_ key: String) throws -> Int? {
            guard let id = gguf.int(key) else { return nil }
            guard tokens.indices.contains(id) else { throw FormatError("\(gguf.path): \(key) = \(id) is outside the vocabulary") }
            return id
        }

        func ids(ofType type: Int) -> Set<Int> { Set(types.indices.filter { types[$0] == type }) }
    }

    static func byteLevel(_ gguf: GGUFFile, _ v: Vocabulary) throws -> ByteLevelBPETokenizer {
        let path = gguf.path
        let pre = gguf.string("tokenizer.ggml.pre") ?? "default"
        let preTokenizer: PreTokenizer
        // llama.cpp's names for the four splitting rules Ember implements.
        switch pre {
        case "gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "roberta-bpe": preTokenizer = .gpt2
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva": preTokenizer = .smollm
        case "llama-bpe", "llama3", "llama-v3": preTokenizer = .llama3
        case "qwen2", "deepseek-r1-qwen": preTokenizer = .qwen2
        default:
            throw FormatError("\(path): pre-tokenizer \(pre) is not supported (gpt2, smollm/starcoder, llama-bpe/llama3 and qwen2 families are)")
        }
        let merges = try (gguf.metadata["tokenizer.ggml.merges"]?.array ?? []).enumerated().map { i, value in
            guard let s = value.string else { throw FormatError("\(path): tokenizer.ggml.merges[\(i)] is not a string") }
            return s
        }
        let control = v.ids(ofType: 3), user = v.ids(ofType: 4)
        var endOfGeneration = Set<Int>()
        if let eot = try v.id("tokenizer.ggml.eot_token_id") { endOfGeneration.insert(eot) }
        for i in control.union(user) where ByteLevelBPETokenizer.endOfTurnMarkers.contains(v.tokens[i]) { endOfGeneration.insert(i) }
        return try ByteLevelBPETokenizer(
            tokens: v.tokens, merges: merges, preTokenizer: preTokenizer, controlTokens: control, userTokens: user,
            bosTokenID: try v.id("tokenizer.ggml.bos_token_id"), eosTokenID: try v.id("tokenizer.ggml.eos_token_id"),
            endOfGenerationIDs: endOfGeneration, ignoreMerges: preTokenizer == .llama3)
    }

    static func sentencePiece(_ gguf: GGUFFile, _ v: Vocabulary) throws -> SentencePieceBPETokenizer {
        let path = gguf.path
        guard let values = gguf.metadata["tokenizer.ggml.scores"]?.array, values.count == v.tokens.count else {
            throw FormatError("\(path): tokenizer.ggml.scores is missing or does not have one score per token")
        }
        let scores = try values.enumerated().map { i, value in
            guard let f = value.double else { throw FormatError("\(path): tokenizer.ggml.scores[\(i)] is not a number") }
            return Float(f)
        }
        let types = v.types.map { SentencePieceBPETokenizer.PieceType(rawValue: $0) ?? .normal }
        let addSpacePrefix = gguf.metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true
        return try SentencePieceBPETokenizer(
            pieces: v.tokens, types: types, scores: scores, byteFallback: true,
            unknownID: try v.id("tokenizer.ggml.unknown_token_id") ?? v.types.firstIndex(of: 2),
            input: .llamaCpp(addSpacePrefix: addSpacePrefix), output: .pieces(stripFirstSpace: addSpacePrefix),
            bosTokenID: try v.id("tokenizer.ggml.bos_token_id"), eosTokenID: try v.id("tokenizer.ggml.eos_token_id"))
    }

    /// llama.cpp stores WordPiece tokens with `▁` marking word starts and no `##` on continuations;
    /// bracketed tokens (`[CLS]`) are kept as they are.
    static func wordPiece(_ gguf: GGUFFile, _ v: Vocabulary) throws -> WordPieceTokenizer {
        let tokens = v.tokens.map { t -> String in
            if t.hasPrefix("[") && t.hasSuffix("]") { return t }
            if t.hasPrefix("▁") { return String(t.dropFirst()) }
            return "##" + t
        }
        let unknown = try v.id("tokenizer.ggml.unknown_token_id") ?? tokens.firstIndex(of: "[UNK]")
        guard let unknown else { throw FormatError("\(gguf.path): a bert vocabulary needs an unknown token") }
        return try WordPieceTokenizer(
            tokens: tokens, unknownToken: tokens[unknown],
            normalizer: BertNormalizer(cleanText: true, handleChineseCharacters: true, stripAccents: nil, lowercase: true),
            specialTokens: v.ids(ofType: 3))
    }
}
