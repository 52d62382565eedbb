/// Finds added tokens (`<|im_start|>`, `[CLS]`) in text, longest first, so that they become single
/// ids instead of being tokenized as ordinary text. Works on the UTF-8 bytes and only looks for a
/// match where a byte could start one.
struct SpecialTokenSplitter {
    enum Segment { case text(Substring), special(Int) }

    /// (bytes, id, matched even without `parseSpecial`), longest first
    private let matchers: [(bytes: [UInt8], id: Int, always: Bool)]
    private let firstBytes: [Bool]

    init(_ tokens: [(text: String, id: Int, always: Bool)]) {
        matchers = tokens.filter { !$0.text.isEmpty }.map { (Array($0.text.utf8), $0.id, $0.always) }
            .sorted { $0.bytes.count > $1.bytes.count }
        var first = [Bool](repeating: false, count: 256)
        for m in matchers { first[Int(m.bytes[0])] = true }
        firstBytes = first
    }

    func split(_ text: String, parseSpecial: Bool) -> [Segment] {
        let active = matchers.filter { parseSpecial || $0.always }
        if active.isEmpty { return [.text(text[...])] }
        var segments: [Segment] = []
        var bytes = Array(text.utf8)
        let count = bytes.count
        var start = 0, i = 0
        bytes.withUnsafeMutableBufferPointer { b in
            outer: while i < count {
                if firstBytes[Int(b[i])] {
                    for m in active where i + m.bytes.count <= count && m.bytes[0] == b[i]
                        && m.bytes.withUnsafeBufferPointer({ bytesEqual($0.baseAddress!, b.baseAddress! + i, m.bytes.count) }) {
                        if start < i { segments.append(.text(Self.substring(text, start, i))) }
                        segments.append(.special(m.id))
                        i += m.bytes.count
                        start = i
                        continue outer
                    }
                }
                i += 1
            }
        }
        if start < count { segments.append(.text(Self.substring(text, start, count))) }
        return segments
    }

    /// Bytes `from ..< to` of `text` (always on character boundaries: matches are whole UTF-8 sequences).
    private static func substring(_ text: String, _ from: Int, _ to: Int) -> Substring {
        let utf8 = text.utf8
        let lower = utf8.index(utf8.startIndex, offsetBy: from), upper = utf8.index(lower, offsetBy: to - from)
        return text[lower..<upper]
    }
}

private func bytesEqual(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    for k in 0..<n where a[k] != b[k] { return false }
    return true
}
