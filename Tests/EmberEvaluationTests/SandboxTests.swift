import EmberEvaluation
import Foundation
import Testing

/// Hostile programs in the code sandbox: each is stopped and scored failed, and nothing is left
/// behind. Run one after another (`.serialized`): they measure the machine around them.
@Suite(.serialized) struct SandboxTests {
    func processCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.filter { Int($0) != nil }.count ?? 0
    }

    @Test func aPassingProgramPasses() async {
        let outcome = await Sandbox.run(python: "def f(x):\n    return x + 1\nassert f(1) == 2\n", timeout: 10)
        #expect(outcome.passed, "\(outcome.summary)")
        let failing = await Sandbox.run(python: "assert 1 == 2, 'wrong'\n", timeout: 10)
        #expect(!failing.passed && failing.summary.contains("AssertionError"), "\(failing.summary)")
        print("sandbox: namespaces \(Sandbox.isolated ? "on" : "unavailable here: limits and timeout only")")
    }

    @Test func anEndlessLoopIsStopped() async {
        let start = Date()
        let outcome = await Sandbox.run(python: "while True:\n    pass\n", timeout: 2)
        #expect(!outcome.passed && Date().timeIntervalSince(start) < 6, "\(outcome.summary)")
    }

    @Test func aForkBombIsContained() async throws {
        let before = processCount()
        let outcome = await Sandbox.run(python: "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", timeout: 3)
        #expect(!outcome.passed, "\(outcome.summary)")
        try await Task.sleep(nanoseconds: 500_000_000)
        let after = processCount()
        #expect(after <= before + 5, "processes before \(before), after \(after)")
        print("fork bomb: \(outcome.summary); processes \(before) before, \(after) after")
    }

    @Test func aHugeAllocationFails() async {
        let outcome = await Sandbox.run(python: "x = bytearray(50 * 1024 ** 3)\n", timeout: 10)
        #expect(!outcome.passed && outcome.summary.contains("MemoryError"), "\(outcome.summary)")
    }

    @Test func writesOutsideTheScratchDirectoryDoNotLand() async throws {
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

    @Test func fillingTheDiskStops() async {
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
}
