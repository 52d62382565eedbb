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
