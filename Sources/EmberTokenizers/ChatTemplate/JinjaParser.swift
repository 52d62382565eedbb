/// The syntax tree of a template.
indirect enum JinjaNode {
    case text(String)
    case output(JinjaExpr)
    case conditional([(condition: JinjaExpr, body: [JinjaNode])], otherwise: [JinjaNode])
    case loop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode])
    case assign(targets: [String], value: JinjaExpr)
    case assignAttribute(object: String, attribute: String, value: JinjaExpr)
    case assignBlock(name: String, body: [JinjaNode])
    case macro(name: String, parameters: [(name: String, defaultValue: JinjaExpr?)], body: [JinjaNode])
    case filterBlock(name: String, arguments: [JinjaExpr], keywords: [(String, JinjaExpr)], body: [JinjaNode])
    case breakLoop, continueLoop
}

indirect enum JinjaExpr {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpr])
    case tuple([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case item(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
    case unary(String, JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case compare(JinjaExpr, [(String, JinjaExpr)])
    case conditional(JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
}

/// Builds the tree from the lexer's segments: statements nest until their end tag; expressions follow
/// jinja2's precedence (conditional < or < and < not < comparisons < + - < ~ < * / // % < ** < unary,
/// with filters, tests, calls, attributes and subscripts binding tightest).
struct JinjaParser {
    private let segments: [JinjaLexer.Segment]
    private var position = 0

    init(_ segments: [JinjaLexer.Segment]) { self.segments = segments }

    mutating func template() throws -> [JinjaNode] {
        let (nodes, end) = try body(until: [])
        if let end { throw JinjaError("line \(end.line): unexpected '\(end.tag)' outside the block it closes") }
        return nodes
    }

    /// Nodes up to one of the `until` tags (returned with that statement's tokens), or the end.
    private mutating func body(until: Set<String>, opened: (tag: String, line: Int)? = nil) throws
        -> ([JinjaNode], (tag: String, tokens: [JinjaLexer.Token], line: Int)?) {
        var nodes: [JinjaNode] = []
        while position < segments.count {
            let segment = segments[position]
            position += 1
            switch segment {
            case .text(let t): nodes.append(.text(t))
            case .output(let tokens, let line):
                var p = ExpressionParser(tokens, line: line)
                let e = try p.tupleOrExpression()
                try p.expectEnd("print statement")
                nodes.append(.output(e))
            case .statement(let tokens, let line):
                guard case .name(let tag)? = tokens.first else { throw JinjaError("line \(line): a block tag must start with a name") }
                if until.contains(tag) { return (nodes, (tag, Array(tokens.dropFirst()), line)) }
                if let node = try statement(tag, Array(tokens.dropFirst()), line: line) { nodes += node }
            }
        }
        if let opened {
            let expected = until.sorted().map { "'\($0)'" }.joined(separator: " or ")
            throw JinjaError("unexpected end of template: '\(opened.tag)' opened on line \(opened.line) is not closed (\(expected) expected)")
        }
        return (nodes, nil)
    }

    private mutating func statement(_ tag: String, _ tokens: [JinjaLexer.Token], line: Int) throws -> [JinjaNode]? {
        var p = ExpressionParser(tokens, line: line)
        switch tag {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try p.expression()
            try p.expectEnd("if")
            while true {
                let (nodes, end) = try body(until: ["elif", "else", "endif"], opened: ("if", line))
                branches.append((condition, nodes))
                guard let end else { break }
                switch end.tag {
                case "elif":
                    var q = ExpressionParser(end.tokens, line: end.line)
                    condition = try q.expression()
                    try q.expectEnd("elif")
                case "else":
                    let (otherwise, _) = try body(until: ["endif"], opened: ("if", line))
                    return [.conditional(branches, otherwise: otherwise)]
                default:
                    return [.conditional(branches, otherwise: [])]
                }
            }
            return [.conditional(branches, otherwise: [])]
        case "for":
            var targets: [String] = []
            repeat {
                targets.append(try p.name("a loop variable"))
            } while p.skip(.op(","))
            guard p.skip(.name("in")) else { throw JinjaError("line \(line): expected 'in' in the for loop") }
            let iterable = try p.orExpression()
            let filter = p.skip(.name("if")) ? try p.orExpression() : nil
            if p.skip(.name("recursive")) { throw JinjaError("line \(line): recursive for loops are not supported") }
            try p.expectEnd("for")
            let (nodes, end) = try body(until: ["else", "endfor"], opened: ("for", line))
            var otherwise: [JinjaNode] = []
            if end?.tag == "else" { otherwise = try body(until: ["endfor"], opened: ("for", line)).0 }
            return [.loop(targets: targets, iterable: iterable, filter: filter, body: nodes, otherwise: otherwise)]
        case "set":
            let first = try p.name("a variable")
            if p.skip(.op(".")) {
                let attribute = try p.name("an attribute")
                guard p.skip(.op("=")) else { throw JinjaError("line \(line): expected '=' in set") }
                let value = try p.tupleOrExpression()
                try p.expectEnd("set")
                return [.assignAttribute(object: first, attribute: attribute, value: value)]
            }
            var targets = [first]
            while p.skip(.op(",")) { targets.append(try p.name("a variable")) }
            if p.atEnd, targets.count == 1 {
                let (nodes, _) = try body(until: ["endset"], opened: ("set", line))
                return [.assignBlock(name: first, body: nodes)]
            }
            guard p.skip(.op("=")) else { throw JinjaError("line \(line): expected '=' in set") }
            let value = try p.tupleOrExpression()
            try p.expectEnd("set")
            return [.assign(targets: targets, value: value)]
        case "macro":
            let name = try p.name("a macro name")
            try p.expect(.op("("))
            var parameters: [(String, JinjaExpr?)] = []
            while !p.skip(.op(")")) {
                let parameter = try p.name("a parameter")
                parameters.append((parameter, p.skip(.op("=")) ? try p.expression() : nil))
                if !p.skip(.op(",")) { try p.expect(.op(")")); break }
            }
            try p.expectEnd("macro")
            let (nodes, _) = try body(until: ["endmacro"], opened: ("macro", line))
            return [.macro(name: name, parameters: parameters, body: nodes)]
        case "filter":
            let name = try p.name("a filter")
            try ExpressionParser.checkFilter(name, line: line)
            var arguments: [JinjaExpr] = [], keywords: [(String, JinjaExpr)] = []
            if p.skip(.op("(")) { (arguments, keywords) = try p.callArguments() }
            try p.expectEnd("filter")
            let (nodes, _) = try body(until: ["endfilter"], opened: ("filter", line))
            return [.filterBlock(name: name, arguments: arguments, keywords: keywords, body: nodes)]
        case "generation":
            // Hugging Face marks assistant text for training masks; rendering is unchanged.
            try p.expectEnd("generation")
            return try body(until: ["endgeneration"], opened: ("generation", line)).0
        case "break":
            try p.expectEnd("break")
            return [.breakLoop]
        case "continue":
            try p.expectEnd("continue")
            return [.continueLoop]
        case "elif", "else", "endif", "endfor", "endset", "endmacro", "endfilter", "endgeneration":
            throw JinjaError("line \(line): unexpected '\(tag)' outside the block it belongs to")
        default:
            throw JinjaError("line \(line): unknown tag '\(tag)' (supported: if, for, set, macro, filter, generation, raw, break, continue)")
        }
    }
}

/// Parses one tag's expression tokens.
struct ExpressionParser {
    typealias Token = JinjaLexer.Token
    private let tokens: [Token]
    private var i = 0
    private var nesting = 0
    let line: Int

    init(_ tokens: [Token], line: Int) {
        self.tokens = tokens
        self.line = line
    }

    var atEnd: Bool { i >= tokens.count }
    private var current: Token? { i < tokens.count ? tokens[i] : nil }

    mutating func skip(_ token: Token) -> Bool {
        if current == token { i += 1; return true }
        return false
    }

    mutating func expect(_ token: Token) throws {
        guard skip(token) else { throw error("expected \(Self.describe(token))") }
    }

    func expectEnd(_ what: String) throws {
        if let current { throw error("unexpected \(Self.describe(current)) at the end of the \(what) tag") }
    }

    mutating func name(_ what: String) throws -> String {
        guard case .name(let n)? = current else { throw error("expected \(what)") }
        i += 1
        return n
    }

    private func error(_ message: String) -> JinjaError {
        JinjaError("line \(line): \(message)\(current.map { " (found \(Self.describe($0)))" } ?? (atEnd ? " (found the end of the tag)" : ""))")
    }

    static func describe(_ t: Token) -> String {
        switch t {
        case .name(let n): "'\(n)'"
        case .string(let s): s.debugDescription
        case .int(let n): String(n)
        case .double(let d): String(d)
        case .op(let o): "'\(o)'"
        }
    }

    static let filters: Set<String> = [
        "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "indent", "int", "items",
        "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round",
        "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper", "wordcount",
    ]
    static let tests: Set<String> = [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "even", "false", "float", "ge", "gt", "in",
        "integer", "iterable", "le", "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string",
        "true", "undefined", "upper", "!=", ">", ">=", "<", "<=",
    ]

    static func checkFilter(_ name: String, line: Int) throws {
        guard filters.contains(name) else { throw JinjaError("line \(line): no filter named '\(name)'") }
    }

    mutating func tupleOrExpression() throws -> JinjaExpr {
        let first = try expression()
        guard current == .op(",") else { return first }
        var items = [first]
        while skip(.op(",")) {
            if atEnd { break }
            items.append(try expression())
        }
        return .tuple(items)
    }

    mutating func expression() throws -> JinjaExpr {
        nesting += 1
        defer { nesting -= 1 }
        guard nesting < 200 else { throw JinjaError("line \(line): expression nested too deeply") }
        let value = try orExpression()
        if skip(.name("if")) {
            let condition = try orExpression()
            let otherwise = skip(.name("else")) ? try expression() : nil
            return .conditional(value, condition: condition, otherwise: otherwise)
        }
        return value
    }

    mutating func orExpression() throws -> JinjaExpr {
        var left = try andExpression()
        while skip(.name("or")) { left = .binary("or", left, try andExpression()) }
        return left
    }

    private mutating func andExpression() throws -> JinjaExpr {
        var left = try notExpression()
        while skip(.name("and")) { left = .binary("and", left, try notExpression()) }
        return left
    }

    private mutating func notExpression() throws -> JinjaExpr {
        if skip(.name("not")) {
            nesting += 1
            defer { nesting -= 1 }
            guard nesting < 200 else { throw JinjaError("line \(line): expression nested too deeply") }
            return .unary("not", try notExpression())
        }
        return try comparison()
    }

    private mutating func comparison() throws -> JinjaExpr {
        let left = try sum()
        var operations: [(String, JinjaExpr)] = []
        while true {
            if case .op(let o)? = current, ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                i += 1
                operations.append((o, try sum()))
            } else if skip(.name("in")) {
                operations.append(("in", try sum()))
            } else if current == .name("not"), i + 1 < tokens.count, tokens[i + 1] == .name("in") {
                i += 2
                operations.append(("not in", try sum()))
            } else {
                break
            }
        }
        return operations.isEmpty ? left : .compare(left, operations)
    }

    private mutating func sum() throws -> JinjaExpr {
        var left = try concatenation()
        while case .op(let o)? = current, o == "+" || o == "-" {
            i += 1
            left = .binary(o, left, try concatenation())
        }
        return left
    }

    private mutating func concatenation() throws -> JinjaExpr {
        var left = try product()
        while skip(.op("~")) { left = .binary("~", left, try product()) }
        return left
    }

    private mutating func product() throws -> JinjaExpr {
        var left = try power()
        while case .op(let o)? = current, ["*", "/", "//", "%"].contains(o) {
            i += 1
            left = .binary(o, left, try power())
        }
        return left
    }

    private mutating func power() throws -> JinjaExpr {
        var left = try unary(withFilters: true)
        while skip(.op("**")) { left = .binary("**", left, try unary(withFilters: true)) }
        return left
    }

    private mutating func unary(withFilters: Bool) throws -> JinjaExpr {
        var node: JinjaExpr
        if case .op(let o)? = current, o == "-" || o == "+" {
            i += 1
            nesting += 1
            defer { nesting -= 1 }
            guard nesting < 200 else { throw JinjaError("line \(line): expression nested too deeply") }
            node = .unary(o, try unary(withFilters: false))
        } else {
            node = try primary()
        }
        node = try postfix(node)
        if withFilters { node = try filtersAndTests(node) }
        return node
    }

    private mutating func primary() throws -> JinjaExpr {
        guard let token = current else { throw error("expected an expression") }
        i += 1
        switch token {
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .string(var s):
            while case .string(let more)? = current { s += more; i += 1 }
            return .literal(.string(s))
        case .int(let n): return .literal(.int(n))
        case .double(let d): return .literal(.double(d))
        case .op("("):
            if skip(.op(")")) { return .tuple([]) }
            let first = try expression()
            if skip(.op(")")) { return first }
            var items = [first]
            while skip(.op(",")) {
                if current == .op(")") { break }
                items.append(try expression())
            }
            try expect(.op(")"))
            return .tuple(items)
        case .op("["):
            var items: [JinjaExpr] = []
            while !skip(.op("]")) {
                items.append(try expression())
                if !skip(.op(",")) { try expect(.op("]")); break }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !skip(.op("}")) {
                let key = try expression()
                try expect(.op(":"))
                pairs.append((key, try expression()))
                if !skip(.op(",")) { try expect(.op("}")); break }
            }
            return .dict(pairs)
        default:
            i -= 1
            throw error("expected an expression")
        }
    }

    private mutating func postfix(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if skip(.op(".")) {
                if case .int(let n)? = current {
                    i += 1
                    node = .item(node, .literal(.int(n)))
                } else {
                    node = .attribute(node, try name("an attribute name"))
                }
            } else if skip(.op("[")) {
                var parts: [JinjaExpr?] = [nil]
                var isSlice = false
                while current != .op("]") {
                    if skip(.op(":")) {
                        isSlice = true
                        parts.append(nil)
                    } else {
                        guard parts[parts.count - 1] == nil else { throw error("expected ']'") }
                        parts[parts.count - 1] = try expression()
                    }
                }
                try expect(.op("]"))
                if isSlice {
                    guard parts.count <= 3 else { throw error("a slice has at most two ':'") }
                    while parts.count < 3 { parts.append(nil) }
                    node = .slice(node, parts[0], parts[1], parts[2])
                } else {
                    guard let index = parts[0] else { throw error("expected a subscript") }
                    node = .item(node, index)
                }
            } else if skip(.op("(")) {
                let (arguments, keywords) = try callArguments()
                node = .call(node, arguments, keywords)
            } else {
                return node
            }
        }
    }

    private mutating func filtersAndTests(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if skip(.op("|")) {
                let filter = try name("a filter name")
                try Self.checkFilter(filter, line: line)
                var arguments: [JinjaExpr] = [], keywords: [(String, JinjaExpr)] = []
                if skip(.op("(")) { (arguments, keywords) = try callArguments() }
                node = .filter(node, filter, arguments, keywords)
            } else if skip(.name("is")) {
                let negated = skip(.name("not"))
                var test: String
                if case .op(let o)? = current, ["==", "!=", "<", "<=", ">", ">="].contains(o) {
                    i += 1
                    test = o
                } else {
                    test = try name("a test name")
                }
                guard Self.tests.contains(test) else { throw JinjaError("line \(line): no test named '\(test)'") }
                var arguments: [JinjaExpr] = []
                if skip(.op("(")) {
                    arguments = try callArguments().0
                } else if let t = current, Self.startsBareTestArgument(t) {
                    arguments = [try postfix(try primary())]
                }
                node = .test(node, test, arguments, negated: negated)
            } else if skip(.op("(")) {
                let (arguments, keywords) = try callArguments()
                node = .call(node, arguments, keywords)
            } else {
                return node
            }
        }
    }

    private static func startsBareTestArgument(_ t: Token) -> Bool {
        switch t {
        case .string, .int, .double: true
        case .name(let n): !["else", "or", "and", "if", "in", "not", "is"].contains(n)
        case .op(let o): o == "[" || o == "{"
        }
    }

    /// Arguments after an opening parenthesis, through the closing one.
    mutating func callArguments() throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        var arguments: [JinjaExpr] = [], keywords: [(String, JinjaExpr)] = []
        while !skip(.op(")")) {
            if case .name(let n)? = current, i + 1 < tokens.count, tokens[i + 1] == .op("=") {
                i += 2
                keywords.append((n, try expression()))
            } else {
                guard keywords.isEmpty else { throw error("positional argument after a keyword argument") }
                arguments.append(try expression())
            }
            if !skip(.op(",")) { try expect(.op(")")); break }
        }
        return (arguments, keywords)
    }
}
