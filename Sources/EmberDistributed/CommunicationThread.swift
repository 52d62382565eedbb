import Foundation

/// One thread that runs communication in the order it is given, while the caller goes on
/// computing: how gradient buckets are all-reduced during the backward. Open MPI 4 makes no
/// progress on a non-blocking collective unless some thread is inside MPI, so a thread blocked
/// in the collective itself is what overlaps it with the computation.
public final class CommunicationThread: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [() throws -> Void] = []
    private var running = 0
    private var submitted = 0, completed = 0
    private var failure: Error?
    private var stopping = false

    public init() {
        let thread = Thread { [unowned self] in self.serve() }
        thread.name = "ember-communication"
        thread.start()
    }

    deinit {
        condition.withLock {
            stopping = true
            condition.broadcast()
        }
    }

    /// Queues `work` after everything queued before it; returns its ticket for `wait(for:)`.
    @discardableResult
    public func submit(_ work: @escaping () throws -> Void) -> Int {
        condition.withLock {
            queue.append(work)
            submitted += 1
            condition.broadcast()
            return submitted
        }
    }

    /// Blocks until the work of `ticket` (and everything before it) has run; rethrows the first failure.
    public func wait(for ticket: Int) throws {
        let error: Error? = condition.withLock {
            while completed < ticket && failure == nil { condition.wait() }
            return failure
        }
        if let error { throw error }
    }

    /// Blocks until everything submitted has run; rethrows the first failure.
    public func wait() throws {
        let error: Error? = condition.withLock {
            while !queue.isEmpty || running > 0 { condition.wait() }
            defer { failure = nil }
            return failure
        }
        if let error { throw error }
    }

    private func serve() {
        while true {
            let work: (() throws -> Void)? = condition.withLock {
                while queue.isEmpty && !stopping { condition.wait() }
                if queue.isEmpty { return nil }
                running += 1
                return queue.removeFirst()
            }
            guard let work else { return }
            var error: Error?
            do { try work() } catch let e { error = e }
            condition.withLock {
                running -= 1
                completed += 1
                if failure == nil, let error { failure = error }
                condition.broadcast()
            }
        }
    }
}
