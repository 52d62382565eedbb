/// Dot products between quantized weight rows and 8-bit activations (`Q8Activations`):
///
///   q8_0: Σ_b d_b · dx_b · Σ_j q_j qx_j
///   q4_0: Σ_b d_b · dx_b · Σ_j (q_j − 8) qx_j
///   q4_1: Σ_b d_b · dx_b · Σ_j q_j qx_j  +  Σ_b m_b · s_b
///
/// The float arithmetic follows llama.cpp's x86 kernels step for step: each block's integer products
/// are summed in eight lanes of four consecutive elements, each lane accumulates d·dx · lane by FMA
/// across blocks, the lanes are added pairwise (i, i+4), (i, i+2), (0, 1), and the q4_1 offsets are a
/// running FMA added last. Ember's results therefore equal llama.cpp's bit for bit, which matters
/// because these outputs are quantized again by the next layer, where any difference can flip a rounding.
///
/// The integer products are formed in f32, where every product and every sum of four is exact
/// (|q·qx| ≤ 127², four of them < 2²⁴), so they cost four 8-wide multiply-adds per block.

/// One weight row decoded into lane order (`lanes[32b + 8k + i]` = element 4i + k of block b),
/// with its per-block scales and, for q4_1, minimums.
struct DecodedRow {
    let lanes: UnsafeMutablePointer<Float>
    let scales: UnsafeMutablePointer<Float>
    let minimums: UnsafeMutablePointer<Float>
    let blocks: Int

    init(blocks: Int) {
        self.blocks = blocks
        lanes = .allocate(capacity: blocks * 32)
        scales = .allocate(capacity: blocks)
        minimums = .allocate(capacity: blocks)
    }

    func deallocate() {
        lanes.deallocate()
        scales.deallocate()
        minimums.deallocate()
    }

    func decode(_ type: DType, _ row: UnsafeRawPointer) {
        for b in 0..<blocks {
            let block = decodeBlock(type, row, b)
            scales[b] = block.scale
            minimums[b] = block.minimum
            let out = UnsafeMutableRawPointer(lanes + 32 * b)
            out.storeBytes(of: block.lanes.0, toByteOffset: 0, as: SIMD8<Float>.self)
            out.storeBytes(of: block.lanes.1, toByteOffset: 32, as: SIMD8<Float>.self)
            out.storeBytes(of: block.lanes.2, toByteOffset: 64, as: SIMD8<Float>.self)
            out.storeBytes(of: block.lanes.3, toByteOffset: 96, as: SIMD8<Float>.self)
        }
    }

    /// The dot product with activation row `x` (lanes, scales and block sums of that row).
    @inline(__always)
    func dot(_ x: UnsafePointer<Float>, scales xScales: UnsafePointer<Float>, sums: UnsafePointer<Float>, withMinimums: Bool) -> Float {
        var acc = SIMD8<Float>()
        var offsets: Float = 0
        let w = UnsafeRawPointer(lanes), xr = UnsafeRawPointer(x)
        for b in 0..<blocks {
            let o = 128 * b
            var lane = w.load(fromByteOffset: o, as: SIMD8<Float>.self) * xr.load(fromByteOffset: o, as: SIMD8<Float>.self)
            lane.addProduct(w.load(fromByteOffset: o + 32, as: SIMD8<Float>.self), xr.load(fromByteOffset: o + 32, as: SIMD8<Float>.self))
            lane.addProduct(w.load(fromByteOffset: o + 64, as: SIMD8<Float>.self), xr.load(fromByteOffset: o + 64, as: SIMD8<Float>.self))
            lane.addProduct(w.load(fromByteOffset: o + 96, as: SIMD8<Float>.self), xr.load(fromByteOffset: o + 96, as: SIMD8<Float>.self))
            acc.addProduct(SIMD8(repeating: scales[b] * xScales[b]), lane)
            if withMinimums { offsets = offsets.addingProduct(minimums[b], sums[b]) }
        }
        return horizontalSum(acc) + offsets
    }
}

extension DecodedRow {
    /// Dot products with four activation rows at once (rows `stride` floats apart; their scales and
    /// sums `blockStride` apart): each weight vector is loaded once for the four, and each row's sum
    /// is formed in exactly the order `dot` forms it, so the results are bit for bit the same.
    @inline(__always)
    func dot4(_ x: UnsafePointer<Float>, stride: Int, scales xScales: UnsafePointer<Float>, sums: UnsafePointer<Float>,
              blockStride: Int, withMinimums: Bool) -> SIMD4<Float> {
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var o0: Float = 0, o1: Float = 0, o2: Float = 0, o3: Float = 0
        let w = UnsafeRawPointer(lanes)
        let x0 = UnsafeRawPointer(x), x1 = UnsafeRawPointer(x + stride), x2 = UnsafeRawPointer(x + 2 * stride), x3 = UnsafeRawPointer(x + 3 * stride)
        @inline(__always) func lane(_ xr: UnsafeRawPointer, _ o: Int, _ w0: SIMD8<Float>, _ w1: SIMD8<Float>, _ w2: SIMD8<Float>, _ w3: SIMD8<Float>) -> SIMD8<Float> {
            var l = w0 * xr.load(fromByteOffset: o, as: SIMD8<Float>.self)
            l.addProduct(w1, xr.load(fromByteOffset: o + 32, as: SIMD8<Float>.self))
            l.addProduct(w2, xr.load(fromByteOffset: o + 64, as: SIMD8<Float>.self))
            l.addProduct(w3, xr.load(fromByteOffset: o + 96, as: SIMD8<Float>.self))
            return l
        }
        for b in 0..<blocks {
            let o = 128 * b
            let w0 = w.load(fromByteOffset: o, as: SIMD8<Float>.self), w1 = w.load(fromByteOffset: o + 32, as: SIMD8<Float>.self)
            let w2 = w.load(fromByteOffset: o + 64, as: SIMD8<Float>.self), w3 = w.load(fromByteOffset: o + 96, as: SIMD8<Float>.self)
            let s = scales[b]
            a0.addProduct(SIMD8(repeating: s * xScales[b]), lane(x0, o, w0, w1, w2, w3))
            a1.addProduct(SIMD8(repeating: s * xScales[b + blockStride]), lane(x1, o, w0, w1, w2, w3))
            a2.addProduct(SIMD8(repeating: s * xScales[b + 2 * blockStride]), lane(x2, o, w0, w1, w2, w3))
            a3.addProduct(SIMD8(repeating: s * xScales[b + 3 * blockStride]), lane(x3, o, w0, w1, w2, w3))
            if withMinimums {
                let m = minimums[b]
                o0 = o0.addingProduct(m, sums[b])
                o1 = o1.addingProduct(m, sums[b + blockStride])
                o2 = o2.addingProduct(m, sums[b + 2 * blockStride])
                o3 = o3.addingProduct(m, sums[b + 3 * blockStride])
            }
        }
        return SIMD4(horizontalSum(a0) + o0, horizontalSum(a1) + o1, horizontalSum(a2) + o2, horizontalSum(a3) + o3)
    }
}

/// Block `b` of a stored row: its four lane vectors (lane i of vector k = element 4i + k), scale and minimum.
@inline(__always)
func decodeBlock(_ type: DType, _ row: UnsafeRawPointer, _ b: Int)
    -> (lanes: (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>), scale: Float, minimum: Float) {
    switch type {
    case .q4_1, .q4_0:
        let size = type == .q4_1 ? 20 : 18
        let block = row + b * size
        let scale = halfToFloat(block.loadUnaligned(as: UInt16.self))
        let minimum = type == .q4_1 ? halfToFloat(block.loadUnaligned(fromByteOffset: 2, as: UInt16.self)) : 0
        let words = (block + size - 16).loadUnaligned(as: SIMD4<UInt32>.self)
        let w = unsafeBitCast(SIMD8<UInt32>(lowHalf: words & 0x0F0F_0F0F, highHalf: (words &>> 4) & 0x0F0F_0F0F), to: SIMD8<Int32>.self)
        let offset: Int32 = type == .q4_0 ? 8 : 0
        return ((SIMD8<Float>((w & 0xFF) &- offset), SIMD8<Float>(((w &>> 8) & 0xFF) &- offset),
                 SIMD8<Float>(((w &>> 16) & 0xFF) &- offset), SIMD8<Float>((w &>> 24) &- offset)), scale, minimum)
    case .q8_0:
        let block = row + b * 34
        let w = block.loadUnaligned(fromByteOffset: 2, as: SIMD8<Int32>.self)
        return ((SIMD8<Float>((w &<< 24) &>> 24), SIMD8<Float>((w &<< 16) &>> 24),
                 SIMD8<Float>((w &<< 8) &>> 24), SIMD8<Float>(w &>> 24)), halfToFloat(block.loadUnaligned(as: UInt16.self)), 0)
    default:
        preconditionFailure("\(type) rows have no float lanes")
    }
}

/// A stored row against one activation row, decoding each block in registers (the decoding path).
@inline(__always)
func quantizedDot(_ type: DType, _ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, scales xScales: UnsafePointer<Float>,
                  sums: UnsafePointer<Float>, blocks: Int) -> Float {
    var acc = SIMD8<Float>()
    var offsets: Float = 0
    let xr = UnsafeRawPointer(x)
    for b in 0..<blocks {
        let (w, scale, minimum) = decodeBlock(type, row, b)
        let o = 128 * b
        var lane = w.0 * xr.load(fromByteOffset: o, as: SIMD8<Float>.self)
        lane.addProduct(w.1, xr.load(fromByteOffset: o + 32, as: SIMD8<Float>.self))
        lane.addProduct(w.2, xr.load(fromByteOffset: o + 64, as: SIMD8<Float>.self))
        lane.addProduct(w.3, xr.load(fromByteOffset: o + 96, as: SIMD8<Float>.self))
        acc.addProduct(SIMD8(repeating: scale * xScales[b]), lane)
        if type == .q4_1 { offsets = offsets.addingProduct(minimum, sums[b]) }
    }
    return horizontalSum(acc) + offsets
}

/// (x0+x4 + x2+x6) + (x1+x5 + x3+x7), the pairing of an AVX horizontal add.
@inline(__always)
func horizontalSum(_ x: SIMD8<Float>) -> Float {
    let four = x.lowHalf + x.highHalf
    let two = four.lowHalf + four.highHalf
    return two[0] + two[1]
}

/// The 16-lane tree reduction: lanes (i, i+8), then (i, i+4), (i, i+2), (0, 1).
@inline(__always)
func horizontalSum(_ x: SIMD16<Float>) -> Float {
    horizontalSum(x.lowHalf + x.highHalf)
}

/// f32 activations against an f16 / bf16 / f32 row.
@inline(__always)
func floatDot(_ type: DType, _ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, count: Int) -> Float {
    switch type {
    case .f32:
        return dot(row.assumingMemoryBound(to: Float.self), x, count)
    case .f16, .bf16:
        var acc = SIMD8<Float>()
        var j = 0
        while j + 8 <= count {
            let bits = row.loadUnaligned(fromByteOffset: 2 * j, as: SIMD8<UInt16>.self)
            let w = type == .f16
                ? SIMD8<Float>(unsafeBitCast(bits, to: SIMD8<Float16>.self))
                : unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: bits) &<< 16, to: SIMD8<Float>.self)
            acc.addProduct(w, UnsafeRawPointer(x).loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self))
            j += 8
        }
        var s = acc.sum()
        while j < count {
            let bits = row.loadUnaligned(fromByteOffset: 2 * j, as: UInt16.self)
            s += (type == .f16 ? halfToFloat(bits) : bfloat16ToFloat(bits)) * x[j]
            j += 1
        }
        return s
    default:
        preconditionFailure("\(type) rows take quantized activations")
    }
}
