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
        case "BPE": return try byteLevelBPE(model: model, root: root, added: added)
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

    static func typeName(_ value: Any?) -> String? { (value as? [String: Any])?["type"] as? String }

    static func byteLevelBPE(model: [String: Any], root: [String: Any], added: [AddedToken]) throws -> ByteLevelBPETokenizer {
        if root["normalizer"] != nil && !(root["normalizer"] is NSNull) {
            throw TokenizerError("normalizer \(typeName(root["normalizer"]) ?? "?") is not supported for byte-level BPE")
        }
        if model["byte_fallback"] as? Bool == true { throw TokenizerError("BPE with byte_fallback (SentencePiece style) is not supported") }
        let preTokenizer = try bytePreTokenizer(root["pre_tokenizer"])
        if let decoder = typeName(root["decoder"]), decoder != "ByteLevel" {
            throw TokenizerError("decoder \(decoder) is not supported for byte-level BPE (ByteLevel is)")
        }
        let tokens = try vocabularyArray(model["vocab"], added: added)
        let merges: [String] = try (model["merges"] as? [Any] ?? []).enumerated().map { i, m in
            if let s = m as? String { return s }
            if let pair = m as? [String], pair.count == 2 { return pair[0] + " " + pair[1] }
            throw TokenizerError("merge \(i) is neither \"a b\" nor [\"a\", \"b\"]")
        }
        let eos = ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "</s>"].lazy.compactMap { t in added.first { $0.content == t }?.id }.first
        return try ByteLevelBPETokenizer(
            tokens: tokens, merges: merges, preTokenizer: preTokenizer,
            controlTokens: Set(added.filter(\.special).map(\.id)), userTokens: Set(added.filter { !$0.special }.map(\.id)),
            eosTokenID: eos, endOfGenerationIDs: Set(added.filter { ByteLevelBPETokenizer.endOfTurnMarkers.contains($0.content) }.map(\.id)))
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
