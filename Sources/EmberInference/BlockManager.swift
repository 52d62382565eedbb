/// The KV cache's block bookkeeping: a fixed pool of blocks of `blockSize` token slots, a block
/// table per sequence, reference counts, and a prefix cache of full blocks.
///
/// - A full block is keyed by the hash of (its parent block's hash, its tokens), so equal keys
///   mean equal prefixes. A new sequence starts from the longest run of cached full blocks that
///   matches its prompt.
/// - Blocks whose count drops to zero go to the back of a free queue but keep their cached contents;
///   allocation takes from the front, evicting the least recently freed cached block first. A
///   sequence frees its blocks last-first, so a prefix outlives its continuations.
/// - `fork` shares every block of one sequence with another (`n > 1` samples of one prompt); the
///   shared partial last block is copied before either side writes to it (`prepareAppend`).
///
/// Pure bookkeeping: no KV data lives here. The engine moves data as `prepareAppend` tells it.
public struct BlockManager: Sendable {
    public typealias SequenceID = Int

    public let blockCount: Int
    public let blockSize: Int
    public let prefixCaching: Bool

    private var referenceCounts: [Int]
    private var hashes: [UInt64?]
    /// The root of each sequence's chain of block keys (its adapter's key; 0 for the base).
    private var roots: [SequenceID: UInt64] = [:]
    private var cached: [UInt64: Int] = [:]
    // Doubly linked free queue over block ids (-1 ends).
    private var previous: [Int], next: [Int]
    private var head = -1, tail = -1
    public private(set) var freeBlockCount = 0

    public private(set) var tables: [SequenceID: [Int]] = [:]
    /// Hashes of each sequence's full blocks, in order.
    private var chains: [SequenceID: [UInt64]] = [:]

    /// Prompt tokens looked up in the prefix cache, and how many of them were found.
    public private(set) var prefixQueriedTokens = 0
    public private(set) var prefixHitTokens = 0

    public init(blockCount: Int, blockSize: Int = 16, prefixCaching: Bool = true) {
        precondition(blockCount > 0 && blockSize > 0)
        self.blockCount = blockCount
        self.blockSize = blockSize
        self.prefixCaching = prefixCaching
        referenceCounts = Array(repeating: 0, count: blockCount)
        hashes = Array(repeating: nil, count: blockCount)
        previous = Array(repeating: -1, count: blockCount)
        next = Array(repeating: -1, count: blockCount)
        for b in 0..<blockCount { pushFree(b) }
    }

    /// Fraction of blocks in use by some sequence.
    public var usage: Double { Double(blockCount - freeBlockCount) / Double(blockCount) }

    public func blocksNeeded(tokens: Int) -> Int { (tokens + blockSize - 1) / blockSize }

    // MARK: Sequences

    /// Starts `sequence` on the cached blocks matching the longest prefix of `tokens` (whole
    /// blocks, and never the last token, whose logits are needed). Returns the cached token count.
    ///
    /// `key` roots the chain of block keys: sequences under another LoRA adapter (another key)
    /// hold other keys and values for the same tokens, so they share no blocks.
    public mutating func admit(_ sequence: SequenceID, tokens: [Int], key: UInt64 = 0) -> Int {
        precondition(tables[sequence] == nil, "sequence \(sequence) is already admitted")
        var table: [Int] = [], chain: [UInt64] = []
        roots[sequence] = key
        if prefixCaching {
            let usable = (tokens.count - 1) / blockSize
            var parent: UInt64 = key
            for i in 0..<usable {
                let h = Self.hash(parent: parent, tokens[i * blockSize..<(i + 1) * blockSize])
                guard let block = cached[h] else { break }
                retain(block)
                table.append(block)
                chain.append(h)
                parent = h
            }
            prefixQueriedTokens += tokens.count
            prefixHitTokens += table.count * blockSize
        }
        tables[sequence] = table
        chains[sequence] = chain
        return table.count * blockSize
    }

    /// Gives `sequence` slots for `tokens` positions in total; false (and no change) when the pool
    /// has too few free blocks.
    public mutating func reserve(_ sequence: SequenceID, tokens: Int) -> Bool {
        guard var table = tables[sequence] else { preconditionFailure("sequence \(sequence) is not admitted") }
        let missing = blocksNeeded(tokens: tokens) - table.count
        if missing <= 0 { return true }
        guard missing <= freeBlockCount else { return false }
        for _ in 0..<missing { table.append(takeFree()) }
        tables[sequence] = table
        return true
    }

    /// Registers the sequence's blocks that are now full and computed (`tokens` = all its tokens,
    /// `computed` = how many have KV) in the prefix cache.
    public mutating func commit(_ sequence: SequenceID, tokens: [Int], computed: Int) {
        guard prefixCaching, let table = tables[sequence], var chain = chains[sequence] else { return }
        let full = min(computed, tokens.count) / blockSize
        while chain.count < full {
            let i = chain.count
            let h = Self.hash(parent: chain.last ?? roots[sequence] ?? 0, tokens[i * blockSize..<(i + 1) * blockSize])
            let block = table[i]
            if hashes[block] == nil && cached[h] == nil {
                hashes[block] = h
                cached[h] = block
            }
            chain.append(h)
        }
        chains[sequence] = chain
    }

    /// Shares all of `parent`'s blocks with a new sequence `child`.
    public mutating func fork(_ parent: SequenceID, into child: SequenceID) {
        guard let table = tables[parent] else { preconditionFailure("sequence \(parent) is not admitted") }
        precondition(tables[child] == nil, "sequence \(child) is already admitted")
        for b in table { retain(b) }
        tables[child] = table
        chains[child] = chains[parent]
        roots[child] = roots[parent]
    }

    /// Before `sequence` writes the slot at `position`: if that block is shared, the sequence gets a
    /// private copy. Returns (source, destination) blocks whose data the engine must copy, or nil.
    /// Returns `.failure` when no block is free for the copy.
    public mutating func prepareAppend(_ sequence: SequenceID, position: Int) -> Result<(source: Int, destination: Int)?, PoolExhausted> {
        guard var table = tables[sequence] else { preconditionFailure("sequence \(sequence) is not admitted") }
        let index = position / blockSize
        precondition(index < table.count, "position \(position) has no slot; reserve first")
        let block = table[index]
        guard referenceCounts[block] > 1 else { return .success(nil) }
        guard freeBlockCount > 0 else { return .failure(PoolExhausted()) }
        let copy = takeFree()
        release(block)
        table[index] = copy
        tables[sequence] = table
        return .success((block, copy))
    }

    public struct PoolExhausted: Error {}

    /// Releases every block of `sequence`.
    public mutating func free(_ sequence: SequenceID) {
        guard let table = tables.removeValue(forKey: sequence) else { return }
        chains[sequence] = nil
        roots[sequence] = nil
        for b in table.reversed() { release(b) }
    }

    // MARK: Blocks

    private mutating func retain(_ block: Int) {
        if referenceCounts[block] == 0 { removeFree(block) }
        referenceCounts[block] += 1
    }

    private mutating func release(_ block: Int) {
        precondition(referenceCounts[block] > 0, "block \(block) released more often than retained")
        referenceCounts[block] -= 1
        if referenceCounts[block] == 0 { pushFree(block) }
    }

    /// The least recently freed block, evicted from the prefix cache if it was cached.
    private mutating func takeFree() -> Int {
        let block = head
        precondition(block >= 0, "no free block")
        removeFree(block)
        if let h = hashes[block] {
            if cached[h] == block { cached[h] = nil }
            hashes[block] = nil
        }
        referenceCounts[block] = 1
        return block
    }

    private mutating func pushFree(_ block: Int) {
        previous[block] = tail
        next[block] = -1
        if tail >= 0 { next[tail] = block } else { head = block }
        tail = block
        freeBlockCount += 1
    }

    private mutating func removeFree(_ block: Int) {
        let p = previous[block], n = next[block]
        if p >= 0 { next[p] = n } else { head = n }
        if n >= 0 { previous[n] = p } else { tail = p }
        previous[block] = -1
        next[block] = -1
        freeBlockCount -= 1
    }

    /// The key of a full block: its tokens chained to the parent block's key (FNV-1a over 64-bit
    /// words, finished with a SplitMix64 mix).
    static func hash(parent: UInt64, _ tokens: ArraySlice<Int>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ parent
        for t in tokens {
            h ^= UInt64(bitPattern: Int64(t))
            h &*= 0x0000_0100_0000_01B3
        }
        h ^= h >> 30; h &*= 0xBF58_476D_1CE4_E5B9
        h ^= h >> 27; h &*= 0x94D0_49BB_1331_11EB
        return h ^ (h >> 31)
    }
}
