import Foundation

/// The text normalizations of `tokenizer.json` files (the `normalizer` section), applied in order
/// before pre-tokenization.
public indirect enum TextNormalizer: Sendable {
    case nfc, nfd, nfkc, nfkd, lowercase
    /// Prepends the string to non-empty text.
    case prepend(String)
    /// Replaces every match of a pattern.
    case replace(TextPattern, with: String)
    /// Removes leading and/or trailing whitespace.
    case strip(left: Bool, right: Bool)
    case sequence([TextNormalizer])

    public func apply(_ text: String) -> String {
        switch self {
        case .nfc: return text.precomposedStringWithCanonicalMapping
        case .nfd: return text.decomposedStringWithCanonicalMapping
        case .nfkc: return text.precomposedStringWithCompatibilityMapping
        case .nfkd: return text.decomposedStringWithCompatibilityMapping
        case .lowercase: return text.lowercased()
        case .prepend(let prefix): return text.isEmpty ? text : prefix + text
        case .replace(let pattern, let replacement): return pattern.replace(in: text, with: replacement)
        case .strip(let left, let right):
            var scalars = Substring(text).unicodeScalars[...]
            if left { while let s = scalars.first, s.properties.isWhitespace { scalars.removeFirst() } }
            if right { while let s = scalars.last, s.properties.isWhitespace { scalars.removeLast() } }
            return String(String.UnicodeScalarView(scalars))
        case .sequence(let steps): return steps.reduce(text) { $1.apply($0) }
        }
    }

    /// Reads a `normalizer` object of a `tokenizer.json`.
    static func fromJSON(_ object: [String: Any]) throws -> TextNormalizer {
        let type = object["type"] as? String ?? "?"
        switch type {
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Lowercase": return .lowercase
        case "Prepend":
            guard let prefix = object["prepend"] as? String else { throw TokenizerError("normalizer Prepend has no \"prepend\" string") }
            return .prepend(prefix)
        case "Replace":
            return .replace(try TextPattern(object, in: "normalizer Replace"), with: object["content"] as? String ?? "")
        case "Strip":
            return .strip(left: object["strip_left"] as? Bool ?? true, right: object["strip_right"] as? Bool ?? true)
        case "Sequence":
            guard let list = object["normalizers"] as? [[String: Any]] else { throw TokenizerError("normalizer Sequence has no \"normalizers\" list") }
            return .sequence(try list.map(fromJSON))
        default:
            throw TokenizerError("normalizer \(type) is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence and BertNormalizer are)")
        }
    }
}

/// The `pattern` of a `tokenizer.json` Replace or Split: a literal string or a regular expression
/// (matched on Unicode scalars, as the references do).
public struct TextPattern: @unchecked Sendable {
    public let source: String
    private let regex: Regex<AnyRegexOutput>?

    public init(literal: String) {
        source = literal
        regex = nil
    }

    public init(regex pattern: String) throws {
        source = pattern
        do {
            regex = try Regex(pattern).matchingSemantics(.unicodeScalar)
        } catch {
            throw TokenizerError("regular expression \(pattern.debugDescription) is not supported: \(error)")
        }
    }

    init(_ object: [String: Any], in component: String) throws {
        let pattern = object["pattern"] as? [String: Any]
        if let literal = pattern?["String"] as? String {
            self.init(literal: literal)
        } else if let expression = pattern?["Regex"] as? String {
            try self.init(regex: expression)
        } else {
            throw TokenizerError("\(component) has no String or Regex pattern")
        }
    }

    /// The ranges of the non-overlapping matches in `text`, left to right (an empty literal matches nothing).
    public func matches(in text: String) -> [Range<String.Index>] {
        if let regex { return text.matches(of: regex).map(\.range).filter { !$0.isEmpty } }
        if source.isEmpty { return [] }
        var ranges: [Range<String.Index>] = []
        var from = text.startIndex
        while let r = text.range(of: source, options: .literal, range: from..<text.endIndex) {
            ranges.append(r)
            from = r.upperBound
        }
        return ranges
    }

    public func replace(in text: String, with replacement: String) -> String {
        if regex == nil { return Self.replaceLiteral(source, in: text, with: replacement) }
        let ranges = matches(in: text)
        if ranges.isEmpty { return text }
        var out = ""
        var from = text.startIndex
        for r in ranges {
            out += text[from..<r.lowerBound]
            out += replacement
            from = r.upperBound
        }
        return out + text[from...]
    }

    /// Replaces every occurrence of `needle`, working on UTF-8 bytes (matches of valid UTF-8 in valid
    /// UTF-8 always start and end on character boundaries).
    static func replaceLiteral(_ needle: String, in text: String, with replacement: String) -> String {
        let n = Array(needle.utf8), r = Array(replacement.utf8)
        guard let first = n.first else { return text }
        var t = text
        return t.withUTF8 { bytes in
            var out: [UInt8] = []
            out.reserveCapacity(bytes.count + bytes.count / 8)
            var i = 0
            while i < bytes.count {
                if bytes[i] == first, i + n.count <= bytes.count, n.indices.allSatisfy({ bytes[i + $0] == n[$0] }) {
                    out += r
                    i += n.count
                } else {
                    out.append(bytes[i])
                    i += 1
                }
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}
