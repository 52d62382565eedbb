import Foundation

/// What went wrong reading a task, its data or a backend's answers: one line naming the cause.
public struct EvaluationError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A task: a small declarative file (JSON, or the YAML subset `YAMLSubset` reads) over a JSONL data
/// file, in lm-evaluation-harness's terms. Every field but `data`, `kind` and `prompt` has a default.
///
///     {"task": "logiqa", "data": "logiqa.jsonl", "kind": "multiple_choice",
///      "prompt": "Passage: {{context}}\nQuestion: {{question}}\nAnswer:",
///      "choices": "{{choices}}", "target": "{{answer}}", "metrics": ["acc", "acc_norm"]}
///
/// - `kind`: `multiple_choice` (the log-likelihood of each choice after the prompt),
///   `generate_until` (generation until a stop string, scored by exact match), `code` (generation
///   run against the item's tests in a sandbox, scored by pass@k) or `perplexity` (the text of
///   each item scored whole).
/// - `prompt`, `choices` and `target` are templates: `{{field}}` is the item's field (a string or a
///   number; `choices` may name a list field). A multiple-choice target is the index of the right
///   choice or its text.
public struct EvaluationTask: Sendable {
    public enum Kind: String, Sendable, CaseIterable { case multipleChoice = "multiple_choice", generateUntil = "generate_until", code, perplexity }

    public var name: String
    /// The JSONL data file (relative paths are relative to the task file).
    public var data: String
    public var kind: Kind
    public var prompt: String
    /// A template naming a list field (`{{choices}}`), or a list of templates.
    public var choices: ChoiceSource?
    public var target: String?
    /// The answer a few-shot example shows (default: `target`; a worked solution for chain of thought).
    public var fewshotTarget: String?
    /// Put between the prompt and a choice or target (the harness's `target_delimiter`).
    public var targetDelimiter = " "
    /// Between few-shot examples and before the question (the harness's `fewshot_delimiter`).
    public var fewshotDelimiter = "\n\n"
    /// Text put before everything (the harness's `description`).
    public var description = ""
    public var metrics: [String]
    public var fewshot = 0
    /// The examples' JSONL file (default: the data file, the item itself left out).
    public var fewshotData: String?
    /// `first` (the first n, in order: the harness's `first_n` sampler) or `random` (drawn with `seed`).
    public var fewshotSampler = "first"
    public var seed: UInt64 = 1234
    public var chatTemplate = false
    /// Items evaluated (the first `limit`; nil: all).
    public var limit: Int?
    // Generation.
    public var until: [String] = ["\n\n"]
    public var maxTokens = 256
    public var temperature: Float = 0
    /// Samples per item (pass@k needs n ≥ k).
    public var samples = 1
    /// pass@k values reported.
    public var k: [Int] = [1]
    // Exact match.
    /// A regular expression whose first group (or whole match) is the answer taken from the output.
    public var answerPattern: String?
    /// Which match of `answerPattern` counts: `first` or `last`.
    public var answerMatch = "first"
    public var ignoreCase = false
    public var ignorePunctuation = false
    /// Regular expressions removed from both the answer and the target before comparing.
    public var ignoreRegexes: [String] = []
    // Code.
    /// The item's field holding the test program (run after the prompt and completion).
    public var tests: String?
    /// The item's field naming the function the tests call (appended as `check(NAME)`), if any.
    public var entryPoint: String?
    /// Seconds each program may run.
    public var timeout: Double = 10
    // Perplexity.
    /// Score as `ember perplexity --context N` and llama-perplexity do (chunks of N tokens, the
    /// second half of each scored) instead of the harness's rolling windows: token perplexity only.
    public var chunkContext: Int?

    public enum ChoiceSource: Sendable, Equatable {
        case field(String)
        case list([String])
    }

    /// The directory of the task file (for relative data paths).
    public var directory = "."

    static let fields: [String] = [
        "task", "data", "kind", "prompt", "choices", "target", "fewshot_target", "target_delimiter", "fewshot_delimiter", "description", "metrics", "fewshot",
        "fewshot_data", "fewshot_sampler", "seed", "chat_template", "limit", "until", "max_tokens", "temperature", "samples", "k",
        "answer_pattern", "answer_match", "ignore_case", "ignore_punctuation", "ignore_regexes", "tests", "entry_point", "timeout",
        "chunk_context",
    ]

    public static func defaultMetrics(_ kind: Kind) -> [String] {
        switch kind {
        case .multipleChoice: ["acc", "acc_norm"]
        case .generateUntil: ["exact_match"]
        case .code: ["pass@k"]
        case .perplexity: ["word_perplexity", "byte_perplexity", "bits_per_byte"]
        }
    }

    static let knownMetrics: [Kind: Set<String>] = [
        .multipleChoice: ["acc", "acc_norm"], .generateUntil: ["exact_match"], .code: ["pass@k"],
        .perplexity: ["perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"],
    ]

    /// Reads a task file: `.json`, or `.yaml` / `.yml`.
    public static func load(path: String) throws -> EvaluationTask {
        guard let data = FileManager.default.contents(atPath: path) else { throw EvaluationError("\(path): cannot read the task file") }
        let object: Any
        if path.hasSuffix(".yaml") || path.hasSuffix(".yml") {
            guard let text = String(data: data, encoding: .utf8) else { throw EvaluationError("\(path): not UTF-8") }
            do { object = try YAMLSubset.parse(text) } catch let error as EvaluationError { throw EvaluationError("\(path): \(error.message)") }
        } else {
            do { object = try JSONSerialization.jsonObject(with: data) } catch {
                throw EvaluationError("\(path): not valid JSON (\(error.localizedDescription))")
            }
        }
        guard let dictionary = object as? [String: Any] else { throw EvaluationError("\(path): a task is an object of fields") }
        var task = try EvaluationTask(dictionary, source: path)
        task.directory = (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent
        if task.name.isEmpty { task.name = ((path as NSString).lastPathComponent as NSString).deletingPathExtension }
        return task
    }

    /// A task from its fields; `source` names it in errors.
    public init(_ d: [String: Any], source: String) throws {
        for key in d.keys.sorted() where !Self.fields.contains(key) {
            let near = Self.fields.min { editDistance($0, key) < editDistance($1, key) }!
            throw EvaluationError("\(source): unknown field '\(key)'" + (editDistance(near, key) <= 3 ? " (did you mean '\(near)'?)" : ""))
        }
        func string(_ key: String) throws -> String? {
            guard let value = d[key] else { return nil }
            guard let s = value as? String else { throw EvaluationError("\(source): '\(key)' must be a string") }
            return s
        }
        func number(_ key: String) throws -> Double? {
            guard let value = d[key] else { return nil }
            if let n = value as? NSNumber { return n.doubleValue }
            if let s = value as? String, let n = Double(s) { return n }
            throw EvaluationError("\(source): '\(key)' must be a number")
        }
        func integer(_ key: String, minimum: Int) throws -> Int? {
            guard let n = try number(key) else { return nil }
            guard n == n.rounded(), n >= Double(minimum), n < 1e9 else { throw EvaluationError("\(source): '\(key)' must be a whole number ≥ \(minimum)") }
            return Int(n)
        }
        func bool(_ key: String) throws -> Bool? {
            guard let value = d[key] else { return nil }
            if let b = value as? Bool { return b }
            if let s = value as? String, ["true", "false"].contains(s) { return s == "true" }
            throw EvaluationError("\(source): '\(key)' must be true or false")
        }
        func strings(_ key: String) throws -> [String]? {
            guard let value = d[key] else { return nil }
            if let s = value as? String { return [s] }
            guard let list = value as? [Any], let strings = list as? [String] else { throw EvaluationError("\(source): '\(key)' must be a list of strings") }
            return strings
        }
        guard let data = try string("data") else { throw EvaluationError("\(source): 'data' (the JSONL file of items) is missing") }
        guard let kindName = try string("kind") else {
            throw EvaluationError("\(source): 'kind' is missing (\(Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard let kind = Kind(rawValue: kindName) else {
            throw EvaluationError("\(source): kind '\(kindName)' is not one of \(Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.data = data
        self.kind = kind
        name = try string("task") ?? ""
        prompt = try string("prompt") ?? (kind == .perplexity ? "{{text}}" : "")
        guard !prompt.isEmpty else { throw EvaluationError("\(source): 'prompt' (the template of the question) is missing") }
        if let value = d["choices"] {
            if let s = value as? String {
                let trimmed = s.trimmingCharacters(in: .whitespaces)
                guard trimmed.hasPrefix("{{"), trimmed.hasSuffix("}}") else {
                    throw EvaluationError("\(source): 'choices' is a list of templates or '{{field}}' naming a list field")
                }
                choices = .field(String(trimmed.dropFirst(2).dropLast(2)).trimmingCharacters(in: .whitespaces))
            } else if let list = value as? [String] {
                choices = .list(list)
            } else {
                throw EvaluationError("\(source): 'choices' is a list of templates or '{{field}}' naming a list field")
            }
        }
        target = try string("target") ?? (try number("target")).map { String(Int($0)) }
        fewshotTarget = try string("fewshot_target")
        targetDelimiter = try string("target_delimiter") ?? targetDelimiter
        fewshotDelimiter = try string("fewshot_delimiter") ?? fewshotDelimiter
        description = try string("description") ?? ""
        metrics = try strings("metrics") ?? Self.defaultMetrics(kind)
        for metric in metrics where !(Self.knownMetrics[kind]!.contains(metric)) {
            throw EvaluationError("\(source): metric '\(metric)' does not apply to \(kind.rawValue) (\(Self.knownMetrics[kind]!.sorted().joined(separator: ", ")) do)")
        }
        fewshot = try integer("fewshot", minimum: 0) ?? 0
        fewshotData = try string("fewshot_data")
        fewshotSampler = try string("fewshot_sampler") ?? "first"
        guard ["first", "random"].contains(fewshotSampler) else { throw EvaluationError("\(source): fewshot_sampler is first or random") }
        seed = UInt64(try integer("seed", minimum: 0) ?? 1234)
        chatTemplate = try bool("chat_template") ?? false
        limit = try integer("limit", minimum: 1)
        until = try strings("until") ?? until
        maxTokens = try integer("max_tokens", minimum: 1) ?? maxTokens
        temperature = Float(try number("temperature") ?? 0)
        guard temperature >= 0 else { throw EvaluationError("\(source): temperature must be ≥ 0") }
        samples = try integer("samples", minimum: 1) ?? 1
        if let value = d["k"] {
            if let n = value as? Int { k = [n] } else if let list = value as? [Int] { k = list } else {
                throw EvaluationError("\(source): 'k' is a number or a list of numbers")
            }
        }
        for k in self.k where k < 1 || k > samples { throw EvaluationError("\(source): pass@\(k) needs 1 ≤ k ≤ samples (\(samples))") }
        answerPattern = try string("answer_pattern")
        answerMatch = try string("answer_match") ?? "first"
        guard ["first", "last"].contains(answerMatch) else { throw EvaluationError("\(source): answer_match is first or last") }
        ignoreCase = try bool("ignore_case") ?? false
        ignorePunctuation = try bool("ignore_punctuation") ?? false
        ignoreRegexes = try strings("ignore_regexes") ?? []
        for pattern in ignoreRegexes + [answerPattern].compactMap({ $0 }) where (try? NSRegularExpression(pattern: pattern)) == nil {
            throw EvaluationError("\(source): '\(pattern)' is not a valid regular expression")
        }
        tests = try string("tests")
        entryPoint = try string("entry_point")
        timeout = try number("timeout") ?? timeout
        chunkContext = try integer("chunk_context", minimum: 4)
        if chunkContext != nil {
            guard kind == .perplexity else { throw EvaluationError("\(source): chunk_context applies to perplexity tasks") }
            if d["metrics"] == nil { metrics = ["perplexity"] }
            guard metrics == ["perplexity"] else { throw EvaluationError("\(source): with chunk_context only the token perplexity is scored (metrics: [perplexity])") }
        }
        switch kind {
        case .multipleChoice:
            guard choices != nil else { throw EvaluationError("\(source): a multiple_choice task needs 'choices'") }
            guard target != nil else { throw EvaluationError("\(source): a multiple_choice task needs 'target'") }
        case .generateUntil:
            guard target != nil else { throw EvaluationError("\(source): a generate_until task needs 'target'") }
        case .code:
            guard tests != nil else { throw EvaluationError("\(source): a code task needs 'tests' (the field holding each item's test program)") }
        case .perplexity:
            break
        }
    }

    public var dataPath: String { resolve(data) }
    public var fewshotPath: String? { fewshotData.map(resolve) }
    func resolve(_ path: String) -> String { path.hasPrefix("/") ? path : directory + "/" + path }
}

/// Levenshtein distance, for "did you mean" in errors.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var previous = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...max(b.count, 1) where !b.isEmpty {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return a.isEmpty ? b.count : previous[b.count]
}

/// One item of a task's data: its fields and its line in the file.
public struct Document: @unchecked Sendable {
    public let fields: [String: Any]
    public let line: Int

    /// Reads a JSONL file: one object per non-empty line. An empty file or a malformed line is an
    /// error naming the file and line.
    public static func load(path: String) throws -> [Document] {
        guard let data = FileManager.default.contents(atPath: path) else { throw EvaluationError("\(path): cannot read the data file") }
        var documents: [Document] = []
        for (i, line) in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            guard !line.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) else { continue }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)), let fields = object as? [String: Any] else {
                throw EvaluationError("\(path):\(i + 1): not a JSON object")
            }
            documents.append(Document(fields: fields, line: i + 1))
        }
        guard !documents.isEmpty else { throw EvaluationError("\(path): the data file holds no items") }
        return documents
    }
}

/// `{{field}}` templates, the subset of the harness's Jinja that data templates use: each
/// `{{ name }}` is replaced by the item's field (a string, or a number written as JSON writes it).
public struct Template: Sendable {
    public let text: String
    public let name: String

    public init(_ text: String, name: String) {
        self.text = text
        self.name = name
    }

    public func render(_ document: Document, source: String) throws -> String {
        var output = ""
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            output += rest[..<open.lowerBound]
            guard let close = rest[open.upperBound...].range(of: "}}") else {
                throw EvaluationError("\(source): the \(name) template has '{{' without '}}'")
            }
            let field = rest[open.upperBound..<close.lowerBound].trimmingCharacters(in: .whitespaces)
            output += try Self.value(of: field, in: document, template: name, source: source)
            rest = rest[close.upperBound...]
        }
        return output + rest
    }

    static func value(of field: String, in document: Document, template: String, source: String) throws -> String {
        guard let value = document.fields[field] else {
            throw EvaluationError("\(source):\(document.line): the \(template) template names '\(field)', which the item lacks (it has \(document.fields.keys.sorted().joined(separator: ", ")))")
        }
        switch value {
        case let s as String: return s
        case let n as NSNumber: return n.stringValue
        default: throw EvaluationError("\(source):\(document.line): field '\(field)' of the \(template) template is not a string or a number")
        }
    }
}
