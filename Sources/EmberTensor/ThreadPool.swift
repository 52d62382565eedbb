import Dispatch
import Foundation
import Synchronization

/// A fixed set of worker threads that run `parallelFor` bodies.
///
/// Kernels call `parallelFor` hundreds of times per generated token, so waking the workers must cost
/// far less than a futex round trip: after a job, workers spin for a short while watching for the
/// next one and only then go to sleep on a semaphore. The calling thread works too, so a pool of
/// `threadCount` threads starts `threadCount - 1` workers.
public final class ThreadPool: @unchecked Sendable {
    public let threadCount: Int

    private let generation = Atomic<Int>(0)
    private let nextIndex = Atomic<Int>(0)
    private let unfinishedWorkers = Atomic<Int>(0)
    private var workers: [Worker] = []
    private nonisolated(unsafe) var job: (Int) -> Void = { _ in }
    private nonisolated(unsafe) var jobCount = 0
    private let lock = NSLock()
    private let stopping = Atomic<Bool>(false)

    private final class Worker: @unchecked Sendable {
        let wake = DispatchSemaphore(value: 0)
        let sleeping = Atomic<Bool>(false)
    }

    /// The shared pool used by kernels unless they are handed another.
    public nonisolated(unsafe) static var shared = ThreadPool(threadCount: ProcessInfo.processInfo.activeProcessorCount)

    /// Replaces the shared pool (the `--threads` option).
    public static func configureShared(threadCount: Int) {
        if shared.threadCount != threadCount {
            shared.shutdown()
            shared = ThreadPool(threadCount: threadCount)
        }
    }

    public init(threadCount: Int) {
        self.threadCount = max(1, threadCount)
        for _ in 1..<self.threadCount {
            let worker = Worker()
            workers.append(worker)
            let thread = Thread { self.run(worker) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Stops the workers once they finish what they are doing; the pool then runs everything on the caller.
    public func shutdown() {
        lock.lock()
        stopping.store(true, ordering: .sequentiallyConsistent)
        generation.add(1, ordering: .sequentiallyConsistent)
        for worker in workers where worker.sleeping.exchange(false, ordering: .acquiringAndReleasing) {
            worker.wake.signal()
        }
        workers = []
        lock.unlock()
    }

    /// Runs `body(i)` for every `i` in `0..<count`, spread over the pool, and returns when all are done.
    /// Calls from inside a body (nested parallelism) run serially.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || workers.isEmpty || !lock.try() {
            for i in 0..<count { body(i) }
            return
        }
        defer { lock.unlock() }
        withoutActuallyEscaping(body) { escaping in
            job = escaping
            jobCount = count
            nextIndex.store(0, ordering: .relaxed)
            unfinishedWorkers.store(workers.count, ordering: .relaxed)
            generation.add(1, ordering: .releasing)
            for worker in workers where worker.sleeping.exchange(false, ordering: .acquiringAndReleasing) {
                worker.wake.signal()
            }
            drain()
            while unfinishedWorkers.load(ordering: .acquiring) > 0 {}
            job = { _ in }
        }
    }

    /// Splits `0..<total` into about `threadCount × 4` contiguous ranges and runs `body` on each.
    public func parallelRanges(_ total: Int, minimumChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        if total <= 0 { return }
        let chunks = max(1, min(threadCount * 4, total / max(1, minimumChunk)))
        let size = (total + chunks - 1) / chunks
        let count = (total + size - 1) / size
        parallelFor(count) { c in body(c * size..<min(total, (c + 1) * size)) }
    }

    private func drain() {
        while true {
            let i = nextIndex.add(1, ordering: .relaxed).oldValue
            if i >= jobCount { return }
            job(i)
        }
    }

    private func run(_ worker: Worker) {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins < 200_000 { continue }
                worker.sleeping.store(true, ordering: .sequentiallyConsistent)
                if generation.load(ordering: .sequentiallyConsistent) != seen {
                    if worker.sleeping.exchange(false, ordering: .acquiringAndReleasing) { break }
                }
                worker.wake.wait()
                spins = 0
            }
            seen = generation.load(ordering: .acquiring)
            if stopping.load(ordering: .sequentiallyConsistent) { return }
            drain()
            unfinishedWorkers.subtract(1, ordering: .releasing)
        }
    }
}
