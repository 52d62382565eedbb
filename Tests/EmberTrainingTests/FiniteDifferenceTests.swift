import EmberNN
import EmberTensor
import Foundation
import Testing

/// Each op's backward against central differences of its forward: for L = Σ r ⊙ op(inputs) with a
/// fixed random r, dL/dinput from the tape must match (L(x + ε) − L(x − ε)) / 2ε at sampled
/// coordinates of every input.
@Suite struct FiniteDifferenceTests {
    struct Random {
        var state: UInt64
        mutating func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Double(state >> 40) / Double(1 << 24)) * 2 - 1
        }
        mutating func values(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in next() * scale } }
    }

    /// Returns the largest error relative to the largest analytic gradient of each input.
    @discardableResult
    static func check(_ name: String, _ inputs: [Variable], epsilon: Float = 1e-2, tolerance: Float = 1e-2,
                      _ build: (Tape, [Variable]) -> Variable) -> Float {
        var random = Random(state: 99)
        let probe = build(Tape(), inputs)
        let r = random.values(probe.count)
        func objective() -> Double {
            let y = build(Tape(), inputs)
            return zip(y.values, r).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        let tape = Tape()
        let y = build(tape, inputs)
        y.gradient.pointer.update(from: r, count: r.count)
        tape.backward()
        var worst: Float = 0
        for (k, input) in inputs.enumerated() where input.requiresGradient {
            let analytic = input.gradient.values
            let scale = max(analytic.map(abs).max()!, 1e-3)
            for _ in 0..<24 {
                let j = Int((random.next() * 0.5 + 0.5) * Float(input.count)) % input.count
                let saved = input.pointer[j]
                input.pointer[j] = saved + epsilon
                let plus = objective()
                input.pointer[j] = saved - epsilon
                let minus = objective()
                input.pointer[j] = saved
                let numeric = Float((plus - minus) / Double(2 * epsilon))
                let error = abs(numeric - analytic[j]) / scale
                worst = max(worst, error)
                #expect(error <= tolerance, "\(name) input \(k) [\(j)]: numeric \(numeric), analytic \(analytic[j])")
            }
        }
        print("\(name): worst finite-difference error \(worst) of the largest gradient")
        return worst
    }

    static func variable(_ shape: [Int], seed: UInt64, scale: Float = 1, offset: Float = 0) -> Variable {
        var random = Random(state: seed)
        return Variable(shape: shape, values: random.values(shape.reduce(1, *), scale: scale).map { $0 + offset })
    }

    @Test func linear() {
        Self.check("linear", [Self.variable([5, 7], seed: 1), Self.variable([6, 7], seed: 2)]) { $0.linear($1[0], $1[1]) }
    }

    @Test func rmsNorm() {
        Self.check("rmsNorm", [Self.variable([4, 8], seed: 3), Self.variable([8], seed: 4, scale: 0.3, offset: 1)]) {
            $0.rmsNorm($1[0], $1[1], epsilon: 1e-5)
        }
    }

    @Test(arguments: [RopeMode.neox, .interleaved])
    func rope(mode: RopeMode) {
        let parameters = RopeParameters(dimensions: 8, base: 10000, mode: mode)
        Self.check("rope \(mode)", [Self.variable([3, 16], seed: 5)]) {
            $0.rope($1[0], positions: [0, 3, 7], heads: 2, headDim: 8, parameters: parameters)
        }
    }

    @Test func attention() {
        // 2 sequences of 5 tokens, 4 query heads sharing 2 key/value heads of 6 dimensions.
        Self.check("attention", [Self.variable([10, 24], seed: 6), Self.variable([10, 12], seed: 7), Self.variable([10, 12], seed: 8)]) {
            $0.attention(q: $1[0], k: $1[1], v: $1[2], batch: 2, tokens: 5, heads: 4, kvHeads: 2, headDim: 6)
        }
    }

    @Test func attentionOverSeveralQueryChunks() {
        // 70 tokens: two chunks of queries (64 + 6), the second meeting all 70 keys.
        Self.check("attention, 70 tokens", [Self.variable([70, 8], seed: 18), Self.variable([70, 4], seed: 19), Self.variable([70, 4], seed: 20)]) {
            $0.attention(q: $1[0], k: $1[1], v: $1[2], batch: 1, tokens: 70, heads: 2, kvHeads: 1, headDim: 4)
        }
    }

    @Test func slidingWindowAttentionOverPackedRows() {
        // A window of 5 over 70 tokens (two query chunks) in one row packed as 40 + 30 tokens: the
        // backward recomputes the probabilities under both masks.
        let starts = (0..<70).map { Int32($0 < 40 ? 0 : 40) }
        Self.check("windowed block-diagonal attention, 70 tokens", [Self.variable([70, 8], seed: 24), Self.variable([70, 4], seed: 25),
                                                                    Self.variable([70, 4], seed: 26)]) {
            $0.attention(q: $1[0], k: $1[1], v: $1[2], batch: 1, tokens: 70, heads: 2, kvHeads: 1, headDim: 4, segmentStarts: starts, window: 5)
        }
    }

    @Test func blockDiagonalAttention() {
        // Packed rows: row 0 holds sequences of 3 and 4 tokens, row 1 of 2, 3 and 2.
        let starts: [Int32] = [0, 0, 0, 3, 3, 3, 3, 0, 0, 2, 2, 2, 5, 5]
        let q = Self.variable([14, 24], seed: 21), k = Self.variable([14, 12], seed: 22), v = Self.variable([14, 12], seed: 23)
        Self.check("block-diagonal attention", [q, k, v]) {
            $0.attention(q: $1[0], k: $1[1], v: $1[2], batch: 2, tokens: 7, heads: 4, kvHeads: 2, headDim: 6, segmentStarts: starts)
        }
        // The second sequence of row 0 alone gives the same rows as in its packed row.
        func rows(_ x: Variable, _ range: Range<Int>) -> Variable {
            Variable(shape: [range.count, x.shape[1]], values: Array(x.values[range.lowerBound * x.shape[1]..<range.upperBound * x.shape[1]]))
        }
        let packed = Tape().attention(q: q, k: k, v: v, batch: 2, tokens: 7, heads: 4, kvHeads: 2, headDim: 6, segmentStarts: starts)
        let alone = Tape().attention(q: rows(q, 3..<7), k: rows(k, 3..<7), v: rows(v, 3..<7), batch: 1, tokens: 4, heads: 4, kvHeads: 2, headDim: 6)
        let difference = zip(Array(packed.values[3 * 24..<7 * 24]), alone.values).map { abs($0 - $1) }.max()!
        print("block-diagonal attention: a packed sequence against the same sequence alone, max difference \(difference)")
        #expect(difference < 1e-6)
    }

    /// A frozen f32 matrix [24, 64] as a weight of any storage type would be used.
    static func frozenMatrix(seed: UInt64) -> WeightMatrix {
        let w = variable([24, 64], seed: seed, scale: 0.5)
        return WeightMatrix(type: .f32, rows: 24, columns: 64, data: UnsafeRawPointer(w.pointer), owner: w.value)
    }

    /// The LoRA linear y = x·Wᵀ + s·B·A·dropout(x), W frozen: gradients of x, A and B.
    @Test func loraLinear() {
        let w = Self.frozenMatrix(seed: 31)
        for rate: Float in [0, 0.25] {
            let x = Self.variable([5, 64], seed: 32), a = Self.variable([4, 64], seed: 33, scale: 0.3), b = Self.variable([24, 4], seed: 34)
            Self.check("LoRA linear, dropout \(rate)", [x, a, b]) { tape, v in
                tape.add(tape.frozenLinear(v[0], w), tape.linear(tape.linear(tape.dropout(v[0], rate: rate, seed: 7), v[1]), v[2]), scale: 2)
            }
        }
    }

    /// q8_0 weights in the frozen products: forward and input gradient equal those of the weights
    /// expanded to f32 beforehand (what "without dequantizing in memory" must not change).
    @Test func frozenQuantizedProducts() {
        var random = Random(state: 41)
        let rows = 300, columns = 96, m = 7, blocks = columns / 32
        var bytes: [UInt8] = []
        for _ in 0..<rows * blocks {
            let scale = Float16(0.01 + 0.02 * abs(random.next()))
            withUnsafeBytes(of: scale.bitPattern.littleEndian) { bytes += $0 }
            for _ in 0..<32 { bytes.append(UInt8(bitPattern: Int8(random.next() * 127))) }
        }
        let storage = FloatBuffer(count: bytes.count / 4 + 1)
        UnsafeMutableRawPointer(storage.pointer).copyMemory(from: bytes, byteCount: bytes.count)
        let q = WeightMatrix(type: .q8_0, rows: rows, columns: columns, data: UnsafeRawPointer(storage.pointer), owner: storage)
        let expanded = FloatBuffer(count: rows * columns)
        dequantize(.q8_0, from: q.data, to: expanded.pointer, count: rows * columns)
        let f = WeightMatrix(type: .f32, rows: rows, columns: columns, data: UnsafeRawPointer(expanded.pointer), owner: expanded)
        let x = Self.variable([m, columns], seed: 42), dy = random.values(m * rows)
        var outputs: [[Float]] = [], gradients: [[Float]] = []
        for w in [q, f] {
            x.zeroGradient()
            let tape = Tape()
            let y = tape.frozenLinear(x, w)
            y.gradient.pointer.update(from: dy, count: dy.count)
            tape.backward()
            outputs.append(y.values)
            gradients.append(x.gradient.values)
        }
        let forward = zip(outputs[0], outputs[1]).map { abs($0 - $1) }.max()!, backward = zip(gradients[0], gradients[1]).map { abs($0 - $1) }.max()!
        print("frozen q8_0 products against the f32 expansion: forward max difference \(forward), input gradient \(backward)")
        #expect(forward < 1e-4 && backward < 1e-4)
    }

    /// GPT-2's ops: LayerNorm with its bias, GELU (tanh form), and a bias added to every row.
    @Test func layerNorm() {
        Self.check("layerNorm", [Self.variable([4, 8], seed: 31, scale: 2, offset: 0.5), Self.variable([8], seed: 32, scale: 0.3, offset: 1),
                                 Self.variable([8], seed: 33, scale: 0.3)]) {
            $0.layerNorm($1[0], $1[1], $1[2], epsilon: 1e-5)
        }
    }

    @Test func gelu() {
        Self.check("gelu", [Self.variable([20], seed: 34, scale: 3)]) { $0.gelu($1[0]) }
    }

    @Test func addBias() {
        Self.check("addBias", [Self.variable([3, 5], seed: 35), Self.variable([5], seed: 36)]) { $0.addBias($1[0], $1[1]) }
    }

    @Test func swiglu() {
        Self.check("swiglu", [Self.variable([20], seed: 9, scale: 3), Self.variable([20], seed: 10)]) { $0.swiglu($1[0], $1[1]) }
    }

    @Test func add() {
        Self.check("add", [Self.variable([9], seed: 11), Self.variable([9], seed: 12)]) { $0.add($1[0], $1[1]) }
    }

    @Test func embedding() {
        Self.check("embedding", [Self.variable([6, 4], seed: 13)]) { $0.embedding([2, 5, 2, 0], $1[0]) }
    }

    @Test func crossEntropy() {
        Self.check("crossEntropy", [Self.variable([4, 11], seed: 14, scale: 3)]) { $0.crossEntropy($1[0], targets: [3, -100, 10, 0]) }
    }

    /// The fused projection and loss, in chunks of 3 rows (over 7 rows, one not scored), against
    /// central differences and against `crossEntropy(linear(h, w))`.
    @Test func linearCrossEntropy() {
        let targets: [Int32] = [3, -100, 10, 0, 7, 7, 1]
        let h = Self.variable([7, 5], seed: 16), w = Self.variable([11, 5], seed: 17, scale: 2)
        Self.check("linearCrossEntropy", [h, w]) { $0.linearCrossEntropy($1[0], $1[1], targets: targets, chunkFloats: 33) }
        func run(_ fused: Bool) -> (loss: Float, dh: [Float], dw: [Float]) {
            h.zeroGradient(); w.zeroGradient()
            let tape = Tape()
            let loss = fused ? tape.linearCrossEntropy(h, w, targets: targets, chunkFloats: 33) : tape.crossEntropy(tape.linear(h, w), targets: targets)
            tape.backward(loss, seed: 0.5)
            return (loss.values[0], h.gradient.values, w.gradient.values)
        }
        let fused = run(true), plain = run(false)
        let difference = max(abs(fused.loss - plain.loss), zip(fused.dh + fused.dw, plain.dh + plain.dw).map { abs($0 - $1) }.max()!)
        print("linearCrossEntropy against crossEntropy(linear): max difference \(difference) (loss \(fused.loss))")
        #expect(difference < 1e-5)
    }

    @Test func tokenLogProbabilities() {
        Self.check("tokenLogProbabilities", [Self.variable([4, 11], seed: 15, scale: 3)]) {
            $0.tokenLogProbabilities($1[0], targets: [3, 7, -100, 0])
        }
    }

    @Test func checkpointedBlock() {
        // A small residual block run under recomputation: its inputs' and parameter's gradients.
        let weight = Self.variable([6, 6], seed: 17)
        Self.check("checkpoint", [Self.variable([3, 6], seed: 16), weight]) { tape, inputs in
            tape.checkpoint(inputs[0]) { tape, x in tape.add(x, tape.swiglu(tape.linear(x, inputs[1]), x)) }
        }
    }
}
