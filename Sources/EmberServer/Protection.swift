import EmberInference
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore
import NIOHTTPTypes

/// What the server holds at most, and for how long: the bounds that keep memory and threads in
/// check whatever clients do.
public struct ServerLimits: Sendable {
    /// Largest request body (413 above it).
    public var maxBodyBytes = 4 << 20
    /// Requests that may wait for a place in the running batch; beyond them a request is refused
    /// with 429 and `Retry-After` at once, instead of queueing without bound.
    public var maxQueuedRequests = 256
    /// Longest a request may take from admission to its last token; then it is cancelled and
    /// answered 503 (a stream ends with an error event).
    public var requestTimeout: TimeInterval = 600
    /// Longest a client may take to send a whole request (head and body), from the connection's
    /// start or the end of its last response: a client that trickles bytes (slowloris) is cut off.
    public var readTimeout: TimeInterval = 30
    /// Longest an open connection may sit with nothing to read or write.
    public var idleTimeout: TimeInterval = 60
    /// Open connections at most; one more is answered 503 and closed.
    public var maxConnections = 1024
    /// Largest request head (all header fields together), in bytes.
    public var maxHeaderBytes = 64 << 10
    /// The `Retry-After` given with 429 and 503, in seconds.
    public var retryAfter = 1
    public init() {}

    /// The HTTP/1.1 server with these limits on its connections.
    public func http1() -> HTTPServerBuilder {
        let connections = ConnectionCount()
        let limits = self
        return .http1(configuration: .init(
            additionalChannelHandlers: [ConnectionGuard(limits: limits, connections: connections)],
            idleTimeout: .milliseconds(Int64(idleTimeout * 1000)),
            httpDecoderConfiguration: .init(maxHeaderFieldSize: maxHeaderBytes, maxHeaderListSize: maxHeaderBytes, maxHeaderFieldCount: 256)))
    }
}

/// Places for requests: those running plus those allowed to wait. A request takes its places
/// before it reaches the engine and gives them back when it ends, however it ends.
final class Admission: @unchecked Sendable {
    let capacity: Int
    private var taken = 0
    private let lock = NSLock()

    init(capacity: Int) { self.capacity = capacity }

    /// Takes `count` places, or refuses with 429 when they are not free.
    func take(_ count: Int, retryAfter: Int) throws -> Ticket {
        lock.lock()
        defer { lock.unlock() }
        guard taken + count <= capacity else {
            throw APIError(status: 429, message: "the server is at capacity (\(capacity) requests running or queued); retry after \(retryAfter) s",
                           type: "server_overloaded", code: "queue_full", retryAfter: retryAfter)
        }
        taken += count
        return Ticket(admission: self, count: count)
    }

    fileprivate func give(_ count: Int) {
        lock.lock()
        taken -= count
        lock.unlock()
    }

    /// Places held by one request; given back once, by `release` or when the ticket goes away.
    final class Ticket: @unchecked Sendable {
        private let admission: Admission
        private var count: Int
        private let lock = NSLock()
        init(admission: Admission, count: Int) {
            self.admission = admission
            self.count = count
        }
        func release() {
            let held = lock.withLock { () -> Int in
                defer { count = 0 }
                return count
            }
            if held > 0 { admission.give(held) }
        }
        deinit { release() }
    }
}

/// The request timeout of one HTTP request: once it passes, the request's engine requests are
/// cancelled (their streams end), and `expired` tells the handler to answer 503.
final class Deadline: @unchecked Sendable {
    private let lock = NSLock()
    private var fired = false
    private var timer: Task<Void, Never>?

    init(seconds: TimeInterval, engine: Engine, requests ids: [Int]) {
        timer = Task { [weak self] in
            guard (try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))) != nil, let self else { return }
            lock.withLock { fired = true }
            for id in ids { engine.cancel(id) }
        }
    }

    /// Stops the clock; true when it had already run out.
    func finish() -> Bool {
        timer?.cancel()
        return lock.withLock { fired }
    }

    static func error(_ seconds: TimeInterval, retryAfter: Int) -> APIError {
        APIError(status: 503, message: "the request took longer than the server's limit of \(Int(seconds)) s and was stopped",
                 type: "timeout", code: "request_timeout", retryAfter: retryAfter)
    }
}

/// Compares an `Authorization` header with the expected one in time that depends only on the
/// expected value's length, so that response times reveal nothing of the key.
func constantTimeEquals(_ given: String?, _ expected: String) -> Bool {
    let a = Array((given ?? "").utf8), b = Array(expected.utf8)
    var difference = UInt8(a.count == b.count ? 0 : 1)
    for i in 0..<b.count { difference |= b[i] ^ (i < a.count ? a[i] : 0) }
    return difference == 0
}

/// The server's open connections.
final class ConnectionCount: @unchecked Sendable {
    private var open = 0
    private let lock = NSLock()
    func enter(limit: Int) -> Bool {
        lock.withLock {
            open += 1
            return open <= limit
        }
    }
    func leave() { lock.withLock { open -= 1 } }
}

/// Per connection: counts it against the connection limit (one over is answered 503 and closed),
/// and closes it when a request has not arrived whole within the read timeout.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let limits: ServerLimits
    let connections: ConnectionCount
    private var counted = false
    private var admitted = true
    private var deadline: Scheduled<Void>?

    init(limits: ServerLimits, connections: ConnectionCount) {
        self.limits = limits
        self.connections = connections
    }

    func handlerAdded(context: ChannelHandlerContext) {
        counted = true
        admitted = connections.enter(limit: limits.maxConnections)
        startClock(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        if counted { connections.leave() }
        counted = false
    }

    /// The client has `readTimeout` to send its next request whole.
    private func startClock(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: .milliseconds(Int64(limits.readTimeout * 1000))) {
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if !admitted {
            if case .end = part {
                let error = APIError(status: 503, message: "the server has \(limits.maxConnections) connections open; retry after \(limits.retryAfter) s",
                                     type: "server_overloaded", code: "too_many_connections", retryAfter: limits.retryAfter)
                let body = ByteBuffer(string: error.body)
                var head = HTTPResponse(status: .serviceUnavailable)
                head.headerFields = [.contentType: "application/json", .contentLength: String(body.readableBytes), .retryAfter: String(limits.retryAfter),
                                     .connection: "close"]
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                context.write(wrapOutboundOut(.body(body)), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
            }
            return
        }
        if case .end = part { deadline?.cancel() }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // The response's end starts the clock for the next request on this connection.
        if case .end = unwrapOutboundIn(data) { startClock(context) }
        context.write(data, promise: promise)
    }
}
