import Foundation

/// The globals, filters, tests and methods chat templates use, with Python's behaviour.
extension JinjaInterpreter {
    static func globals(now: Date, timeZone: TimeZone) -> [String: JinjaValue] {
        func function(_ name: String, _ body: @escaping ([JinjaValue], JinjaDict) throws -> JinjaValue) -> JinjaValue {
            .function(JinjaFunction(name: name, call: body))
        }
        return [
            "range": function("range") { a, _ in
                let ints = try a.map { v -> Int in
                    guard let n = integer(v) else { throw JinjaError("range() arguments must be integers, not \(v.typeName)") }
                    return n
                }
                let (start, stop, step): (Int, Int, Int)
                switch ints.count {
                case 1: (start, stop, step) = (0, ints[0], 1)
                case 2: (start, stop, step) = (ints[0], ints[1], 1)
                case 3: (start, stop, step) = (ints[0], ints[1], ints[2])
                default: throw JinjaError("range() takes 1 to 3 arguments")
                }
                guard step != 0 else { throw JinjaError("range() step must not be zero") }
                let values = Array(stride(from: start, to: stop, by: step))
                guard values.count <= 100_000 else { throw JinjaError("range() of \(values.count) items is too large") }
                return .list(values.map { .int($0) })
            },
            "namespace": function("namespace") { a, k in
                var attributes = JinjaDict()
                if case .dict(let d)? = a.first { attributes = d }
                for (key, value) in k.pairs {
                    guard !key.hasPrefix("_") else { throw JinjaError("cannot store the underscore-prefixed attribute '\(key)' on a namespace") }
                    attributes[key] = value
                }
                return .namespace(JinjaNamespace(attributes))
            },
            "dict": function("dict") { a, k in
                var d = JinjaDict()
                if case .dict(let base)? = a.first { d = base }
                for (key, value) in k.pairs { d[key] = value }
                return .dict(d)
            },
            "raise_exception": function("raise_exception") { a, _ in
                throw JinjaError(a.first?.text ?? "the template raised an exception", raisedByTemplate: true)
            },
            "strftime_now": function("strftime_now") { a, _ in
                guard case .string(let format)? = a.first else { throw JinjaError("strftime_now needs a format string") }
                return .string(strftime(format, now, timeZone))
            },
        ]
    }

    /// C's strftime for the directives templates use (English names).
    static func strftime(_ format: String, _ date: Date, _ timeZone: TimeZone) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday], from: date)
        let months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
        let days = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
        let year = c.year ?? 1970, month = c.month ?? 1, day = c.day ?? 1, hour = c.hour ?? 0, minute = c.minute ?? 0, second = c.second ?? 0
        let weekday = (c.weekday ?? 1) - 1
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        var out = ""
        var percent = false
        for ch in format {
            guard percent else {
                if ch == "%" { percent = true } else { out.append(ch) }
                continue
            }
            percent = false
            switch ch {
            case "Y": out += String(year)
            case "y": out += two(year % 100)
            case "m": out += two(month)
            case "d": out += two(day)
            case "e": out += day < 10 ? " \(day)" : "\(day)"
            case "H": out += two(hour)
            case "I": out += two(hour % 12 == 0 ? 12 : hour % 12)
            case "M": out += two(minute)
            case "S": out += two(second)
            case "p": out += hour < 12 ? "AM" : "PM"
            case "B": out += months[month - 1]
            case "b", "h": out += String(months[month - 1].prefix(3))
            case "A": out += days[weekday]
            case "a": out += String(days[weekday].prefix(3))
            case "j":
                let n = calendar.ordinality(of: .day, in: .year, for: date) ?? 1
                out += n < 10 ? "00\(n)" : n < 100 ? "0\(n)" : "\(n)"
            case "%": out += "%"
            default: out += "%" + String(ch)
            }
        }
        return out
    }

    // MARK: Filters

    mutating func applyFilter(_ name: String, to value: JinjaValue, _ a: [JinjaValue], _ k: JinjaDict) throws -> JinjaValue {
        func argument(_ index: Int, _ key: String) -> JinjaValue? { index < a.count ? a[index] : k[key] }
        func string(_ v: JinjaValue) throws -> String {
            if case .undefined(let reason) = v { throw JinjaError(reason) }
            return v.text
        }
        switch name {
        case "trim":
            return .string(JinjaBuiltins.strip(try string(value), argument(0, "chars")?.text, left: true, right: true))
        case "upper": return .string(try string(value).uppercased())
        case "lower": return .string(try string(value).lowercased())
        case "title": return .string(JinjaBuiltins.jinjaTitle(try string(value)))
        case "capitalize": return .string(JinjaBuiltins.capitalize(try string(value)))
        case "replace":
            guard let old = argument(0, "old")?.text, let new = argument(1, "new")?.text else { throw JinjaError("replace needs the old and new strings") }
            return .string(JinjaBuiltins.replace(try string(value), old, new, count: argument(2, "count").flatMap(Self.integer)))
        case "length", "count":
            switch value {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .list(let l), .tuple(let l): return .int(l.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw JinjaError("object of type '\(value.typeName)' has no len()")
            }
        case "wordcount": return .int(try string(value).split(whereSeparator: { $0.isWhitespace }).count)
        case "join":
            var items = try value.iterated()
            if let attribute = argument(1, "attribute")?.text { items = try items.map { try self.attribute($0, attribute) } }
            return .string(items.map(\.text).joined(separator: argument(0, "d")?.text ?? ""))
        case "first": return try value.iterated().first ?? .undefined(reason: "the sequence is empty")
        case "last": return try value.iterated().last ?? .undefined(reason: "the sequence is empty")
        case "reverse":
            if case .string(let s) = value { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .list(try value.iterated().reversed())
        case "list": return .list(try value.iterated())
        case "items":
            if case .undefined = value { return .list([]) }
            guard case .dict(let d) = value else { throw JinjaError("items filter needs a dict, not \(value.typeName)") }
            return .list(d.pairs.map { .tuple([.string($0.key), $0.value]) })
        case "dictsort":
            guard case .dict(let d) = value else { throw JinjaError("dictsort needs a dict, not \(value.typeName)") }
            let byValue = argument(1, "by")?.text == "value"
            let caseSensitive = argument(0, "case_sensitive")?.isTruthy ?? false
            var pairs = try d.pairs.map { JinjaValue.tuple([.string($0.key), $0.value]) }
            pairs = try JinjaBuiltins.sorted(pairs, caseSensitive: caseSensitive) { v in
                guard case .tuple(let t) = v else { return v }
                return byValue ? t[1] : t[0]
            }
            if argument(2, "reverse")?.isTruthy == true { pairs.reverse() }
            return .list(pairs)
        case "sort":
            let attribute = argument(2, "attribute")?.text
            var items = try JinjaBuiltins.sorted(try value.iterated(), caseSensitive: argument(1, "case_sensitive")?.isTruthy ?? false) { v in
                guard let attribute else { return v }
                return (try? self.attribute(v, attribute)) ?? .none
            }
            if argument(0, "reverse")?.isTruthy == true { items.reverse() }
            return .list(items)
        case "unique":
            var seen: [JinjaValue] = []
            for item in try value.iterated() where !seen.contains(where: { Self.equal(JinjaBuiltins.folded($0), JinjaBuiltins.folded(item)) }) {
                seen.append(item)
            }
            return .list(seen)
        case "min", "max":
            let items = try JinjaBuiltins.sorted(try value.iterated(), caseSensitive: false) { $0 }
            return (name == "min" ? items.first : items.last) ?? .undefined(reason: "no \(name) of an empty sequence")
        case "sum":
            var total = argument(1, "start") ?? .int(0)
            for item in try value.iterated() {
                let v = try argument(0, "attribute").map { try self.attribute(item, $0.text) } ?? item
                total = try Self.arithmetic("+", total, v)
            }
            return total
        case "default", "d":
            let fallback = argument(0, "default_value") ?? .string("")
            let boolean = argument(1, "boolean")?.isTruthy ?? false
            if value.isUndefined || (boolean && !value.isTruthy) { return fallback }
            return value
        case "int":
            let fallback = argument(0, "default") ?? .int(0)
            switch value {
            case .int, .bool: return .int(Self.integer(value)!)
            case .double(let d): return d.isFinite ? .int(Int(d)) : fallback
            case .string(let s):
                let t = s.trimmingCharacters(in: .whitespaces)
                if let n = Int(t) { return .int(n) }
                if let d = Double(t), d.isFinite { return .int(Int(d)) }
                return fallback
            default: return fallback
            }
        case "float":
            let fallback = argument(0, "default") ?? .double(0)
            if let d = Self.number(value) { return .double(d) }
            if case .string(let s) = value, let d = Double(s.trimmingCharacters(in: .whitespaces)) { return .double(d) }
            return fallback
        case "string": return .string(value.text)
        case "safe": return value
        case "escape", "e": return .string(JinjaBuiltins.escapeHTML(value.text))
        case "abs":
            switch value {
            case .int(let i): return .int(abs(i))
            case .double(let d): return .double(abs(d))
            default: throw JinjaError("bad operand type for abs(): '\(value.typeName)'")
            }
        case "round":
            guard let x = Self.number(value) else { throw JinjaError("round needs a number, not \(value.typeName)") }
            let precision = argument(0, "precision").flatMap(Self.integer) ?? 0
            let scale = pow(10, Double(precision))
            switch argument(1, "method")?.text ?? "common" {
            case "common": return .double((x * scale).rounded(.toNearestOrEven) / scale)
            case "floor": return .double((x * scale).rounded(.down) / scale)
            case "ceil": return .double((x * scale).rounded(.up) / scale)
            case let method: throw JinjaError("round method must be 'common', 'ceil' or 'floor', not '\(method)'")
            }
        case "indent":
            let width = argument(0, "width")
            let pad = width.flatMap(Self.integer).map { String(repeating: " ", count: $0) } ?? width?.text ?? "    "
            let first = argument(1, "first")?.isTruthy ?? false, blank = argument(2, "blank")?.isTruthy ?? false
            let lines = try string(value).split(separator: "\n", omittingEmptySubsequences: false)
            return .string(lines.enumerated().map { i, line in
                (i == 0 && !first) || (!blank && line.allSatisfy(\.isWhitespace)) ? String(line) : pad + line
            }.joined(separator: "\n"))
        case "tojson":
            let indent = argument(1, "indent").flatMap(Self.integer)
            var itemSeparator: String?, keySeparator = ": "
            if let separators = k["separators"] {
                let parts = try separators.iterated()
                guard parts.count == 2 else { throw JinjaError("tojson separators must be a pair") }
                itemSeparator = parts[0].text
                keySeparator = parts[1].text
            }
            return .string(try value.json(indent: indent, itemSeparator: itemSeparator, keySeparator: keySeparator,
                                          sortKeys: k["sort_keys"]?.isTruthy ?? false))
        case "map":
            let items = try value.iterated()
            if let attribute = k["attribute"] {
                return .list(try items.map { item in
                    let v = try self.attribute(item, attribute.text)
                    return v.isUndefined ? (k["default"] ?? v) : v
                })
            }
            guard let filter = a.first?.text else { throw JinjaError("map needs a filter name or attribute=") }
            try ExpressionParser.checkFilter(filter, line: 0)
            return .list(try items.map { try applyFilter(filter, to: $0, Array(a.dropFirst()), JinjaDict()) })
        case "select", "reject", "selectattr", "rejectattr":
            let byAttribute = name.hasSuffix("attr")
            let keep = name.hasPrefix("select")
            var rest = a
            var attribute: String?
            if byAttribute {
                guard !rest.isEmpty else { throw JinjaError("\(name) needs an attribute name") }
                attribute = rest.removeFirst().text
            }
            let test = rest.isEmpty ? nil : rest.removeFirst().text
            if let test, !ExpressionParser.tests.contains(test) { throw JinjaError("no test named '\(test)'") }
            return .list(try value.iterated().filter { item in
                let subject = try attribute.map { try self.attribute(item, $0) } ?? item
                let passed = try test.map { try applyTest($0, to: subject, rest) } ?? subject.isTruthy
                return passed == keep
            })
        default:
            throw JinjaError("no filter named '\(name)'")
        }
    }

    // MARK: Tests

    func applyTest(_ name: String, to value: JinjaValue, _ a: [JinjaValue]) throws -> Bool {
        func other() throws -> JinjaValue {
            guard let first = a.first else { throw JinjaError("test '\(name)' needs an argument") }
            return first
        }
        switch name {
        case "defined": return !value.isUndefined
        case "undefined": return value.isUndefined
        case "none": if case .none = value { return true } else { return false }
        case "boolean": if case .bool = value { return true } else { return false }
        case "true": if case .bool(true) = value { return true } else { return false }
        case "false": if case .bool(false) = value { return true } else { return false }
        case "integer": if case .int = value { return true } else { return false }
        case "float": if case .double = value { return true } else { return false }
        case "number": switch value { case .int, .double, .bool: return true; default: return false }
        case "string": if case .string = value { return true } else { return false }
        case "mapping": switch value { case .dict, .namespace: return true; default: return false }
        case "iterable": switch value { case .list, .tuple, .dict, .string: return true; default: return false }
        case "sequence": switch value { case .list, .tuple, .dict, .string: return true; default: return false }
        case "callable": if case .function = value { return true } else { return false }
        case "odd", "even":
            guard let n = Self.integer(value) else { throw JinjaError("test '\(name)' needs an integer") }
            return (n % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let n = Self.integer(value), let d = Self.integer(try other()), d != 0 else { throw JinjaError("divisibleby needs non-zero integers") }
            return n % d == 0
        case "eq", "equalto", "==": return Self.equal(value, try other())
        case "ne", "!=": return !Self.equal(value, try other())
        case "lt", "<": return try Self.compare("<", value, try other())
        case "le", "<=": return try Self.compare("<=", value, try other())
        case "gt", ">": return try Self.compare(">", value, try other())
        case "ge", ">=": return try Self.compare(">=", value, try other())
        case "in": return try Self.contains(try other(), value)
        case "sameas":
            let o = try other()
            switch (value, o) {
            case (.none, .none): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.namespace(let x), .namespace(let y)): return x === y
            default: return false
            }
        case "lower": if case .string(let s) = value { return s == s.lowercased() } else { return false }
        case "upper": if case .string(let s) = value { return s == s.uppercased() } else { return false }
        default: throw JinjaError("no test named '\(name)'")
        }
    }
}

/// String and collection helpers with Python's semantics, and the methods templates call
/// (`message.content.strip()`, `tool.items()`).
enum JinjaBuiltins {
    /// A bound method of `object` named `name`, nil when the type has none by that name.
    static func method(_ object: JinjaValue, _ name: String) throws -> JinjaValue? {
        func bound(_ body: @escaping ([JinjaValue], JinjaDict) throws -> JinjaValue) -> JinjaValue {
            .function(JinjaFunction(name: name, call: body))
        }
        switch object {
        case .string(let s):
            switch name {
            case "strip", "lstrip", "rstrip":
                return bound { a, _ in
                    let chars: String? = if case .string(let c)? = a.first { c } else { nil }
                    return .string(strip(s, chars, left: name != "rstrip", right: name != "lstrip"))
                }
            case "upper": return bound { _, _ in .string(s.uppercased()) }
            case "lower": return bound { _, _ in .string(s.lowercased()) }
            case "title": return bound { _, _ in .string(pythonTitle(s)) }
            case "capitalize": return bound { _, _ in .string(capitalize(s)) }
            case "replace":
                return bound { a, _ in
                    guard a.count >= 2 else { throw JinjaError("replace() takes the old and new strings") }
                    return .string(replace(s, a[0].text, a[1].text, count: a.count > 2 ? JinjaInterpreter.integer(a[2]) : nil))
                }
            case "split", "rsplit":
                return bound { a, k in
                    let separator: String? = if case .string(let sep)? = a.first ?? k["sep"] { sep } else { nil }
                    let limit = (a.count > 1 ? a[1] : k["maxsplit"]).flatMap(JinjaInterpreter.integer) ?? -1
                    return .list(try split(s, separator, maxSplit: limit, fromRight: name == "rsplit").map { .string($0) })
                }
            case "startswith", "endswith":
                return bound { a, _ in
                    guard let p = a.first else { throw JinjaError("\(name)() takes a prefix") }
                    let options: [String] = if case .tuple(let t) = p { t.map(\.text) } else { [p.text] }
                    return .bool(options.contains { name == "startswith" ? s.unicodeScalars.starts(with: $0.unicodeScalars) : s.unicodeScalars.reversed().starts(with: $0.unicodeScalars.reversed()) })
                }
            case "join": return bound { a, _ in .string(try (a.first ?? .list([])).iterated().map(\.text).joined(separator: s)) }
            case "count":
                return bound { a, _ in
                    let needle = a.first?.text ?? ""
                    return .int(needle.isEmpty ? s.unicodeScalars.count + 1 : s.components(separatedBy: needle).count - 1)
                }
            case "find":
                return bound { a, _ in
                    guard let r = s.range(of: a.first?.text ?? "") else { return .int(-1) }
                    return .int(s.unicodeScalars.distance(from: s.startIndex, to: r.lowerBound))
                }
            case "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper":
                return bound { _, _ in
                    let scalars = s.unicodeScalars
                    guard !scalars.isEmpty else { return .bool(false) }
                    switch name {
                    case "isdigit": return .bool(scalars.allSatisfy { $0.properties.numericType == .decimal || $0.properties.numericType == .digit })
                    case "isalpha": return .bool(scalars.allSatisfy(\.properties.isAlphabetic))
                    case "isalnum": return .bool(scalars.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
                    case "isspace": return .bool(scalars.allSatisfy(\.properties.isWhitespace))
                    case "islower": return .bool(s == s.lowercased() && s != s.uppercased())
                    default: return .bool(s == s.uppercased() && s != s.lowercased())
                    }
                }
            default: return nil
            }
        case .dict(let d):
            switch name {
            case "get": return bound { a, _ in d[a.first?.text ?? ""] ?? (a.count > 1 ? a[1] : .none) }
            case "items": return bound { _, _ in .list(d.pairs.map { .tuple([.string($0.key), $0.value]) }) }
            case "keys": return bound { _, _ in .list(d.keys.map { .string($0) }) }
            case "values": return bound { _, _ in .list(d.pairs.map(\.value)) }
            case "pop", "popitem", "update", "clear", "setdefault":
                throw JinjaError("access to attribute '\(name)' of 'dict' object is unsafe")
            default: return nil
            }
        case .list(let l):
            switch name {
            case "index":
                return bound { a, _ in
                    guard let k = l.firstIndex(where: { JinjaInterpreter.equal($0, a.first ?? .none) }) else { throw JinjaError("value is not in list") }
                    return .int(k)
                }
            case "count": return bound { a, _ in .int(l.filter { JinjaInterpreter.equal($0, a.first ?? .none) }.count) }
            case "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse":
                throw JinjaError("access to attribute '\(name)' of 'list' object is unsafe")
            default: return nil
            }
        default: return nil
        }
    }

    static func isPythonWhitespace(_ s: Unicode.Scalar) -> Bool { s.properties.isWhitespace || (0x1C...0x1F).contains(s.value) }

    static func strip(_ s: String, _ chars: String?, left: Bool, right: Bool) -> String {
        let set = chars.map { Set($0.unicodeScalars) }
        func remove(_ c: Unicode.Scalar) -> Bool { set?.contains(c) ?? isPythonWhitespace(c) }
        var scalars = Substring(s).unicodeScalars[...]
        if left { while let f = scalars.first, remove(f) { scalars.removeFirst() } }
        if right { while let l = scalars.last, remove(l) { scalars.removeLast() } }
        return String(String.UnicodeScalarView(scalars))
    }

    static func replace(_ s: String, _ old: String, _ new: String, count: Int?) -> String {
        guard let count, count >= 0 else { return old.isEmpty ? s : s.replacingOccurrences(of: old, with: new, options: .literal) }
        var out = "", rest = Substring(s), done = 0
        while done < count, !old.isEmpty, let r = rest.range(of: old, options: .literal) {
            out += rest[..<r.lowerBound] + new
            rest = rest[r.upperBound...]
            done += 1
        }
        return out + rest
    }

    static func split(_ s: String, _ separator: String?, maxSplit: Int, fromRight: Bool) throws -> [String] {
        if let separator {
            guard !separator.isEmpty else { throw JinjaError("empty separator") }
            var parts = s.components(separatedBy: separator)
            if maxSplit >= 0, parts.count > maxSplit + 1 {
                if fromRight {
                    let head = parts[..<(parts.count - maxSplit)].joined(separator: separator)
                    parts = [head] + parts[(parts.count - maxSplit)...]
                } else {
                    parts = Array(parts[..<maxSplit]) + [parts[maxSplit...].joined(separator: separator)]
                }
            }
            return parts
        }
        // Runs of whitespace separate; leading and trailing whitespace give no empty parts.
        var parts: [String] = []
        var current = String.UnicodeScalarView()
        var scalars = Array(s.unicodeScalars)
        if fromRight { scalars.reverse() }
        var k = 0
        while k < scalars.count {
            let c = scalars[k]
            if isPythonWhitespace(c) {
                if !current.isEmpty {
                    parts.append(String(current))
                    current = String.UnicodeScalarView()
                    if maxSplit >= 0, parts.count == maxSplit {
                        while k < scalars.count, isPythonWhitespace(scalars[k]) { k += 1 }
                        if k < scalars.count { current.append(contentsOf: scalars[k...]) }
                        break
                    }
                }
            } else {
                current.append(c)
            }
            k += 1
        }
        if !current.isEmpty {
            var tail = String(current)
            if maxSplit >= 0, parts.count == maxSplit { tail = strip(tail, nil, left: false, right: true) }
            parts.append(tail)
        }
        if fromRight { parts = parts.reversed().map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) } }
        return parts
    }

    /// Python's `str.title()`: a cased character after an uncased one is upper case, the rest lower.
    static func pythonTitle(_ s: String) -> String {
        var out = ""
        var previousCased = false
        for c in s.unicodeScalars {
            let cased = c.properties.isCased
            out += previousCased ? String(c).lowercased() : String(c).uppercased()
            previousCased = cased
        }
        return out
    }

    /// jinja2's `title` filter: words start after whitespace, `-`, `(`, `{`, `[` or `<`.
    static func jinjaTitle(_ s: String) -> String {
        var out = ""
        var startOfWord = true
        for c in s.unicodeScalars {
            if c.properties.isWhitespace || "-({[<".unicodeScalars.contains(c) {
                out.unicodeScalars.append(c)
                startOfWord = true
            } else {
                out += startOfWord ? String(c).uppercased() : String(c).lowercased()
                startOfWord = false
            }
        }
        return out
    }

    static func capitalize(_ s: String) -> String {
        guard let first = s.unicodeScalars.first else { return s }
        return String(first).uppercased() + String(String.UnicodeScalarView(s.unicodeScalars.dropFirst())).lowercased()
    }

    static func escapeHTML(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&#34;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Strings lowered for jinja2's case-insensitive sort and unique.
    static func folded(_ v: JinjaValue) -> JinjaValue {
        if case .string(let s) = v { return .string(s.lowercased()) }
        return v
    }

    static func sorted(_ items: [JinjaValue], caseSensitive: Bool, key: (JinjaValue) throws -> JinjaValue) throws -> [JinjaValue] {
        let keyed = try items.map { v -> (JinjaValue, JinjaValue) in
            let k = try key(v)
            return (caseSensitive ? k : folded(k), v)
        }
        var failure: Error?
        let result = keyed.enumerated().sorted { x, y in
            do {
                if try JinjaInterpreter.compare("<", x.element.0, y.element.0) { return true }
                if try JinjaInterpreter.compare("<", y.element.0, x.element.0) { return false }
            } catch {
                failure = error
            }
            return x.offset < y.offset
        }.map(\.element.1)
        if let failure { throw failure }
        return result
    }
}
