/// Finds added tokens (`<|im_start|>`, `[CLS]`) in text, longest first, so that they become single
/// ids instead of being tokenized as ordinary text.
struct SpecialTokenSplitter {
    enum Segment { case text(Substring), special(Int) }

    /// (text, id, matched even without `parseSpecial`)
    private let matchers: [(text: String, id: Int, always: Bool)]

    init(_ tokens: [(text: String, id: Int, always: Bool)]) {
        matchers = tokens.filter { !$0.text.isEmpty }.sorted { $0.text.utf8.count > $1.text.utf8.count }
    }

    func split(_ text: String, parseSpecial: Bool) -> [Segment] {
        let active = matchers.filter { parseSpecial || $0.always }
        if active.isEmpty { return [.text(text[...])] }
        var segments: [Segment] = []
        var start = text.startIndex, i = text.startIndex
        let utf8 = text.utf8
        outer: while i < text.endIndex {
            for m in active where utf8[i...].starts(with: m.text.utf8) {
                if start < i { segments.append(.text(text[start..<i])) }
                segments.append(.special(m.id))
                i = utf8.index(i, offsetBy: m.text.utf8.count)
                start = i
                continue outer
            }
            i = text.unicodeScalars.index(after: i)
        }
        if start < text.endIndex { segments.append(.text(text[start...])) }
        return segments
    }
}
