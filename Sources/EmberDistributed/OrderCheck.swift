import Foundation

/// A communicator that checks, before every collective, that every rank of the group is making
/// the same call: the ranks compare a fingerprint of the operation and its sizes (one small
/// all-reduce), and a rank whose call differs from another's throws an error naming its call and
/// sequence number instead of hanging in mismatched collectives or exchanging garbage. The check
/// DeepSpeed's ZeRO-3 makes on the order in which modules fetch their parameters; here it covers
/// every collective of training (`ember pretrain --check-collective-order`), at the cost of one
/// latency-bound all-reduce per call. Point-to-point calls are not checked.
public final class OrderCheckedCommunicator: Communicator, @unchecked Sendable {
    public let inner: any Communicator
    private let lock = NSLock()
    private var sequence = 0

    public init(_ inner: any Communicator) { self.inner = inner }

    public var rank: Int { inner.rank }
    public var size: Int { inner.size }
    public var traffic: Traffic { inner.traffic }

    /// Throws unless every rank's next collective is `call`.
    private func check(_ call: String) throws {
        guard size > 1 else { return }
        let n = lock.withLock {
            sequence += 1
            return sequence
        }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a: the same on every machine, unlike String's hash
        for byte in call.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let fingerprint = Int64(bitPattern: hash >> 1)
        var both = [fingerprint, -fingerprint]
        try inner.allReduce(&both, count: 2, .max)
        guard both[0] == fingerprint && -both[1] == fingerprint else {
            throw CommunicationError("collective order check: rank \(rank) of \(size) makes \(call) as its collective \(n), and another rank makes a different one there; the ranks' collectives are out of order")
        }
    }

    public func split(color: Int, key: Int) throws -> any Communicator { OrderCheckedCommunicator(try inner.split(color: color, key: key)) }

    public func allReduce<T: CommunicationScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, _ operation: ReduceOperation) throws {
        try check("all-reduce \(operation) of \(count) \(T.kind)")
        try inner.allReduce(buffer, count: count, operation)
    }

    public func reduceScatter(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        try check("reduce-scatter of \(counts)")
        try inner.reduceScatter(input, into: output, counts: counts)
    }

    public func allGather(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        try check("all-gather of \(counts)")
        try inner.allGather(input, into: output, counts: counts)
    }

    public func broadcast(_ buffer: UnsafeMutableRawPointer, bytes: Int, root: Int) throws {
        try check("broadcast of \(bytes) bytes from rank \(root)")
        try inner.broadcast(buffer, bytes: bytes, root: root)
    }

    public func send(_ buffer: UnsafePointer<Float>, count: Int, to destination: Int, tag: Int) throws {
        try inner.send(buffer, count: count, to: destination, tag: tag)
    }

    public func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from source: Int, tag: Int) throws {
        try inner.receive(buffer, count: count, from: source, tag: tag)
    }

    public func barrier() throws {
        try check("barrier")
        try inner.barrier()
    }

    public func abort(code: Int32) -> Never { inner.abort(code: code) }
}
