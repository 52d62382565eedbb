import Foundation

/// A value inside a chat template: what Python's jinja2 sees when Hugging Face renders a template
/// (None, bool, int, float, str, list, tuple, dict with insertion order, namespace, macro).
public indirect enum JinjaValue: @unchecked Sendable {
    /// A missing variable, attribute or key; `reason` says which (for errors that need it).
    case undefined(reason: String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    case tuple([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case function(JinjaFunction)

    public static let undefined = JinjaValue.undefined(reason: "undefined")

    public var isUndefined: Bool { if case .undefined = self { true } else { false } }

    /// Python truthiness.
    public var isTruthy: Bool {
        switch self {
        case .undefined, .none: false
        case .bool(let b): b
        case .int(let i): i != 0
        case .double(let d): d != 0
        case .string(let s): !s.isEmpty
        case .list(let l), .tuple(let l): !l.isEmpty
        case .dict(let d): !d.isEmpty
        case .namespace, .function: true
        }
    }

    /// The Python type name, for error messages.
    var typeName: String {
        switch self {
        case .undefined: "Undefined"
        case .none: "NoneType"
        case .bool: "bool"
        case .int: "int"
        case .double: "float"
        case .string: "str"
        case .list: "list"
        case .tuple: "tuple"
        case .dict: "dict"
        case .namespace: "Namespace"
        case .function: "function"
        }
    }

    /// Elements when iterated (strings give characters as Unicode scalars, dicts their keys).
    func iterated() throws -> [JinjaValue] {
        switch self {
        case .undefined: return []
        case .list(let l), .tuple(let l): return l
        case .dict(let d): return d.keys.map { .string($0) }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        default: throw JinjaError("'\(typeName)' object is not iterable")
        }
    }

    /// `str(value)` as Python prints it.
    public var text: String {
        switch self {
        case .undefined: ""
        case .string(let s): s
        default: repr
        }
    }

    /// `repr(value)` as Python writes it (inside lists and dicts).
    public var repr: String {
        switch self {
        case .undefined: ""
        case .none: "None"
        case .bool(let b): b ? "True" : "False"
        case .int(let i): String(i)
        case .double(let d): Self.pythonFloat(d)
        case .string(let s): Self.pythonQuoted(s)
        case .list(let l): "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .tuple(let l): l.count == 1 ? "(\(l[0].repr),)" : "(" + l.map(\.repr).joined(separator: ", ") + ")"
        case .dict(let d): "{" + d.pairs.map { Self.pythonQuoted($0.key) + ": " + $0.value.repr }.joined(separator: ", ") + "}"
        case .namespace: "<Namespace>"
        case .function(let f): "<function \(f.name)>"
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        var s = "\(d)"
        if !s.contains(".") && !s.contains("e") && !s.contains("n") { s += ".0" }
        return s
    }

    /// Python's repr of a string: single quotes unless the text has a single quote and no double quote.
    static func pythonQuoted(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where Character(scalar) == quote: out += "\\" + String(quote)
            case _ where scalar.value < 0x20 || scalar.value == 0x7F: out += String(format: "\\x%02x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out.append(quote)
        return out
    }
}

/// A dict that keeps insertion order (Python 3.7+ dicts, JSON objects as written).
public struct JinjaDict: Sendable {
    public private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    public init() {}
    public init(_ pairs: [(String, JinjaValue)]) { for (k, v) in pairs { self[k] = v } }

    public var isEmpty: Bool { keys.isEmpty }
    public var count: Int { keys.count }
    public var pairs: [(key: String, value: JinjaValue)] { keys.map { ($0, storage[$0]!) } }

    public subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }
}

/// `namespace(...)`: the one mutable object templates have (assigned with `{% set ns.x = ... %}`).
public final class JinjaNamespace: @unchecked Sendable {
    var attributes = JinjaDict()
    init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// A callable: a global (`range`, `raise_exception`), a bound method or a macro.
public struct JinjaFunction: @unchecked Sendable {
    let name: String
    let call: (_ arguments: [JinjaValue], _ keywords: JinjaDict) throws -> JinjaValue
}

/// A template that cannot be parsed or rendered, with the reason (naming the construct).
public struct JinjaError: Error, CustomStringConvertible, Equatable {
    public let message: String
    /// True for `raise_exception(...)`: the template itself refused the input.
    public let raisedByTemplate: Bool
    public init(_ message: String, raisedByTemplate: Bool = false) {
        self.message = message
        self.raisedByTemplate = raisedByTemplate
    }
    public var description: String { message }
}

// MARK: JSON

extension JinjaValue {
    /// Parses JSON keeping object key order; integers stay integers and numbers with a fraction or
    /// exponent become floats, as Python's `json.loads` does.
    public init(json: String) throws {
        var parser = JSONReader(Array(json.utf8))
        self = try parser.document()
    }

    /// Compact JSON (no spaces), keys in insertion order; nil for values JSON cannot hold.
    public func jsonText() -> String? {
        try? json(indent: nil, itemSeparator: ",", keySeparator: ":")
    }

    /// Python's `json.dumps(value, ensure_ascii=False, ...)`, the `tojson` filter of Hugging Face templates.
    func json(indent: Int?, itemSeparator: String? = nil, keySeparator: String = ": ", sortKeys: Bool = false) throws -> String {
        let item = itemSeparator ?? (indent == nil ? ", " : ",")
        var out = ""
        func write(_ v: JinjaValue, depth: Int) throws {
            func open(_ bracket: String, _ close: String, _ elements: [(String?, JinjaValue)]) throws {
                if elements.isEmpty { out += bracket + close; return }
                out += bracket
                for (i, (key, value)) in elements.enumerated() {
                    if i > 0 { out += item }
                    if let indent { out += "\n" + String(repeating: " ", count: indent * (depth + 1)) }
                    if let key { out += Self.jsonQuoted(key) + keySeparator }
                    try write(value, depth: depth + 1)
                }
                if let indent { out += "\n" + String(repeating: " ", count: indent * depth) }
                out += close
            }
            switch v {
            case .none, .undefined: out += "null"
            case .bool(let b): out += b ? "true" : "false"
            case .int(let i): out += String(i)
            case .double(let d):
                out += d.isNaN ? "NaN" : d.isInfinite ? (d < 0 ? "-Infinity" : "Infinity") : Self.pythonFloat(d)
            case .string(let s): out += Self.jsonQuoted(s)
            case .list(let l), .tuple(let l): try open("[", "]", l.map { (nil, $0) })
            case .dict(let d):
                let pairs = sortKeys ? d.pairs.sorted { $0.key < $1.key } : d.pairs
                try open("{", "}", pairs.map { ($0.key, $0.value) })
            case .namespace, .function: throw JinjaError("Object of type \(v.typeName) is not JSON serializable")
            }
        }
        try write(self, depth: 0)
        return out
    }

    static func jsonQuoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// A small JSON parser producing `JinjaValue`s.
struct JSONReader {
    private let bytes: [UInt8]
    private var i = 0
    private var depth = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func document() throws -> JinjaValue {
        let v = try value()
        skipSpace()
        guard i == bytes.count else { throw fail("unexpected data after the JSON value") }
        return v
    }

    private func fail(_ message: String) -> JinjaError { JinjaError("invalid JSON at byte \(i): \(message)") }

    private mutating func skipSpace() {
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
    }

    private mutating func value() throws -> JinjaValue {
        skipSpace()
        guard i < bytes.count else { throw fail("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            depth += 1
            defer { depth -= 1 }
            guard depth < 512 else { throw fail("nested too deeply") }
            i += 1
            var dict = JinjaDict()
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .dict(dict) }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                let key = try string()
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                dict[key] = try value()
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end in an object") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .dict(dict) }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            depth += 1
            defer { depth -= 1 }
            guard depth < 512 else { throw fail("nested too deeply") }
            i += 1
            var list: [JinjaValue] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .list(list) }
            while true {
                list.append(try value())
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end in an array") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .list(list) }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .none
        default: return try number()
        }
    }

    private mutating func literal(_ word: String) throws {
        let w = Array(word.utf8)
        guard i + w.count <= bytes.count, Array(bytes[i..<i + w.count]) == w else { throw fail("unexpected character") }
        i += w.count
    }

    private mutating func number() throws -> JinjaValue {
        let start = i
        var isFloat = false
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        while i < bytes.count {
            let c = bytes[i]
            if c >= 0x30 && c <= 0x39 { i += 1 } else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
                || ((c == UInt8(ascii: "+") || c == UInt8(ascii: "-")) && isFloat) { isFloat = true; i += 1 } else { break }
        }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if !isFloat, let n = Int(text) { return .int(n) }
        guard let d = Double(text), !text.isEmpty, text != "-" else { throw fail("unexpected character") }
        return .double(d)
    }

    private mutating func string() throws -> String {
        i += 1
        var out: [UInt8] = []
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
                return s
            }
            if c == UInt8(ascii: "\\") {
                guard i + 1 < bytes.count else { break }
                let e = bytes[i + 1]
                i += 2
                switch e {
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code), i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") {
                        i += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw fail("invalid surrogate pair") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let scalar = Unicode.Scalar(code) else { throw fail("invalid \\u escape") }
                    out += Array(String(Character(scalar)).utf8)
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                default: throw fail("invalid escape")
                }
                continue
            }
            guard c >= 0x20 else { throw fail("control character in a string") }
            out.append(c)
            i += 1
        }
        throw fail("unterminated string")
    }

    private mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<i + 4], as: UTF8.self), radix: 16) else { throw fail("invalid \\u escape") }
        i += 4
        return v
    }
}

extension JinjaValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}
