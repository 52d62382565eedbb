import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension Process {
    /// `run()` with no signal blocked in the child. A child inherits the blocked-signal mask of the
    /// thread that starts it, and the threads of the concurrency pool and of Dispatch block most
    /// signals: a program started from one would ignore SIGTERM and SIGALRM (a reward program's own
    /// `timeout`, a test's `terminate()`) for its whole life.
    public func runWithDefaultSignalMask() throws {
        var empty = sigset_t(), saved = sigset_t()
        sigemptyset(&empty)
        pthread_sigmask(SIG_SETMASK, &empty, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        try run()
    }
}
