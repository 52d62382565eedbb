/// Byte-level BPE (GPT-2, SmolLM, LLaMA-3 families).
///
/// Encoding: split out special tokens, pre-tokenize each remaining span, map each piece's UTF-8 bytes
/// through `ByteLevel`, then merge adjacent symbols, always the pair with the lowest merge rank first
/// (leftmost on ties), until no ranked pair remains. Ordinary text never becomes a special token:
/// a byte, a merge or a whole pre-token whose token is control or user-defined is not used, so
/// every text decodes back to itself.
///
///     let bpe = try ByteLevelBPETokenizer(tokens: ["a", "b", "ab"], merges: ["a b"], preTokenizer: .gpt2)
///     bpe.encode("ab")   // [2]
public final class ByteLevelBPETokenizer: Tokenizer, @unchecked Sendable {
    public let tokens: [String]
    /// The merges, "left right", highest priority first.
    public let mergeList: [String]
    public let preTokenizer: PreTokenizer
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let endOfGenerationIDs: Set<Int>

    private let vocabulary: [String: Int]
    private let tokenBytes: [[UInt8]]
    private let merges: BPEMerges
    /// A pre-token that is itself a vocabulary entry becomes that token without merging (LLaMA-3).
    private let ignoreMerges: Bool
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
                bosTokenID: Int? = nil, eosTokenID: Int? = nil, endOfGenerationIDs: Set<Int> = [],
                ignoreMerges: Bool = false) throws {
        self.tokens = tokens
        self.mergeList = mergeList
        self.ignoreMerges = ignoreMerges
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
            if let id = vocabulary[String(ByteLevel.byteToScalar[b])], !special.contains(id) { byteTokens[b] = Int32(id) }
        }
        self.byteTokens = byteTokens

        merges = try BPEMerges(list: mergeList, vocabulary: vocabulary, unreachable: special)

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
            var symbols: [Int32]
            if ignoreMerges, let whole = vocabulary[ByteLevel.encode(utf8)], !special.contains(whole) {
                symbols = [Int32(whole)]
            } else {
                symbols = merges.merge(utf8.map { byteTokens[Int($0)] }).map(\.id)
                symbols.removeAll { $0 < 0 }
            }
            if cache.count < 1 << 20 { cache[utf8] = symbols }
            for s in symbols { ids.append(Int(s)) }
        }
    }
}
