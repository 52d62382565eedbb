import EmberDistributed
import EmberNN
import EmberTensor
import Foundation

/// How a run is spread over processes: the world's ranks form a grid of tensor × data × pipeline
/// groups (tensor-parallel ranks adjacent, so that a tensor group stays inside a machine, the
/// pipeline stages outermost). Data-parallel ranks hold the same part of the model, take their
/// shares of each global batch, and sum their gradients; tensor-parallel ranks hold slices of the
/// same layers; pipeline stages hold consecutive layers.
public struct Parallelism: @unchecked Sendable {
    /// Every rank of the job.
    public var world: any Communicator
    /// The data-parallel group.
    public var data: any Communicator
    /// The tensor-parallel group (a group of one without tensor parallelism).
    public var tensor: any Communicator
    /// The pipeline: this rank's counterparts in every stage, in stage order.
    public var pipeline: any Communicator
    /// Sequence parallelism inside the tensor group.
    public var sequenceParallel = false
    /// Micro-batches a pipeline runs per step (its 1F1B schedule), when given: it must be what each
    /// data-parallel share of the global batch holds (gradient accumulation / data-parallel ranks).
    public var microBatches: Int?
    /// Whether sequence parallelism sums the norm gradients over the tensor group; false only as
    /// a negative control, which must break the agreement with the single process.
    public var reduceNormGradients = true
    /// Gradients are all-reduced in buckets of about this many bytes (PyTorch DDP's default 25 MB).
    public var bucketBytes: Int
    /// Whether buckets are all-reduced during the backward (on a communication thread) or after it.
    public var overlap: Bool
    /// ZeRO: 0 replicates everything; 1 partitions the AdamW moments over the data-parallel ranks
    /// (each rank updates its shard of the parameters, then the shards are all-gathered) and
    /// reduce-scatters the gradients, so each rank receives only the sum of its shard; 2 also hands
    /// back the memory of the gradients outside the shard once their bucket is reduced; 3 also
    /// partitions the parameters (`ParameterPartition`).
    public var zeroStage: Int

    public init(world: any Communicator, bucketBytes: Int = 25 << 20, overlap: Bool = true, zeroStage: Int = 0) {
        self.world = world
        data = world
        tensor = LocalCommunicator()
        pipeline = LocalCommunicator()
        self.bucketBytes = bucketBytes
        self.overlap = overlap
        self.zeroStage = zeroStage
    }

    /// Every rank's shard of `count` flat values partitioned over the data group, in rank order.
    public func shards(of count: Int) -> [Range<Int>] {
        var start = 0
        return shardCounts(count, parts: data.size).map { n in
            defer { start += n }
            return start..<start + n
        }
    }

    /// The world's ranks as `tensorSize` × data × `stages`: world rank w is tensor rank w mod T,
    /// data rank (w / T) mod D and stage w / (T·D), with D = N / (T·P).
    public init(world: any Communicator, tensorSize: Int, stages: Int, sequenceParallel: Bool = false, microBatches: Int? = nil,
                bucketBytes: Int = 25 << 20, overlap: Bool = true, zeroStage: Int = 0, checkOrder: Bool = false) throws {
        let n = world.size
        guard tensorSize >= 1, stages >= 1, n % (tensorSize * stages) == 0 else {
            throw TrainingError("\(n) ranks cannot be split into tensor-parallel groups of \(tensorSize) and \(stages) pipeline stages: N must divide by T·P = \(tensorSize * stages)")
        }
        guard !sequenceParallel || tensorSize > 1 else { throw TrainingError("sequence parallelism works inside a tensor-parallel group: give --tensor-parallel 2 or more") }
        guard (microBatches ?? 1) >= 1 else { throw TrainingError("a pipeline needs at least one micro-batch") }
        self.init(world: world, bucketBytes: bucketBytes, overlap: overlap, zeroStage: zeroStage)
        let d = n / (tensorSize * stages), w = world.rank
        let t = w % tensorSize, r = (w / tensorSize) % d, p = w / (tensorSize * d)
        if n > 1 {
            tensor = tensorSize == 1 ? LocalCommunicator() : try world.split(color: p * d + r, key: t)
            data = d == n ? world : try world.split(color: p * tensorSize + t, key: r)
            pipeline = stages == 1 ? LocalCommunicator() : try world.split(color: r * tensorSize + t, key: p)
        }
        if checkOrder && n > 1 {
            self.world = OrderCheckedCommunicator(world)
            data = OrderCheckedCommunicator(data)
            tensor = OrderCheckedCommunicator(tensor)
            pipeline = OrderCheckedCommunicator(pipeline)
        }
        self.sequenceParallel = sequenceParallel
        self.microBatches = microBatches
    }

    /// The part of the model this rank holds.
    public var layout: ModelLayout { ModelLayout(tensorRank: tensor.rank, tensorSize: tensor.size, stage: pipeline.rank, stages: pipeline.size) }

    /// One process.
    public static var single: Parallelism { Parallelism(world: LocalCommunicator()) }

    public var isLeader: Bool { world.rank == 0 }
    public var share: DataShare { DataShare(rank: data.rank, ranks: data.size) }
}

/// Sums the gradient arena over the data-parallel ranks in buckets (all-reduced, or under ZeRO
/// reduce-scattered along the ranks' shards), from the end of the arena to its start, the order in which the backward finishes them: the model reports how far from the
/// end its gradients are final (`ready(from:)`), every bucket wholly past that point is handed to
/// the communication thread, and the backward goes on. Every rank has the same buckets and the
/// backward finishes them in the same order, so the ranks call the all-reduces in the same order.
final class GradientBuckets {
    let communicator: any Communicator
    let gradients: FloatBuffer
    /// Contiguous ranges of the arena, in arena order; all-reduced last to first.
    let buckets: [Range<Int>]
    private let thread: CommunicationThread?
    /// Whether the gradients outside this rank's shard give their memory back once reduced (ZeRO-2/3).
    private let releasing: Bool
    private var next = 0
    /// Added to the gradients of each bucket before it is reduced: the sum of this rank's earlier
    /// micro-batches of the step, when it has several.
    private var accumulated: FloatBuffer?

    /// Under ZeRO, every rank's shard of the arena, in rank order: each bucket is reduce-scattered
    /// along them, so a rank receives the sums of its own shard only.
    let shards: [Range<Int>]?

    init(gradients: FloatBuffer, communicator: any Communicator, bucketBytes: Int, thread: CommunicationThread?,
         shards: [Range<Int>]? = nil, releasing: Bool = false) {
        self.communicator = communicator
        self.gradients = gradients
        self.shards = shards
        self.releasing = releasing
        let size = max(1, bucketBytes / 4)
        buckets = stride(from: 0, to: gradients.count, by: size).map { $0..<min($0 + size, gradients.count) }
        self.thread = thread
    }

    /// Seconds the trainer spent on gradient all-reduces after its backward ended: waiting for the
    /// buckets still being reduced, or reducing them all when nothing overlaps.
    private(set) var exposedSeconds = 0.0

    /// Starts a step's last backward; `accumulated` holds this rank's earlier micro-batches, if any.
    func begin(accumulated: FloatBuffer?) {
        next = buckets.count - 1
        self.accumulated = accumulated
    }

    /// The gradients from `offset` to the end of the arena are final.
    func ready(from offset: Int) {
        while next >= 0 && buckets[next].lowerBound >= offset {
            let range = buckets[next]
            next -= 1
            if let thread { thread.submit { [self] in try reduce(range) } }
        }
    }

    /// After the backward: reduces what is left and waits for every bucket.
    func finish() throws {
        let start = DispatchTime.now().uptimeNanoseconds
        defer {
            exposedSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            accumulated = nil
        }
        if let thread {
            ready(from: 0)
            try thread.wait()
        } else {
            for range in buckets.reversed() { try reduce(range) }
        }
    }

    private func reduce(_ range: Range<Int>) throws {
        let g = gradients.pointer + range.lowerBound
        if let accumulated {
            let a = accumulated.pointer + range.lowerBound
            for i in 0..<range.count { g[i] += a[i] }
        }
        guard let shards else { return try communicator.allReduce(g, count: range.count, .sum) }
        let parts = shards.map { range.clamped(to: $0) }
        let mine = parts[communicator.rank]
        let received = FloatBuffer(uninitializedCount: max(1, mine.count))
        try communicator.reduceScatter(g, into: received.pointer, counts: parts.map(\.count))
        (gradients.pointer + mine.lowerBound).update(from: received.pointer, count: mine.count)
        if releasing {
            for part in range.outside(shards[communicator.rank]) { gradients.release(part) }
        }
    }
}

extension Range where Bound == Int {
    /// The parts of this range before and after `other` (empty ones included).
    func outside(_ other: Range<Int>) -> [Range<Int>] {
        let low = Swift.min(upperBound, Swift.max(lowerBound, other.lowerBound)), high = Swift.max(lowerBound, Swift.min(upperBound, other.upperBound))
        return [lowerBound..<low, Swift.max(low, high)..<upperBound]
    }
}
