import Foundation

/// SentencePiece-style BPE (LLaMA-2, Mistral, Gemma): text becomes a string of Unicode characters
/// in which spaces are `▁`, symbols merge by score (or merge rank) into vocabulary pieces, and a
/// character left outside the vocabulary becomes its UTF-8 bytes (`<0xE4>`) when the model has
/// byte fallback, otherwise the unknown token.
///
/// Three front ends feed the same merge step:
/// - a SentencePiece `.model` file: SentencePiece's normalizer over the whole text (dummy `▁`
///   prefix, optional whitespace cleanup and compiled rules), user-defined pieces kept whole;
/// - a GGUF `llama` vocabulary: llama.cpp's reading, a `▁` prefix at the start and after every
///   special token, spaces escaped, no other normalization;
/// - a `tokenizer.json` BPE model with `byte_fallback`: its normalizer and Metaspace pre-tokenizer.
public final class SentencePieceBPETokenizer: Tokenizer, @unchecked Sendable {
    public enum PieceType: Int, Sendable { case normal = 1, unknown, control, userDefined, unused, byte }

    /// How text becomes symbols before merging.
    public enum Input: Sendable {
        case sentencePiece(SentencePieceNormalizer)
        case llamaCpp(addSpacePrefix: Bool)
        case components(normalizer: TextNormalizer?, preTokenizer: [WordSplit])
    }

    /// How ids become text.
    public enum Output: Sendable {
        /// `▁` → space, byte pieces → bytes, the first leading space dropped when `stripFirstSpace`.
        case pieces(stripFirstSpace: Bool)
        /// A `tokenizer.json` decoder chain.
        case decoders([TokenDecoder])
    }

    /// Hugging Face's Metaspace pre-tokenizer.
    public struct Metaspace: Sendable {
        public enum Prepend: String, Sendable { case always, first, never }
        public var replacement: Character = "▁"
        public var prepend: Prepend = .always
        public var split = true
    }

    /// What a Split pre-tokenizer does with the pattern's matches.
    public enum SplitBehavior: String, Sendable {
        case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
        case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
    }

    /// One pre-tokenizer step: each word becomes one or more words.
    public enum WordSplit: Sendable {
        case metaspace(Metaspace)
        case split(TextPattern, behavior: SplitBehavior, invert: Bool)

        /// `atStart`: the word begins at the start of the encoded text (Metaspace's `first` scheme).
        func apply(_ word: String, atStart: Bool) -> [(word: String, atStart: Bool)] {
            switch self {
            case .metaspace(let m):
                let mark = String(m.replacement)
                var text = TextPattern.replaceLiteral(" ", in: word, with: mark)
                let prepend = m.prepend == .always || (m.prepend == .first && atStart)
                if prepend && !text.isEmpty && !text.hasPrefix(mark) { text = mark + text }
                guard m.split else { return [(text, atStart)] }
                return SentencePieceBPETokenizer.splitBefore(m.replacement, text).enumerated().map { (String($1), atStart && $0 == 0) }
            case .split(let pattern, let behavior, let invert):
                var segments: [(text: Substring, isMatch: Bool)] = []
                var from = word.startIndex
                for r in pattern.matches(in: word) {
                    if from < r.lowerBound { segments.append((word[from..<r.lowerBound], invert)) }
                    segments.append((word[r], !invert))
                    from = r.upperBound
                }
                if from < word.endIndex { segments.append((word[from...], invert)) }
                var pieces: [Substring] = []
                var previousMatch = false
                switch behavior {
                case .removed: pieces = segments.filter { !$0.isMatch }.map(\.text)
                case .isolated: pieces = segments.map(\.text)
                case .mergedWithPrevious:
                    for s in segments {
                        if s.isMatch && !previousMatch, let last = pieces.last {
                            pieces[pieces.count - 1] = word[last.startIndex..<s.text.endIndex]
                        } else {
                            pieces.append(s.text)
                        }
                        previousMatch = s.isMatch
                    }
                case .mergedWithNext:
                    for s in segments.reversed() {
                        if s.isMatch && !previousMatch, let last = pieces.last {
                            pieces[pieces.count - 1] = word[s.text.startIndex..<last.endIndex]
                        } else {
                            pieces.append(s.text)
                        }
                        previousMatch = s.isMatch
                    }
                    pieces.reverse()
                case .contiguous:
                    for s in segments {
                        if s.isMatch && previousMatch, let last = pieces.last {
                            pieces[pieces.count - 1] = word[last.startIndex..<s.text.endIndex]
                        } else {
                            pieces.append(s.text)
                        }
                        previousMatch = s.isMatch
                    }
                }
                return pieces.enumerated().map { (String($1), atStart && $1.startIndex == word.startIndex) }
            }
        }
    }

    public let pieces: [String]
    public let types: [PieceType]
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let endOfGenerationIDs: Set<Int>
    public let input: Input
    public let output: Output

    private let vocabulary: [String: Int]
    private let merges: BPEMerges
    private let scalarIDs: [UInt32: Int32]
    private let byteIDs: [Int32]?
    private let unknownID: Int?
    private let ignoreMerges: Bool
    private let fuseUnknown: Bool
    /// No vocabulary entry has `▁` after another character (see `encodeSymbols`).
    private let splitsAtSpaces: Bool
    private let splitter: SpecialTokenSplitter
    /// User-defined pieces matched inside the normalized text (SentencePiece front end), longest first.
    private let inlinePieces: [UInt8: [(bytes: [UInt8], id: Int32)]]
    private let special: Set<Int>

    /// - Parameters:
    ///   - pieces: the vocabulary, index = id, with `▁` for spaces and `<0xXX>` byte pieces.
    ///   - merges: ranked merges; when nil, pairs merge by the `scores` of the piece they form.
    ///   - byteFallback: characters outside the vocabulary become byte pieces.
    ///   - addedTokens: (id, matched even without parseSpecial) for the tokenizer.json front end.
    public init(pieces: [String], types: [PieceType], scores: [Float]? = nil, merges mergeList: [String]? = nil,
                byteFallback: Bool, unknownID: Int?, input: Input, output: Output,
                addedTokens: [(id: Int, always: Bool)] = [], ignoreMerges: Bool = false, fuseUnknown: Bool = true,
                bosTokenID: Int? = nil, eosTokenID: Int? = nil) throws {
        guard types.count == pieces.count else { throw TokenizerError("\(types.count) piece types for \(pieces.count) pieces") }
        if let unknownID, !pieces.indices.contains(unknownID) { throw TokenizerError("the unknown piece id \(unknownID) is outside the vocabulary") }
        for (name, id) in [("bos", bosTokenID), ("eos", eosTokenID)] {
            if let id, !pieces.indices.contains(id) { throw TokenizerError("the \(name) id \(id) is outside the vocabulary") }
        }
        self.pieces = pieces
        self.types = types
        self.unknownID = unknownID
        self.input = input
        self.output = output
        self.ignoreMerges = ignoreMerges
        self.fuseUnknown = fuseUnknown
        splitsAtSpaces = !pieces.contains { piece in
            var previous: Unicode.Scalar?
            for c in piece.unicodeScalars {
                if c == "▁", let p = previous, p != "▁" { return true }
                previous = c
            }
            return false
        }
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID

        var vocabulary: [String: Int] = [:]
        vocabulary.reserveCapacity(pieces.count)
        for (i, p) in pieces.enumerated() where vocabulary[p] == nil { vocabulary[p] = i }
        self.vocabulary = vocabulary

        // Symbols are ordinary pieces: SentencePiece never forms control, unknown or byte pieces from text.
        let symbolic: (Int) -> Bool = { types[$0] == .normal || types[$0] == .userDefined }
        var scalarIDs: [UInt32: Int32] = [:]
        for (i, p) in pieces.enumerated() where symbolic(i) {
            let scalars = p.unicodeScalars
            if scalars.count == 1, scalarIDs[scalars.first!.value] == nil { scalarIDs[scalars.first!.value] = Int32(i) }
        }
        self.scalarIDs = scalarIDs

        if let mergeList {
            merges = try BPEMerges(list: mergeList, vocabulary: vocabulary)
        } else {
            guard let scores, scores.count == pieces.count else { throw TokenizerError("\(scores?.count ?? 0) scores for \(pieces.count) pieces") }
            merges = BPEMerges(pieces: pieces, scores: scores, mergeable: symbolic, vocabulary: vocabulary)
        }

        if byteFallback {
            var bytes = [Int32](repeating: -1, count: 256)
            for b in 0..<256 {
                if let id = vocabulary[Self.bytePiece(UInt8(b))] { bytes[b] = Int32(id) }
            }
            byteIDs = bytes
        } else {
            byteIDs = nil
        }

        var special = Set<Int>()
        var splitterTokens: [(text: String, id: Int, always: Bool)] = []
        var inline: [UInt8: [(bytes: [UInt8], id: Int32)]] = [:]
        switch input {
        case .components:
            splitterTokens = addedTokens.map { (pieces[$0.id], $0.id, $0.always) }
            special = Set(addedTokens.map(\.id))
        case .sentencePiece, .llamaCpp:
            for (i, t) in types.enumerated() {
                if t == .control { splitterTokens.append((pieces[i], i, false)) }
                guard t == .userDefined else { continue }
                special.insert(i)
                if case .llamaCpp = input {
                    splitterTokens.append((pieces[i], i, true))
                } else if let first = pieces[i].utf8.first {
                    inline[first, default: []].append((Array(pieces[i].utf8), Int32(i)))
                }
            }
            special.formUnion(types.indices.filter { types[$0] == .control })
        }
        self.special = special
        inlinePieces = inline.mapValues { $0.sorted { $0.bytes.count > $1.bytes.count } }
        splitter = SpecialTokenSplitter(splitterTokens)
        endOfGenerationIDs = Set(pieces.indices.filter { special.contains($0) && ByteLevelBPETokenizer.endOfTurnMarkers.contains(pieces[$0]) })
            .union(eosTokenID.map { [$0] } ?? [])
    }

    static func bytePiece(_ b: UInt8) -> String {
        let hex = Array("0123456789ABCDEF")
        return "<0x\(hex[Int(b >> 4)])\(hex[Int(b & 15)])>"
    }

    public var vocabularySize: Int { pieces.count }
    public func isSpecial(_ id: Int) -> Bool { special.contains(id) }
    public func id(of token: String) -> Int? { vocabulary[token] }
    public func token(_ id: Int) -> String? { pieces.indices.contains(id) ? pieces[id] : nil }

    public func bytes(of id: Int) -> [UInt8] {
        guard pieces.indices.contains(id) else { return [] }
        if types[id] == .byte, let b = Self.byteValue(pieces[id]) { return [b] }
        if types[id] == .unknown, case .pieces = output { return Array(" \u{2047} ".utf8) }  // SentencePiece's unk surface
        if special.contains(id) { return Array(pieces[id].utf8) }
        return Array(pieces[id].replacingOccurrences(of: "▁", with: " ").utf8)
    }

    /// The byte of a `<0xXX>` piece.
    static func byteValue(_ piece: String) -> UInt8? {
        let u = Array(piece.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
    }

    // MARK: Encoding

    public func encode(_ text: String, parseSpecial: Bool) -> [Int] {
        var ids: [Int] = []
        var cache: [String: [Int32]] = [:]
        var afterSpecial = true
        for segment in splitter.split(text, parseSpecial: parseSpecial) {
            switch segment {
            case .special(let id):
                ids.append(id)
                afterSpecial = true
            case .text(let span):
                switch input {
                case .sentencePiece(let normalizer):
                    encodeSymbols(normalizer.normalize(span), into: &ids)
                case .llamaCpp(let addSpacePrefix):
                    var escaped = Array(span.utf8)
                    if addSpacePrefix && afterSpecial { escaped.insert(0x20, at: 0) }
                    encodeSymbols(SentencePieceNormalizer.escapeSpaces(escaped), into: &ids)
                case .components(let normalizer, let preTokenizer):
                    var words = [(word: normalizer?.apply(String(span)) ?? String(span), atStart: span.startIndex == text.startIndex)]
                    for step in preTokenizer { words = words.flatMap { step.apply($0.word, atStart: $0.atStart) } }
                    for w in words { encodeWord(w.word, into: &ids, cache: &cache) }
                }
                afterSpecial = false
            }
        }
        return ids
    }

    /// Pieces of `text` each starting at an occurrence of `mark` (the text before the first one is a piece too).
    static func splitBefore(_ mark: Character, _ text: String) -> [Substring] {
        guard let scalar = mark.unicodeScalars.first, mark.unicodeScalars.count == 1 else { return [text[...]] }
        var words: [Substring] = []
        let scalars = text.unicodeScalars
        var start = scalars.startIndex
        for i in scalars.indices where scalars[i] == scalar && i != start {
            words.append(text[start..<i])
            start = i
        }
        if start < scalars.endIndex { words.append(text[start...]) }
        return words
    }

    private func encodeWord(_ word: String, into ids: inout [Int], cache: inout [String: [Int32]]) {
        if word.isEmpty { return }
        if let known = cache[word] {
            ids += known.lazy.map(Int.init)
            return
        }
        var out: [Int] = []
        if ignoreMerges, let whole = vocabulary[word] { out = [whole] } else { encodeSymbols(Array(word.utf8), into: &out) }
        if word.utf8.count < 256, cache.count < 1 << 16 { cache[word] = out.map { Int32($0) } }
        ids += out
    }

    /// Encodes normalized UTF-8. When no vocabulary entry has `▁` after another character, no merge
    /// can cross the start of a `▁` run, so the text is merged one such segment at a time (the same
    /// result as merging it whole) and repeated segments come from a cache.
    private func encodeSymbols(_ utf8: [UInt8], into ids: inout [Int]) {
        guard splitsAtSpaces else {
            appendFused(mergeSegment(utf8[...]), to: &ids)
            return
        }
        var cache: [ArraySlice<UInt8>: [Int32]] = [:]
        var start = 0, i = 0
        var previousIsSpace = false
        while i < utf8.count {
            let isSpace = i + 2 < utf8.count && utf8[i] == 0xE2 && utf8[i + 1] == 0x96 && utf8[i + 2] == 0x81
            if isSpace && !previousIsSpace && i > start {
                appendSegment(utf8[start..<i], to: &ids, cache: &cache)
                start = i
            }
            previousIsSpace = isSpace
            i += isSpace ? 3 : 1
        }
        if start < utf8.count { appendSegment(utf8[start...], to: &ids, cache: &cache) }
    }

    private func appendSegment(_ segment: ArraySlice<UInt8>, to ids: inout [Int], cache: inout [ArraySlice<UInt8>: [Int32]]) {
        if let known = cache[segment] {
            appendFused(known, to: &ids)
            return
        }
        let merged = mergeSegment(segment)
        if segment.count < 128, cache.count < 1 << 16 { cache[segment] = merged }
        appendFused(merged, to: &ids)
    }

    /// Appends ids, fusing an unknown token with an unknown token just before it when the model fuses them.
    private func appendFused(_ segment: [Int32], to ids: inout [Int]) {
        var rest = segment[...]
        if fuseUnknown, let unknownID, ids.last == unknownID, rest.first == Int32(unknownID) { rest = rest.dropFirst() }
        ids += rest.lazy.map(Int.init)
    }

    /// Splits UTF-8 into symbols (user-defined pieces whole, otherwise one character each), merges
    /// them, and maps what remains to ids with byte fallback or the unknown token.
    private func mergeSegment(_ utf8: ArraySlice<UInt8>) -> [Int32] {
        var symbols: [Int32] = []
        var starts: [Int] = []
        symbols.reserveCapacity(utf8.count)
        starts.reserveCapacity(utf8.count + 1)
        var i = utf8.startIndex
        while i < utf8.endIndex {
            starts.append(i)
            if let candidates = inlinePieces[utf8[i]],
               let hit = candidates.first(where: { i + $0.bytes.count <= utf8.endIndex && utf8[i..<i + $0.bytes.count].elementsEqual($0.bytes) }) {
                symbols.append(hit.id)
                i += hit.bytes.count
                continue
            }
            let lead = utf8[i]
            let length = min(Self.utf8Length(lead), utf8.endIndex - i)
            var scalar = UInt32(length == 1 ? lead : lead & (0xFF >> (length + 1)))
            for k in 1..<max(length, 1) { scalar = scalar << 6 | UInt32(utf8[i + k] & 0x3F) }
            symbols.append(scalarIDs[scalar] ?? -1)
            i += length
        }
        starts.append(utf8.endIndex)
        var out: [Int32] = []
        out.reserveCapacity(symbols.count)
        var previousUnknown = false
        for (id, start) in merges.merge(symbols) {
            if id >= 0 {
                out.append(id)
                previousUnknown = false
                continue
            }
            let bytes = utf8[starts[start]..<starts[start + 1]]
            if let byteIDs, bytes.allSatisfy({ byteIDs[Int($0)] >= 0 }) {
                for b in bytes { out.append(byteIDs[Int(b)]) }
                previousUnknown = false
            } else if let unknownID, !(fuseUnknown && previousUnknown) {
                out.append(Int32(unknownID))
                previousUnknown = true
            }
        }
        return out
    }

    static func utf8Length(_ lead: UInt8) -> Int { lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4 }

    // MARK: Decoding

    public func decode(_ ids: [Int], skipSpecial: Bool) -> String {
        let kept = ids.filter { pieces.indices.contains($0) && !(skipSpecial && special.contains($0)) }
        switch output {
        case .pieces(let stripFirstSpace):
            var bytes: [UInt8] = []
            for id in kept { bytes += self.bytes(of: id) }
            if stripFirstSpace, let first = kept.first, !special.contains(first), types[first] != .byte, bytes.first == 0x20 {
                bytes.removeFirst()
            }
            return String(decoding: bytes, as: UTF8.self)
        case .decoders(let steps):
            // Without a decoder, Hugging Face joins the tokens with spaces.
            return steps.isEmpty ? kept.map { pieces[$0] }.joined(separator: " ") : TokenDecoder.run(steps, kept.map { pieces[$0] }).joined()
        }
    }
}
