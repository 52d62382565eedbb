import EmberDistributed
import EmberModels
import EmberTensor

/// Which part of the model one rank holds under Megatron-style tensor parallelism (over
/// `tensorSize` ranks) and pipeline parallelism (over `stages`):
///
/// - tensor parallel: Q/K/V and gate/up are split by rows (column-parallel: this rank's heads and
///   its slice of the intermediate size), O and down by columns (row-parallel), the embedding and
///   an untied output by vocabulary rows; the vocabulary is padded to a multiple of `tensorSize`
///   with rows of zeros whose logits are left out of every softmax. Norms are replicated.
/// - pipeline parallel: stage s holds a contiguous run of layers (sizes differing by at most one);
///   the first stage holds the embedding, the last the final norm and the output (with tied
///   embeddings, a copy of the embedding whose gradient is summed with the first stage's).
public struct ModelLayout: Sendable, Equatable {
    public var tensorRank = 0, tensorSize = 1
    public var stage = 0, stages = 1

    public init(tensorRank: Int = 0, tensorSize: Int = 1, stage: Int = 0, stages: Int = 1) {
        self.tensorRank = tensorRank
        self.tensorSize = tensorSize
        self.stage = stage
        self.stages = stages
    }

    public static let whole = ModelLayout()

    public var isWhole: Bool { tensorSize == 1 && stages == 1 }
    public var isFirstStage: Bool { stage == 0 }
    public var isLastStage: Bool { stage == stages - 1 }

    /// The layers of stage `stage`.
    public func layers(_ count: Int, stage: Int? = nil) -> Range<Int> {
        let sizes = shardCounts(count, parts: stages), s = stage ?? self.stage
        let start = sizes[..<s].reduce(0, +)
        return start..<start + sizes[s]
    }

    /// The vocabulary rounded up to a multiple of the tensor-parallel size.
    public func paddedVocabulary(_ v: Int) -> Int { (v + tensorSize - 1) / tensorSize * tensorSize }

    /// Why this layout cannot hold `c`, if it cannot.
    public func check(_ c: LlamaConfiguration) throws {
        let t = tensorSize
        if t > 1 {
            guard c.headCount % t == 0, c.kvHeadCount % t == 0 else {
                throw TrainingError("tensor parallelism over \(t) ranks splits the attention heads: the model has \(c.headCount) heads and \(c.kvHeadCount) key/value heads, and both must divide by \(t)")
            }
            guard c.intermediateSize % t == 0 else {
                throw TrainingError("tensor parallelism over \(t) ranks splits the feed-forward layer: its size \(c.intermediateSize) must divide by \(t)")
            }
        }
        guard stages <= c.layerCount else {
            throw TrainingError("\(stages) pipeline stages need at least \(stages) layers; the model has \(c.layerCount)")
        }
    }

    /// How a tensor of the whole model is cut for this rank.
    public struct Slice: Sendable, Equatable {
        /// The dimension cut (0: rows, 1: columns), or nil when the tensor is held whole.
        public var axis: Int?
        /// The first row or column of the whole tensor this rank holds, and how many it holds
        /// (rows past the whole tensor's end are padding: zeros).
        public var start = 0, count = 0
        public var localShape: [Int]
    }

    /// The cut of `t` (shape `shape` in the whole model) on this rank, nil when the rank holds none of it.
    public func slice(_ t: LlamaTensor, shape: [Int], _ c: LlamaConfiguration) -> Slice? {
        if let layer = t.layer, !layers(c.layerCount).contains(layer) { return nil }
        let T = tensorSize, r = tensorRank
        func rows(_ n: Int) -> Slice { Slice(axis: 0, start: r * n, count: n, localShape: [n, shape[1]]) }
        func columns(_ n: Int) -> Slice { Slice(axis: 1, start: r * n, count: n, localShape: [shape[0], n]) }
        let whole = Slice(axis: nil, start: 0, count: 0, localShape: shape)
        switch t.role {
        case .embedding:
            // The first stage's input, and with tied embeddings the last stage's output too.
            guard isFirstStage || (isLastStage && c.tieWordEmbeddings) else { return nil }
            return T == 1 ? whole : rows(paddedVocabulary(c.vocabularySize) / T)
        case .output:
            guard isLastStage else { return nil }
            return T == 1 ? whole : rows(paddedVocabulary(c.vocabularySize) / T)
        case .finalNorm: return isLastStage ? whole : nil
        case .attentionNorm, .feedForwardNorm: return whole
        case .query, .key, .value, .gate, .up: return T == 1 ? whole : rows(shape[0] / T)
        case .attentionOutput, .down: return T == 1 ? whole : columns(shape[1] / T)
        }
    }

    /// Copies this rank's cut of a whole tensor into `local`.
    public static func cut(_ full: UnsafePointer<Float>, shape: [Int], _ s: Slice, into local: UnsafeMutablePointer<Float>) {
        let rows = shape[0], columns = shape.count > 1 ? shape[1] : 1
        switch s.axis {
        case nil: local.update(from: full, count: shape.reduce(1, *))
        case 0:
            let held = max(0, min(s.count, rows - s.start))
            if held > 0 { local.update(from: full + s.start * columns, count: held * columns) }
            (local + held * columns).update(repeating: 0, count: (s.count - held) * columns)
        default:
            for i in 0..<rows { (local + i * s.count).update(from: full + i * columns + s.start, count: s.count) }
        }
    }

    /// Puts a rank's cut back into the whole tensor (padding rows dropped).
    public static func place(_ local: UnsafePointer<Float>, shape: [Int], _ s: Slice, into full: UnsafeMutablePointer<Float>) {
        let rows = shape[0], columns = shape.count > 1 ? shape[1] : 1
        switch s.axis {
        case nil: full.update(from: local, count: shape.reduce(1, *))
        case 0:
            let held = max(0, min(s.count, rows - s.start))
            if held > 0 { (full + s.start * columns).update(from: local, count: held * columns) }
        default:
            for i in 0..<rows { (full + i * columns + s.start).update(from: local + i * s.count, count: s.count) }
        }
    }
}
