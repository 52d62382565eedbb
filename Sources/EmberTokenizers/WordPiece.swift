import Foundation

/// BERT's WordPiece: normalize, split on whitespace and punctuation, then cut each word greedily
/// into the longest vocabulary pieces, pieces after the first carrying the `##` prefix.
///
///     "Unaffable!" → normalize → "unaffable!" → ["unaffable", "!"] → ["un", "##aff", "##able", "!"]
///
/// A word with no such cut, or longer than `maxCharactersPerWord`, becomes the unknown token.
public final class WordPieceTokenizer: Tokenizer, @unchecked Sendable {
    public let tokens: [String]
    public let normalizer: BertNormalizer?
    public let unknownTokenID: Int
    public let continuingPrefix: String
    public let maxCharactersPerWord: Int
    public let bosTokenID: Int? = nil
    public let eosTokenID: Int? = nil
    public let endOfGenerationIDs: Set<Int> = []

    private let vocabulary: [String: Int]
    private let special: Set<Int>
    private let splitter: SpecialTokenSplitter

    public init(tokens: [String], unknownToken: String, continuingPrefix: String = "##", maxCharactersPerWord: Int = 100,
                normalizer: BertNormalizer?, specialTokens: Set<Int> = []) throws {
        self.tokens = tokens
        var vocabulary: [String: Int] = [:]
        for (i, t) in tokens.enumerated() where vocabulary[t] == nil { vocabulary[t] = i }
        guard let unknown = vocabulary[unknownToken] else {
            throw TokenizerError("the unknown token \(unknownToken) is not in the vocabulary")
        }
        self.vocabulary = vocabulary
        unknownTokenID = unknown
        self.continuingPrefix = continuingPrefix
        self.maxCharactersPerWord = maxCharactersPerWord
        self.normalizer = normalizer
        special = specialTokens
        splitter = SpecialTokenSplitter(specialTokens.map { (tokens[$0], $0, true) })
    }

    public var vocabularySize: Int { tokens.count }
    public func isSpecial(_ id: Int) -> Bool { special.contains(id) }
    public func id(of token: String) -> Int? { vocabulary[token] }
    public func token(_ id: Int) -> String? { tokens.indices.contains(id) ? tokens[id] : nil }
    public func bytes(of id: Int) -> [UInt8] { Array((token(id) ?? "").utf8) }

    public func encode(_ text: String, parseSpecial: Bool) -> [Int] {
        var ids: [Int] = []
        for segment in splitter.split(text, parseSpecial: parseSpecial) {
            switch segment {
            case .special(let id): ids.append(id)
            case .text(let span):
                let normalized = normalizer?.normalize(String(span)) ?? String(span)
                for word in Self.preTokenize(normalized) { encodeWord(word, into: &ids) }
            }
        }
        return ids
    }

    /// BERT's pre-tokenizer: whitespace separates words and is dropped; every punctuation character
    /// is a word of its own.
    public static func preTokenize(_ text: String) -> [Substring.UnicodeScalarView] {
        var words: [Substring.UnicodeScalarView] = []
        let scalars = text.unicodeScalars
        var start: String.UnicodeScalarView.Index?
        var i = scalars.startIndex
        while i < scalars.endIndex {
            let s = scalars[i]
            let next = scalars.index(after: i)
            if s.properties.isWhitespace {
                if let b = start { words.append(scalars[b..<i]); start = nil }
            } else if isPunctuation(s) {
                if let b = start { words.append(scalars[b..<i]); start = nil }
                words.append(scalars[i..<next])
            } else if start == nil {
                start = i
            }
            i = next
        }
        if let b = start { words.append(scalars[b..<scalars.endIndex]) }
        return words
    }

    static func isPunctuation(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII { return (33...47).contains(s.value) || (58...64).contains(s.value) || (91...96).contains(s.value) || (123...126).contains(s.value) }
        switch s.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: return true
        default: return false
        }
    }

    private func encodeWord(_ word: Substring.UnicodeScalarView, into ids: inout [Int]) {
        let scalars = Array(word)
        if scalars.count > maxCharactersPerWord { ids.append(unknownTokenID); return }
        var pieces: [Int] = []
        var start = 0
        while start < scalars.count {
            var end = scalars.count
            var found: Int?
            while end > start {
                var piece = String(String.UnicodeScalarView(scalars[start..<end]))
                if start > 0 { piece = continuingPrefix + piece }
                if let id = vocabulary[piece] { found = id; break }
                end -= 1
            }
            guard let id = found else { ids.append(unknownTokenID); return }
            pieces.append(id)
            start = end
        }
        ids += pieces
    }

    /// Joins the pieces: continuation pieces attach to the previous one, others follow a space,
    /// and each piece then gets BERT's clean-up (a space before `.`, `?`, `!`, `,` and a few
    /// contractions removed), applied piece by piece as Hugging Face's decoder applies it.
    public func decode(_ ids: [Int], skipSpecial: Bool) -> String {
        var text = ""
        for id in ids where !(skipSpecial && isSpecial(id)) {
            guard let t = token(id) else { continue }
            var piece = t.hasPrefix(continuingPrefix) ? String(t.dropFirst(continuingPrefix.count)) : (text.isEmpty ? t : " " + t)
            for (from, to) in Self.cleanup { piece = piece.replacingOccurrences(of: from, with: to) }
            text += piece
        }
        return text
    }

    private static let cleanup = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                                  (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
}

/// BERT's normalizer: drop control characters and map whitespace to spaces, put spaces around CJK
/// ideographs, optionally strip accents (NFD, then drop combining marks) and lowercase.
public struct BertNormalizer: Sendable {
    public var cleanText = true
    public var handleChineseCharacters = true
    public var stripAccents: Bool? = nil
    public var lowercase = true

    public init(cleanText: Bool = true, handleChineseCharacters: Bool = true, stripAccents: Bool? = nil, lowercase: Bool = true) {
        self.cleanText = cleanText
        self.handleChineseCharacters = handleChineseCharacters
        self.stripAccents = stripAccents
        self.lowercase = lowercase
    }

    public func normalize(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for s in text.unicodeScalars {
            if cleanText {
                if s.value == 0 || s.value == 0xFFFD || isControl(s) { continue }
                if s.properties.isWhitespace || s == "\t" || s == "\n" || s == "\r" { out.append(" "); continue }
            }
            if handleChineseCharacters && isChinese(s) {
                out.append(" "); out.append(s); out.append(" ")
            } else {
                out.append(s)
            }
        }
        var result = String(out)
        if stripAccents ?? lowercase {
            let decomposed = result.decomposedStringWithCanonicalMapping.unicodeScalars
            result = String(String.UnicodeScalarView(decomposed.filter { $0.properties.generalCategory != .nonspacingMark }))
        }
        if lowercase { result = result.lowercased() }
        return result
    }

    private func isControl(_ s: Unicode.Scalar) -> Bool {
        if s == "\t" || s == "\n" || s == "\r" { return false }
        switch s.properties.generalCategory {
        case .control, .format, .privateUse, .surrogate, .unassigned: return true
        default: return false
        }
    }

    private func isChinese(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F: return true
        default: return false
        }
    }
}
