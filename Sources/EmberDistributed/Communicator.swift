import Foundation

/// How a reduction combines the ranks' values.
public enum ReduceOperation: Sendable { case sum, max, min }

/// The element types collectives move.
public protocol CommunicationScalar: Numeric, Comparable, Sendable {
    static var kind: ScalarKind { get }
}

public enum ScalarKind: Sendable {
    case float, double, int64
    var bytes: Int { self == .float ? 4 : 8 }
}

extension Float: CommunicationScalar { public static var kind: ScalarKind { .float } }
extension Double: CommunicationScalar { public static var kind: ScalarKind { .double } }
extension Int64: CommunicationScalar { public static var kind: ScalarKind { .int64 } }

public struct CommunicationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What one rank's calls moved, counted in bytes of the buffers the calls name (the per-rank
/// wire volume of each algorithm follows from these: an all-reduce of n bytes sends 2(N−1)/N·n
/// in a ring, a reduce-scatter or all-gather of n bytes in all (N−1)/N·n).
public struct Traffic: Sendable, Equatable {
    /// Bytes of the buffers all-reduced.
    public var allReduce = 0
    /// Bytes of the whole (unscattered) input of each reduce-scatter.
    public var reduceScatter = 0
    /// Bytes of the whole (gathered) output of each all-gather.
    public var allGather = 0
    public var broadcast = 0
    public var sent = 0
    public var received = 0
    /// Collectives and point-to-point calls made, in order: their sequence number.
    public var calls = 0

    public init() {}

    /// The bytes this rank puts on the wire for the collectives above with `size` ranks (ring
    /// algorithms) plus what it sent point to point.
    public func wireBytes(size n: Int) -> Double {
        guard n > 1 else { return Double(sent) }
        let f = Double(n - 1) / Double(n)
        return 2 * f * Double(allReduce) + f * Double(reduceScatter + allGather) + Double(broadcast) * f + Double(sent)
    }
}

/// A group of ranks and the collectives among them: Open MPI across processes (`MPICommunicator`)
/// or a single process (`LocalCommunicator`), so that every parallel code path also runs alone.
/// Collectives must be called in the same order on every rank of the group.
public protocol Communicator: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    /// The ranks with the same `color` form a new group, ordered by `key` (then by rank here).
    func split(color: Int, key: Int) throws -> any Communicator

    /// Combines `count` values of every rank in place; every rank gets the same result.
    func allReduce<T: CommunicationScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, _ operation: ReduceOperation) throws
    /// Sums `input` (the sum of `counts` values) over the ranks and leaves rank r's part, the
    /// `counts[r]` values after the first r parts, in `output`.
    func reduceScatter(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws
    /// Concatenates every rank's `counts[rank]` values of `input` into `output`, in rank order;
    /// `input` may be this rank's own place in `output`.
    func allGather(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws
    /// Copies `bytes` from `root` into every rank's buffer.
    func broadcast(_ buffer: UnsafeMutableRawPointer, bytes: Int, root: Int) throws
    func send(_ buffer: UnsafePointer<Float>, count: Int, to destination: Int, tag: Int) throws
    func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from source: Int, tag: Int) throws
    func barrier() throws
    /// Ends every process of the job with `code` (a failing rank calls it so that none waits forever).
    func abort(code: Int32) -> Never

    /// What this rank's calls have moved so far.
    var traffic: Traffic { get }
}

extension Communicator {
    /// The sum over the ranks of one value.
    public func sum<T: CommunicationScalar>(_ value: T) throws -> T {
        var v = value
        try allReduce(&v, count: 1, .sum)
        return v
    }

    /// Runs `attempt` on this rank and tells every rank whether any rank's attempt failed, so that
    /// none goes on (or waits) without the others: this rank's own error is rethrown, and a rank
    /// whose attempt succeeded throws when another's failed.
    public func everyRankSucceeds(_ what: String, _ attempt: () throws -> Void) throws {
        var failure: Error?
        do { try attempt() } catch { failure = error }
        let failed = size > 1 ? try sum(failure == nil ? 0 : 1 as Int64) : 0
        if let failure { throw failure }
        if failed > 0 { throw CommunicationError("\(what) failed on another rank") }
    }

    /// Checks that `counts` has one entry per rank, none negative.
    func check(_ counts: [Int], _ operation: String) throws {
        guard counts.count == size, counts.allSatisfy({ $0 >= 0 }) else {
            throw CommunicationError("\(operation): \(counts.count) counts for \(size) ranks")
        }
    }
}

/// Splits `count` elements into `parts` contiguous shards whose sizes differ by at most one (the
/// first `count % parts` get one more): how uneven sizes are partitioned.
public func shardCounts(_ count: Int, parts: Int) -> [Int] {
    (0..<parts).map { count / parts + ($0 < count % parts ? 1 : 0) }
}

/// A group of one: every collective leaves the data as it is (a reduce-scatter or all-gather
/// copies it), sends to itself are kept until received. Counts traffic like any communicator.
public final class LocalCommunicator: Communicator, @unchecked Sendable {
    public var rank: Int { 0 }
    public var size: Int { 1 }
    private let lock = NSLock()
    private var mailbox: [Int: [[Float]]] = [:]
    private var counted = Traffic()

    public init() {}

    public var traffic: Traffic { lock.withLock { counted } }

    private func count(_ update: (inout Traffic) -> Void) {
        lock.withLock {
            update(&counted)
            counted.calls += 1
        }
    }

    public func split(color: Int, key: Int) throws -> any Communicator { LocalCommunicator() }

    public func allReduce<T: CommunicationScalar>(_ buffer: UnsafeMutablePointer<T>, count n: Int, _ operation: ReduceOperation) throws {
        count { $0.allReduce += n * T.kind.bytes }
    }

    public func reduceScatter(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        try check(counts, "reduce-scatter")
        if output != UnsafeMutablePointer(mutating: input) { output.update(from: input, count: counts[0]) }
        count { $0.reduceScatter += counts.reduce(0, +) * 4 }
    }

    public func allGather(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        try check(counts, "all-gather")
        if output != UnsafeMutablePointer(mutating: input) { output.update(from: input, count: counts[0]) }
        count { $0.allGather += counts.reduce(0, +) * 4 }
    }

    public func broadcast(_ buffer: UnsafeMutableRawPointer, bytes: Int, root: Int) throws {
        guard root == 0 else { throw CommunicationError("broadcast from rank \(root) in a group of 1") }
        count { $0.broadcast += bytes }
    }

    public func send(_ buffer: UnsafePointer<Float>, count n: Int, to destination: Int, tag: Int) throws {
        guard destination == 0 else { throw CommunicationError("send to rank \(destination) in a group of 1") }
        lock.withLock { mailbox[tag, default: []].append(Array(UnsafeBufferPointer(start: buffer, count: n))) }
        count { $0.sent += n * 4 }
    }

    public func receive(_ buffer: UnsafeMutablePointer<Float>, count n: Int, from source: Int, tag: Int) throws {
        guard source == 0 else { throw CommunicationError("receive from rank \(source) in a group of 1") }
        let message: [Float]? = lock.withLock {
            guard var queue = mailbox[tag], !queue.isEmpty else { return nil }
            let first = queue.removeFirst()
            mailbox[tag] = queue
            return first
        }
        guard let message else { throw CommunicationError("receive with tag \(tag): nothing was sent (a group of 1 would wait forever)") }
        guard message.count == n else { throw CommunicationError("receive with tag \(tag): \(message.count) values sent, \(n) expected") }
        message.withUnsafeBufferPointer { buffer.update(from: $0.baseAddress!, count: n) }
        count { $0.received += n * 4 }
    }

    public func barrier() throws { count { _ in } }

    public func abort(code: Int32) -> Never { exit(code) }
}
