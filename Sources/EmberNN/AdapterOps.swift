import EmberTensor

/// The ops of adapter training: products and lookups of frozen weights in any storage type (the
/// base of LoRA, the quantized base of QLoRA), dropout, and a scaled sum.
extension Tape {
    /// y [M, N] = x [M, K] · Wᵀ for a frozen W [N, K] of any type, in f32 arithmetic; the backward
    /// makes only x's gradient (dx += dy · W), expanding W a tile at a time.
    public func frozenLinear(_ x: Variable, _ w: WeightMatrix) -> Variable {
        let N = w.rows, K = w.columns, M = x.count / K
        precondition(x.count == M * K, "frozen linear: input \(x.shape) is not rows of \(K)")
        let y = Variable(output: [M, N])
        w.multiplyInFloat(x.pointer, y.pointer, m: M, pool: pool)
        record { [pool] in
            guard let dx = x.gradientIfWanted else { return }
            w.multiplyTransposedAccumulating(y.gradient.pointer, into: dx, m: M, pool: pool)
        }
        return y
    }

    /// Rows of a frozen `table` [V, C] of any type picked by `ids`: [ids.count, C]; no backward.
    public func frozenEmbedding(_ ids: [Int32], _ table: WeightMatrix) -> Variable {
        let C = table.columns, N = ids.count
        let y = Variable(output: [N, C])
        pool.parallelRanges(N) { r in
            for i in r { table.dequantizeRow(Int(ids[i]), into: y.pointer + i * C) }
        }
        y.requiresGradient = false
        return y
    }

    /// Inverted dropout: each value kept with probability 1 − `rate` and scaled by 1 / (1 − rate),
    /// the mask drawn from `seed` (so that a recomputation draws the same one). The identity when
    /// the tape does not record (evaluation) or the rate is 0.
    public func dropout(_ x: Variable, rate: Float, seed: UInt64) -> Variable {
        guard recording, rate > 0 else { return x }
        precondition(rate < 1, "dropout rate must be below 1")
        let n = x.count, scale = 1 / (1 - rate), threshold = UInt64(Double(rate) * Double(1 << 24))
        let mask = FloatBuffer(uninitializedCount: n), y = Variable(output: x.shape)
        var random = SplitMix64(seed: seed)
        for i in 0..<n { mask.pointer[i] = random.next() >> 40 < threshold ? 0 : scale }
        for i in 0..<n { y.pointer[i] = x.pointer[i] * mask.pointer[i] }
        record {
            guard let dx = x.gradientIfWanted else { return }
            let dy = y.gradient.pointer
            for i in 0..<n { dx[i] += dy[i] * mask.pointer[i] }
        }
        return y
    }

    /// a + scale · b.
    public func add(_ a: Variable, _ b: Variable, scale: Float) -> Variable {
        precondition(a.count == b.count)
        let y = Variable(output: a.shape), n = a.count
        for i in 0..<n { y.pointer[i] = a.pointer[i] + scale * b.pointer[i] }
        record {
            let dy = y.gradient.pointer
            if let da = a.gradientIfWanted { EmberTensor.add(dy, into: da, n) }
            if let db = b.gradientIfWanted { for i in 0..<n { db[i] += scale * dy[i] } }
        }
        return y
    }
}

/// The ops that join a model's log-probabilities to the post-training losses.
extension Tape {
    /// The sums of x's values over `segments` (ranges of its flat indices): [segments.count]. A
    /// sequence's log-probability from its tokens' (DPO, reward margins).
    public func segmentSums(_ x: Variable, _ segments: [Range<Int>]) -> Variable {
        let y = Variable(output: [segments.count])
        for (k, s) in segments.enumerated() {
            precondition(s.lowerBound >= 0 && s.upperBound <= x.count, "segment \(s) is outside \(x.count) values")
            y.pointer[k] = s.reduce(0) { $0 + x.pointer[$1] }
        }
        record {
            guard let dx = x.gradientIfWanted else { return }
            for (k, s) in segments.enumerated() { for i in s { dx[i] += y.gradient.pointer[k] } }
        }
        return y
    }

    /// A scalar loss of x whose value and gradient `loss` computes from x's values (in Double),
    /// outside the tape: the preference and policy losses of `AlignmentLosses`.
    public func externalLoss(_ x: Variable, _ loss: ([Double]) -> (value: Double, gradient: [Double])) -> Variable {
        let (value, gradient) = loss(x.values.map(Double.init))
        precondition(gradient.count == x.count, "the loss gives \(gradient.count) gradient values for \(x.count) inputs")
        let y = Variable(shape: [1], values: [Float(value)])
        record {
            guard let dx = x.gradientIfWanted else { return }
            let seed = Double(y.gradient.pointer[0])
            for i in 0..<gradient.count { dx[i] += Float(seed * gradient[i]) }
        }
        return y
    }
}
