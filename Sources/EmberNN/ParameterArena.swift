import EmberTensor

/// Every trainable parameter of a model and its gradient in two contiguous flat buffers, each
/// tensor a view at its offset (llm.c's layout). Whole ranges of parameters or gradients can then
/// be reduced, scattered, gathered or sharded at once, whatever tensors they cross; `AdamW` keeps
/// its moments in the same order and layout.
public final class ParameterArena: @unchecked Sendable {
    /// All values, parameter after parameter.
    public let values: FloatBuffer
    /// All gradients, in the same layout as `values`.
    public let gradients: FloatBuffer
    /// The parameters, in order; each one's value and gradient are views into the buffers above.
    public let parameters: [Variable]
    /// Where each parameter starts in the flat buffers.
    public let offsets: [Int]

    public var count: Int { values.count }

    public init(_ tensors: [(name: String, shape: [Int])]) {
        var offsets: [Int] = [], total = 0
        for t in tensors {
            offsets.append(total)
            total += t.shape.reduce(1, *)
        }
        values = FloatBuffer(pagedCount: total)
        gradients = FloatBuffer(pagedCount: total)
        self.offsets = offsets
        parameters = zip(tensors, offsets).map { [values, gradients] t, offset in
            let n = t.shape.reduce(1, *)
            return Variable(shape: t.shape, value: FloatBuffer(viewing: values, offset: offset, count: n),
                            gradient: FloatBuffer(viewing: gradients, offset: offset, count: n), name: t.name)
        }
    }

    /// The range of the flat buffers that holds parameter `index`.
    public func range(of index: Int) -> Range<Int> { offsets[index]..<offsets[index] + parameters[index].count }

    /// Where parameter `p` (one of `parameters`) starts in the flat buffers.
    public func offset(of p: Variable) -> Int {
        p.value.pointer - values.pointer
    }

    /// Scales the gradients so that their global L2 norm is at most `maximum`, as
    /// `torch.nn.utils.clip_grad_norm_` does, and returns the norm before clipping. With `range`
    /// (a ZeRO shard) only those gradients are read and scaled, and `total` turns their sum of
    /// squares into the whole model's (a sum over the ranks). Squares are added in f64 tensor by
    /// tensor; frozen parameters are left out, and so are those `counted` leaves out (a copy that
    /// another rank counts: a norm replicated over a tensor-parallel group).
    @discardableResult
    public func clipGradients(maximum: Float, in range: Range<Int>? = nil, counted: (Int) -> Bool = { _ in true },
                              total: (Double) throws -> Double = { $0 }) rethrows -> Float {
        let range = range ?? 0..<count, g = gradients.pointer
        var squares = 0.0
        for (i, p) in parameters.enumerated() where p.requiresGradient && counted(i) {
            var sum = 0.0
            for j in self.range(of: i).clamped(to: range) { sum += Double(g[j]) * Double(g[j]) }
            squares += sum
        }
        let norm = Float(try total(squares).squareRoot())
        let coefficient = maximum / (norm + 1e-6)
        if coefficient < 1 {
            for j in range { g[j] *= coefficient }
        }
        return norm
    }

    /// Zeroes every gradient in one pass; with `releasing`, their pages are handed back to the system
    /// instead (a ZeRO-2/3 rank, whose gradients outside its shard occupy memory only while a
    /// bucket waits for its reduction).
    public func zeroGradients(releasing: Bool = false) {
        if releasing { gradients.zero(0..<count) } else { gradients.pointer.update(repeating: 0, count: gradients.count) }
    }
}
