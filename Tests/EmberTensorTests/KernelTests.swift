import EmberTensor
import Testing

/// Kernels against PyTorch (fixtures from scripts/fixtures/kernels.py, computed in f64).
@Suite struct KernelTests {
    nonisolated(unsafe) static let cases = Result { try Fixtures.json("Tests/Fixtures/kernels.json") }

    func fixture(_ name: String) throws -> [String: Any] { try Self.cases.get()[name] as! [String: Any] }

    @Test func rmsNorm() throws {
        let c = try fixture("rms_norm")
        let rows = c["rows"] as! Int, dim = c["dim"] as! Int
        let x = floats(c["x"]), w = floats(c["weight"])
        var out = [Float](repeating: 0, count: rows * dim)
        rmsNormForward(x, weight: w, out: &out, rows: rows, dim: dim, epsilon: Float(c["eps"] as! Double))
        let d = maxDifference(out, floats(c["out"]))
        print("rmsNorm max |Δ| = \(d)")
        #expect(d < 1e-5)
    }

    @Test func softmaxIsStableAndMasks() throws {
        let c = try fixture("softmax")
        var x = floats(c["x"])
        softmaxForward(&x, count: x.count)
        let d = maxDifference(x, floats(c["out"]))
        print("softmax max |Δ| = \(d)")
        #expect(d < 1e-6)
        #expect(x.allSatisfy { $0.isFinite })
        var masked: [Float] = [-.infinity, -.infinity]
        softmaxForward(&masked, count: 2)
        #expect(masked == [0, 0])
    }

    @Test func swiglu() throws {
        let c = try fixture("swiglu")
        let gate = floats(c["gate"]), up = floats(c["up"])
        var out = [Float](repeating: 0, count: gate.count)
        swigluForward(gate: gate, up: up, out: &out, count: gate.count)
        let d = maxDifference(out, floats(c["out"]))
        print("swiglu max |Δ| = \(d)")
        #expect(d < 1e-5)
    }

    /// GPT-2's LayerNorm and GELU, forward and backward, against torch autograd.
    @Test func layerNormAndItsGradients() throws {
        let c = try fixture("layer_norm")
        let rows = c["rows"] as! Int, dim = c["dim"] as! Int, eps = Float(c["eps"] as! Double)
        let x = floats(c["x"]), w = floats(c["weight"]), b = floats(c["bias"]), dout = floats(c["dout"])
        var out = [Float](repeating: 0, count: x.count), dx = out, dw = [Float](repeating: 0, count: dim), db = dw
        layerNormForward(x, weight: w, bias: b, out: &out, rows: rows, dim: dim, epsilon: eps)
        layerNormBackward(dout: dout, x: x, weight: w, dx: &dx, dweight: &dw, dbias: &db, rows: rows, dim: dim, epsilon: eps)
        let d = [maxDifference(out, floats(c["out"])), maxDifference(dx, floats(c["dx"])), maxDifference(dw, floats(c["dweight"])),
                 maxDifference(db, floats(c["dbias"]))]
        print("layerNorm max |Δ|: out \(d[0]), dx \(d[1]), dweight \(d[2]), dbias \(d[3])")
        #expect(d.allSatisfy { $0 < 1e-5 })
    }

    @Test func geluAndItsGradient() throws {
        let c = try fixture("gelu")
        let x = floats(c["x"]), dout = floats(c["dout"])
        var out = [Float](repeating: 0, count: x.count), dx = out
        geluForward(x, out: &out, count: x.count)
        geluBackward(x, dout: dout, dx: &dx, count: x.count)
        let d = (maxDifference(out, floats(c["out"])), maxDifference(dx, floats(c["dx"])))
        print("gelu (tanh) max |Δ|: out \(d.0), dx \(d.1)")
        #expect(d.0 < 1e-5 && d.1 < 1e-5)
    }

    @Test(arguments: [RopeMode.interleaved, .neox])
    func rope(mode: RopeMode) throws {
        let c = try fixture("rope")
        let tokens = c["tokens"] as! Int, heads = c["heads"] as! Int, headDim = c["head_dim"] as! Int
        var x = floats(c["x"])
        let positions = (c["positions"] as! [Int]).map(Int32.init)
        let parameters = RopeParameters(dimensions: headDim, base: Float(c["base"] as! Double), mode: mode)
        ropeForward(&x, positions: positions, tokens: tokens, heads: heads, headDim: headDim, parameters: parameters)
        let d = maxDifference(x, floats(c[mode == .interleaved ? "interleaved" : "neox"]))
        print("rope \(mode) max |Δ| = \(d)")
        // Position 2047 turns angles of ~2000 rad; f32 angle rounding alone is ~1e-4 rad there.
        #expect(d < 1e-3)
    }

    @Test func groupedQueryAttentionWithMasks() throws {
        let c = try fixture("attention")
        let T = c["tokens"] as! Int, H = c["heads"] as! Int, Hkv = c["kv_heads"] as! Int, D = c["head_dim"] as! Int
        let q = floats(c["q"]), k = floats(c["k"]), v = floats(c["v"])
        var out = [Float](repeating: 0, count: T * H * D)
        attentionForward(q: q, k: k, v: v, out: &out, tokens: T, keys: T, offset: 0, heads: H, kvHeads: Hkv, headDim: D)
        let causal = maxDifference(out, floats(c["causal"]))

        let valid = c["padded_valid_keys"] as! Int
        let mask = AttentionMask.padding(queries: T, keys: T, validKeys: valid)
        attentionForward(q: q, k: k, v: v, out: &out, tokens: T, keys: T, offset: 0, heads: H, kvHeads: Hkv, headDim: D, mask: mask.storage)
        let padded = maxDifference(out, floats(c["padded"]))

        // The cache-based kernel (f16 keys and values) against the same causal reference.
        var cached = [Float](repeating: 0, count: T * H * D)
        let k16 = k.map(Float16.init), v16 = v.map(Float16.init)
        cachedAttentionForward(q: q, k: k16, v: v16, out: &cached, tokens: T, offset: 0, heads: H, kvHeads: Hkv, headDim: D)
        let half = maxDifference(cached, floats(c["causal"]))
        print("attention max |Δ|: causal \(causal), padded \(padded), f16 cache \(half)")
        #expect(causal < 1e-5 && padded < 1e-5)
        #expect(half < 5e-3)  // f16 storage of k, v, q and the accumulator: ~2⁻¹¹ relative
    }

    @Test func causalMaskShape() {
        let m = AttentionMask.causal(queries: 2, keys: 4, offset: 2)
        #expect(m.storage == [0, 0, 0, -.infinity, 0, 0, 0, 0])
    }
}

/// f32 weight products of decode-sized batches (direct dot products, each weight row read once)
/// against OpenBLAS's SGEMM on the same values, and the same bits for a row of x whether it is
/// multiplied alone or among others.
@Suite struct DirectF32ProductTests {
    @Test func directProductsMatchSGEMMAndDoNotDependOnTheBatch() throws {
        let rows = 70, columns = 200  // neither a multiple of 4 nor of 16: every tail runs
        var random = SplitMix64(seed: 11)
        func values(_ n: Int) -> [Float] { (0..<n).map { _ in Float(random.next() % 2001) / 1000 - 1 } }
        let weights = values(rows * columns)
        var worst: Float = 0
        try weights.withUnsafeBytes { raw in
            let w = WeightMatrix(type: .f32, rows: rows, columns: columns, data: raw.baseAddress!, owner: nil)
            for m in [1, 3, 4, 9, WeightMatrix.directF32Rows] {
                let x = values(m * columns)
                var direct = [Float](repeating: 0, count: m * rows), blas = direct
                w.multiply(x, &direct, m: m)
                weights.withUnsafeBufferPointer { matmul(x, $0.baseAddress!, &blas, m: m, n: rows, k: columns) }
                worst = max(worst, maxDifference(direct, blas))
                // Row i alone gives the bits it gets in the batch.
                for i in [0, m - 1] {
                    var alone = [Float](repeating: 0, count: rows)
                    w.multiply(Array(x[i * columns..<(i + 1) * columns]), &alone, m: 1)
                    try #require(alone.map(\.bitPattern) == Array(direct[i * rows..<(i + 1) * rows]).map(\.bitPattern), "row \(i) of \(m)")
                }
            }
        }
        print("f32 direct products (m ≤ \(WeightMatrix.directF32Rows)) against SGEMM: max difference \(worst) (values of order 10)")
        #expect(worst < 1e-4)
    }
}
