import Foundation

/// Runs a template tree: scopes (loops and macros get their own, `if` does not), loop variables,
/// macros, namespaces and jinja2's undefined values.
struct JinjaInterpreter {
    enum Flow { case normal, breakLoop, continueLoop }

    private var scopes: [[String: JinjaValue]]
    let now: Date
    let timeZone: TimeZone
    private var depth = 0

    init(variables: [String: JinjaValue], now: Date, timeZone: TimeZone) {
        self.now = now
        self.timeZone = timeZone
        scopes = [Self.globals(now: now, timeZone: timeZone), variables]
    }

    // MARK: Statements

    mutating func run(_ nodes: [JinjaNode], into out: inout String) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let t): out += t
            case .output(let e): out += try evaluate(e).text
            case .conditional(let branches, let otherwise):
                var taken = false
                for (condition, body) in branches where try evaluate(condition).isTruthy {
                    taken = true
                    let flow = try run(body, into: &out)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try run(otherwise, into: &out)
                    if flow != .normal { return flow }
                }
            case .loop(let targets, let iterable, let filter, let body, let otherwise):
                try runLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, into: &out)
            case .assign(let targets, let value):
                let v = try evaluate(value)
                if targets.count == 1 {
                    scopes[scopes.count - 1][targets[0]] = v
                } else {
                    let items = try v.iterated()
                    guard items.count == targets.count else {
                        throw JinjaError("cannot unpack \(items.count) values into \(targets.count) variables")
                    }
                    for (t, item) in zip(targets, items) { scopes[scopes.count - 1][t] = item }
                }
            case .assignAttribute(let object, let attribute, let value):
                guard case .namespace(let ns) = lookup(object) else {
                    throw JinjaError("cannot assign attribute '\(attribute)' on '\(object)', which is not a namespace")
                }
                guard !attribute.hasPrefix("_") else {
                    throw JinjaError("cannot store the underscore-prefixed attribute '\(attribute)' on a namespace")
                }
                ns.attributes[attribute] = try evaluate(value)
            case .assignBlock(let name, let body):
                var captured = ""
                _ = try run(body, into: &captured)
                scopes[scopes.count - 1][name] = .string(captured)
            case .macro(let name, let parameters, let body):
                scopes[scopes.count - 1][name] = makeMacro(name: name, parameters: parameters, body: body)
            case .filterBlock(let name, let arguments, let keywords, let body):
                var captured = ""
                _ = try run(body, into: &captured)
                out += try applyFilter(name, to: .string(captured), arguments.map { try evaluate($0) }, try keywordValues(keywords)).text
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            }
        }
        return .normal
    }

    private mutating func runLoop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode],
                                  otherwise: [JinjaNode], into out: inout String) throws {
        var items = try evaluate(iterable).iterated()
        scopes.append([:])
        defer { scopes.removeLast() }
        func bind(_ item: JinjaValue) throws {
            if targets.count == 1 {
                scopes[scopes.count - 1][targets[0]] = item
            } else {
                let parts = try item.iterated()
                guard parts.count == targets.count else { throw JinjaError("cannot unpack \(parts.count) values into \(targets.count) loop variables") }
                for (t, p) in zip(targets, parts) { scopes[scopes.count - 1][t] = p }
            }
        }
        if let filter {
            items = try items.filter { item in
                try bind(item)
                return try evaluate(filter).isTruthy
            }
        }
        if items.isEmpty {
            _ = try run(otherwise, into: &out)
            return
        }
        let count = items.count
        for (index, item) in items.enumerated() {
            try bind(item)
            var loop = JinjaDict()
            loop["index"] = .int(index + 1)
            loop["index0"] = .int(index)
            loop["revindex"] = .int(count - index)
            loop["revindex0"] = .int(count - index - 1)
            loop["first"] = .bool(index == 0)
            loop["last"] = .bool(index == count - 1)
            loop["length"] = .int(count)
            loop["depth"] = .int(1)
            loop["depth0"] = .int(0)
            loop["previtem"] = index > 0 ? items[index - 1] : .undefined(reason: "there is no previous item")
            loop["nextitem"] = index + 1 < count ? items[index + 1] : .undefined(reason: "there is no next item")
            loop["cycle"] = .function(JinjaFunction(name: "loop.cycle") { arguments, _ in
                guard !arguments.isEmpty else { throw JinjaError("loop.cycle needs at least one value") }
                return arguments[index % arguments.count]
            })
            scopes[scopes.count - 1]["loop"] = .dict(loop)
            if try run(body, into: &out) == .breakLoop { break }
        }
    }

    private func makeMacro(name: String, parameters: [(name: String, defaultValue: JinjaExpr?)], body: [JinjaNode]) -> JinjaValue {
        let definitionScopes = scopes
        let now = now, timeZone = timeZone
        return .function(JinjaFunction(name: name) { arguments, keywords in
            guard arguments.count <= parameters.count else {
                throw JinjaError("macro '\(name)' takes \(parameters.count) arguments, \(arguments.count) given")
            }
            var interpreter = JinjaInterpreter(variables: [:], now: now, timeZone: timeZone)
            interpreter.scopes = definitionScopes
            var frame: [String: JinjaValue] = [:]
            for (k, parameter) in parameters.enumerated() {
                if k < arguments.count {
                    frame[parameter.name] = arguments[k]
                } else if let v = keywords[parameter.name] {
                    frame[parameter.name] = v
                } else if let d = parameter.defaultValue {
                    interpreter.scopes.append(frame)
                    frame[parameter.name] = try interpreter.evaluate(d)
                    interpreter.scopes.removeLast()
                } else {
                    frame[parameter.name] = .undefined(reason: "'\(parameter.name)' is undefined")
                }
            }
            for key in keywords.keys where !parameters.contains(where: { $0.name == key }) {
                throw JinjaError("macro '\(name)' has no parameter named '\(key)'")
            }
            interpreter.scopes.append(frame)
            var out = ""
            _ = try interpreter.run(body, into: &out)
            return .string(out)
        })
    }

    func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() {
            if let v = scope[name] { return v }
        }
        return .undefined(reason: "'\(name)' is undefined")
    }

    // MARK: Expressions

    mutating func evaluate(_ expression: JinjaExpr) throws -> JinjaValue {
        depth += 1
        defer { depth -= 1 }
        guard depth < 400 else { throw JinjaError("expression nested too deeply") }
        switch expression {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .list(try items.map { try evaluate($0) })
        case .tuple(let items): return .tuple(try items.map { try evaluate($0) })
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                let key = try evaluate(k)
                guard case .string(let s) = key else { throw JinjaError("dict keys must be strings, not \(key.typeName)") }
                d[s] = try evaluate(v)
            }
            return .dict(d)
        case .attribute(let object, let name): return try attribute(try evaluate(object), name)
        case .item(let object, let index): return try item(try evaluate(object), try evaluate(index))
        case .slice(let object, let start, let stop, let step):
            return try slice(try evaluate(object), try start.map { try evaluate($0) }, try stop.map { try evaluate($0) }, try step.map { try evaluate($0) })
        case .call(let callee, let arguments, let keywords):
            let f = try evaluate(callee)
            guard case .function(let function) = f else {
                if case .undefined(let reason) = f { throw JinjaError("\(reason), so it cannot be called") }
                throw JinjaError("'\(f.typeName)' object is not callable")
            }
            return try function.call(try arguments.map { try evaluate($0) }, try keywordValues(keywords))
        case .filter(let value, let name, let arguments, let keywords):
            return try applyFilter(name, to: try evaluate(value), try arguments.map { try evaluate($0) }, try keywordValues(keywords))
        case .test(let value, let name, let arguments, let negated):
            let result = try applyTest(name, to: try evaluate(value), try arguments.map { try evaluate($0) })
            return .bool(result != negated)
        case .unary(let op, let operand):
            let v = try evaluate(operand)
            switch op {
            case "not": return .bool(!v.isTruthy)
            case "-":
                switch v {
                case .int(let i): return .int(-i)
                case .double(let d): return .double(-d)
                case .bool(let b): return .int(b ? -1 : 0)
                default: throw JinjaError("bad operand type for unary -: '\(v.typeName)'")
                }
            default: return v
            }
        case .binary(let op, let l, let r):
            if op == "and" {
                let left = try evaluate(l)
                return left.isTruthy ? try evaluate(r) : left
            }
            if op == "or" {
                let left = try evaluate(l)
                return left.isTruthy ? left : try evaluate(r)
            }
            return try Self.arithmetic(op, try evaluate(l), try evaluate(r))
        case .compare(let first, let operations):
            var left = try evaluate(first)
            for (op, e) in operations {
                let right = try evaluate(e)
                if !(try Self.compare(op, left, right)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .conditional(let value, let condition, let otherwise):
            if try evaluate(condition).isTruthy { return try evaluate(value) }
            return try otherwise.map { try evaluate($0) } ?? .undefined(reason: "the conditional expression has no else branch")
        }
    }

    private mutating func keywordValues(_ keywords: [(String, JinjaExpr)]) throws -> JinjaDict {
        var d = JinjaDict()
        for (k, e) in keywords { d[k] = try evaluate(e) }
        return d
    }

    // MARK: Access

    /// `object.name`: a method or attribute first, then an item (jinja2's getattr order).
    func attribute(_ object: JinjaValue, _ name: String) throws -> JinjaValue {
        if case .undefined(let reason) = object { throw JinjaError(reason) }
        if name.hasPrefix("_") { throw JinjaError("access to attribute '\(name)' of '\(object.typeName)' object is unsafe") }
        if let method = try JinjaBuiltins.method(object, name) { return method }
        switch object {
        case .dict(let d): return d[name] ?? .undefined(reason: "'dict object' has no attribute '\(name)'")
        case .namespace(let ns): return ns.attributes[name] ?? .undefined(reason: "'Namespace' object has no attribute '\(name)'")
        default: return .undefined(reason: "'\(object.typeName) object' has no attribute '\(name)'")
        }
    }

    /// `object[index]`: an item first, then an attribute.
    func item(_ object: JinjaValue, _ index: JinjaValue) throws -> JinjaValue {
        if case .undefined(let reason) = object { throw JinjaError(reason) }
        switch (object, index) {
        case (.dict(let d), .string(let key)):
            return d[key] ?? .undefined(reason: "'dict object' has no attribute '\(key)'")
        case (.list(let l), .int(let n)), (.tuple(let l), .int(let n)):
            let k = n < 0 ? l.count + n : n
            return l.indices.contains(k) ? l[k] : .undefined(reason: "list index \(n) out of range")
        case (.string(let s), .int(let n)):
            let scalars = Array(s.unicodeScalars)
            let k = n < 0 ? scalars.count + n : n
            return scalars.indices.contains(k) ? .string(String(scalars[k])) : .undefined(reason: "string index \(n) out of range")
        case (_, .string(let name)): return try attribute(object, name)
        default: return .undefined(reason: "'\(object.typeName) object' has no item \(index.repr)")
        }
    }

    func slice(_ object: JinjaValue, _ start: JinjaValue?, _ stop: JinjaValue?, _ step: JinjaValue?) throws -> JinjaValue {
        func int(_ v: JinjaValue?) throws -> Int? {
            switch v {
            case nil, .none?: return nil
            case .int(let n)?: return n
            case let other?: throw JinjaError("slice indices must be integers or None, not \(other.typeName)")
            }
        }
        let step = try int(step) ?? 1
        guard step != 0 else { throw JinjaError("slice step cannot be zero") }
        func indices(_ count: Int) throws -> [Int] {
            func clamp(_ v: Int?, _ fallback: Int, low: Int, high: Int) -> Int {
                guard var v else { return fallback }
                if v < 0 { v += count }
                return min(max(v, low), high)
            }
            if step > 0 {
                let a = clamp(try int(start), 0, low: 0, high: count), b = clamp(try int(stop), count, low: 0, high: count)
                return Array(stride(from: a, to: b, by: step))
            }
            let a = clamp(try int(start), count - 1, low: -1, high: count - 1), b = clamp(try int(stop), -1, low: -1, high: count - 1)
            return Array(stride(from: a, to: b, by: step))
        }
        switch object {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .tuple(let l): return .tuple(try indices(l.count).map { l[$0] })
        case .string(let s):
            let scalars = Array(s.unicodeScalars)
            var out = String.UnicodeScalarView()
            for k in try indices(scalars.count) { out.append(scalars[k]) }
            return .string(String(out))
        case .undefined(let reason): throw JinjaError(reason)
        default: throw JinjaError("'\(object.typeName)' object is not subscriptable")
        }
    }

    // MARK: Operators

    static func number(_ v: JinjaValue) -> Double? {
        switch v {
        case .int(let i): Double(i)
        case .double(let d): d
        case .bool(let b): b ? 1 : 0
        default: nil
        }
    }

    static func integer(_ v: JinjaValue) -> Int? {
        switch v {
        case .int(let i): i
        case .bool(let b): b ? 1 : 0
        default: nil
        }
    }

    static func arithmetic(_ op: String, _ l: JinjaValue, _ r: JinjaValue) throws -> JinjaValue {
        if op == "~" { return .string(l.text + r.text) }
        func unsupported() -> JinjaError {
            if case .undefined(let reason) = l { return JinjaError(reason) }
            if case .undefined(let reason) = r { return JinjaError(reason) }
            return JinjaError("unsupported operand types for \(op): '\(l.typeName)' and '\(r.typeName)'")
        }
        switch (op, l, r) {
        case ("+", .string(let a), .string(let b)): return .string(a + b)
        case ("+", .list(let a), .list(let b)): return .list(a + b)
        case ("+", .tuple(let a), .tuple(let b)): return .tuple(a + b)
        case ("*", .string(let s), _), ("*", _, .string(let s)):
            guard let n = integer(l) ?? integer(r) else { throw unsupported() }
            return .string(String(repeating: s, count: max(0, n)))
        case ("*", .list(let a), _):
            guard let n = integer(r) else { throw unsupported() }
            return .list(Array([[JinjaValue]](repeating: a, count: max(0, n)).joined()))
        default: break
        }
        if let a = integer(l), let b = integer(r) {
            switch op {
            case "+": return .int(a &+ b)
            case "-": return .int(a &- b)
            case "*": return .int(a &* b)
            case "/":
                guard b != 0 else { throw JinjaError("division by zero") }
                return .double(Double(a) / Double(b))
            case "//":
                guard b != 0 else { throw JinjaError("integer division or modulo by zero") }
                let q = a / b
                return .int((a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q)
            case "%":
                guard b != 0 else { throw JinjaError("integer division or modulo by zero") }
                let m = a % b
                return .int(m != 0 && (m < 0) != (b < 0) ? m + b : m)
            case "**":
                if b >= 0 {
                    var result = 1
                    for _ in 0..<min(b, 64) { result = result &* a }
                    return .int(result)
                }
                return .double(pow(Double(a), Double(b)))
            default: break
            }
        }
        guard let a = number(l), let b = number(r) else { throw unsupported() }
        switch op {
        case "+": return .double(a + b)
        case "-": return .double(a - b)
        case "*": return .double(a * b)
        case "/":
            guard b != 0 else { throw JinjaError("float division by zero") }
            return .double(a / b)
        case "//":
            guard b != 0 else { throw JinjaError("float floor division by zero") }
            return .double((a / b).rounded(.down))
        case "%":
            guard b != 0 else { throw JinjaError("float modulo") }
            let m = fmod(a, b)
            return .double(m != 0 && (m < 0) != (b < 0) ? m + b : m)
        case "**": return .double(pow(a, b))
        default: throw unsupported()
        }
    }

    static func equal(_ l: JinjaValue, _ r: JinjaValue) -> Bool {
        switch (l, r) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let a), .string(let b)): return a == b
        case (.list(let a), .list(let b)), (.tuple(let a), .tuple(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { equal($0, $1) }
        case (.dict(let a), .dict(let b)):
            return a.count == b.count && a.pairs.allSatisfy { p in b[p.key].map { equal(p.value, $0) } ?? false }
        case (.namespace(let a), .namespace(let b)): return a === b
        default:
            if let a = number(l), let b = number(r) { return a == b }
            return false
        }
    }

    static func compare(_ op: String, _ l: JinjaValue, _ r: JinjaValue) throws -> Bool {
        switch op {
        case "==": return equal(l, r)
        case "!=": return !equal(l, r)
        case "in": return try contains(r, l)
        case "not in": return !(try contains(r, l))
        default: break
        }
        let order: Int
        if let a = number(l), let b = number(r) {
            order = a < b ? -1 : a > b ? 1 : 0
        } else if case .string(let a) = l, case .string(let b) = r {
            let x = Array(a.unicodeScalars).map(\.value), y = Array(b.unicodeScalars).map(\.value)
            order = x.lexicographicallyPrecedes(y) ? -1 : x == y ? 0 : 1
        } else {
            throw JinjaError("'\(op)' not supported between instances of '\(l.typeName)' and '\(r.typeName)'")
        }
        switch op {
        case "<": return order < 0
        case "<=": return order <= 0
        case ">": return order > 0
        default: return order >= 0
        }
    }

    static func contains(_ container: JinjaValue, _ element: JinjaValue) throws -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let e) = element else { throw JinjaError("'in <string>' requires string as left operand, not \(element.typeName)") }
            return e.isEmpty || s.contains(e)
        case .list(let l), .tuple(let l): return l.contains { equal($0, element) }
        case .dict(let d):
            if case .string(let key) = element { return d[key] != nil }
            return false
        case .undefined: return false
        default: throw JinjaError("argument of type '\(container.typeName)' is not iterable")
        }
    }
}
