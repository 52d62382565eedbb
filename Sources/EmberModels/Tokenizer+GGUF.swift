import EmberFormats
import EmberTokenizers

extension ByteLevelBPETokenizer {
    /// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata (model `gpt2`).
    public convenience init(gguf: GGUFFile) throws {
        let path = gguf.path
        guard let model = gguf.string("tokenizer.ggml.model") else { throw FormatError("\(path): the file holds no tokenizer (tokenizer.ggml.model is missing)") }
        guard model == "gpt2" else { throw FormatError("\(path): tokenizer model \(model) is not supported (gpt2 byte-level BPE is)") }
        let pre = gguf.string("tokenizer.ggml.pre") ?? "default"
        let preTokenizer: PreTokenizer
        switch pre {
        case "gpt2": preTokenizer = .gpt2
        case "smollm": preTokenizer = .smollm
        case "llama-bpe", "llama3": preTokenizer = .llama3
        case "qwen2": preTokenizer = .qwen2
        default: throw FormatError("\(path): pre-tokenizer \(pre) is not supported (gpt2, smollm, llama-bpe and qwen2 are)")
        }
        guard let tokenValues = gguf.metadata["tokenizer.ggml.tokens"]?.array else { throw FormatError("\(path): tokenizer.ggml.tokens is missing") }
        let tokens = try tokenValues.enumerated().map { i, v in
            guard let s = v.string else { throw FormatError("\(path): tokenizer.ggml.tokens[\(i)] is not a string") }
            return s
        }
        let merges = try (gguf.metadata["tokenizer.ggml.merges"]?.array ?? []).enumerated().map { i, v in
            guard let s = v.string else { throw FormatError("\(path): tokenizer.ggml.merges[\(i)] is not a string") }
            return s
        }
        let types = gguf.metadata["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 1 } ?? []
        guard types.isEmpty || types.count == tokens.count else {
            throw FormatError("\(path): tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
        }
        var control = Set<Int>(), user = Set<Int>()
        for (i, t) in types.enumerated() {
            if t == 3 { control.insert(i) } else if t == 4 { user.insert(i) }
        }
        func tokenID(_ key: String) throws -> Int? {
            guard let id = gguf.int(key) else { return nil }
            guard tokens.indices.contains(id) else { throw FormatError("\(path): \(key) = \(id) is outside the vocabulary") }
            return id
        }
        var endOfGeneration = Set<Int>()
        if let eot = try tokenID("tokenizer.ggml.eot_token_id") { endOfGeneration.insert(eot) }
        for i in control.union(user) where ByteLevelBPETokenizer.endOfTurnMarkers.contains(tokens[i]) { endOfGeneration.insert(i) }
        do {
            try self.init(tokens: tokens, merges: merges, preTokenizer: preTokenizer, controlTokens: control, userTokens: user,
                          bosTokenID: try tokenID("tokenizer.ggml.bos_token_id"), eosTokenID: try tokenID("tokenizer.ggml.eos_token_id"),
                          endOfGenerationIDs: endOfGeneration)
        } catch let error as TokenizerError {
            throw FormatError("\(path): \(error.message)")
        }
    }
}
