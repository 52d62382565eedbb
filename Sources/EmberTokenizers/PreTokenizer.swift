/// Regex-style pre-tokenization of the byte-level BPE families, hand-written over Unicode scalars.
///
/// `gpt2` is GPT-2's pattern
///   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// and `smollm` first isolates every digit (\p{N}) and then applies the same pattern to the rest, as
/// SmolLM's `Digits(individual_digits) → ByteLevel` pipeline does. Letters are the Unicode L* categories,
/// numbers N*, whitespace the White_Space property.
public enum PreTokenizer: String, Sendable, CaseIterable {
    case gpt2
    case smollm

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
        }
        return pieces
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
