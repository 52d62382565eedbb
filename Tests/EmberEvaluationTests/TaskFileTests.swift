import EmberEvaluation
import EmberModels
import Foundation
import Testing

/// A temporary folder, removed when the value goes away.
final class Scratch {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "ember-eval-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func write(_ name: String, _ text: String) throws -> String {
        try text.write(toFile: path + "/" + name, atomically: true, encoding: .utf8)
        return path + "/" + name
    }
}

func message(_ body: () throws -> Void) -> String {
    do { try body() } catch { return String(describing: error) }
    return "no error"
}

/// A backend that answers from fixed rules, to test the evaluator without a model.
final class RuleBackend: EvaluationBackend, @unchecked Sendable {
    var failAfter = Int.max
    var calls = 0
    func loglikelihoods(_ questions: [Question]) async throws -> [[ContinuationScore]] {
        try questions.map { q in
            calls += 1
            if calls > failAfter { throw EvaluationError("the server went away") }
            // The longest choice is the most likely.
            return q.continuations.map { ContinuationScore(logprob: Double($0.count) - 10, greedy: false, tokens: 1) }
        }
    }
    func generate(_ asks: [GenerationAsk]) async throws -> [String] { asks.map { "The answer is #### \($0.prompt.count % 3)" } }
    func rollingLoglikelihood(_ text: String) async throws -> (logprob: Double, tokens: Int) { (-Double(text.utf8.count), text.utf8.count) }
    func chunkedLoglikelihood(_ text: String, context: Int) async throws -> (logprob: Double, tokens: Int) { (-Double(text.utf8.count) / 2, text.utf8.count / 2) }
    func chatPrompt(_ text: String) throws -> String { "<user>" + text + "<assistant>" }
    var summary: [String: String] { ["backend": "rules"] }
}

@Suite struct TaskFileTests {
    static let items = """
    {"q": "Pick the longest", "options": ["a", "bbb", "cc"], "gold": 1}
    {"q": "Again", "options": ["dddd", "e", "ff"], "gold": "e"}

    {"q": "Third", "options": ["x", "yy", "zzz"], "gold": 2}
    """

    @Test func yamlAndJSONDescribeTheSameTask() throws {
        let scratch = try Scratch()
        _ = try scratch.write("items.jsonl", Self.items)
        let json = try scratch.write("t.json", #"{"task": "pick", "data": "items.jsonl", "kind": "multiple_choice", "prompt": "Q: {{q}}\nA:", "choices": "{{options}}", "target": "{{gold}}", "until": ["\n\n", "Q:"], "fewshot": 1}"#)
        let yaml = try scratch.write("t.yaml", """
        # the same task
        task: pick
        data: items.jsonl
        kind: multiple_choice
        prompt: |-
          Q: {{q}}
          A:
        choices: "{{options}}"
        target: '{{gold}}'
        until: ["\\n\\n", "Q:"]
        fewshot: 1
        """)
        let a = try EvaluationTask.load(path: json), b = try EvaluationTask.load(path: yaml)
        #expect(a.prompt == b.prompt && a.until == b.until && a.choices == b.choices && a.target == b.target && a.fewshot == b.fewshot)
        #expect(a.prompt == "Q: {{q}}\nA:")
    }

    @Test func multipleChoiceRunsAndWritesSamples() async throws {
        let scratch = try Scratch()
        _ = try scratch.write("items.jsonl", Self.items)
        let path = try scratch.write("t.json", #"{"data": "items.jsonl", "kind": "multiple_choice", "prompt": "Q: {{q}}\nA:", "choices": "{{options}}", "target": "{{gold}}", "fewshot": 1}"#)
        let evaluator = try Evaluator(task: EvaluationTask.load(path: path), backend: RuleBackend())
        let result = await evaluator.run(samples: scratch.path + "/samples.jsonl")
        // Longest wins: item 1 right (bbb), item 2 wrong (dddd over e), item 3 right.
        #expect(result.items == 3 && result.error == nil)
        #expect(abs(result.metrics["acc"]!.value - 2.0 / 3) < 1e-12)
        let lines = try String(contentsOfFile: scratch.path + "/samples.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 3)
        let first = try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as! [String: Any]
        // The few-shot example is the first other item, with its answer.
        #expect((first["prompt"] as! String) == "Q: Pick the longest\nA: bbb\n\nQ: Again\nA:")
    }

    @Test func aStoppedRunKeepsWhatItDid() async throws {
        let scratch = try Scratch()
        _ = try scratch.write("items.jsonl", Self.items)
        let path = try scratch.write("t.json", #"{"data": "items.jsonl", "kind": "multiple_choice", "prompt": "{{q}}", "choices": "{{options}}", "target": "{{gold}}"}"#)
        let backend = RuleBackend()
        backend.failAfter = 2
        let evaluator = try Evaluator(task: EvaluationTask.load(path: path), backend: backend)
        evaluator.questionsPerBatch = 1
        let result = await evaluator.run(samples: scratch.path + "/samples.jsonl")
        #expect(result.items == 2 && result.error?.contains("the server went away") == true)
        #expect(try String(contentsOfFile: scratch.path + "/samples.jsonl", encoding: .utf8).split(separator: "\n").count == 2)
    }

    @Test func generationScoresExactMatch() async throws {
        let scratch = try Scratch()
        _ = try scratch.write("g.jsonl", #"{"question": "ab", "answer": "2"}"# + "\n" + #"{"question": "abc", "answer": "9"}"#)
        let path = try scratch.write("g.json", #"{"data": "g.jsonl", "kind": "generate_until", "prompt": "{{question}}", "target": "{{answer}}", "answer_pattern": "is [#]+ ([0-9]+)"}"#)
        let result = await (try Evaluator(task: EvaluationTask.load(path: path), backend: RuleBackend())).run()
        // "ab" is 2 characters: 2 % 3 = 2, right; "abc": 0, wrong.
        #expect(result.metrics["exact_match"]!.value == 0.5)
    }

    @Test func perplexityIsARatioOfSums() async throws {
        let scratch = try Scratch()
        _ = try scratch.write("p.jsonl", #"{"text": "one two three"}"# + "\n" + #"{"text": "four"}"#)
        let path = try scratch.write("p.json", #"{"data": "p.jsonl", "kind": "perplexity"}"#)
        let result = await (try Evaluator(task: EvaluationTask.load(path: path), backend: RuleBackend())).run()
        // Every byte has log-probability −1: byte perplexity e, bits per byte 1/ln 2; 17 bytes over 4 words.
        #expect(abs(result.metrics["byte_perplexity"]!.value - exp(1)) < 1e-12)
        #expect(abs(result.metrics["bits_per_byte"]!.value - 1 / log(2)) < 1e-12)
        #expect(abs(result.metrics["word_perplexity"]!.value - exp(17.0 / 4)) < 1e-9)
    }

    @Test func badTasksAreRefusedByName() throws {
        let scratch = try Scratch()
        _ = try scratch.write("items.jsonl", Self.items)
        _ = try scratch.write("empty.jsonl", "\n\n")
        _ = try scratch.write("broken.jsonl", "{\"q\": 1}\n{not json\n")
        func load(_ json: String) throws -> Evaluator {
            try Evaluator(task: EvaluationTask.load(path: scratch.write("t.json", json)), backend: RuleBackend())
        }
        let unknown = message { _ = try load(#"{"data": "items.jsonl", "kind": "multiple_choice", "promt": "x", "prompt": "{{q}}", "choices": "{{options}}", "target": "{{gold}}"}"#) }
        #expect(unknown.contains("unknown field 'promt'") && unknown.contains("did you mean 'prompt'"), "\(unknown)")
        let missing = message { _ = try load(#"{"data": "items.jsonl", "kind": "multiple_choice", "prompt": "{{question}}", "choices": "{{options}}", "target": "{{gold}}"}"#) }
        #expect(missing.contains("items.jsonl:1") && missing.contains("names 'question'"), "\(missing)")
        let empty = message { _ = try load(#"{"data": "empty.jsonl", "kind": "perplexity"}"#) }
        #expect(empty.contains("empty.jsonl: the data file holds no items"), "\(empty)")
        let broken = message { _ = try load(#"{"data": "broken.jsonl", "kind": "perplexity", "prompt": "{{q}}"}"#) }
        #expect(broken.contains("broken.jsonl:2: not a JSON object"), "\(broken)")
        let kind = message { _ = try load(#"{"data": "items.jsonl", "kind": "essay", "prompt": "x"}"#) }
        #expect(kind.contains("kind 'essay' is not one of"), "\(kind)")
        let metric = message { _ = try load(#"{"data": "items.jsonl", "kind": "generate_until", "prompt": "x", "target": "y", "metrics": ["acc"]}"#) }
        #expect(metric.contains("metric 'acc' does not apply to generate_until"), "\(metric)")
        let target = message { _ = try load(#"{"data": "items.jsonl", "kind": "multiple_choice", "prompt": "{{q}}", "choices": "{{options}}", "target": "{{q}}"}"#) }
        #expect(target.contains("is neither a choice's index"), "\(target)")
        let yaml = message { _ = try EvaluationTask.load(path: scratch.write("t.yaml", "data: items.jsonl\n  nested: 1\n")) }
        #expect(yaml.contains("t.yaml: line 2"), "\(yaml)")
    }

    /// A server that answers 200 with a body that is not JSON (python3's http.server serving a
    /// folder whose `v1/completions` is a text file; it answers POST with 501, GET with the file).
    @Test func aServerAnsweringGarbageIsNamed() async throws {
        let scratch = try Scratch()
        _ = try scratch.write("items.jsonl", Self.items)
        let path = try scratch.write("t.json", #"{"data": "items.jsonl", "kind": "multiple_choice", "prompt": "{{q}}", "choices": "{{options}}", "target": "{{gold}}"}"#)
        try FileManager.default.createDirectory(atPath: scratch.path + "/site/v1", withIntermediateDirectories: true)
        _ = try scratch.write("site/v1/models", "<html>not an API</html>")
        let port = Int.random(in: 20000..<40000)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", "-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", scratch.path + "/site"]
        server.standardError = FileHandle.nullDevice
        server.standardOutput = FileHandle.nullDevice
        try server.run()
        // SIGKILL: a child started from a thread of the concurrency pool can inherit a mask that
        // blocks SIGTERM, and `terminate()` then left the server running after the tests.
        defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        try await Task.sleep(nanoseconds: 1_000_000_000)
        let named = try await Evaluator(task: EvaluationTask.load(path: path), backend: OpenAIBackend(url: "http://127.0.0.1:\(port)", model: "m", apiKey: nil)).run()
        #expect(named.error?.contains("/completions answered HTTP 501") == true, "\(named.error ?? "")")
        let listed = try await Evaluator(task: EvaluationTask.load(path: path), backend: OpenAIBackend(url: "http://127.0.0.1:\(port)", model: nil, apiKey: nil)).run()
        #expect(listed.error?.contains("/models answered something that is not a JSON object: <html>") == true, "\(listed.error ?? "")")
    }

    @Test func anUnreachableServerIsNamed() async throws {
        let scratch = try Scratch()
        _ = try scratch.write("items.jsonl", Self.items)
        let path = try scratch.write("t.json", #"{"data": "items.jsonl", "kind": "multiple_choice", "prompt": "{{q}}", "choices": "{{options}}", "target": "{{gold}}"}"#)
        // Port 9 (discard) on the loopback: nothing listens there.
        let backend = try OpenAIBackend(url: "http://127.0.0.1:9", model: "m", apiKey: nil)
        let result = await (try Evaluator(task: EvaluationTask.load(path: path), backend: backend)).run()
        #expect(result.items == 0 && result.error?.contains("http://127.0.0.1:9/v1: cannot reach the server") == true, "\(result.error ?? "")")
    }
}
