/// Dot products between one stored weight row and an f32 vector x, straight over the blocks.
///
/// `blockSums[b]` = Σ x[32b ..< 32b+32], which turns the q4 offsets into one multiply per block:
///   q8_0: Σ_b d_b · Σ_j q_j x_j
///   q4_0: Σ_b d_b · (Σ_j q_j x_j − 8 · blockSums[b])
///   q4_1: Σ_b (d_b · Σ_j q_j x_j + m_b · blockSums[b])
@inline(__always)
func quantizedDot(_ type: DType, _ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ blockSums: UnsafePointer<Float>, blocks: Int) -> Float {
    let rx = UnsafeRawPointer(x)
    switch type {
    case .q4_1:
        var total = SIMD8<Float>()
        var offsets: Float = 0
        for b in 0..<blocks {
            let block = row + b * 20
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let m = halfToFloat(block.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            let acc = nibbleDot(block + 4, rx + 128 * b)
            total.addProduct(acc, SIMD8(repeating: d))
            offsets += m * blockSums[b]
        }
        return total.sum() + offsets
    case .q4_0:
        var total = SIMD8<Float>()
        var offsets: Float = 0
        for b in 0..<blocks {
            let block = row + b * 18
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let acc = nibbleDot(block + 2, rx + 128 * b)
            total.addProduct(acc, SIMD8(repeating: d))
            offsets -= 8 * d * blockSums[b]
        }
        return total.sum() + offsets
    case .q8_0:
        var total = SIMD8<Float>()
        for b in 0..<blocks {
            let block = row + b * 34
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            var acc = SIMD8<Float>()
            for part in 0..<4 {
                let q = block.loadUnaligned(fromByteOffset: 2 + 8 * part, as: SIMD8<Int8>.self)
                acc.addProduct(SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: q)),
                               rx.loadUnaligned(fromByteOffset: 128 * b + 32 * part, as: SIMD8<Float>.self))
            }
            total.addProduct(acc, SIMD8(repeating: d))
        }
        return total.sum()
    case .f32:
        return dot(row.assumingMemoryBound(to: Float.self), x, blocks * 32)
    case .f16, .bf16:
        var s: Float = 0
        for j in 0..<blocks * 32 {
            let bits = row.loadUnaligned(fromByteOffset: 2 * j, as: UInt16.self)
            s += (type == .f16 ? halfToFloat(bits) : bfloat16ToFloat(bits)) * x[j]
        }
        return s
    }
}

/// Σ_j q_j x_j over one block of 16 nibble bytes (low nibbles → x[0..<16], high → x[16..<32]), as 8 lanes.
@inline(__always)
private func nibbleDot(_ nibbles: UnsafeRawPointer, _ x: UnsafeRawPointer) -> SIMD8<Float> {
    let bytes = nibbles.loadUnaligned(as: SIMD16<UInt8>.self)
    let low = SIMD16<Int32>(truncatingIfNeeded: bytes & 0x0F)
    let high = SIMD16<Int32>(truncatingIfNeeded: bytes &>> 4)
    var acc = SIMD8<Float>(low.lowHalf) * x.loadUnaligned(as: SIMD8<Float>.self)
    acc.addProduct(SIMD8<Float>(low.highHalf), x.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self))
    acc.addProduct(SIMD8<Float>(high.lowHalf), x.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self))
    acc.addProduct(SIMD8<Float>(high.highHalf), x.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self))
    return acc
}
