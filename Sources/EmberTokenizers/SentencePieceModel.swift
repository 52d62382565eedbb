import Foundation

/// SentencePiece's normalizer: compiled rules (if any), optional removal of leading, trailing and
/// repeated spaces, the dummy `▁` prefix, and spaces written as `▁`. User-defined pieces pass through
/// unchanged.
public struct SentencePieceNormalizer: Sendable {
    var charsMap: PrecompiledCharsMap?
    public var addDummyPrefix = true
    public var removeExtraWhitespaces = true
    public var escapeWhitespaces = true
    /// User-defined pieces by first byte, longest first.
    var protected: [UInt8: [[UInt8]]] = [:]

    static let space: [UInt8] = Array("▁".utf8)

    /// The normalized UTF-8 of `text`.
    func normalize(_ text: Substring) -> [UInt8] {
        let input = Array(text.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(input.count + input.count / 4 + 3)
        var i = 0
        // One normalized unit at i: (replacement bytes, consumed length).
        func unit() -> (ArraySlice<UInt8>, Int) {
            if let candidates = protected[input[i]],
               let hit = candidates.first(where: { i + $0.count <= input.count && input[i..<i + $0.count].elementsEqual($0) }) {
                return (input[i..<i + hit.count], hit.count)
            }
            if let charsMap, let match = charsMap.longestMatch(input[i...]) { return (match.replacement, match.length) }
            let length = min(SentencePieceBPETokenizer.utf8Length(input[i]), input.count - i)
            return (input[i..<i + length], length)
        }
        if removeExtraWhitespaces {
            while i < input.count {
                let (piece, length) = unit()
                guard piece.elementsEqual([0x20]) else { break }
                i += length
            }
        }
        if i == input.count { return [] }
        if addDummyPrefix { out += escapeWhitespaces ? Self.space : [0x20] }
        var previousSpace = removeExtraWhitespaces
        while i < input.count {
            let (piece, length) = unit()
            i += length
            var bytes = piece
            if previousSpace { while bytes.first == 0x20 { bytes.removeFirst() } }
            guard !bytes.isEmpty else { continue }
            for b in bytes {
                if escapeWhitespaces && b == 0x20 { out += Self.space } else { out.append(b) }
            }
            previousSpace = removeExtraWhitespaces && bytes.last == 0x20
        }
        if removeExtraWhitespaces {
            let trailing = escapeWhitespaces ? Self.space : [0x20]
            while out.count >= trailing.count, out.suffix(trailing.count).elementsEqual(trailing) { out.removeLast(trailing.count) }
        }
        return out
    }

    /// Spaces as `▁`, nothing else changed (llama.cpp's reading of SentencePiece vocabularies).
    static func escapeSpaces(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 8)
        for b in bytes {
            if b == 0x20 { out += space } else { out.append(b) }
        }
        return out
    }
}

/// Reads a SentencePiece `.model` file (a serialized `ModelProto`): its pieces with scores and types,
/// the trainer settings that matter for encoding (model type, byte fallback, special ids) and the
/// normalizer settings.
public enum SentencePieceModel {
    public static func load(path: String) throws -> SentencePieceBPETokenizer {
        guard let data = FileManager.default.contents(atPath: path) else { throw TokenizerError("\(path): cannot read") }
        do {
            return try load(bytes: [UInt8](data))
        } catch let error as TokenizerError {
            throw TokenizerError("\(path): \(error.message)")
        }
    }

    public static func load(bytes: [UInt8]) throws -> SentencePieceBPETokenizer {
        var pieces: [String] = [], scores: [Float] = [], types: [SentencePieceBPETokenizer.PieceType] = []
        var modelType = 1, byteFallback = false, treatWhitespaceAsSuffix = false
        var unk = 0, bos = 1, eos = 2
        var normalizer = SentencePieceNormalizer()
        var sawTrainer = false
        var reader = ProtobufReader(bytes[...])
        while let (field, value) = try reader.next() {
            switch field {
            case 1:  // SentencePiece { piece = 1; score = 2; type = 3 }
                guard let body = value.slice else { throw TokenizerError("piece \(pieces.count) is not a message") }
                var piece: String?, score: Float = 0, type = 1
                var inner = ProtobufReader(body)
                while let (f, v) = try inner.next() {
                    switch f {
                    case 1:
                        guard let s = v.string else { throw TokenizerError("piece \(pieces.count) is not valid UTF-8") }
                        piece = s
                    case 2: score = v.float ?? 0
                    case 3: type = v.int ?? 1
                    default: break
                    }
                }
                guard let piece else { throw TokenizerError("piece \(pieces.count) has no text") }
                guard let t = SentencePieceBPETokenizer.PieceType(rawValue: type) else {
                    throw TokenizerError("piece \(pieces.count) \(piece.debugDescription) has unknown type \(type)")
                }
                pieces.append(piece)
                scores.append(score)
                types.append(t)
            case 2:  // TrainerSpec
                guard let body = value.slice else { throw TokenizerError("trainer_spec is not a message") }
                sawTrainer = true
                var inner = ProtobufReader(body)
                while let (f, v) = try inner.next() {
                    switch f {
                    case 3: modelType = v.int ?? 1
                    case 24: treatWhitespaceAsSuffix = v.bool ?? false
                    case 35: byteFallback = v.bool ?? false
                    case 40: unk = v.int ?? 0
                    case 41: bos = v.int ?? 1
                    case 42: eos = v.int ?? 2
                    default: break
                    }
                }
            case 3:  // NormalizerSpec
                guard let body = value.slice else { throw TokenizerError("normalizer_spec is not a message") }
                var inner = ProtobufReader(body)
                while let (f, v) = try inner.next() {
                    switch f {
                    case 2:
                        if let blob = v.slice, !blob.isEmpty { normalizer.charsMap = try PrecompiledCharsMap(blob) }
                    case 3: normalizer.addDummyPrefix = v.bool ?? true
                    case 4: normalizer.removeExtraWhitespaces = v.bool ?? true
                    case 5: normalizer.escapeWhitespaces = v.bool ?? true
                    default: break
                    }
                }
            default: break
            }
        }
        guard !pieces.isEmpty else { throw TokenizerError("no pieces (not a SentencePiece model, or truncated)") }
        guard sawTrainer else { throw TokenizerError("no trainer_spec (not a SentencePiece model, or truncated)") }
        guard modelType == 2 else {
            let name = [1: "unigram", 3: "word", 4: "char"][modelType] ?? "type \(modelType)"
            throw TokenizerError("SentencePiece \(name) models are not supported (BPE is)")
        }
        guard !treatWhitespaceAsSuffix else { throw TokenizerError("treat_whitespace_as_suffix is not supported") }
        for (i, t) in types.enumerated() where t == .userDefined {
            let bytes = Array(pieces[i].utf8)
            if let first = bytes.first { normalizer.protected[first, default: []].append(bytes) }
        }
        normalizer.protected = normalizer.protected.mapValues { $0.sorted { $0.count > $1.count } }
        func valid(_ id: Int) -> Int? { pieces.indices.contains(id) ? id : nil }
        return try SentencePieceBPETokenizer(
            pieces: pieces, types: types, scores: scores, byteFallback: byteFallback, unknownID: valid(unk),
            input: .sentencePiece(normalizer), output: .pieces(stripFirstSpace: normalizer.addDummyPrefix),
            bosTokenID: valid(bos), eosTokenID: valid(eos))
    }
}

/// One step of a `tokenizer.json` decoder: each works on the list of token strings.
public enum TokenDecoder: Sendable {
    case replace(TextPattern, with: String)
    /// Runs of `<0xXX>` tokens become the text of their bytes (U+FFFD per token when not valid UTF-8).
    case byteFallback
    /// All tokens joined into one.
    case fuse
    /// Removes up to `start` leading and `stop` trailing `content` characters of each token.
    case strip(content: Character, start: Int, stop: Int)
    /// `▁` → space; the first token loses its leading space unless `prependScheme` is never.
    case metaspace(replacement: Character, stripFirst: Bool)

    static func run(_ steps: [TokenDecoder], _ tokens: [String]) -> [String] {
        steps.reduce(tokens) { $1.apply($0) }
    }

    func apply(_ tokens: [String]) -> [String] {
        switch self {
        case .replace(let pattern, let replacement):
            return tokens.map { pattern.replace(in: $0, with: replacement) }
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let text = String(validating: pending, as: UTF8.self) {
                    out.append(text)
                } else {
                    out += Array(repeating: "\u{FFFD}", count: pending.count)
                }
                pending = []
            }
            for token in tokens {
                if let b = SentencePieceBPETokenizer.byteValue(token) { pending.append(b) } else {
                    flush()
                    out.append(token)
                }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            return tokens.map { token in
                var t = Substring(token)
                for _ in 0..<start where t.first == content { t.removeFirst() }
                for _ in 0..<stop where t.last == content { t.removeLast() }
                return String(t)
            }
        case .metaspace(let replacement, let stripFirst):
            return tokens.enumerated().map { i, token in
                let t = token.replacingOccurrences(of: String(replacement), with: " ")
                return i == 0 && stripFirst && t.hasPrefix(" ") ? String(t.dropFirst()) : t
            }
        }
    }

    /// Reads a `decoder` object of a `tokenizer.json`.
    static func fromJSON(_ object: [String: Any]) throws -> [TokenDecoder] {
        let type = object["type"] as? String ?? "?"
        switch type {
        case "Sequence":
            guard let list = object["decoders"] as? [[String: Any]] else { throw TokenizerError("decoder Sequence has no \"decoders\" list") }
            return try list.flatMap(fromJSON)
        case "Replace":
            return [.replace(try TextPattern(object, in: "decoder Replace"), with: object["content"] as? String ?? "")]
        case "ByteFallback": return [.byteFallback]
        case "Fuse": return [.fuse]
        case "Strip":
            guard let content = (object["content"] as? String)?.first else { throw TokenizerError("decoder Strip has no content character") }
            return [.strip(content: content, start: object["start"] as? Int ?? 0, stop: object["stop"] as? Int ?? 0)]
        case "Metaspace":
            let scheme = object["prepend_scheme"] as? String ?? ((object["add_prefix_space"] as? Bool ?? true) ? "always" : "never")
            return [.metaspace(replacement: (object["replacement"] as? String)?.first ?? "▁", stripFirst: scheme != "never")]
        default:
            throw TokenizerError("decoder \(type) is not supported for SentencePiece-style BPE (Sequence, Replace, ByteFallback, Fuse, Strip and Metaspace are)")
        }
    }
}
