import EmberModels
import EmberTensor
import EmberTokenizers
import Foundation

/// Why a choice ended (OpenAI's `finish_reason`).
public enum FinishReason: String, Sendable {
    case stop, length, cancelled
    /// The model could not run the step (the message came in a `.failed` event before).
    case error
}

/// What a request's stream carries.
public enum GenerationEvent: Sendable {
    /// The prompt was admitted: its token count and how many came from the prefix cache.
    case started(promptTokens: Int, cachedTokens: Int)
    /// New text (and the tokens behind it) for one choice.
    case delta(choice: Int, text: String, tokens: [Int], logprobs: [TokenLogprob])
    case finished(choice: Int, reason: FinishReason, completionTokens: Int)
    /// The engine could not run the request; `.finished` events with reason `.error` follow.
    case failed(message: String)
}

/// A request the engine refuses before it runs.
public struct RequestError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Runs many generation requests at once: each step schedules (continuous batching over a paged KV
/// cache), executes one ragged batch through the model, and updates every sequence with its new
/// token (sampling, stop strings, streaming out). The step loop runs on its own thread; `submit`
/// and `cancel` may be called from anywhere.
public final class Engine: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var blockSize = 16
        /// KV cache size in blocks (see `blocks(forMemory:)`).
        public var blockCount: Int
        public var maxSequences = 16
        public var maxBatchedTokens = 512
        /// Longest sequence (prompt + output), at most the model's context.
        public var maxModelLength: Int
        public var maxTokensLimit = 4096
        public var maxChoices = 8
        public var prefixCaching = true
        /// Flash-Decoding partition size (keys); nil never splits.
        public var splitKeys: Int? = 2048
        public init(blockCount: Int, maxModelLength: Int) {
            self.blockCount = blockCount
            self.maxModelLength = maxModelLength
        }
    }

    public let model: Llama
    public let tokenizer: any Tokenizer
    public let configuration: Configuration
    public let metrics = EngineMetrics()
    let cache: PagedKVCache
    private var scheduler: Scheduler

    private let lock = NSCondition()
    private var inbox: [RequestState] = []
    private var cancelled: Set<Int> = []
    private var stopping = false
    private var thread: Thread?
    private var requests: [Int: RequestState] = [:]
    private var owners: [Int: (request: RequestState, choice: Int)] = [:]
    private var nextRequestID = 1
    private var nextSequenceID = 1
    /// Requests submitted and not yet ended (guarded by `lock`; `requests` belongs to the loop thread).
    private var inFlight = 0

    /// KV blocks that fit in `bytes` for this model.
    public static func blocks(forMemory bytes: Int, configuration: LlamaConfiguration, blockSize: Int = 16) -> Int {
        bytes / PagedKVCache.bytesPerBlock(configuration: configuration, blockSize: blockSize)
    }

    public init(model: Llama, tokenizer: any Tokenizer, configuration: Configuration) {
        self.model = model
        self.tokenizer = tokenizer
        self.configuration = configuration
        cache = PagedKVCache(configuration: model.configuration, blockCount: configuration.blockCount, blockSize: configuration.blockSize)
        scheduler = Scheduler(configuration: .init(maxSequences: configuration.maxSequences, maxBatchedTokens: configuration.maxBatchedTokens),
                              blocks: BlockManager(blockCount: configuration.blockCount, blockSize: configuration.blockSize,
                                                   prefixCaching: configuration.prefixCaching))
        metrics.setCapacity(blocks: configuration.blockCount)
        model.prepareBatches()
    }

    // MARK: Requests

    /// Queues a request and returns its events. Ending the stream early (a client that goes away)
    /// cancels it; its blocks are freed at the next step.
    ///
    /// `adapter` runs the request under a LoRA adapter (nil: the base); requests of different
    /// adapters share the batch but not the prefix cache.
    public func submit(prompt: [Int], parameters: SamplingParameters, adapter: InferenceAdapter? = nil) throws -> (id: Int, events: AsyncStream<GenerationEvent>) {
        try validate(prompt: prompt, parameters: parameters)
        let (stream, continuation) = AsyncStream.makeStream(of: GenerationEvent.self, bufferingPolicy: .unbounded)
        let id = enqueue(prompt: prompt, parameters: parameters, adapter: adapter, emit: { continuation.yield($0) }, finish: { continuation.finish() })
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.cancel(id) }
        }
        return (id, stream)
    }

    /// Queues a request whose events `handler` receives on the engine's thread, in order, then nil
    /// when the request has ended: for callers that wait on a thread of their own (a trainer's
    /// rollouts), where a task reading the stream could find no thread of the concurrency pool free.
    public func submit(prompt: [Int], parameters: SamplingParameters, adapter: InferenceAdapter? = nil,
                       handler: @escaping @Sendable (GenerationEvent?) -> Void) throws -> Int {
        try validate(prompt: prompt, parameters: parameters)
        return enqueue(prompt: prompt, parameters: parameters, adapter: adapter, emit: { handler($0) }, finish: { handler(nil) })
    }

    private func validate(prompt: [Int], parameters: SamplingParameters) throws {
        let c = configuration
        guard !prompt.isEmpty else { throw RequestError("the prompt is empty") }
        guard prompt.allSatisfy({ $0 >= 0 && $0 < model.configuration.vocabularySize }) else {
            throw RequestError("the prompt holds a token id outside the vocabulary (0..<\(model.configuration.vocabularySize))")
        }
        guard parameters.n >= 1, parameters.n <= c.maxChoices else { throw RequestError("n must be between 1 and \(c.maxChoices)") }
        guard parameters.maxTokens >= 1, parameters.maxTokens <= c.maxTokensLimit else {
            throw RequestError("max_tokens must be between 1 and \(c.maxTokensLimit)")
        }
        guard prompt.count < c.maxModelLength else {
            throw RequestError("the prompt has \(prompt.count) tokens but the model's context is \(c.maxModelLength)")
        }
        guard prompt.count + parameters.maxTokens <= c.maxModelLength else {
            throw RequestError("the prompt (\(prompt.count) tokens) plus max_tokens (\(parameters.maxTokens)) exceeds the context of \(c.maxModelLength) tokens")
        }
        // From the configuration, not the scheduler: the engine's thread owns the scheduler, and
        // this runs on the caller's.
        guard (prompt.count + parameters.maxTokens + c.blockSize - 1) / c.blockSize <= c.blockCount else {
            throw RequestError("the KV cache (\(c.blockCount * c.blockSize) tokens) cannot hold \(prompt.count + parameters.maxTokens) tokens; raise --kv-cache-memory")
        }
    }

    private func enqueue(prompt: [Int], parameters: SamplingParameters, adapter: InferenceAdapter?,
                         emit: @escaping @Sendable (GenerationEvent) -> Void, finish: @escaping @Sendable () -> Void) -> Int {
        lock.lock()
        let id = nextRequestID
        nextRequestID += 1
        let seed = parameters.seed ?? UInt64.random(in: 0...UInt64.max)
        let state = RequestState(id: id, prompt: prompt, parameters: parameters, seed: seed, emit: emit, finish: finish, adapter: adapter)
        inbox.append(state)
        inFlight += 1
        lock.signal()
        lock.unlock()
        return id
    }

    public func cancel(_ id: Int) {
        lock.lock()
        cancelled.insert(id)
        lock.signal()
        lock.unlock()
    }

    // MARK: The loop

    public func start() {
        lock.lock()
        defer { lock.unlock() }
        guard thread == nil else { return }
        stopping = false
        let t = Thread { [unowned self] in self.loop() }
        t.name = "ember-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Stops the loop; unfinished requests end as cancelled.
    public func stop() {
        lock.lock()
        stopping = true
        lock.signal()
        lock.unlock()
        while true {
            lock.lock()
            let done = thread == nil
            lock.unlock()
            if done { return }
            usleep(2000)
        }
    }

    /// Requests in flight (queued or running).
    public var activeRequests: Int {
        lock.lock()
        defer { lock.unlock() }
        return inFlight
    }

    /// A request ended: its stream is finished and it no longer counts as in flight.
    private func retire(_ r: RequestState) {
        requests[r.id] = nil
        r.finish()
        lock.lock()
        inFlight -= 1
        lock.unlock()
    }

    /// Free blocks, counted by the engine thread after its last step.
    public var freeBlocks: Int { metrics.snapshot().freeBlocks }

    private func loop() {
        while true {
            lock.lock()
            while inbox.isEmpty && cancelled.isEmpty && requests.isEmpty && !stopping { lock.wait() }
            let arrivals = inbox, cancels = cancelled
            inbox.removeAll()
            cancelled.removeAll()
            let stop = stopping
            lock.unlock()

            for r in arrivals { admit(r) }
            for id in cancels { if let r = requests[id] { end(r, reason: .cancelled) } }
            if stop {
                for r in Array(requests.values) { end(r, reason: .cancelled) }
                publish()
                lock.lock()
                thread = nil
                lock.unlock()
                return
            }
            if !requests.isEmpty { step() }
            publish()
        }
    }

    private func admit(_ r: RequestState) {
        let sequence = nextSequenceID
        nextSequenceID += 1
        r.choices.append(ChoiceState(sequence: sequence, sampler: Sampler(parameters: r.parameters, seed: r.seed),
                                     stops: StopMatcher(stops: r.parameters.stop)))
        requests[r.id] = r
        owners[sequence] = (r, 0)
        scheduler.add(sequence, tokens: r.prompt, key: r.adapter?.cacheKey ?? 0)
    }

    private func step() {
        let plan = scheduler.schedule()
        guard !plan.isEmpty else { return }
        for copy in plan.copies { cache.copyBlock(copy.source, to: copy.destination) }
        let entries = plan.chunks.map { chunk in
            Llama.BatchEntry(tokens: Array(scheduler.tokens(of: chunk.sequence)![chunk.start..<chunk.start + chunk.count]),
                             start: chunk.start, blocks: scheduler.blockTable(of: chunk.sequence)!, wantsLogits: chunk.samples,
                             adapter: owners[chunk.sequence]?.request.adapter)
        }
        let logits: [[Float]]
        do {
            logits = try model.forward(batch: entries, cache: cache, splitKeys: configuration.splitKeys)
        } catch {
            // Validated requests should never get here; end what ran, saying why, rather than loop forever.
            for chunk in plan.chunks {
                guard let o = owners[chunk.sequence], requests[o.request.id] != nil else { continue }
                o.request.emit(.failed(message: "the model could not run this request: \(error)"))
                end(o.request, reason: .error)
            }
            return
        }
        scheduler.completed(plan)
        var next = 0
        for chunk in plan.chunks where chunk.samples {
            let row = logits[next]
            next += 1
            guard let owner = owners[chunk.sequence] else { continue }
            let r = owner.request
            if !r.started {
                r.started = true
                let cached = scheduler.cachedTokens(of: chunk.sequence) ?? 0
                r.emit(.started(promptTokens: r.prompt.count, cachedTokens: cached))
                metrics.promptProcessed(tokens: r.prompt.count)
                // n > 1: the other choices share the prompt's blocks from here on.
                for choice in 1..<r.parameters.n {
                    let sequence = nextSequenceID
                    nextSequenceID += 1
                    scheduler.fork(chunk.sequence, into: sequence)
                    r.choices.append(ChoiceState(sequence: sequence,
                                                 sampler: Sampler(parameters: r.parameters, seed: r.seed &+ UInt64(choice)),
                                                 stops: StopMatcher(stops: r.parameters.stop)))
                    owners[sequence] = (r, choice)
                }
                for choice in r.choices.indices { advance(r, choice: choice, logits: row) }
            } else {
                advance(r, choice: owner.choice, logits: row)
            }
        }
    }

    /// Samples one token for a choice and streams what it adds.
    private func advance(_ r: RequestState, choice index: Int, logits: [Float]) {
        var c = r.choices[index]
        guard !c.finished else { return }
        let p = r.parameters
        let banned: Set<Int> = p.ignoreEOS ? tokenizer.endOfGenerationIDs : []
        if p.repetitionPenalty != 1 && c.seen == nil { c.seen = Set(r.prompt) }
        let (token, logprob) = c.sampler.sample(logits, seen: c.seen ?? [], counts: c.counts, banned: banned)
        let now = Date()
        if index == 0 {
            if let last = c.lastTokenTime { metrics.interToken(now.timeIntervalSince(last)) } else { metrics.firstToken(now.timeIntervalSince(r.arrival)) }
        }
        c.lastTokenTime = now
        let endOfText = !p.ignoreEOS && tokenizer.endOfGenerationIDs.contains(token)
        if endOfText || p.stopTokenIDs.contains(token) {
            // The end token adds no text, but a client that asked for log-probabilities gets its
            // entry, as vLLM gives it: lm-evaluation-harness's echo with max_tokens 1 drops the
            // last entry as the generated token's.
            if let logprob { r.emit(.delta(choice: index, text: "", tokens: [token], logprobs: [logprob])) }
            r.choices[index] = c
            finish(r, choice: index, reason: .stop, flush: true)
            return
        }
        metrics.generated(tokens: 1)
        c.outputTokens.append(token)
        c.counts[token, default: 0] += 1
        c.seen?.insert(token)
        scheduler.append(c.sequence, token: token)
        let piece = c.decoder.append(tokenizer.bytes(of: token))
        let (release, stopped) = c.stops.append(piece)
        if !release.isEmpty || logprob != nil || stopped {
            r.emit(.delta(choice: index, text: release, tokens: [token], logprobs: logprob.map { [$0] } ?? []))
        }
        r.choices[index] = c
        if stopped {
            finish(r, choice: index, reason: .stop)
        } else if c.outputTokens.count >= p.maxTokens || r.prompt.count + c.outputTokens.count >= configuration.maxModelLength {
            finish(r, choice: index, reason: .length, flush: true)
        }
    }

    /// Ends a choice; `flush` releases text held back (an incomplete character, a possible stop string's start).
    private func finish(_ r: RequestState, choice index: Int, reason: FinishReason, flush: Bool = false) {
        var c = r.choices[index]
        guard !c.finished else { return }
        if flush {
            let (release, stopped) = c.stops.append(c.decoder.finish())
            let tail = release + (stopped ? "" : c.stops.flush())
            if !tail.isEmpty { r.emit(.delta(choice: index, text: tail, tokens: [], logprobs: [])) }
        }
        c.finished = true
        r.choices[index] = c
        scheduler.finish(c.sequence)
        owners[c.sequence] = nil
        r.emit(.finished(choice: index, reason: reason, completionTokens: c.outputTokens.count))
        if r.choices.count == r.parameters.n || reason == .cancelled, r.choices.allSatisfy(\.finished), requests[r.id] != nil {
            retire(r)
            metrics.requestFinished(since: r.arrival, reason: reason)
        }
    }

    /// Ends every choice of a request (cancelled or stopping).
    private func end(_ r: RequestState, reason: FinishReason) {
        // Choices not forked yet will never be: count them as done.
        for i in r.choices.indices { finish(r, choice: i, reason: reason) }
        if requests[r.id] != nil {
            retire(r)
            metrics.requestFinished(since: r.arrival, reason: reason)
        }
    }

    private func publish() {
        metrics.setState(running: scheduler.running.count, waiting: scheduler.waiting.count,
                         freeBlocks: scheduler.blocks.freeBlockCount,
                         prefixQueried: scheduler.blocks.prefixQueriedTokens, prefixHits: scheduler.blocks.prefixHitTokens,
                         preemptions: scheduler.preemptionCount)
    }
}

final class RequestState {
    let id: Int
    let prompt: [Int]
    let parameters: SamplingParameters
    let seed: UInt64
    /// Delivers an event to the request's reader, and tells it the request has ended.
    let emit: @Sendable (GenerationEvent) -> Void
    let finish: @Sendable () -> Void
    let arrival = Date()
    var started = false
    var choices: [ChoiceState] = []
    let adapter: InferenceAdapter?

    init(id: Int, prompt: [Int], parameters: SamplingParameters, seed: UInt64, emit: @escaping @Sendable (GenerationEvent) -> Void,
         finish: @escaping @Sendable () -> Void, adapter: InferenceAdapter?) {
        self.adapter = adapter
        self.id = id
        self.prompt = prompt
        self.parameters = parameters
        self.seed = seed
        self.emit = emit
        self.finish = finish
    }
}

struct ChoiceState {
    let sequence: Int
    var sampler: Sampler
    var stops: StopMatcher
    var decoder = StreamingDecoder()
    var outputTokens: [Int] = []
    var counts: [Int: Int] = [:]
    /// Prompt and output tokens, kept only when a repetition penalty needs them.
    var seen: Set<Int>?
    var finished = false
    var lastTokenTime: Date?

    init(sequence: Int, sampler: Sampler, stops: StopMatcher) {
        self.sequence = sequence
        self.sampler = sampler
        self.stops = stops
    }
}
