/// Regex-style pre-tokenization of the byte-level BPE families, hand-written over Unicode scalars.
///
/// - `gpt2`: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// - `smollm`: every digit (\p{N}) isolated first, then `gpt2` on the rest, as SmolLM's
///   `Digits(individual_digits) → ByteLevel` pipeline does.
/// - `llama3`: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
/// - `qwen2`: the same with single digits (\p{N} instead of \p{N}{1,3}).
///
/// Letters are the Unicode L* categories, numbers N*, whitespace the White_Space property; each
/// branch is tried in the pattern's order with its backtracking spelled out.
public enum PreTokenizer: String, Sendable, CaseIterable {
    case gpt2
    case smollm
    case llama3
    case qwen2

    /// The regular expressions these stand for, as `tokenizer.json` files spell them.
    public static let patterns: [PreTokenizer: String] = [
        .gpt2: #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#,
        .llama3: #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
        .qwen2: #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
    ]

    /// The pieces of `text` as scalar ranges, in order, covering every scalar.
    public func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
        var pieces: [Range<Int>] = []
        switch self {
        case .gpt2:
            Self.gpt2Split(scalars, 0..<scalars.count, into: &pieces)
        case .smollm:
            var start = 0
            for i in 0..<scalars.count where CharacterClass.of(scalars[i]) == .number {
                if start < i { Self.gpt2Split(scalars, start..<i, into: &pieces) }
                pieces.append(i..<i + 1)
                start = i + 1
            }
            if start < scalars.count { Self.gpt2Split(scalars, start..<scalars.count, into: &pieces) }
        case .llama3:
            Self.llama3Split(scalars, maxDigits: 3, into: &pieces)
        case .qwen2:
            Self.llama3Split(scalars, maxDigits: 1, into: &pieces)
        }
        return pieces
    }

    static func llama3Split(_ s: [Unicode.Scalar], maxDigits: Int, into pieces: inout [Range<Int>]) {
        let end = s.count
        func cls(_ k: Int) -> CharacterClass { CharacterClass.of(s[k]) }
        func isNewline(_ k: Int) -> Bool { s[k] == "\r" || s[k] == "\n" }
        func run(from j: Int, _ c: CharacterClass) -> Int {
            var k = j
            while k < end, cls(k) == c { k += 1 }
            return k
        }
        var i = 0
        while i < end {
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if s[i] == "'", i + 1 < end {
                let n1 = Character(s[i + 1]).lowercased()
                if ["s", "t", "m", "d"].contains(n1) { pieces.append(i..<i + 2); i += 2; continue }
                if i + 2 < end, ["re", "ve", "ll"].contains(n1 + Character(s[i + 2]).lowercased()) {
                    pieces.append(i..<i + 3); i += 3; continue
                }
            }
            let c = cls(i)
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if c == .letter { let k = run(from: i, .letter); pieces.append(i..<k); i = k; continue }
            if c != .number, !isNewline(i), i + 1 < end, cls(i + 1) == .letter {
                let k = run(from: i + 1, .letter); pieces.append(i..<k); i = k; continue
            }
            // \p{N}{1,maxDigits}
            if c == .number {
                var k = i
                while k < end, k - i < maxDigits, cls(k) == .number { k += 1 }
                pieces.append(i..<k); i = k; continue
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let j = (s[i] == " " && i + 1 < end && cls(i + 1) == .other) ? i + 1 : i
            if cls(j) == .other {
                var k = run(from: j, .other)
                while k < end, isNewline(k) { k += 1 }
                pieces.append(i..<k); i = k; continue
            }
            // Whitespace: \s*[\r\n]+ ends after the run's last newline; else \s+(?!\S), else \s+.
            let k = run(from: i, .whitespace)
            if let lastNewline = (i..<k).last(where: isNewline) {
                pieces.append(i..<lastNewline + 1); i = lastNewline + 1; continue
            }
            let stop = (k == end || k - i == 1) ? k : k - 1
            pieces.append(i..<stop)
            i = stop
        }
    }

    static func gpt2Split(_ s: [Unicode.Scalar], _ range: Range<Int>, into pieces: inout [Range<Int>]) {
        let end = range.upperBound
        var i = range.lowerBound
        func run(from j: Int, while cls: (CharacterClass) -> Bool) -> Int {
            var k = j
            while k < end, cls(CharacterClass.of(s[k])) { k += 1 }
            return k
        }
        while i < end {
            let c = s[i]
            // Contractions: 's 't 'm 'd 're 've 'll (lower case only, as in GPT-2).
            if c == "'", i + 1 < end {
                let n1 = s[i + 1]
                if n1 == "s" || n1 == "t" || n1 == "m" || n1 == "d" { pieces.append(i..<i + 2); i += 2; continue }
                if i + 2 < end {
                    let n2 = s[i + 2]
                    if (n1 == "r" && n2 == "e") || (n1 == "v" && n2 == "e") || (n1 == "l" && n2 == "l") {
                        pieces.append(i..<i + 3); i += 3; continue
                    }
                }
            }
            // An optional single space, then a run of letters, numbers, or other symbols.
            let j = (c == " " && i + 1 < end) ? i + 1 : i
            let cls = CharacterClass.of(s[j])
            if cls != .whitespace {
                let k = run(from: j) { $0 == cls }
                pieces.append(i..<k)
                i = k
                continue
            }
            // Whitespace: \s+(?!\S) keeps the last whitespace character for the word that follows.
            let k = run(from: i) { $0 == .whitespace }
            if k == end || k - i == 1 {
                pieces.append(i..<k)
                i = k
            } else {
                pieces.append(i..<k - 1)
                i = k - 1
            }
        }
    }
}

/// The three classes the patterns distinguish (plus everything else).
enum CharacterClass: UInt8 {
    case letter, number, whitespace, other

    private static let asciiTable: [CharacterClass] = (0..<128).map { classify(Unicode.Scalar(UInt8($0))) }

    @inline(__always)
    static func of(_ s: Unicode.Scalar) -> CharacterClass {
        s.value < 128 ? asciiTable[Int(s.value)] : classify(s)
    }

    static func classify(_ s: Unicode.Scalar) -> CharacterClass {
        let p = s.properties
        if p.isWhitespace { return .whitespace }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }
}
