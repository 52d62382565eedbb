import EmberDistributed
import EmberNN
import EmberTensor
import Foundation

/// The tensor-parallel group of a rank (Megatron): the ranks that each hold a slice of every
/// block's matrices and together compute one replica's forward and backward. Its collectives run
/// inside the tape's ops; a failure is kept and thrown by `check()` after the pass, since the
/// steps of a tape cannot throw.
///
/// Without sequence parallelism the residual stream is replicated: a column-parallel product's
/// input goes through `enter` (identity forward, all-reduce of its gradient) and a row-parallel
/// product's partial output through `leave` (all-reduce forward, identity backward). With
/// sequence parallelism each rank keeps its shard of the stream's rows (tokens), norms and
/// residuals run on the shard, `enter` all-gathers the rows (reduce-scatter backward) and `leave`
/// reduce-scatters them (all-gather backward): the same bytes, and a tensor-parallel-th of the
/// activations outside the products.
public final class TensorGroup: @unchecked Sendable {
    public let communicator: any Communicator
    public let sequenceParallel: Bool
    private var failure: Error?

    public init(communicator: any Communicator, sequenceParallel: Bool) {
        self.communicator = communicator
        self.sequenceParallel = sequenceParallel
    }

    public var rank: Int { communicator.rank }
    public var size: Int { communicator.size }

    func run(_ body: () throws -> Void) {
        do { try body() } catch { if failure == nil { failure = error } }
    }

    /// Throws the first collective failure since the last check.
    public func check() throws {
        if let failure {
            self.failure = nil
            throw failure
        }
    }

    /// Under sequence parallelism: the rows of a stream of `rows` that each rank holds, as element counts of rows of `width`.
    func rowCounts(_ rows: Int, width: Int) -> [Int] { shardCounts(rows, parts: size).map { $0 * width } }
    /// The first row this rank holds.
    func firstRow(_ rows: Int) -> Int { shardCounts(rows, parts: size)[..<rank].reduce(0, +) }
}

func gradientPointer(_ v: Variable) -> UnsafeMutablePointer<Float>? { v.requiresGradient ? v.gradient.pointer : nil }

extension Tape {
    /// Before a column-parallel product: x replicated [R, C] (identity; the gradient all-reduced),
    /// or with sequence parallelism x's rows of this rank, all-gathered into [R, C] (`rows` = R).
    func enter(_ x: Variable, rows R: Int, _ group: TensorGroup) -> Variable {
        let C = x.shape.last!
        if !group.sequenceParallel {
            let y = Variable(shape: x.shape, value: x.value, requiresGradient: x.requiresGradient)
            record {
                guard let dx = gradientPointer(x), y.hasGradient else { return }
                let dy = y.gradient.pointer
                group.run { try group.communicator.allReduce(dy, count: y.count, .sum) }
                EmberTensor.add(dy, into: dx, y.count)
            }
            return y
        }
        let counts = group.rowCounts(R, width: C)
        let y = Variable(shape: [R, C], value: FloatBuffer(uninitializedCount: R * C), requiresGradient: true)
        group.run { try group.communicator.allGather(x.pointer, into: y.pointer, counts: counts) }
        record {
            guard let dx = gradientPointer(x), y.hasGradient else { return }
            let mine = FloatBuffer(uninitializedCount: max(1, x.count))
            group.run { try group.communicator.reduceScatter(y.gradient.pointer, into: mine.pointer, counts: counts) }
            EmberTensor.add(mine.pointer, into: dx, x.count)
        }
        return y
    }

    /// After a row-parallel product: the partial sums y [R, C] of every rank added (all-reduce), or
    /// with sequence parallelism added and scattered by rows (reduce-scatter) to this rank's rows.
    func leave(_ y: Variable, _ group: TensorGroup) -> Variable {
        let C = y.shape.last!, R = y.count / C
        if !group.sequenceParallel {
            let out = Variable(shape: y.shape, value: FloatBuffer(uninitializedCount: y.count), requiresGradient: true)
            out.pointer.update(from: y.pointer, count: y.count)
            group.run { try group.communicator.allReduce(out.pointer, count: out.count, .sum) }
            record {
                guard let dy = gradientPointer(y), out.hasGradient else { return }
                EmberTensor.add(out.gradient.pointer, into: dy, y.count)
            }
            return out
        }
        let counts = group.rowCounts(R, width: C), mine = counts[group.rank]
        let out = Variable(shape: [mine / C, C], value: FloatBuffer(uninitializedCount: max(1, mine)).prefix(mine), requiresGradient: true)
        group.run { try group.communicator.reduceScatter(y.pointer, into: out.pointer, counts: counts) }
        record {
            guard let dy = gradientPointer(y), out.hasGradient else { return }
            let all = FloatBuffer(uninitializedCount: y.count)
            group.run { try group.communicator.allGather(out.gradient.pointer, into: all.pointer, counts: counts) }
            EmberTensor.add(all.pointer, into: dy, y.count)
        }
        return out
    }

    /// A vocabulary-parallel embedding: `table` holds rows `first ..< first + table rows` of the
    /// (padded) vocabulary; ids outside them give zeros, and `leave` adds the ranks' rows together.
    func vocabularyEmbedding(_ ids: [Int32], _ table: Variable, first: Int, _ group: TensorGroup) -> Variable {
        let C = table.shape[1], rows = table.shape[0], N = ids.count
        let local = ids.map { Int($0) - first }.map { $0 >= 0 && $0 < rows ? $0 : -1 }
        let y = Variable(shape: [N, C], value: FloatBuffer(count: N * C), requiresGradient: true)
        for (t, id) in local.enumerated() where id >= 0 { (y.pointer + t * C).update(from: table.pointer + id * C, count: C) }
        record {
            guard let dt = gradientPointer(table), y.hasGradient else { return }
            let dy = y.gradient.pointer
            for (t, id) in local.enumerated() where id >= 0 { EmberTensor.add(dy + t * C, into: dt + id * C, C) }
        }
        return leave(y, group)
    }

    /// Mean cross-entropy of logits split by vocabulary: this rank holds columns
    /// `first ..< first + V_local` of logits [N, V_local]; columns at or past `vocabulary` are
    /// padding and take no part. The row maxima, the sums of exponentials and the target logits
    /// are all-reduced over the group (3·N values), so no rank holds the whole logits.
    func vocabularyParallelCrossEntropy(_ logits: Variable, targets: [Int32], first: Int, vocabulary: Int, _ group: TensorGroup) -> Variable {
        let V = logits.shape.last!, N = targets.count
        let valid = max(0, min(V, vocabulary - first))
        var maxima = [Float](repeating: -.infinity, count: N)
        let l = logits.pointer
        for r in 0..<N { for j in 0..<valid { maxima[r] = max(maxima[r], l[r * V + j]) } }
        group.run { try group.communicator.allReduce(&maxima, count: N, .max) }
        var sums = [Float](repeating: 0, count: 2 * N)  // sums of exponentials, then target logits
        for r in 0..<N {
            var s: Float = 0
            for j in 0..<valid { s += expf(l[r * V + j] - maxima[r]) }
            sums[r] = s
            let t = Int(targets[r]) - first
            if targets[r] >= 0 && t >= 0 && t < valid { sums[N + r] = l[r * V + t] }
        }
        group.run { try group.communicator.allReduce(&sums, count: 2 * N, .sum) }
        var total = 0.0, count = 0
        for r in 0..<N where targets[r] >= 0 {
            total += Double(logf(sums[r]) + maxima[r] - sums[N + r])
            count += 1
        }
        let loss = Variable(shape: [1], values: [count == 0 ? 0 : Float(total / Double(count))])
        record { [maxima, sums] in
            guard count > 0, let dl = gradientPointer(logits) else { return }
            let scale = loss.gradient.pointer[0] / Float(count)
            for r in 0..<N where targets[r] >= 0 {
                let t = Int(targets[r]) - first, lse = logf(sums[r]) + maxima[r]
                for j in 0..<valid { dl[r * V + j] += scale * (expf(l[r * V + j] - lse) - (j == t ? 1 : 0)) }
            }
        }
        return loss
    }
}

extension FloatBuffer {
    /// The first `n` values, as a view.
    func prefix(_ n: Int) -> FloatBuffer { FloatBuffer(viewing: self, offset: 0, count: n) }
}
