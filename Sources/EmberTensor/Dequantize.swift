/// Dequantization of every `DType` into f32.
///
/// The arithmetic mirrors the reference (`gguf.quants.dequantize`): each block's scale is widened
/// from f16 to f32 and elements are computed as one f32 multiply (and one add for q4_1), never fused,
/// so that results are bit-identical.

/// Converts `count` elements stored as `type` at `source` into f32 at `destination`.
/// `count` must be a multiple of `type.blockSize`.
public func dequantize(_ type: DType, from source: UnsafeRawPointer, to destination: UnsafeMutablePointer<Float>, count: Int) {
    switch type {
    case .f32:
        destination.update(from: source.assumingMemoryBound(to: Float.self), count: count)
    case .f16:
        for i in 0..<count { destination[i] = halfToFloat(source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    case .bf16:
        for i in 0..<count { destination[i] = bfloat16ToFloat(source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    case .q8_0:
        for b in 0..<count / 32 {
            let block = source + b * 34
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let out = destination + b * 32
            for j in 0..<32 { out[j] = d * Float(Int8(bitPattern: block.load(fromByteOffset: 2 + j, as: UInt8.self))) }
        }
    case .q4_0:
        for b in 0..<count / 32 {
            let block = source + b * 18
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let out = destination + b * 32
            for j in 0..<16 {
                let byte = block.load(fromByteOffset: 2 + j, as: UInt8.self)
                out[j] = d * Float(Int(byte & 0x0F) - 8)
                out[j + 16] = d * Float(Int(byte >> 4) - 8)
            }
        }
    case .q4_1:
        for b in 0..<count / 32 {
            let block = source + b * 20
            let d = halfToFloat(block.loadUnaligned(as: UInt16.self))
            let m = halfToFloat(block.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            let out = destination + b * 32
            for j in 0..<16 {
                let byte = block.load(fromByteOffset: 4 + j, as: UInt8.self)
                out[j] = d * Float(byte & 0x0F) + m
                out[j + 16] = d * Float(byte >> 4) + m
            }
        }
    case .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_nl, .iq4_xs:
        dequantizeSubBlocks(type, from: source, to: destination, count: count)
    }
}

/// Dequantizes into a new array.
public func dequantize(_ type: DType, from source: UnsafeRawPointer, count: Int) -> [Float] {
    [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
        dequantize(type, from: source, to: buffer.baseAddress!, count: count)
        initialized = count
    }
}

