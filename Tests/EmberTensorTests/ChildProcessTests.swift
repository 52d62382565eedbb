import EmberTensor
import Foundation
import Testing

/// A child started from a thread of the concurrency pool (which blocks most signals) blocks none.
@Suite struct ChildProcessTests {
    /// SIGUSR1, which nothing in this process handles or ignores, ends a child that does not block it.
    @Test func childrenStartWithNoSignalBlocked() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sleep")
        process.arguments = ["1000"]  // longer than any wait below: only a signal ends it
        try process.runWithDefaultSignalMask()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() } }
        try await Task.sleep(nanoseconds: 200_000_000)  // until sleep has started
        kill(process.processIdentifier, SIGUSR1)
        let deadline = Date().addingTimeInterval(60)  // a loaded machine can be slow to deliver and reap
        while process.isRunning && Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        #expect(!process.isRunning, "the child did not end on SIGUSR1 within 60 s: it blocks the signal")
        if !process.isRunning {
            print("child ended by \(process.terminationReason == .uncaughtSignal ? "signal" : "exit") \(process.terminationStatus)")
            #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGUSR1)
        }
    }
}
