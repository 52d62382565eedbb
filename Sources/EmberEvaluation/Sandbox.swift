import EmberTensor
import Foundation

/// Runs untrusted programs (a code task's completions with their tests), each in its own process:
///
/// - new mount, network, PID and IPC namespaces (`unshare`; as another user than root, in a new
///   user namespace too): no network but a loopback that is down; every process the program starts
///   dies with it, since the namespace's first process is killed when the run ends;
/// - a scratch directory on a tmpfs of its own (`/tmp` inside, 64 MiB), with `/dev/shm` and
///   `/var/tmp` replaced the same way, all gone when the namespace goes;
/// - as root, the program runs as `nobody`, so it cannot write outside those places; its limits
///   (`prlimit`): address space 1 GiB, CPU time the timeout + 1 s, 64 processes, files of 16 MiB;
/// - a wall-clock timeout, after which the whole namespace is killed.
///
/// Where namespaces are unavailable (`isolated` is false), a program runs with the limits and
/// the timeout only, and only for a user other than root (for root the process limit does not
/// hold, so nothing runs and every program fails with the reason).
public enum Sandbox {
    public static let memoryBytes = 1 << 30, fileBytes = 16 << 20, processes = 64

    /// The interpreter programs run with (Debian's, readable by every user).
    static let python: String = {
        for path in ["/usr/bin/python3", "/usr/local/bin/python3"] where FileManager.default.isExecutableFile(atPath: path) { return path }
        return "python3"
    }()

    /// Whether namespaces work here (checked once).
    public static let isolated: Bool = {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else { return false }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        process.arguments = namespaceArguments + ["true"]
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        process.waitUntilExit()
        return process.terminationStatus == 0
    }()

    static var isRoot: Bool { getuid() == 0 }

    static var namespaceArguments: [String] {
        (isRoot ? [] : ["--map-root-user"]) + ["--mount", "--net", "--ipc", "--pid", "--fork", "--kill-child"]
    }

    /// Runs `program` with Python; passed when it exits 0 within `timeout` seconds.
    public static func run(python program: String, timeout: Double) async -> ProgramOutcome {
        // A thread of its own: the run blocks while it waits, and a busy shared queue must not
        // delay its start or its timeout.
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: runBlocking(program, timeout: timeout)) }.start()
        }
    }

    static func runBlocking(_ program: String, timeout: Double) -> ProgramOutcome {
        guard isolated || !isRoot else {
            return ProgramOutcome(passed: false, summary: "failed: not run (no namespaces here, and as root the limits would not contain it)")
        }
        let limits = ["prlimit", "--as=\(memoryBytes)", "--cpu=\(Int(timeout.rounded(.up)) + 1)", "--nproc=\(processes)", "--fsize=\(fileBytes)", "--core=0"]
        let process = Process()
        var scratch: String?
        if isolated {
            // Inside: private tmpfs mounts, the program written into the scratch directory, then run
            // as nobody (when root) under the limits. The shell stays the namespace's first process
            // (no exec): it dies with `unshare`, and the kernel then kills every process in the
            // namespace (a process that changes its user loses its parent-death signal).
            let user = isRoot ? "setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs " : ""
            let script = """
            mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp && mount -t tmpfs -o size=16m,mode=1777 tmpfs /dev/shm \
            && mount -t tmpfs -o size=1m,mode=1777 tmpfs /var/tmp || exit 97
            mkdir /tmp/work && cat > /tmp/work/program.py && chmod -R a+rwX /tmp/work && cd /tmp/work || exit 97
            \(user)\(limits.joined(separator: " ")) \(python) -I program.py < /dev/null; exit $?
            """
            process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
            process.arguments = namespaceArguments + ["sh", "-c", script]
        } else {
            let directory = NSTemporaryDirectory() + "ember-sandbox-\(UUID().uuidString)"
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            scratch = directory
            try? Data(program.utf8).write(to: URL(fileURLWithPath: directory + "/program.py"))
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = limits + [python, "-I", "program.py"]
            process.currentDirectoryURL = URL(fileURLWithPath: directory)
        }
        defer { if let scratch { try? FileManager.default.removeItem(atPath: scratch) } }
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        let finished = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in finished.signal() }
        do { try process.runWithDefaultSignalMask() } catch { return ProgramOutcome(passed: false, summary: "failed: cannot start (\(error.localizedDescription))") }
        // The output is read as it comes (a full pipe would stall the program), the last 4 KiB kept.
        let tail = OutputTail()
        output.fileHandleForReading.readabilityHandler = { handle in tail.append(handle.availableData) }
        if isolated { input.fileHandleForWriting.write(Data(program.utf8)) }
        try? input.fileHandleForWriting.close()
        let timedOut = finished.wait(timeout: .now() + timeout) == .timedOut
        if timedOut {
            kill(process.processIdentifier, SIGKILL)
            finished.wait()
        }
        output.fileHandleForReading.readabilityHandler = nil
        // What the program wrote just before it ended may not have reached the handler yet:
        // read it without blocking (a process it left behind could hold the pipe open).
        let fd = output.fileHandleForReading.fileDescriptor
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            tail.append(Data(buffer[0..<count]))
        }
        if timedOut { return ProgramOutcome(passed: false, summary: "timed out after \(timeout) s") }
        let status = process.terminationStatus
        if process.terminationReason == .uncaughtSignal { return ProgramOutcome(passed: false, summary: "failed: killed by signal \(status)") }
        if status == 0 { return ProgramOutcome(passed: true, summary: "passed") }
        if status == 97 && isolated { return ProgramOutcome(passed: false, summary: "failed: the sandbox could not be set up") }
        let last = tail.text.split(separator: "\n").last.map(String.init) ?? ""
        return ProgramOutcome(passed: false, summary: "failed: exit \(status)" + (last.isEmpty ? "" : ": \(last.prefix(200))"))
    }
}

/// The last few KiB of a program's output.
final class OutputTail: @unchecked Sendable {
    private var data = Data()
    private let lock = NSLock()

    func append(_ chunk: Data) {
        lock.lock()
        defer { lock.unlock() }
        data.append(chunk)
        if data.count > 8192 { data = data.suffix(4096) }
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}
