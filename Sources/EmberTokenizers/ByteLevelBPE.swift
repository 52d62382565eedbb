/// Byte-level BPE (GPT-2, SmolLM, LLaMA-3 families).
///
/// Encoding: split out special tokens, pre-tokenize each remaining span, map each piece's UTF-8 bytes
/// through `ByteLevel`, then merge adjacent symbols, always the pair with the lowest merge rank first
/// (leftmost on ties), until no ranked pair remains.
///
///     let bpe = try ByteLevelBPETokenizer(tokens: ["a", "b", "ab"], merges: ["a b"], preTokenizer: .gpt2)
///     bpe.encode("ab")   // [2]
public final class ByteLevelBPETokenizer: Tokenizer, @unchecked Sendable {
    public let tokens: [String]
    public let preTokenizer: PreTokenizer
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let endOfGenerationIDs: Set<Int>

    private let vocabulary: [String: Int]
    private let tokenBytes: [[UInt8]]
    /// (left id << 32 | right id) → (rank, merged id)
    private let merges: [UInt64: (rank: Int32, merged: Int32)]
    private let byteTokens: [Int32]
    private let special: Set<Int>
    private let splitter: SpecialTokenSplitter

    /// - Parameters:
    ///   - tokens: the vocabulary, index = id, in byte-level form (`Ġthe`).
    ///   - merges: "left right" pairs, highest priority first.
    ///   - controlTokens: ids of special tokens matched only with `parseSpecial` (`<|im_start|>`).
    ///   - userTokens: ids of added tokens that are always matched as whole tokens.
    public init(tokens: [String], merges mergeList: [String], preTokenizer: PreTokenizer,
                controlTokens: Set<Int> = [], userTokens: Set<Int> = [],
                bosTokenID: Int? = nil, eosTokenID: Int? = nil, endOfGenerationIDs: Set<Int> = []) throws {
        self.tokens = tokens
        self.preTokenizer = preTokenizer
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.endOfGenerationIDs = endOfGenerationIDs.union(eosTokenID.map { [$0] } ?? [])
        var vocabulary: [String: Int] = [:]
        vocabulary.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where vocabulary[t] == nil { vocabulary[t] = i }
        self.vocabulary = vocabulary

        let special = controlTokens.union(userTokens)
        self.special = special
        tokenBytes = tokens.enumerated().map { i, t in
            special.contains(i) ? Array(t.utf8) : (ByteLevel.decode(t) ?? Array(t.utf8))
        }

        var byteTokens = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = vocabulary[String(ByteLevel.byteToScalar[b])] { byteTokens[b] = Int32(id) }
        }
        self.byteTokens = byteTokens

        var table: [UInt64: (rank: Int32, merged: Int32)] = [:]
        table.reserveCapacity(mergeList.count)
        for (rank, merge) in mergeList.enumerated() {
            let parts = merge.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw TokenizerError("merge \(rank) \"\(merge)\" is not two tokens separated by a space") }
            guard let l = vocabulary[String(parts[0])], let r = vocabulary[String(parts[1])] else {
                throw TokenizerError("merge \(rank) \"\(merge)\" names a token that is not in the vocabulary")
            }
            guard let m = vocabulary[String(parts[0]) + String(parts[1])] else {
                throw TokenizerError("merge \(rank) \"\(merge)\" produces a token that is not in the vocabulary")
            }
            let key = UInt64(l) << 32 | UInt64(r)
            if table[key] == nil { table[key] = (Int32(rank), Int32(m)) }
        }
        merges = table

        splitter = SpecialTokenSplitter(special.map { (tokens[$0], $0, userTokens.contains($0)) })
    }

    /// Texts of the special tokens that end a turn in the chat formats Ember knows; a vocabulary's
    /// tokens with these texts join `endOfGenerationIDs`.
    public static let endOfTurnMarkers: Set<String> = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>"]

    public var vocabularySize: Int { tokens.count }
    public func isSpecial(_ id: Int) -> Bool { special.contains(id) }
    public func id(of token: String) -> Int? { vocabulary[token] }
    public func bytes(of id: Int) -> [UInt8] { tokens.indices.contains(id) ? tokenBytes[id] : [] }
    public func token(_ id: Int) -> String? { tokens.indices.contains(id) ? tokens[id] : nil }
    public func decode(_ ids: [Int], skipSpecial: Bool) -> String { decodeBytes(ids, skipSpecial: skipSpecial) }

    public func encode(_ text: String, parseSpecial: Bool) -> [Int] {
        var ids: [Int] = []
        var cache: [[UInt8]: [Int32]] = [:]  // pieces repeat: merge each distinct one once
        for segment in splitter.split(text, parseSpecial: parseSpecial) {
            switch segment {
            case .special(let id): ids.append(id)
            case .text(let span): encodeOrdinary(span, into: &ids, cache: &cache)
            }
        }
        return ids
    }

    private func encodeOrdinary(_ text: Substring, into ids: inout [Int], cache: inout [[UInt8]: [Int32]]) {
        let scalars = Array(text.unicodeScalars)
        var utf8: [UInt8] = []
        for piece in preTokenizer.split(scalars) {
            utf8.removeAll(keepingCapacity: true)
            for s in scalars[piece] { UTF8.encode(s) { utf8.append($0) } }
            if let known = cache[utf8] {
                for s in known { ids.append(Int(s)) }
                continue
            }
            var symbols = utf8.map { byteTokens[Int($0)] }
            mergeSymbols(&symbols)
            symbols.removeAll { $0 < 0 }
            if cache.count < 1 << 20 { cache[utf8] = symbols }
            for s in symbols { ids.append(Int(s)) }
        }
    }

    /// Applies merges to one pre-token in rank order.
    private func mergeSymbols(_ symbols: inout [Int32]) {
        while symbols.count > 1 {
            var best: (rank: Int32, merged: Int32) = (.max, -1)
            var at = -1
            for i in 0..<symbols.count - 1 {
                if let m = merges[UInt64(UInt32(bitPattern: symbols[i])) << 32 | UInt64(UInt32(bitPattern: symbols[i + 1]))],
                   m.rank < best.rank {
                    best = m
                    at = i
                }
            }
            if at < 0 { return }
            // Merge every non-overlapping occurrence of this pair, left to right.
            let left = symbols[at], right = symbols[at + 1]
            var out: [Int32] = []
            out.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count, symbols[i] == left, symbols[i + 1] == right {
                    out.append(best.merged)
                    i += 2
                } else {
                    out.append(symbols[i])
                    i += 1
                }
            }
            symbols = out
        }
    }
}
