import Foundation

/// The part of YAML that task files use, read into the values JSONSerialization gives:
///
///     task: gsm            # a comment
///     until: ["\n\n", "Question:"]
///     metrics:
///       - exact_match
///     prompt: |
///       Question: {{question}}
///       Answer:
///
/// A top-level mapping of plain, 'single'- or "double"-quoted scalars (true, false, numbers and
/// null as YAML reads them), flow lists `[a, "b"]`, block lists of scalars, and literal block
/// scalars (`|`, `|-`, `|+`). Anything else (nested mappings, anchors, folded `>`) is refused by line.
enum YAMLSubset {
    static func parse(_ text: String) throws -> [String: Any] {
        let lines = text.replacingOccurrences(of: "\r\n", with: "\n").components(separatedBy: "\n")
        var result: [String: Any] = [:]
        var i = 0
        func fail(_ message: String) -> EvaluationError { EvaluationError("line \(i + 1): \(message)") }
        while i < lines.count {
            let line = lines[i]
            let stripped = stripComment(line).trimmingCharacters(in: .whitespaces)
            if stripped.isEmpty || stripped == "---" { i += 1; continue }
            guard !line.hasPrefix(" ") && !line.hasPrefix("\t") else { throw fail("only top-level 'key: value' lines are read here") }
            guard let colon = stripped.range(of: ":") else { throw fail("expected 'key: value'") }
            let key = String(stripped[..<colon.lowerBound]).trimmingCharacters(in: .whitespaces)
            let rest = String(stripped[colon.upperBound...]).trimmingCharacters(in: .whitespaces)
            guard result[key] == nil else { throw fail("'\(key)' is given twice") }
            i += 1
            if rest.hasPrefix("|") {
                let chomp = rest.dropFirst()
                guard ["", "-", "+"].contains(chomp) else { throw fail("block scalar '\(rest)' is not read here (|, |- and |+ are)") }
                var block: [String] = []
                var indent: Int?
                while i < lines.count {
                    let l = lines[i]
                    if l.trimmingCharacters(in: .whitespaces).isEmpty { block.append(""); i += 1; continue }
                    let lead = l.prefix { $0 == " " }.count
                    if indent == nil { indent = lead }
                    guard lead >= indent!, lead > 0 else { break }
                    block.append(String(l.dropFirst(indent!)))
                    i += 1
                }
                var value = block.joined(separator: "\n")
                switch chomp {
                case "-": while value.hasSuffix("\n") { value.removeLast() }
                case "+": value += "\n"
                default:
                    while value.hasSuffix("\n") { value.removeLast() }
                    value += "\n"
                }
                result[key] = value
            } else if rest.isEmpty {
                // A block list, or nothing (null).
                var items: [Any] = []
                while i < lines.count {
                    let l = stripComment(lines[i]).trimmingCharacters(in: .whitespaces)
                    if l.isEmpty { i += 1; continue }
                    guard lines[i].hasPrefix(" ") || lines[i].hasPrefix("-"), l.hasPrefix("-") else { break }
                    items.append(try scalar(String(l.dropFirst()).trimmingCharacters(in: .whitespaces), fail))
                    i += 1
                }
                if !items.isEmpty { result[key] = items }
            } else if rest.hasPrefix("[") {
                guard rest.hasSuffix("]") else { throw fail("a flow list ends on its line with ']'") }
                result[key] = try splitFlow(String(rest.dropFirst().dropLast()), fail).map { try scalar($0, fail) }
            } else if rest.hasPrefix("{") || rest.hasPrefix("&") || rest.hasPrefix("*") || rest.hasPrefix(">") {
                throw fail("'\(rest.prefix(1))' (mappings, anchors, folded scalars) is not read here")
            } else {
                let value = try scalar(rest, fail)
                if !(value is NSNull) { result[key] = value }
            }
        }
        return result
    }

    /// The line without a `#` comment (outside quotes, after a space or at the start).
    static func stripComment(_ line: String) -> String {
        var quote: Character?
        var previous: Character = " "
        for (offset, c) in line.enumerated() {
            if let q = quote {
                if c == q && previous != "\\" { quote = nil }
            } else if c == "\"" || c == "'" {
                quote = c
            } else if c == "#" && (previous == " " || previous == "\t" || offset == 0) {
                return String(line.prefix(offset))
            }
            previous = c
        }
        return line
    }

    static func splitFlow(_ text: String, _ fail: (String) -> EvaluationError) throws -> [String] {
        var items: [String] = [], current = "", quote: Character?, escaped = false
        for c in text {
            if let q = quote {
                current.append(c)
                if escaped { escaped = false } else if c == "\\" && q == "\"" { escaped = true } else if c == q { quote = nil }
            } else if c == "\"" || c == "'" {
                quote = c
                current.append(c)
            } else if c == "," {
                items.append(current.trimmingCharacters(in: .whitespaces))
                current = ""
            } else {
                current.append(c)
            }
        }
        guard quote == nil else { throw fail("a quoted string is not closed") }
        let last = current.trimmingCharacters(in: .whitespaces)
        if !last.isEmpty || !items.isEmpty { items.append(last) }
        return items
    }

    static func scalar(_ text: String, _ fail: (String) -> EvaluationError) throws -> Any {
        if text.hasPrefix("\"") {
            guard text.count >= 2, text.hasSuffix("\""), let data = text.data(using: .utf8),
                  let value = try? JSONSerialization.jsonObject(with: data, options: .fragmentsAllowed) as? String else {
                throw fail("\(text) is not a closed double-quoted string")
            }
            return value
        }
        if text.hasPrefix("'") {
            guard text.count >= 2, text.hasSuffix("'") else { throw fail("\(text) is not a closed single-quoted string") }
            return String(text.dropFirst().dropLast()).replacingOccurrences(of: "''", with: "'")
        }
        switch text {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        case "null", "~", "": return NSNull()
        default: break
        }
        if let n = Int(text) { return NSNumber(value: n) }
        if let d = Double(text) { return NSNumber(value: d) }
        return text
    }
}
