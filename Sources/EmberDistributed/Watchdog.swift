import CMPI
import Foundation

/// Ends the job when an MPI call has waited longer than `limit` seconds: a rank that stalls (stopped
/// by SIGSTOP, stuck in I/O) would otherwise leave every other rank waiting in its next collective
/// forever, since MPI only notices ranks that exit. The message names the call and its sequence
/// number on this rank's communicator.
final class CollectiveWatchdog: @unchecked Sendable {
    static let shared = CollectiveWatchdog()

    /// Seconds a call may take (0: never checked).
    var limit: Double {
        get { lock.withLock { seconds } }
        set { lock.withLock { seconds = newValue } }
    }

    private let lock = NSLock()
    private var seconds = 0.0
    private var inFlight: [Int: (what: String, since: UInt64)] = [:]
    private var nextToken = 0
    private var started = false

    /// Marks a call as under way until `end(token)`.
    func begin(_ what: String) -> Int {
        lock.withLock {
            nextToken += 1
            inFlight[nextToken] = (what, DispatchTime.now().uptimeNanoseconds)
            if !started && seconds > 0 {
                started = true
                let thread = Thread { [unowned self] in self.watch() }
                thread.name = "ember-watchdog"
                thread.start()
            }
            return nextToken
        }
    }

    func end(_ token: Int) { lock.withLock { _ = inFlight.removeValue(forKey: token) } }

    private func watch() {
        while true {
            usleep(250_000)
            let late: String? = lock.withLock {
                guard seconds > 0 else { return nil }
                // Read under the lock: a call that begins later cannot have started after `now`.
                let now = DispatchTime.now().uptimeNanoseconds
                return inFlight.values.first { now > $0.since && Double(now - $0.since) / 1e9 > seconds }.map {
                    "\($0.what) has not finished after \(String(format: "%g", seconds)) s: another rank has stopped or is stuck"
                }
            }
            if let late {
                FileHandle.standardError.write(Data("Error: \(late); ending the job\n".utf8))
                MPI_Abort(ember_mpi_comm_world(), 1)
                exit(1)
            }
        }
    }
}
