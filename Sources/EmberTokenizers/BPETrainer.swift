import Foundation

/// Learns a byte-level BPE vocabulary from text.
///
/// The text is pre-tokenized and its distinct pieces counted; every piece starts as its bytes.
/// Each round merges the most frequent adjacent pair (ties: the pair of smaller ids), adding the
/// joined token, until the vocabulary has `vocabularySize` entries or no pair occurs
/// `minimumFrequency` times. Pair counts are updated only in the pieces a merge touches.
public struct ByteLevelBPETrainer: Sendable {
    public var vocabularySize: Int
    public var preTokenizer: PreTokenizer
    public var specialTokens: [String]
    public var minimumFrequency: Int

    public init(vocabularySize: Int, preTokenizer: PreTokenizer = .gpt2, specialTokens: [String] = [], minimumFrequency: Int = 2) {
        self.vocabularySize = vocabularySize
        self.preTokenizer = preTokenizer
        self.specialTokens = specialTokens
        self.minimumFrequency = minimumFrequency
    }

    public struct Result: Sendable {
        /// Special tokens, then the 256 byte tokens, then one token per merge (in `ByteLevel` form).
        public var tokens: [String]
        public var merges: [(String, String)]
        public var specialTokenCount: Int
    }

    /// - Parameter progress: called with (merges done, merges wanted) every so often.
    public func train(_ texts: [String], progress: (Int, Int) -> Void = { _, _ in }) -> Result {
        var counts: [[UInt8]: Int] = [:]
        for text in texts {
            let scalars = Array(text.unicodeScalars)
            for piece in preTokenizer.split(scalars) {
                var bytes: [UInt8] = []
                for s in scalars[piece] { UTF8.encode(s) { bytes.append($0) } }
                counts[bytes, default: 0] += 1
            }
        }
        var tokens = specialTokens + ByteLevel.byteToScalar.map { String($0) }
        var index: [String: Int32] = [:]
        for (i, t) in tokens.enumerated() where index[t] == nil { index[t] = Int32(i) }
        let byteBase = Int32(specialTokens.count)

        var words = counts.map { (symbols: $0.key.map { byteBase + Int32($0) }, count: $0.value) }
        var pairCounts: [UInt64: Int] = [:]
        var where_: [UInt64: Set<Int>] = [:]
        func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(a)) << 32 | UInt64(UInt32(b)) }
        for (w, word) in words.enumerated() where word.symbols.count > 1 {
            for i in 0..<word.symbols.count - 1 {
                let k = key(word.symbols[i], word.symbols[i + 1])
                pairCounts[k, default: 0] += word.count
                where_[k, default: []].insert(w)
            }
        }

        let wanted = max(0, vocabularySize - tokens.count)
        var merges: [(String, String)] = []
        while tokens.count < vocabularySize {
            var best: UInt64 = 0, bestCount = 0
            for (k, c) in pairCounts where c > bestCount || (c == bestCount && k < best) {
                best = k
                bestCount = c
            }
            if bestCount < max(1, minimumFrequency) { break }
            let a = Int32(truncatingIfNeeded: best >> 32), b = Int32(truncatingIfNeeded: best & 0xFFFF_FFFF)
            let joined = tokens[Int(a)] + tokens[Int(b)]
            let merged: Int32
            if let existing = index[joined] {
                merged = existing
            } else {
                merged = Int32(tokens.count)
                tokens.append(joined)
                index[joined] = merged
            }
            merges.append((tokens[Int(a)], tokens[Int(b)]))
            for w in where_[best] ?? [] {
                let old = words[w].symbols, count = words[w].count
                guard old.count > 1 else { continue }
                var new: [Int32] = []
                new.reserveCapacity(old.count)
                var i = 0, changed = false
                while i < old.count {
                    if i + 1 < old.count, old[i] == a, old[i + 1] == b {
                        new.append(merged); i += 2; changed = true
                    } else {
                        new.append(old[i]); i += 1
                    }
                }
                guard changed else { continue }
                for i in 0..<old.count - 1 {
                    let k = key(old[i], old[i + 1])
                    pairCounts[k, default: 0] -= count
                    if pairCounts[k] == 0 { pairCounts[k] = nil }
                }
                if new.count > 1 {
                    for i in 0..<new.count - 1 {
                        let k = key(new[i], new[i + 1])
                        pairCounts[k, default: 0] += count
                        where_[k, default: []].insert(w)
                    }
                }
                words[w].symbols = new
            }
            where_[best] = nil
            pairCounts[best] = nil
            if merges.count % 64 == 0 { progress(merges.count, wanted) }
        }
        progress(merges.count, wanted)
        return Result(tokens: tokens, merges: merges, specialTokenCount: specialTokens.count)
    }
}

extension ByteLevelBPETrainer.Result {
    /// A Hugging Face `tokenizer.json` for this vocabulary with the given pre-tokenizer.
    public func tokenizerJSON(preTokenizer: PreTokenizer) throws -> Data {
        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        let pre: [String: Any]
        switch preTokenizer {
        case .gpt2: pre = byteLevel
        case .smollm: pre = ["type": "Sequence", "pretokenizers": [["type": "Digits", "individual_digits": true], byteLevel]]
        case .llama3, .qwen2:
            var plain = byteLevel
            plain["use_regex"] = false
            pre = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": PreTokenizer.patterns[preTokenizer]!], "behavior": "Isolated", "invert": false], plain]]
        }
        var vocabulary: [String: Int] = [:]
        for (i, t) in tokens.enumerated() where vocabulary[t] == nil { vocabulary[t] = i }
        let added: [[String: Any]] = (0..<specialTokenCount).map {
            ["id": $0, "content": tokens[$0], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true]
        }
        let root: [String: Any] = [
            "version": "1.0", "truncation": NSNull(), "padding": NSNull(), "added_tokens": added,
            "normalizer": NSNull(), "pre_tokenizer": pre, "post_processor": NSNull(),
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                      "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocabulary, "merges": merges.map { [$0.0, $0.1] }] as [String: Any],
        ]
        return try JSONSerialization.data(withJSONObject: root, options: [.sortedKeys, .withoutEscapingSlashes])
    }
}
