/// Continuous batching: each step picks which sequences run and how many of their tokens, under a
/// token budget, and keeps the block manager in step with it.
///
/// Order of a step (first come, first served):
/// 1. Running sequences, oldest first, each gets what it still needs: one token when decoding, or the
///    next chunk of its prompt. When the pool has no block for one, the youngest running sequence is
///    preempted (its blocks freed, put back at the head of the queue, recomputed later) until it fits.
/// 2. If nothing was preempted, waiting sequences are admitted in arrival order while sequences,
///    budget and blocks allow; each starts from its cached prefix and may get only part of its prompt.
///
/// A pure state machine: it never touches the model. The engine runs the returned chunks, then
/// reports back with `completed`, `append` and `finish`.
public struct Scheduler: Sendable {
    public typealias SequenceID = Int

    public struct Configuration: Sendable {
        public var maxSequences: Int
        public var maxBatchedTokens: Int
        public init(maxSequences: Int = 16, maxBatchedTokens: Int = 512) {
            self.maxSequences = maxSequences
            self.maxBatchedTokens = maxBatchedTokens
        }
    }

    /// Tokens `start ..< start + count` of `sequence` go through the model this step; when
    /// `samples` the chunk ends at the sequence's last token, whose logits pick the next one.
    public struct Chunk: Sendable, Equatable {
        public let sequence: SequenceID
        public let start: Int
        public let count: Int
        public let samples: Bool
        public init(sequence: SequenceID, start: Int, count: Int, samples: Bool) {
            self.sequence = sequence
            self.start = start
            self.count = count
            self.samples = samples
        }
    }

    public struct Step: Sendable {
        public var chunks: [Chunk] = []
        /// KV blocks to copy (source, destination) before running: copy-on-write of shared blocks.
        public var copies: [(source: Int, destination: Int)] = []
        public var preempted: [SequenceID] = []
        public var isEmpty: Bool { chunks.isEmpty }
    }

    struct Entry {
        var tokens: [Int]
        /// The prefix cache's key root (the sequence's adapter).
        var key: UInt64 = 0
        var computed = 0
        /// Prompt tokens found in the prefix cache at admission (first admission only).
        var cachedTokens: Int?
    }

    public let configuration: Configuration
    public private(set) var blocks: BlockManager
    private var entries: [SequenceID: Entry] = [:]
    public private(set) var waiting: [SequenceID] = []
    public private(set) var running: [SequenceID] = []
    public private(set) var preemptionCount = 0

    public init(configuration: Configuration, blocks: BlockManager) {
        precondition(configuration.maxSequences > 0 && configuration.maxBatchedTokens > 0)
        self.configuration = configuration
        self.blocks = blocks
    }

    /// Queues a new sequence. It must fit the pool on its own (`fits`).
    public mutating func add(_ id: SequenceID, tokens: [Int], key: UInt64 = 0) {
        precondition(entries[id] == nil && !tokens.isEmpty)
        entries[id] = Entry(tokens: tokens, key: key)
        waiting.append(id)
    }

    /// Whether a sequence of `tokens` tokens could ever run (the whole pool is enough for it).
    public func fits(tokens: Int) -> Bool { blocks.blocksNeeded(tokens: tokens) <= blocks.blockCount }

    /// Starts `child` as a copy of running `parent` (same tokens and KV blocks, shared).
    public mutating func fork(_ parent: SequenceID, into child: SequenceID) {
        guard let entry = entries[parent], running.contains(parent) else { preconditionFailure("sequence \(parent) is not running") }
        precondition(entries[child] == nil)
        blocks.fork(parent, into: child)
        entries[child] = Entry(tokens: entry.tokens, key: entry.key, computed: entry.computed, cachedTokens: entry.cachedTokens)
        running.append(child)
    }

    public func tokens(of id: SequenceID) -> [Int]? { entries[id]?.tokens }
    /// Prompt tokens the prefix cache supplied when the sequence was first admitted.
    public func cachedTokens(of id: SequenceID) -> Int? { entries[id]?.cachedTokens }
    public func blockTable(of id: SequenceID) -> [Int]? { blocks.tables[id] }
    public var sequenceCount: Int { entries.count }

    public mutating func schedule() -> Step {
        var step = Step()
        var budget = configuration.maxBatchedTokens
        var index = 0
        while index < running.count, budget > 0 {
            let id = running[index]
            let entry = entries[id]!
            let count = min(entry.tokens.count - entry.computed, budget)
            if count <= 0 { index += 1; continue }
            var placed = false
            while !placed {
                if let copies = place(id, start: entry.computed, count: count) {
                    step.copies += copies
                    placed = true
                } else {
                    let victim = running.last!
                    preempt(victim)
                    step.preempted.append(victim)
                    step.chunks.removeAll { $0.sequence == victim }
                    if victim == id { break }
                }
            }
            guard placed else { break }
            step.chunks.append(Chunk(sequence: id, start: entry.computed, count: count, samples: entry.computed + count == entry.tokens.count))
            budget -= count
            index += 1
        }
        budget = configuration.maxBatchedTokens - step.chunks.reduce(0) { $0 + $1.count }
        while step.preempted.isEmpty, budget > 0, running.count < configuration.maxSequences, let id = waiting.first {
            var entry = entries[id]!
            let cached = blocks.admit(id, tokens: entry.tokens, key: entry.key)
            entry.computed = cached
            if entry.cachedTokens == nil { entry.cachedTokens = cached }
            let count = min(entry.tokens.count - entry.computed, budget)
            guard let copies = place(id, start: entry.computed, count: count) else {
                blocks.free(id)
                break
            }
            entries[id] = entry
            waiting.removeFirst()
            running.append(id)
            step.copies += copies
            step.chunks.append(Chunk(sequence: id, start: entry.computed, count: count, samples: entry.computed + count == entry.tokens.count))
            budget -= count
        }
        return step
    }

    /// Slots for positions start..<start+count, private copies of shared blocks among them; nil
    /// (with nothing held beyond what the sequence had) when the pool is short.
    private mutating func place(_ id: SequenceID, start: Int, count: Int) -> [(source: Int, destination: Int)]? {
        guard blocks.reserve(id, tokens: start + count) else { return nil }
        var copies: [(source: Int, destination: Int)] = []
        var position = start
        while position < start + count {
            switch blocks.prepareAppend(id, position: position) {
            case .success(let copy): if let copy { copies.append(copy) }
            case .failure: return nil
            }
            position = (position / blocks.blockSize + 1) * blocks.blockSize
        }
        return copies
    }

    private mutating func preempt(_ id: SequenceID) {
        blocks.free(id)
        entries[id]!.computed = 0
        running.removeAll { $0 == id }
        waiting.insert(id, at: 0)
        preemptionCount += 1
    }

    /// The chunks of a step ran: their tokens now have KV.
    public mutating func completed(_ step: Step) {
        for chunk in step.chunks {
            guard var entry = entries[chunk.sequence] else { continue }
            entry.computed = max(entry.computed, chunk.start + chunk.count)
            entries[chunk.sequence] = entry
            blocks.commit(chunk.sequence, tokens: entry.tokens, computed: entry.computed)
        }
    }

    /// A generated token joins the sequence (it is computed next step).
    public mutating func append(_ id: SequenceID, token: Int) {
        entries[id]?.tokens.append(token)
    }

    /// The sequence ended (finished, stopped or cancelled): its blocks go back to the pool.
    public mutating func finish(_ id: SequenceID) {
        guard entries.removeValue(forKey: id) != nil else { return }
        blocks.free(id)
        running.removeAll { $0 == id }
        waiting.removeAll { $0 == id }
    }
}
