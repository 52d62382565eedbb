import Foundation

/// Reads a Hugging Face `tokenizer.json`: the model (BPE or WordPiece), normalizer, pre-tokenizer,
/// decoder and added tokens. Components Ember does not implement are rejected by name rather
/// than approximated.
public enum TokenizerJSON {
    public static func load(path: String) throws -> any Tokenizer {
        guard let data = FileManager.default.contents(atPath: path) else { throw TokenizerError("\(path): cannot read") }
        do {
            return try load(data: data)
        } catch let error as TokenizerError {
            throw TokenizerError("\(path): \(error.message)")
        }
    }

    public static func load(data: Data) throws -> any Tokenizer {
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TokenizerError("not a JSON object (truncated or not a tokenizer.json)")
        }
        guard let model = root["model"] as? [String: Any] else { throw TokenizerError("no \"model\" section") }
        let added = try addedTokens(root["added_tokens"])
        let type = model["type"] as? String ?? (model["merges"] != nil ? "BPE" : "WordPiece")
        switch type {
        case "BPE":
            if let post = typeName(root["post_processor"]), !knownPostProcessors.contains(post) {
                throw TokenizerError("post-processor \(post) is not supported (\(knownPostProcessors.sorted().joined(separator: ", ")) are)")
            }
            if mentionsByteLevel(root["pre_tokenizer"]) || typeName(root["decoder"]) == "ByteLevel" {
                return try byteLevelBPE(model: model, root: root, added: added)
            }
            return try sentencePieceBPE(model: model, root: root, added: added)
        case "WordPiece": return try wordPiece(model: model, root: root, added: added)
        default: throw TokenizerError("model type \(type) is not supported (BPE and WordPiece are)")
        }
    }

    struct AddedToken { let id: Int, content: String, special: Bool }

    static func addedTokens(_ value: Any?) throws -> [AddedToken] {
        guard let list = value as? [[String: Any]] else { return [] }
        return try list.map {
            guard let id = $0["id"] as? Int, let content = $0["content"] as? String else {
                throw TokenizerError("an added token lacks its id or content")
            }
            guard id >= 0 else { throw TokenizerError("added token \(content.debugDescription) has the negative id \(id)") }
            return AddedToken(id: id, content: content, special: $0["special"] as? Bool ?? false)
        }
    }

    /// The vocabulary as an array indexed by id, added tokens included.
    static func vocabularyArray(_ vocab: Any?, added: [AddedToken]) throws -> [String] {
        guard let vocab = vocab as? [String: Any] else { throw TokenizerError("the model has no vocab object") }
        var entries: [(String, Int)] = []
        for (token, value) in vocab {
            guard let id = value as? Int, id >= 0 else { throw TokenizerError("vocab entry \(token.debugDescription) has no valid id") }
            entries.append((token, id))
        }
        entries += added.map { ($0.content, $0.id) }
        let size = (entries.map(\.1).max() ?? -1) + 1
        guard size <= entries.count * 2 + 1024 else { throw TokenizerError("token ids reach \(size) for \(entries.count) tokens") }
        var tokens = [String](repeating: "", count: size)
        for (token, id) in entries { tokens[id] = token }
        return tokens
    }

    /// A BPE model's merges, written either "a b" or ["a", "b"].
    static func mergeList(_ model: [String: Any]) throws -> [String] {
        try (model["merges"] as? [Any] ?? []).enumerated().map { i, m in
            if let s = m as? String { return s }
            if let pair = m as? [String], pair.count == 2 { return pair[0] + " " + pair[1] }
            throw TokenizerError("merge \(i) is neither \"a b\" nor [\"a\", \"b\"]")
        }
    }

    static func typeName(_ value: Any?) -> String? { (value as? [String: Any])?["type"] as? String }

    /// Post-processors only add special tokens around an encoding (not done by `encode`), so any of these is accepted.
    static let knownPostProcessors: Set<String> = ["TemplateProcessing", "ByteLevel", "BertProcessing", "RobertaProcessing", "Sequence"]

    /// Whether a pre-tokenizer is or contains ByteLevel.
    static func mentionsByteLevel(_ value: Any?) -> Bool {
        guard let object = value as? [String: Any] else { return false }
        if object["type"] as? String == "ByteLevel" { return true }
        return (object["pretokenizers"] as? [Any] ?? []).contains(where: mentionsByteLevel)
    }

    static func firstAdded(_ added: [AddedToken], _ texts: [String]) -> Int? {
        texts.lazy.compactMap { t in added.first { $0.content == t && $0.special }?.id }.first
    }

    /// BPE over characters with `▁` for spaces (LLaMA-2, Mistral, Gemma converted from SentencePiece).
    static func sentencePieceBPE(model: [String: Any], root: [String: Any], added: [AddedToken]) throws -> SentencePieceBPETokenizer {
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let value = model[key] as? String, !value.isEmpty { throw TokenizerError("BPE with \(key) is not supported") }
        }
        if let dropout = model["dropout"] as? Double, dropout > 0 { throw TokenizerError("BPE dropout is not supported") }
        let normalizer = try (root["normalizer"] as? [String: Any]).map(TextNormalizer.fromJSON)
        var preTokenizer: [SentencePieceBPETokenizer.WordSplit] = []
        if let pre = root["pre_tokenizer"] as? [String: Any] {
            let parts = pre["type"] as? String == "Sequence" ? (pre["pretokenizers"] as? [[String: Any]] ?? []) : [pre]
            preTokenizer = try parts.map(wordSplit)
        }
        let decoders = try (root["decoder"] as? [String: Any]).map(TokenDecoder.fromJSON) ?? []
        let tokens = try vocabularyArray(model["vocab"], added: added)
        let merges = try mergeList(model)
        var unknown: Int?
        if let name = model["unk_token"] as? String {
            guard let id = tokens.firstIndex(of: name) else { throw TokenizerError("the unknown token \(name) is not in the vocabulary") }
            unknown = id
        }
        var types = tokens.map { SentencePieceBPETokenizer.byteValue($0) == nil ? SentencePieceBPETokenizer.PieceType.normal : .byte }
        for a in added { types[a.id] = a.special ? .control : .userDefined }
        if let unknown { types[unknown] = .unknown }
        return try SentencePieceBPETokenizer(
            pieces: tokens, types: types, merges: merges, byteFallback: model["byte_fallback"] as? Bool ?? false,
            unknownID: unknown, input: .components(normalizer: normalizer, preTokenizer: preTokenizer), output: .decoders(decoders),
            addedTokens: added.map { ($0.id, !$0.special) }, ignoreMerges: model["ignore_merges"] as? Bool ?? false,
            fuseUnknown: model["fuse_unk"] as? Bool ?? false,
            bosTokenID: firstAdded(added, ["<s>", "<bos>", "<|begin_of_text|>"]),
            eosTokenID: firstAdded(added, ["</s>", "<eos>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"]))
    }

    static func byteLevelBPE(model: [String: Any], root: [String: Any], added: [AddedToken]) throws -> ByteLevelBPETokenizer {
        if root["normalizer"] != nil && !(root["normalizer"] is NSNull) {
            throw TokenizerError("normalizer \(typeName(root["normalizer"]) ?? "?") is not supported for byte-level BPE")
        }
        if model["byte_fallback"] as? Bool == true { throw TokenizerError("byte-level BPE with byte_fallback is not supported") }
        let preTokenizer = try bytePreTokenizer(root["pre_tokenizer"])
        if let decoder = typeName(root["decoder"]), decoder != "ByteLevel" {
            throw TokenizerError("decoder \(decoder) is not supported for byte-level BPE (ByteLevel is)")
        }
        let tokens = try vocabularyArray(model["vocab"], added: added)
        let merges = try mergeList(model)
        let eos = ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>"].lazy.compactMap { t in added.first { $0.content == t }?.id }.first
        return try ByteLevelBPETokenizer(
            tokens: tokens, merges: merges, preTokenizer: preTokenizer,
            controlTokens: Set(added.filter(\.special).map(\.id)), userTokens: Set(added.filter { !$0.special }.map(\.id)),
            eosTokenID: eos, endOfGenerationIDs: Set(added.filter { ByteLevelBPETokenizer.endOfTurnMarkers.contains($0.content) }.map(\.id)),
            ignoreMerges: model["ignore_merges"] as? Bool ?? false)
    }

    /// A Metaspace or Split pre-tokenizer of a SentencePiece-style BPE.
    static func wordSplit(_ object: [String: Any]) throws -> SentencePieceBPETokenizer.WordSplit {
        switch object["type"] as? String {
        case "Metaspace":
            var m = SentencePieceBPETokenizer.Metaspace()
            m.replacement = (object["replacement"] as? String)?.first ?? "▁"
            let scheme = object["prepend_scheme"] as? String ?? ((object["add_prefix_space"] as? Bool ?? true) ? "always" : "never")
            guard let prepend = SentencePieceBPETokenizer.Metaspace.Prepend(rawValue: scheme) else {
                throw TokenizerError("Metaspace prepend_scheme \(scheme) is not one of always, first, never")
            }
            m.prepend = prepend
            m.split = object["split"] as? Bool ?? true
            return .metaspace(m)
        case "Split":
            let name = object["behavior"] as? String ?? "?"
            guard let behavior = SentencePieceBPETokenizer.SplitBehavior(rawValue: name) else {
                throw TokenizerError("Split behavior \(name) is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous")
            }
            return .split(try TextPattern(object, in: "pre-tokenizer Split"), behavior: behavior, invert: object["invert"] as? Bool ?? false)
        case let type:
            throw TokenizerError("pre-tokenizer \(type ?? "?") is not supported for SentencePiece-style BPE (Metaspace and Split are)")
        }
    }

    /// The byte-level pre-tokenizers Ember implements, recognised from their JSON.
    static func bytePreTokenizer(_ value: Any?) throws -> PreTokenizer {
        guard let object = value as? [String: Any], let type = object["type"] as? String else {
            throw TokenizerError("byte-level BPE without a ByteLevel pre-tokenizer is not supported")
        }
        func isByteLevel(_ o: [String: Any]) -> Bool {
            o["type"] as? String == "ByteLevel" && (o["use_regex"] as? Bool ?? true) && !(o["add_prefix_space"] as? Bool ?? false)
        }
        if isByteLevel(object) { return .gpt2 }
        if type == "Sequence", let parts = object["pretokenizers"] as? [[String: Any]], parts.count == 2 {
            if parts[0]["type"] as? String == "Digits", parts[0]["individual_digits"] as? Bool == true, isByteLevel(parts[1]) {
                return .smollm
            }
            // Split on a known pattern, then ByteLevel without its own regex (LLaMA-3, Qwen2).
            if parts[0]["type"] as? String == "Split", parts[0]["behavior"] as? String == "Isolated",
               parts[0]["invert"] as? Bool != true, parts[1]["type"] as? String == "ByteLevel",
               parts[1]["use_regex"] as? Bool == false, !(parts[1]["add_prefix_space"] as? Bool ?? false),
               let pattern = (parts[0]["pattern"] as? [String: Any])?["Regex"] as? String,
               let known = PreTokenizer.patterns.first(where: { $0.value == pattern })?.key {
                return known
            }
        }
        let parts = (object["pretokenizers"] as? [[String: Any]])?.compactMap { $0["type"] as? String }.joined(separator: ", ")
        throw TokenizerError("pre-tokenizer \(type)\(parts.map { "(\($0))" } ?? "") is not supported (ByteLevel, and Digits then ByteLevel, are)")
    }

    static func wordPiece(model: [String: Any], root: [String: Any], added: [AddedToken]) throws -> WordPieceTokenizer {
        var normalizer: BertNormalizer?
        if let object = root["normalizer"] as? [String: Any] {
            guard object["type"] as? String == "BertNormalizer" else {
                throw TokenizerError("normalizer \(object["type"] ?? "?") is not supported for WordPiece (BertNormalizer is)")
            }
            normalizer = BertNormalizer(cleanText: object["clean_text"] as? Bool ?? true,
                                        handleChineseCharacters: object["handle_chinese_chars"] as? Bool ?? true,
                                        stripAccents: object["strip_accents"] as? Bool,
                                        lowercase: object["lowercase"] as? Bool ?? true)
        }
        if let pre = typeName(root["pre_tokenizer"]), pre != "BertPreTokenizer" {
            throw TokenizerError("pre-tokenizer \(pre) is not supported for WordPiece (BertPreTokenizer is)")
        }
        if let decoder = typeName(root["decoder"]), decoder != "WordPiece" {
            throw TokenizerError("decoder \(decoder) is not supported for WordPiece")
        }
        return try WordPieceTokenizer(
            tokens: try vocabularyArray(model["vocab"], added: added),
            unknownToken: model["unk_token"] as? String ?? "[UNK]",
            continuingPrefix: model["continuing_subword_prefix"] as? String ?? "##",
            maxCharactersPerWord: model["max_input_chars_per_word"] as? Int ?? 100,
            normalizer: normalizer, specialTokens: Set(added.map(\.id)))
    }
}
