import EmberInference
import Testing

/// The block manager and scheduler as state machines, without a model. Every scenario ends with
/// all sequences finished and checks that the pool's free-block count is back where it started.
@Suite struct BlockManagerTests {
    @Test func allocationAndFree() {
        var m = BlockManager(blockCount: 8, blockSize: 16)
        do { let ok = m.admit(1, tokens: Array(0..<40)) == 0; #expect(ok) }  // empty cache
        do { let ok = m.reserve(1, tokens: 40); #expect(ok) }
        #expect(m.tables[1]!.count == 3 && m.freeBlockCount == 5)
        do { let ok = m.reserve(1, tokens: 48) && m.freeBlockCount == 5; #expect(ok) }  // still 3 blocks
        do { let ok = !m.reserve(1, tokens: 16 * 9); #expect(ok) }  // more than the pool: refused, nothing taken
        #expect(m.freeBlockCount == 5)
        m.free(1)
        #expect(m.freeBlockCount == 8 && m.usage == 0)
    }

    @Test func prefixCacheIsKeyedByAdapter() {
        var m = BlockManager(blockCount: 8, blockSize: 16)
        let prompt = Array(100..<140)
        _ = m.admit(1, tokens: prompt, key: 77)
        do { let ok = m.reserve(1, tokens: 40); #expect(ok) }
        m.commit(1, tokens: prompt, computed: 40)
        do { let ok = m.admit(2, tokens: prompt) == 0; #expect(ok, "the base must not reuse an adapter's blocks") }
        do { let ok = m.admit(3, tokens: prompt, key: 78) == 0; #expect(ok, "another adapter must not reuse them") }
        do { let ok = m.admit(4, tokens: prompt, key: 77) == 32; #expect(ok, "the same adapter reuses them") }
        for s in 1...4 { m.free(s) }
        #expect(m.freeBlockCount == 8)
    }

    @Test func prefixCacheHitsWholeBlocksButNeverTheLastToken() {
        var m = BlockManager(blockCount: 8, blockSize: 16)
        let prompt = Array(100..<140)
        _ = m.admit(1, tokens: prompt)
        do { let ok = m.reserve(1, tokens: 40); #expect(ok) }
        m.commit(1, tokens: prompt, computed: 40)  // blocks 0, 1 full and cached
        let shared = Array(prompt[..<32]) + [7, 8, 9]
        do { let ok = m.admit(2, tokens: shared) == 32; #expect(ok) }
        #expect(m.tables[2]! == Array(m.tables[1]![..<2]))
        do { let ok = m.admit(3, tokens: Array(prompt[..<32])) == 16; #expect(ok) }  // 32 tokens: the last must be computed
        do { let ok = m.admit(4, tokens: [1] + prompt) == 0; #expect(ok) }  // a different first block shares nothing
        #expect(m.prefixHitTokens == 48 && m.prefixQueriedTokens == 40 + 35 + 32 + 41)
        for s in 1...4 { m.free(s) }
        #expect(m.freeBlockCount == 8)
        // Freed but cached: a later identical prompt still hits.
        do { let ok = m.admit(5, tokens: prompt) == 32; #expect(ok) }
        m.free(5)
        #expect(m.freeBlockCount == 8)
    }

    @Test func evictionTakesTheLeastRecentlyFreedCachedBlock() {
        var m = BlockManager(blockCount: 4, blockSize: 4)
        let a = Array(0..<9), b = Array(50..<59)
        for (id, tokens) in [(1, a), (2, b)] {
            _ = m.admit(id, tokens: tokens)
            do { let ok = m.reserve(id, tokens: 8); #expect(ok) }
            m.commit(id, tokens: tokens, computed: 8)
        }
        m.free(1)  // a's blocks freed first (least recent)
        m.free(2)
        #expect(m.freeBlockCount == 4)
        // A new sequence needing two blocks evicts a's blocks, not b's.
        _ = m.admit(3, tokens: Array(200..<208))
        do { let ok = m.reserve(3, tokens: 8); #expect(ok) }
        m.free(3)
        do { let ok = m.admit(4, tokens: a) == 0; #expect(ok) }
        do { let ok = m.admit(5, tokens: b) == 8; #expect(ok) }
        m.free(4); m.free(5)
        #expect(m.freeBlockCount == 4)
    }

    @Test func forkSharesBlocksAndCopiesOnWrite() {
        var m = BlockManager(blockCount: 6, blockSize: 16)
        _ = m.admit(1, tokens: Array(0..<20))
        do { let ok = m.reserve(1, tokens: 20); #expect(ok) }
        m.fork(1, into: 2)
        m.fork(1, into: 3)
        #expect(m.freeBlockCount == 4)  // still two blocks, shared three ways
        // Each child writes position 20 (in the shared partial block): private copies.
        guard case .success(let copy2?) = m.prepareAppend(2, position: 20), case .success(let copy3?) = m.prepareAppend(3, position: 20) else {
            Issue.record("expected copies"); return
        }
        #expect(copy2.source == m.tables[1]![1] && copy3.source == m.tables[1]![1] && copy2.destination != copy3.destination)
        // The parent is now the block's only owner: no copy.
        guard case .success(nil) = m.prepareAppend(1, position: 20) else { Issue.record("parent should not copy"); return }
        #expect(m.tables[2]![0] == m.tables[1]![0])  // the full first block stays shared
        #expect(m.freeBlockCount == 2)
        for s in 1...3 { m.free(s) }
        #expect(m.freeBlockCount == 6)
    }

    @Test func copyOnWriteFailsCleanlyWhenThePoolIsFull() {
        var m = BlockManager(blockCount: 1, blockSize: 16)
        _ = m.admit(1, tokens: [1, 2, 3])
        do { let ok = m.reserve(1, tokens: 3); #expect(ok) }
        m.fork(1, into: 2)
        guard case .failure = m.prepareAppend(2, position: 3) else { Issue.record("expected exhaustion"); return }
        m.free(1); m.free(2)
        #expect(m.freeBlockCount == 1)
    }
}

@Suite struct SchedulerTests {
    static func scheduler(blocks: Int, blockSize: Int = 16, maxSequences: Int = 8, budget: Int = 64) -> Scheduler {
        Scheduler(configuration: .init(maxSequences: maxSequences, maxBatchedTokens: budget),
                  blocks: BlockManager(blockCount: blocks, blockSize: blockSize))
    }

    /// Runs steps, answering each sampling chunk with token 1, until `done` says a sequence is
    /// finished (then finishes it). Returns the steps.
    @discardableResult
    static func run(_ s: inout Scheduler, maxSteps: Int = 1000, done: (Int, [Int]) -> Bool) -> [Scheduler.Step] {
        var steps: [Scheduler.Step] = []
        while s.sequenceCount > 0, steps.count < maxSteps {
            let step = s.schedule()
            steps.append(step)
            s.completed(step)
            for chunk in step.chunks where chunk.samples {
                s.append(chunk.sequence, token: 1)
                if done(chunk.sequence, s.tokens(of: chunk.sequence)!) { s.finish(chunk.sequence) }
            }
        }
        return steps
    }

    @Test func chunkedPrefillUnderTheTokenBudget() {
        var s = Self.scheduler(blocks: 16, budget: 32)
        s.add(1, tokens: Array(0..<100))
        let steps = Self.run(&s) { _, tokens in tokens.count == 103 }
        #expect(steps.prefix(4).map { $0.chunks.map(\.count) } == [[32], [32], [32], [4]])
        #expect(steps.prefix(4).map { $0.chunks[0].samples } == [false, false, false, true])
        #expect(steps.count == 6)  // then two decode steps
        #expect(s.blocks.freeBlockCount == 16)
    }

    @Test func runningSequencesComeFirstThenArrivalOrder() {
        var s = Self.scheduler(blocks: 64, budget: 40)
        s.add(1, tokens: Array(0..<10))
        var step = s.schedule()
        s.completed(step)
        s.append(1, token: 7)
        s.add(2, tokens: Array(100..<200))
        s.add(3, tokens: Array(300..<310))
        step = s.schedule()
        #expect(step.chunks == [.init(sequence: 1, start: 10, count: 1, samples: true), .init(sequence: 2, start: 0, count: 39, samples: false)])
        s.completed(step)
        s.append(1, token: 7)
        step = s.schedule()
        #expect(step.chunks.map(\.sequence) == [1, 2])  // 3 waits until 2's prompt is through
        for id in [1, 2, 3] { s.finish(id) }
        #expect(s.blocks.freeBlockCount == 64)
    }

    @Test func maxSequencesBoundsTheRunningSet() {
        var s = Self.scheduler(blocks: 64, maxSequences: 2, budget: 512)
        for id in 1...4 { s.add(id, tokens: Array(0..<5).map { $0 + id * 10 }) }
        let step = s.schedule()
        #expect(step.chunks.map(\.sequence) == [1, 2] && s.waiting == [3, 4])
        Self.run(&s) { _, tokens in tokens.count == 8 }
        #expect(s.sequenceCount == 0 && s.blocks.freeBlockCount == 64)
    }

    @Test func preemptsTheYoungestAndRecomputesIt() {
        // 4 blocks of 4 slots; two sequences of 6 tokens each growing to 14: they cannot both fit.
        var s = Self.scheduler(blocks: 4, blockSize: 4, budget: 64)
        s.add(1, tokens: Array(0..<6))
        s.add(2, tokens: Array(10..<16))
        var finished: [Int] = []
        let steps = Self.run(&s) { id, tokens in
            let done = tokens.count == 14
            if done { finished.append(id) }
            return done
        }
        #expect(steps.contains { $0.preempted == [2] })
        #expect(s.preemptionCount >= 1)
        #expect(finished == [1, 2])  // the oldest finishes first; the preempted one is recomputed and finishes
        #expect(s.blocks.freeBlockCount == 4)
        // After preemption the victim restarts from position 0 (or its cached prefix).
        let restart = steps.drop { $0.preempted.isEmpty }.dropFirst().first { $0.chunks.contains { $0.sequence == 2 } }
        #expect(restart?.chunks.first { $0.sequence == 2 }?.start ?? -1 <= 4)
    }

    @Test func prefixCacheShortensASecondIdenticalPrompt() {
        var s = Self.scheduler(blocks: 16, budget: 256)
        let prompt = Array(0..<50)
        s.add(1, tokens: prompt)
        Self.run(&s) { _, tokens in tokens.count == 52 }
        s.add(2, tokens: prompt)
        let step = s.schedule()
        #expect(step.chunks == [.init(sequence: 2, start: 48, count: 2, samples: true)])
        #expect(s.cachedTokens(of: 2) == 48)
        s.finish(2)
        #expect(s.blocks.freeBlockCount == 16)
    }

    @Test func forkedSamplesShareThePromptAndCopyOnWrite() {
        var s = Self.scheduler(blocks: 8, budget: 64)
        s.add(1, tokens: Array(0..<20))
        var step = s.schedule()
        s.completed(step)
        s.fork(1, into: 2)
        s.fork(1, into: 3)
        #expect(s.blocks.freeBlockCount == 6)
        for id in [1, 2, 3] { s.append(id, token: id) }
        step = s.schedule()
        #expect(step.chunks.map(\.sequence) == [1, 2, 3] && step.chunks.allSatisfy { $0.start == 20 && $0.count == 1 })
        #expect(step.copies.count == 2)  // 1 and 2 copy the shared partial block; 3 then owns the original
        for id in [1, 2, 3] { s.finish(id) }
        #expect(s.blocks.freeBlockCount == 8)
    }

    @Test func cancellingWaitingAndRunningSequencesFreesEverything() {
        var s = Self.scheduler(blocks: 8, maxSequences: 1, budget: 8)
        s.add(1, tokens: Array(0..<30))
        s.add(2, tokens: Array(0..<30))
        let step = s.schedule()
        s.completed(step)
        #expect(s.blocks.freeBlockCount < 8)
        s.finish(2)  // waiting
        s.finish(1)  // running, mid-prompt
        s.finish(1)  // twice is harmless
        #expect(s.sequenceCount == 0 && s.running.isEmpty && s.waiting.isEmpty && s.blocks.freeBlockCount == 8)
    }
}

/// The block manager's invariants are checked in the shipped binary (its target is built without
/// -Ounchecked): breaking one stops the process (a trap) instead of corrupting the pool. Each case
/// runs in a child process that must die; with -Ounchecked the checks would be gone and the
/// children would carry on.
@Suite struct BlockManagerInvariantTests {
    @Test func admittingASequenceTwiceDies() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.exitStatus]) {
            var m = BlockManager(blockCount: 4, blockSize: 16)
            _ = m.admit(1, tokens: [1, 2, 3])
            _ = m.admit(1, tokens: [1, 2, 3])
        }
        print("admitting sequence 1 twice: the child process ended with \(result.map { "\($0.exitStatus)" } ?? "?")")
    }

    @Test func reservingForAnUnknownSequenceDies() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.exitStatus]) {
            var m = BlockManager(blockCount: 4, blockSize: 16)
            _ = m.reserve(7, tokens: 16)
        }
        print("reserving for an unknown sequence: the child process ended with \(result.map { "\($0.exitStatus)" } ?? "?")")
    }
}
