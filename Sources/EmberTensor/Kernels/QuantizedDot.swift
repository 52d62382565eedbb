/// Dot products between one stored weight row and one row of 8-bit activations (`Q8Activations`),
/// multiplying in integers within each block of 32:
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
@inline(__always)
func quantizedDot(_ type: DType, _ row: UnsafeRawPointer, _ q: UnsafePointer<Int8>, _ scales: UnsafePointer<Float>,
                  _ sums: UnsafePointer<Float>, blocks: Int) -> Float {
    let rq = UnsafeRawPointer(q)
    var acc = SIMD8<Float>()
    switch type {
    case .q4_1:
        var offsets: Float = 0
        for b in 0..<blocks {
            let block = row + b * 20
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let m = halfToFloat(block.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            offsets = offsets.addingProduct(m, sums[b])
            let lanes = nibbleLanes(block + 4, rq + 32 * b, offset: 0)
            acc.addProduct(SIMD8<Float>(repeating: d * scales[b]), SIMD8<Float>(lanes))
        }
        return horizontalSum(acc) + offsets
    case .q4_0:
        for b in 0..<blocks {
            let block = row + b * 18
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let lanes = nibbleLanes(block + 2, rq + 32 * b, offset: 8)
            acc.addProduct(SIMD8<Float>(repeating: d * scales[b]), SIMD8<Float>(lanes))
        }
        return horizontalSum(acc)
    case .q8_0:
        for b in 0..<blocks {
            let block = row + b * 34
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let w = block.loadUnaligned(fromByteOffset: 2, as: SIMD32<Int8>.self)
            let x = rq.loadUnaligned(fromByteOffset: 32 * b, as: SIMD32<Int8>.self)
            let p = SIMD32<Int16>(truncatingIfNeeded: w) &* SIMD32<Int16>(truncatingIfNeeded: x)
            let pairs = SIMD16<Int32>(truncatingIfNeeded: p.evenHalf) &+ SIMD16<Int32>(truncatingIfNeeded: p.oddHalf)
            acc.addProduct(SIMD8<Float>(repeating: d * scales[b]), SIMD8<Float>(pairs.evenHalf &+ pairs.oddHalf))
        }
        return horizontalSum(acc)
    case .f32, .f16, .bf16:
        preconditionFailure("\(type) rows take f32 activations")
    }
}

/// Lane i = Σ_{j=4i}^{4i+3} (w_j − offset) · x_j over one block, where w_0..15 are the low nibbles
/// and w_16..31 the high nibbles.
@inline(__always)
private func nibbleLanes(_ nibbles: UnsafeRawPointer, _ x: UnsafeRawPointer, offset: Int16) -> SIMD8<Int32> {
    let bytes = nibbles.loadUnaligned(as: SIMD16<UInt8>.self)
    let w = SIMD32<Int16>(truncatingIfNeeded: SIMD32(lowHalf: bytes & 0x0F, highHalf: bytes &>> 4)) &- offset
    let p = w &* SIMD32<Int16>(truncatingIfNeeded: x.loadUnaligned(as: SIMD32<Int8>.self))
    let pairs = p.evenHalf &+ p.oddHalf
    return SIMD8<Int32>(truncatingIfNeeded: pairs.evenHalf) &+ SIMD8<Int32>(truncatingIfNeeded: pairs.oddHalf)
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
