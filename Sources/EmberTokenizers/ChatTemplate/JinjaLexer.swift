/// Splits a template into text, `{{ expression }}` and `{% statement %}` pieces, applying jinja2's
/// whitespace rules as Hugging Face configures them: `-` strips all whitespace on its side,
/// `trim_blocks` drops the first newline after a block or comment tag, `lstrip_blocks` removes the
/// spaces and tabs before a block or comment tag that starts a line (unless the tag opens with `+`),
/// and a single trailing newline of the template is dropped. `{% raw %}` content stays text.
struct JinjaLexer {
    enum Token: Equatable {
        case name(String)
        case string(String)
        case int(Int)
        case double(Double)
        case op(String)
    }

    enum Segment {
        case text(String)
        case output([Token], line: Int)
        case statement([Token], line: Int)
    }

    private let s: [Unicode.Scalar]
    private var i = 0

    init(_ source: String) {
        var scalars = Array(source.unicodeScalars)
        if scalars.last == "\n" {
            scalars.removeLast()
            if scalars.last == "\r" { scalars.removeLast() }
        } else if scalars.last == "\r" {
            scalars.removeLast()
        }
        s = scalars
    }

    private func line(at index: Int) -> Int { 1 + s[..<min(index, s.count)].lazy.filter { $0 == "\n" }.count }

    private func starts(_ text: String, at index: Int) -> Bool {
        var k = index
        for c in text.unicodeScalars {
            guard k < s.count, s[k] == c else { return false }
            k += 1
        }
        return true
    }

    mutating func segments() throws -> [Segment] {
        var out: [Segment] = []
        var stripLeading = false, trimNewline = false, lineStarting = true
        while true {
            // The text up to the next tag opener.
            var open = i
            while open < s.count, !(s[open] == "{" && open + 1 < s.count && ["{", "%", "#"].contains(s[open + 1])) { open += 1 }
            var text = Array(s[i..<open])
            if stripLeading {
                let before = text.count
                while let f = text.first, f.properties.isWhitespace { text.removeFirst() }
                lineStarting = before > text.count && s[i + before - text.count - 1] == "\n"
            } else if trimNewline, text.first == "\n" {
                text.removeFirst()
                lineStarting = true
            }
            guard open < s.count else {
                if !text.isEmpty { out.append(.text(String(String.UnicodeScalarView(text)))) }
                return out
            }
            let kind = s[open + 1]
            var k = open + 2
            let sign: Unicode.Scalar? = k < s.count && (s[k] == "-" || s[k] == "+") ? s[k] : nil
            if sign != nil { k += 1 }
            if sign == "-" {
                while let l = text.last, l.properties.isWhitespace { text.removeLast() }
            } else if sign != "+", kind != "{" {
                // lstrip_blocks
                let lineStart = (text.lastIndex(of: "\n").map { $0 + 1 }) ?? 0
                if (lineStart > 0 || lineStarting), text[lineStart...].allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\u{0B}" || $0 == "\u{0C}" }) {
                    text.removeSubrange(lineStart...)
                }
            }
            if !text.isEmpty { out.append(.text(String(String.UnicodeScalarView(text)))) }
            let tagLine = line(at: open)
            i = k
            var rightStrip = false
            switch kind {
            case "#":
                while i < s.count, !starts("#}", at: i) { i += 1 }
                guard i < s.count else { throw JinjaError("line \(tagLine): comment is not closed (#} expected)") }
                rightStrip = i > k && s[i - 1] == "-"
                i += 2
                stripLeading = rightStrip
                trimNewline = !rightStrip
            case "{":
                let (tokens, strip) = try expressionTokens(close: "}}", line: tagLine, what: "print statement")
                out.append(.output(tokens, line: tagLine))
                stripLeading = strip
                trimNewline = false
            default:
                let (tokens, strip) = try expressionTokens(close: "%}", line: tagLine, what: "block tag")
                if tokens == [.name("raw")] {
                    // Everything up to {% endraw %} is text.
                    var body = i
                    var endTag: (start: Int, end: Int, leftStrip: Bool, rightStrip: Bool)?
                    while body < s.count {
                        if starts("{%", at: body) {
                            var m = body + 2
                            let leftStrip = m < s.count && s[m] == "-"
                            if m < s.count, s[m] == "-" || s[m] == "+" { m += 1 }
                            while m < s.count, s[m] == " " || s[m] == "\t" || s[m] == "\n" { m += 1 }
                            if starts("endraw", at: m) {
                                m += 6
                                while m < s.count, s[m] == " " || s[m] == "\t" || s[m] == "\n" { m += 1 }
                                let rs = m < s.count && s[m] == "-"
                                if m < s.count, s[m] == "-" || s[m] == "+" { m += 1 }
                                if starts("%}", at: m) {
                                    endTag = (body, m + 2, leftStrip, rs)
                                    break
                                }
                            }
                        }
                        body += 1
                    }
                    guard let endTag else { throw JinjaError("line \(tagLine): 'raw' block is not closed ({% endraw %} expected)") }
                    var content = Array(s[i..<endTag.start])
                    if strip { while let f = content.first, f.properties.isWhitespace { content.removeFirst() } }
                    if endTag.leftStrip { while let l = content.last, l.properties.isWhitespace { content.removeLast() } }
                    if !content.isEmpty { out.append(.text(String(String.UnicodeScalarView(content)))) }
                    i = endTag.end
                    stripLeading = endTag.rightStrip
                    trimNewline = !endTag.rightStrip
                } else {
                    out.append(.statement(tokens, line: tagLine))
                    stripLeading = strip
                    trimNewline = !strip
                }
            }
            lineStarting = false
        }
    }

    /// Tokens up to the closing `}}` / `%}` (outside brackets), and whether it was `-}}` / `-%}`.
    private mutating func expressionTokens(close: String, line: Int, what: String) throws -> ([Token], Bool) {
        var tokens: [Token] = []
        var depth = 0
        let closer = Array(close.unicodeScalars)
        while true {
            while i < s.count, s[i].properties.isWhitespace { i += 1 }
            guard i < s.count else { throw JinjaError("line \(line): unexpected end of template, the \(what) is not closed (\(close) expected)") }
            if depth == 0 {
                if s[i] == "-", i + 2 < s.count, s[i + 1] == closer[0], s[i + 2] == closer[1] {
                    i += 3
                    return (tokens, true)
                }
                if s[i] == closer[0], i + 1 < s.count, s[i + 1] == closer[1] {
                    i += 2
                    return (tokens, false)
                }
            }
            // A bound on tree size (and so on recursion when evaluating and freeing it).
            guard tokens.count < 2000 else { throw JinjaError("line \(line): expression too long (over 2000 tokens)") }
            let c = s[i]
            if c == "_" || c.properties.isAlphabetic {
                var name = String.UnicodeScalarView()
                while i < s.count, s[i] == "_" || s[i].properties.isAlphabetic || ("0"..."9").contains(s[i]) { name.append(s[i]); i += 1 }
                tokens.append(.name(String(name)))
            } else if ("0"..."9").contains(c) {
                var number = ""
                var isFloat = false
                while i < s.count {
                    let d = s[i]
                    if ("0"..."9").contains(d) || d == "_" {
                        if d != "_" { number.unicodeScalars.append(d) }
                    } else if d == ".", !isFloat, i + 1 < s.count, ("0"..."9").contains(s[i + 1]) {
                        isFloat = true
                        number += "."
                    } else if d == "e" || d == "E", i + 1 < s.count, ("0"..."9").contains(s[i + 1]) || ((s[i + 1] == "-" || s[i + 1] == "+") && i + 2 < s.count && ("0"..."9").contains(s[i + 2])) {
                        isFloat = true
                        number += "e"
                        if s[i + 1] == "-" || s[i + 1] == "+" { number.unicodeScalars.append(s[i + 1]); i += 1 }
                    } else {
                        break
                    }
                    i += 1
                }
                if isFloat { tokens.append(.double(Double(number) ?? 0)) } else {
                    guard let n = Int(number) else { throw JinjaError("line \(line): integer \(number) is too large") }
                    tokens.append(.int(n))
                }
            } else if c == "'" || c == "\"" {
                tokens.append(.string(try stringLiteral(quote: c, line: line)))
            } else {
                let pair = i + 1 < s.count ? String(String.UnicodeScalarView(s[i..<i + 2])) : ""
                if ["//", "**", "==", "!=", "<=", ">="].contains(pair) {
                    tokens.append(.op(pair))
                    i += 2
                } else if "+-*/%~<>=()[]{},.:|".unicodeScalars.contains(c) {
                    tokens.append(.op(String(c)))
                    if "([{".unicodeScalars.contains(c) { depth += 1 }
                    if ")]}".unicodeScalars.contains(c) { depth = max(0, depth - 1) }
                    i += 1
                } else {
                    throw JinjaError("line \(line): unexpected character \(String(c).debugDescription) in a \(what)")
                }
            }
        }
    }

    /// A quoted string with Python escapes.
    private mutating func stringLiteral(quote: Unicode.Scalar, line: Int) throws -> String {
        i += 1
        var out = String.UnicodeScalarView()
        while i < s.count {
            let c = s[i]
            if c == quote { i += 1; return String(out) }
            if c == "\\", i + 1 < s.count {
                let e = s[i + 1]
                i += 2
                switch e {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "0": out.append("\0")
                case "\\", "'", "\"": out.append(e)
                case "x", "u", "U":
                    let width = e == "x" ? 2 : e == "u" ? 4 : 8
                    guard i + width <= s.count, let v = UInt32(String(String.UnicodeScalarView(s[i..<i + width])), radix: 16),
                          let scalar = Unicode.Scalar(v) else { throw JinjaError("line \(line): invalid \\\(e) escape in a string") }
                    out.append(scalar)
                    i += width
                case "\n": break
                default:
                    out.append("\\")
                    out.append(e)
                }
                continue
            }
            out.append(c)
            i += 1
        }
        throw JinjaError("line \(line): string literal is not closed")
    }
}
