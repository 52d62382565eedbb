import EmberTensor

/// The differentiable ops. Each runs its forward kernel now and records its backward kernel.
/// Shapes are given as [rows, columns]; a variable of any shape is read as rows of its last dimension.
extension Tape {
    /// y [M, N] = x [M, K] · wᵀ, w [N, K] (a linear layer without bias), its products in `precision`.
    public func linear(_ x: Variable, _ w: Variable, precision: Precision = .f32) -> Variable {
        let N = w.shape[0], K = w.shape[1], M = x.count / K
        precondition(x.count == M * K, "linear: input \(x.shape) is not rows of \(K)")
        let y = Variable(output: [M, N])
        matmulLarge(x.pointer, w.pointer, y.pointer, m: M, n: N, k: K, precision: precision, pool: pool)
        record { [pool] in
            matmulBackward(dy: y.gradient.pointer, x: x.pointer, w: w.pointer, dx: x.gradientIfWanted, dw: w.gradientIfWanted,
                           m: M, n: N, k: K, precision: precision, pool: pool)
        }
        return y
    }

    /// RMSNorm over rows of x [M, C] with weight [C].
    public func rmsNorm(_ x: Variable, _ weight: Variable, epsilon: Float) -> Variable {
        let C = weight.count, M = x.count / C
        let y = Variable(output: x.shape), rstd = FloatBuffer(uninitializedCount: M)
        pool.parallelRanges(M) { r in
            rmsNormForward(x.pointer + r.lowerBound * C, weight: weight.pointer, out: y.pointer + r.lowerBound * C,
                           rows: r.count, dim: C, epsilon: epsilon, rstd: rstd.pointer + r.lowerBound)
        }
        record { [pool] in
            let dx = x.gradientIfWanted, dy = y.gradient.pointer  // made here, not racing inside the threads
            pool.parallelRanges(M) { r in
                rmsNormBackward(dout: dy + r.lowerBound * C, x: x.pointer + r.lowerBound * C, weight: weight.pointer,
                                rstd: rstd.pointer + r.lowerBound, dx: dx.map { $0 + r.lowerBound * C }, dweight: nil, rows: r.count, dim: C)
            }
            if let dw = weight.gradientIfWanted {  // one pass over all rows: the sum has a fixed order
                rmsNormBackward(dout: dy, x: x.pointer, weight: weight.pointer, rstd: rstd.pointer,
                                dx: nil, dweight: dw, rows: M, dim: C)
            }
        }
        return y
    }

    /// LayerNorm over rows of x [M, C] with weight and bias [C] (GPT-2, BERT).
    public func layerNorm(_ x: Variable, _ weight: Variable, _ bias: Variable, epsilon: Float) -> Variable {
        let C = weight.count, M = x.count / C
        precondition(bias.count == C && x.count == M * C, "layerNorm: x \(x.shape) is not rows of \(C)")
        let y = Variable(output: x.shape)
        pool.parallelRanges(M) { r in
            layerNormForward(x.pointer + r.lowerBound * C, weight: weight.pointer, bias: bias.pointer, out: y.pointer + r.lowerBound * C,
                             rows: r.count, dim: C, epsilon: epsilon)
        }
        record { [pool] in
            let dx = x.gradientIfWanted, dy = y.gradient.pointer
            pool.parallelRanges(M) { r in
                layerNormBackward(dout: dy + r.lowerBound * C, x: x.pointer + r.lowerBound * C, weight: weight.pointer,
                                  dx: dx.map { $0 + r.lowerBound * C }, dweight: nil, dbias: nil, rows: r.count, dim: C, epsilon: epsilon)
            }
            let dw = weight.gradientIfWanted, db = bias.gradientIfWanted
            if dw != nil || db != nil {  // one pass over all rows: the sums have a fixed order
                layerNormBackward(dout: dy, x: x.pointer, weight: weight.pointer, dx: nil, dweight: dw, dbias: db, rows: M, dim: C, epsilon: epsilon)
            }
        }
        return y
    }

    /// GELU (tanh form) of every value.
    public func gelu(_ x: Variable) -> Variable {
        let y = Variable(output: x.shape), n = x.count
        pool.parallelRanges(n, minimumChunk: 4096) { r in geluForward(x.pointer + r.lowerBound, out: y.pointer + r.lowerBound, count: r.count) }
        record { [pool] in
            guard let dx = x.gradientIfWanted else { return }
            let dy = y.gradient.pointer
            pool.parallelRanges(n, minimumChunk: 4096) { r in
                geluBackward(x.pointer + r.lowerBound, dout: dy + r.lowerBound, dx: dx + r.lowerBound, count: r.count)
            }
        }
        return y
    }

    /// x [M, N] + bias [N] on every row.
    public func addBias(_ x: Variable, _ bias: Variable) -> Variable {
        let N = bias.count, M = x.count / N
        precondition(x.count == M * N, "addBias: x \(x.shape) is not rows of \(N)")
        let y = Variable(output: x.shape)
        y.pointer.update(from: x.pointer, count: x.count)
        for r in 0..<M { EmberTensor.add(bias.pointer, into: y.pointer + r * N, N) }
        record {
            let dy = y.gradient.pointer
            if let dx = x.gradientIfWanted { EmberTensor.add(dy, into: dx, M * N) }
            if let db = bias.gradientIfWanted { for r in 0..<M { EmberTensor.add(dy + r * N, into: db, N) } }
        }
        return y
    }

    /// Rotary embedding of x [tokens, heads · headDim] at `positions` [tokens].
    public func rope(_ x: Variable, positions: [Int32], heads: Int, headDim: Int, parameters: RopeParameters) -> Variable {
        let tokens = positions.count, width = heads * headDim
        precondition(x.count == tokens * width, "rope: input \(x.shape) is not \(tokens) × \(width)")
        let y = Variable(output: x.shape)
        y.pointer.update(from: x.pointer, count: x.count)
        positions.withUnsafeBufferPointer { p in
            pool.parallelRanges(tokens) { r in
                ropeForward(y.pointer + r.lowerBound * width, positions: p.baseAddress! + r.lowerBound, tokens: r.count,
                            heads: heads, headDim: headDim, parameters: parameters)
            }
        }
        record { [pool] in
            guard let dx = x.gradientIfWanted else { return }
            let dy = y.gradient.pointer
            positions.withUnsafeBufferPointer { p in
                pool.parallelRanges(tokens) { r in
                    let rotated = UnsafeMutablePointer<Float>.allocate(capacity: r.count * width)
                    defer { rotated.deallocate() }
                    rotated.update(from: dy + r.lowerBound * width, count: r.count * width)
                    ropeBackward(rotated, positions: p.baseAddress! + r.lowerBound, tokens: r.count, heads: heads, headDim: headDim,
                                 parameters: parameters)
                    EmberTensor.add(rotated, into: dx + r.lowerBound * width, r.count * width)
                }
            }
        }
        return y
    }

    /// Causal grouped-query attention over `batch` sequences of `tokens`: q [B·T, H·D], k, v [B·T, Hkv·D].
    /// With `segmentStarts` [B·T] (packed sequences), token i of a row attends to the tokens from
    /// `segmentStarts[i]` of its row to itself only: the block-diagonal causal mask. With `window`,
    /// token i sees only the last `window` tokens (itself included).
    public func attention(q: Variable, k: Variable, v: Variable, batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int,
                          segmentStarts: [Int32]? = nil, window: Int? = nil) -> Variable {
        let out = Variable(output: [batch * tokens, heads * headDim])
        let logSumExp = FloatBuffer(uninitializedCount: batch * heads * tokens)
        precondition(segmentStarts.map { $0.count == batch * tokens } ?? true, "attention: one segment start per token")
        func withStarts(_ body: (UnsafePointer<Int32>?) -> Void) {
            if let segmentStarts { segmentStarts.withUnsafeBufferPointer { body($0.baseAddress!) } } else { body(nil) }
        }
        withStarts { starts in
            causalAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, out: out.pointer, logSumExp: logSumExp.pointer,
                                   batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim, segmentStarts: starts,
                                   window: window, pool: pool)
        }
        record { [pool] in
            withStarts { starts in
                causalAttentionBackward(dout: out.gradient.pointer, q: q.pointer, k: k.pointer, v: v.pointer, logSumExp: logSumExp.pointer,
                                        dq: q.gradient.pointer, dk: k.gradient.pointer, dv: v.gradient.pointer, batch: batch, tokens: tokens,
                                        heads: heads, kvHeads: kvHeads, headDim: headDim, segmentStarts: starts, window: window, pool: pool)
            }
        }
        return out
    }

    /// silu(gate) ⊙ up.
    public func swiglu(_ gate: Variable, _ up: Variable) -> Variable {
        precondition(gate.count == up.count)
        let y = Variable(output: gate.shape), n = gate.count
        pool.parallelRanges(n, minimumChunk: 4096) { r in
            swigluForward(gate: gate.pointer + r.lowerBound, up: up.pointer + r.lowerBound, out: y.pointer + r.lowerBound, count: r.count)
        }
        record { [pool] in
            let dg = gate.gradient.pointer, du = up.gradient.pointer, dy = y.gradient.pointer
            pool.parallelRanges(n, minimumChunk: 4096) { r in
                swigluBackward(gate: gate.pointer + r.lowerBound, up: up.pointer + r.lowerBound, dout: dy + r.lowerBound,
                               dgate: dg + r.lowerBound, dup: du + r.lowerBound, count: r.count)
            }
        }
        return y
    }

    /// a + b (a residual connection).
    public func add(_ a: Variable, _ b: Variable) -> Variable {
        precondition(a.count == b.count)
        let y = Variable(output: a.shape), n = a.count
        y.pointer.update(from: a.pointer, count: n)
        EmberTensor.add(b.pointer, into: y.pointer, n)
        record {
            let dy = y.gradient.pointer
            if let da = a.gradientIfWanted { EmberTensor.add(dy, into: da, n) }
            if let db = b.gradientIfWanted { EmberTensor.add(dy, into: db, n) }
        }
        return y
    }

    /// x · s, for a constant s.
    public func scale(_ x: Variable, _ s: Float) -> Variable {
        let y = Variable(output: x.shape), n = x.count
        for i in 0..<n { y.pointer[i] = x.pointer[i] * s }
        record {
            guard let dx = x.gradientIfWanted else { return }
            let dy = y.gradient.pointer
            for i in 0..<n { dx[i] += dy[i] * s }
        }
        return y
    }

    /// Rows of `table` [V, C] picked by `ids`: [ids.count, C].
    public func embedding(_ ids: [Int32], _ table: Variable) -> Variable {
        let C = table.shape[1], N = ids.count
        let y = Variable(output: [N, C])
        ids.withUnsafeBufferPointer { embeddingForward(table: table.pointer, ids: $0.baseAddress!, out: y.pointer, count: N, dim: C, pool: pool) }
        record { [pool] in
            guard let dt = table.gradientIfWanted else { return }
            ids.withUnsafeBufferPointer { embeddingBackward(dout: y.gradient.pointer, ids: $0.baseAddress!, dtable: dt, count: N, dim: C, pool: pool) }
        }
        return y
    }

    /// Mean cross-entropy of logits [N, V] against `targets` [N] (negative = not scored), fused with
    /// the softmax. A scalar; 0 when nothing is scored.
    public func crossEntropy(_ logits: Variable, targets: [Int32]) -> Variable {
        let V = logits.shape.last!, N = targets.count
        precondition(logits.count == N * V)
        let lse = FloatBuffer(uninitializedCount: N)
        let (sum, count) = targets.withUnsafeBufferPointer {
            crossEntropyForward(logits: logits.pointer, targets: $0.baseAddress!, logSumExps: lse.pointer, rows: N, vocabulary: V, pool: pool)
        }
        let loss = Variable(shape: [1], values: [count == 0 ? 0 : Float(sum / Double(count))])
        record { [pool] in
            guard count > 0, let dl = logits.gradientIfWanted else { return }
            let scale = loss.gradient.pointer[0] / Float(count)
            targets.withUnsafeBufferPointer {
                crossEntropyBackward(logits: logits.pointer, targets: $0.baseAddress!, logSumExps: lse.pointer, dlogits: dl, scale: scale,
                                     rows: N, vocabulary: V, pool: pool)
            }
        }
        return loss
    }

    /// Mean cross-entropy of the logits h · wᵀ (h [N, C], w [V, C]) against `targets` [N] (negative =
    /// not scored), without holding the [N, V] logits: `crossEntropy(linear(h, w), targets:)` in a
    /// chunk of rows at a time (see `linearCrossEntropy`). The gradients are formed in the forward
    /// and only scaled in the backward. A scalar; 0 when nothing is scored.
    public func linearCrossEntropy(_ h: Variable, _ w: Variable, targets: [Int32], chunkFloats: Int = 16 << 20,
                                   precision: Precision = .f32) -> Variable {
        let V = w.shape[0], C = w.shape[1], N = targets.count
        precondition(h.count == N * C, "linearCrossEntropy: input \(h.shape) is not \(N) rows of \(C)")
        let dh = recording && h.requiresGradient ? FloatBuffer(uninitializedCount: N * C) : nil
        let dw = recording && w.requiresGradient ? FloatBuffer(count: V * C) : nil
        let (sum, count) = targets.withUnsafeBufferPointer {
            EmberTensor.linearCrossEntropy(h: h.pointer, w: w.pointer, targets: $0.baseAddress!, dh: dh?.pointer, dw: dw?.pointer,
                                           rows: N, columns: C, vocabulary: V, chunkFloats: chunkFloats, precision: precision, pool: pool)
        }
        let loss = Variable(shape: [1], values: [count == 0 ? 0 : Float(sum / Double(count))])
        record {
            guard count > 0 else { return }
            let scale = loss.gradient.pointer[0] / Float(count)
            if let dh { axpy(scale, dh.pointer, h.gradient.pointer, N * C) }
            if let dw { axpy(scale, dw.pointer, w.gradient.pointer, V * C) }
        }
        return loss
    }

    /// log softmax(logits_r)[target_r] for each row of logits [N, V]: [N] (0 where the target is negative).
    public func tokenLogProbabilities(_ logits: Variable, targets: [Int32]) -> Variable {
        let V = logits.shape.last!, N = targets.count
        precondition(logits.count == N * V)
        let lse = FloatBuffer(uninitializedCount: N), y = Variable(output: [N])
        targets.withUnsafeBufferPointer {
            tokenLogProbabilitiesForward(logits: logits.pointer, targets: $0.baseAddress!, out: y.pointer, logSumExps: lse.pointer,
                                         rows: N, vocabulary: V, pool: pool)
        }
        record { [pool] in
            guard let dl = logits.gradientIfWanted else { return }
            targets.withUnsafeBufferPointer {
                tokenLogProbabilitiesBackward(logits: logits.pointer, targets: $0.baseAddress!, logSumExps: lse.pointer, dout: y.gradient.pointer,
                                              dlogits: dl, rows: N, vocabulary: V, pool: pool)
            }
        }
        return y
    }

    /// Activation recomputation: runs `body` now without keeping anything it would save for the
    /// backward (only `input` and the output stay), and runs it again on a tape of its own when the
    /// backward reaches it. Parameters used inside receive their gradients from the second run.
    public func checkpoint(_ input: Variable, _ body: @escaping (Tape, Variable) -> Variable) -> Variable {
        let output = body(Tape(pool: pool, recording: false), input)  // nothing inside is kept
        record { [pool] in
            let inner = Tape(pool: pool)
            let leaf = Variable(shape: input.shape, value: input.value, requiresGradient: input.requiresGradient)
            let recomputed = body(inner, leaf)
            recomputed.gradient.pointer.update(from: output.gradient.pointer, count: output.count)
            inner.backward()
            if input.requiresGradient, leaf.hasGradient { EmberTensor.add(leaf.gradient.pointer, into: input.gradient.pointer, input.count) }
        }
        return output
    }
}
