import EmberDistributed
import Foundation
import Testing

/// Runs a command, returning its exit status and its standard output and error together.
func run(_ arguments: [String], environment extra: [String: String] = [:]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

enum MPI {
    static let mpirun: String? = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) }
    /// The build folder of this test binary, where the package's executables are too.
    static let products = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "")
        .deletingLastPathComponent().path
    /// Open MPI refuses root without these; two ranks on two cores must not be pinned.
    static let environment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"]

    /// `mpirun -np ranks` of a command, under a time limit so that a failing rank cannot hang the suite.
    static func launch(_ ranks: Int, _ command: [String], seconds: Int = 120) throws -> (status: Int32, output: String) {
        try run(["timeout", "-k", "5", String(seconds), mpirun!, "--bind-to", "none", "-np", String(ranks)] + command, environment: environment)
    }
}

@Suite struct CommunicatorTests {
    @Test func singleProcessKnownAnswers() throws {
        let (failures, checked) = try CollectiveCheck.run(LocalCommunicator())
        print("single-process communicator: \(checked.count - failures.count)/\(checked.count) checks passed")
        #expect(failures.isEmpty, "\(failures)")
    }

    @Test(.enabled(if: MPI.mpirun != nil, "Open MPI's mpirun is not installed (scripts/setup.sh installs openmpi-bin)"), arguments: [2, 3])
    func openMPIKnownAnswers(ranks: Int) throws {
        let check = MPI.products + "/ember-mpi-check"
        try #require(FileManager.default.isExecutableFile(atPath: check), "\(check) is not built")
        let (status, output) = try MPI.launch(ranks, [check])
        let passed = output.split(separator: "\n").filter { $0.contains("(Open MPI)") && $0.hasSuffix("checks passed") }
        print("mpirun -np \(ranks) ember-mpi-check: exit \(status)\n" + passed.joined(separator: "\n"))
        #expect(status == 0, "\(output)")
        #expect(passed.count == ranks, "\(output)")
    }

    /// Ranks that call collectives of different sizes are stopped by the order check, on every rank, naming the call.
    @Test(.enabled(if: MPI.mpirun != nil, "Open MPI's mpirun is not installed (scripts/setup.sh installs openmpi-bin)"))
    func orderCheckCatchesMismatchedCollectives() throws {
        let (status, output) = try MPI.launch(2, [MPI.products + "/ember-mpi-check", "--order-mismatch"])
        let caught = output.split(separator: "\n").filter { $0.contains("caught: collective order check") }
        print(caught.joined(separator: "\n"))
        #expect(status == 0, "\(output)")
        #expect(caught.count == 2, "\(output)")
    }

    @Test func shardsDifferByAtMostOne() {
        #expect(shardCounts(10, parts: 3) == [4, 3, 3])
        #expect(shardCounts(2, parts: 3) == [1, 1, 0])
        #expect(shardCounts(9, parts: 3) == [3, 3, 3])
        for (count, parts) in [(1001, 2), (7, 4), (0, 2)] { #expect(shardCounts(count, parts: parts).reduce(0, +) == count) }
    }

    @Test func communicationThreadRunsInOrderAndReportsFailures() throws {
        let thread = CommunicationThread()
        let order = NSLock()
        var seen: [Int] = []
        for i in 0..<50 { thread.submit { usleep(100); order.withLock { seen.append(i) } } }
        try thread.wait()
        #expect(seen == Array(0..<50))
        thread.submit { throw CommunicationError("bucket 3 failed") }
        thread.submit { order.withLock { seen.append(50) } }
        #expect(throws: CommunicationError.self) { try thread.wait() }
        #expect(seen.last == 50)
        try thread.wait()  // the failure is reported once
    }
}
