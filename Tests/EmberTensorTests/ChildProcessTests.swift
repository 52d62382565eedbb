import EmberTensor
import Foundation
import Testing

/// A child started from a thread of the concurrency pool (which blocks most signals) blocks none.
@Suite struct ChildProcessTests {
    /// The child's blocked-signal mask, from /proc/PID/status.
    static func blocked(_ process: Process) throws -> UInt64 {
        let status = try String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)
        let line = status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }!
        return UInt64(line.dropFirst("SigBlk:".count).trimmingCharacters(in: .whitespaces), radix: 16)!
    }

    @Test func childrenStartWithNoSignalBlocked() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sleep")
        process.arguments = ["30"]
        try process.runWithDefaultSignalMask()
        defer { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        try await Task.sleep(nanoseconds: 200_000_000)  // until sleep has started
        let mask = try Self.blocked(process)
        print("blocked signals of a child started from the concurrency pool: \(String(mask, radix: 16))")
        #expect(mask == 0)
        process.terminate()  // SIGTERM reaches it
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGTERM)
    }
}
