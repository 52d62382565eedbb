import Foundation

/// The engine's counters, gauges and histograms, exposed in Prometheus' text format under vLLM's
/// metric names where vLLM has one.
public final class EngineMetrics: @unchecked Sendable {
    public struct Snapshot: Sendable {
        public var running = 0, waiting = 0, freeBlocks = 0, totalBlocks = 0
        public var promptTokens = 0, generationTokens = 0, prefixQueries = 0, prefixHits = 0, preemptions = 0
        public var finished: [String: Int] = [:]
        public var timeToFirstToken = Histogram(), interTokenLatency = Histogram(), endToEndLatency = Histogram()
        public var kvUsage: Double { totalBlocks == 0 ? 0 : Double(totalBlocks - freeBlocks) / Double(totalBlocks) }
    }

    /// A cumulative histogram with fixed bucket bounds (seconds).
    public struct Histogram: Sendable {
        public static let bounds: [Double] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80]
        public private(set) var counts = [Int](repeating: 0, count: Histogram.bounds.count)
        public private(set) var count = 0
        public private(set) var sum = 0.0
        mutating func observe(_ value: Double) {
            for (i, b) in Self.bounds.enumerated() where value <= b { counts[i] += 1 }
            count += 1
            sum += value
        }
    }

    private let lock = NSLock()
    private var s = Snapshot()

    public func snapshot() -> Snapshot { lock.withLock { s } }

    func setCapacity(blocks: Int) { lock.withLock { s.totalBlocks = blocks; s.freeBlocks = blocks } }
    func promptProcessed(tokens: Int) { lock.withLock { s.promptTokens += tokens } }
    func generated(tokens: Int) { lock.withLock { s.generationTokens += tokens } }
    func firstToken(_ seconds: Double) { lock.withLock { s.timeToFirstToken.observe(seconds) } }
    func interToken(_ seconds: Double) { lock.withLock { s.interTokenLatency.observe(seconds) } }
    func requestFinished(since arrival: Date, reason: FinishReason) {
        lock.withLock {
            s.endToEndLatency.observe(Date().timeIntervalSince(arrival))
            s.finished[reason.rawValue, default: 0] += 1
        }
    }
    func setState(running: Int, waiting: Int, freeBlocks: Int, prefixQueried: Int, prefixHits: Int, preemptions: Int) {
        lock.withLock {
            s.running = running
            s.waiting = waiting
            s.freeBlocks = freeBlocks
            s.prefixQueries = prefixQueried
            s.prefixHits = prefixHits
            s.preemptions = preemptions
        }
    }

    /// The Prometheus exposition text; `model` labels every series.
    public func prometheus(model: String) -> String {
        let m = snapshot()
        let label = "model_name=\"\(model.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))\""
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: Double) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name){\(label)} \(Self.number(value))\n"
        }
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (i, b) in Histogram.bounds.enumerated() { out += "\(name)_bucket{\(label),le=\"\(Self.number(b))\"} \(h.counts[i])\n" }
            out += "\(name)_bucket{\(label),le=\"+Inf\"} \(h.count)\n\(name)_sum{\(label)} \(Self.number(h.sum))\n\(name)_count{\(label)} \(h.count)\n"
        }
        metric("vllm:num_requests_running", "gauge", "Requests in the running batch.", Double(m.running))
        metric("vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", Double(m.waiting))
        metric("vllm:kv_cache_usage_perc", "gauge", "Fraction of KV cache blocks in use (1 = full).", m.kvUsage)
        metric("vllm:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", Double(m.prefixQueries))
        metric("vllm:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", Double(m.prefixHits))
        metric("vllm:num_preemptions_total", "counter", "Sequences preempted for lack of KV blocks.", Double(m.preemptions))
        metric("vllm:prompt_tokens_total", "counter", "Prompt tokens processed.", Double(m.promptTokens))
        metric("vllm:generation_tokens_total", "counter", "Tokens generated.", Double(m.generationTokens))
        out += "# HELP vllm:request_success_total Finished requests by finish reason.\n# TYPE vllm:request_success_total counter\n"
        for reason in ["stop", "length", "cancelled"] {
            out += "vllm:request_success_total{\(label),finished_reason=\"\(reason)\"} \(m.finished[reason] ?? 0)\n"
        }
        histogram("vllm:time_to_first_token_seconds", "Time from arrival to the first generated token.", m.timeToFirstToken)
        histogram("vllm:inter_token_latency_seconds", "Time between consecutive generated tokens of a request.", m.interTokenLatency)
        histogram("vllm:e2e_request_latency_seconds", "Time from arrival to the end of a request.", m.endToEndLatency)
        return out
    }

    static func number(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : "\(v)"
    }
}
