import EmberDistributed
import EmberNN
import EmberTensor
import Foundation

/// ZeRO stage 3: every data-parallel rank keeps only its shard of the flat parameters (and of the
/// gradients and moments); the rest of the arena is address space without memory. Each unit of
/// the model (the embedding, a block, the final norm with the output) is all-gathered just before
/// its forward and again before its backward, and its pages are handed back after each, while the
/// communication thread already gathers the next unit (prefetch). The last unit stays from its
/// forward to its backward, and the embedding's backward needs no weights, so with untied
/// embeddings every parameter is gathered at most twice a step: with the reduce-scatter of the
/// gradients, at most 3(N−1)/N·Ψ values on the wire per rank.
final class ParameterPartition: ParameterResidency {
    let arena: ParameterArena
    let communicator: any Communicator
    let shards: [Range<Int>]
    var own: Range<Int> { shards[communicator.rank] }
    let units: [[Range<Int>]]
    let readInBackward: [Bool]
    private let thread: CommunicationThread?
    /// Units whose values are present (or on their way: `tickets` holds the pending gathers).
    private var present: [Bool]
    private var tickets: [Int: Int] = [:]
    private var failure: Error?
    /// The most bytes of parameters and gradients this rank held at once, sampled at each unit.
    private(set) var peakBytes = 0

    init(model: TrainableLlama, communicator: any Communicator, shards: [Range<Int>], thread: CommunicationThread?) {
        arena = model.arena
        self.communicator = communicator
        self.shards = shards
        self.thread = thread
        units = model.units
        readInBackward = model.unitsReadInBackward
        present = Array(repeating: true, count: units.count)
        releaseAll()
    }

    /// Values gathered per training step: every unit for its forward (the tied embedding twice),
    /// and for its backward each unit that reads its weights there, but the last one, kept.
    var gatheredPerStep: Int {
        let sizes = units.map { $0.reduce(0) { $0 + $1.count } }
        return sizes.reduce(0, +) + zip(sizes, readInBackward).dropLast().reduce(0) { $0 + ($1.1 ? $1.0 : 0) }
    }

    /// Bytes of parameters and gradients occupying memory now.
    var residentBytes: Int { arena.values.residentBytes() + arena.gradients.residentBytes() }

    private func sample() { peakBytes = max(peakBytes, residentBytes) }

    private func gather(_ range: Range<Int>) throws {
        let parts = shards.map { range.clamped(to: $0) }
        try communicator.allGather(arena.values.pointer + parts[communicator.rank].lowerBound,
                                   into: arena.values.pointer + range.lowerBound, counts: parts.map(\.count))
    }

    /// Starts gathering unit `u` unless it is present.
    private func fetch(_ u: Int) {
        guard u >= 0 && u < units.count && !present[u] else { return }
        present[u] = true
        let work = { [self] in for range in units[u] { try gather(range) } }
        if let thread {
            tickets[u] = thread.submit(work)
        } else {
            do { try work() } catch { if failure == nil { failure = error } }
        }
    }

    /// Waits until unit `u` is present.
    private func require(_ u: Int) {
        fetch(u)
        guard let ticket = tickets.removeValue(forKey: u), let thread else { return }
        do { try thread.wait(for: ticket) } catch { if failure == nil { failure = error } }
    }

    /// Hands back unit `u`'s pages outside this rank's shard, except ranges another present unit reads.
    private func release(_ u: Int) {
        guard present[u] else { return }
        if let ticket = tickets.removeValue(forKey: u), let thread {  // never free what a gather still writes
            do { try thread.wait(for: ticket) } catch { if failure == nil { failure = error } }
        }
        present[u] = false
        for range in units[u] where !units.indices.contains(where: { $0 != u && present[$0] && units[$0].contains(range) }) {
            for part in range.outside(own) { arena.values.release(part) }
        }
    }

    func beforeForward(_ u: Int) {
        require(u)
        fetch(u + 1)
        sample()
    }

    func afterForward(_ u: Int, backwardFollows: Bool) {
        if !(backwardFollows && u == units.count - 1) { release(u) }
    }

    func beforeBackward(_ u: Int) {
        if readInBackward[u] { require(u) }
        if u > 0 && readInBackward[u - 1] { fetch(u - 1) }
        sample()
    }

    func afterBackward(_ u: Int) {
        sample()
        release(u)
    }

    /// Gathers every unit (for saving the whole model); `releaseAll` partitions it again.
    func gatherAll() throws {
        for u in units.indices { fetch(u) }
        for u in units.indices { require(u) }
        try check()
    }

    func releaseAll() {
        for u in units.indices { release(u) }
    }

    /// Throws the first communication failure since the last check.
    func check() throws {
        if let failure {
            self.failure = nil
            throw failure
        }
    }
}
