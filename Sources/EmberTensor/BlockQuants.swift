/// GGUF's block types that Ember reads by dequantizing them (it has no products on them): the
/// 5-bit types, the K-quants (super-blocks of 256 with 6- or 8-bit sub-block scales, as llama.cpp's
/// Q2_K … Q6_K files mix them) and the non-linear 4-bit types.
///
/// Layouts are ggml's (`ggml-common.h`); the arithmetic mirrors `gguf.quants.dequantize`, each f16
/// scale widened to f32, a sub-block's scale one f32 product, and each element one product (and
/// one subtraction or addition), never fused, so that the results are bit-identical.
public enum BlockType: String, Sendable, CaseIterable {
    case q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .q5_0, .q5_1, .iq4_nl: 32
        default: 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .q5_0: 22
        case .q5_1: 24
        case .q2_K: 84
        case .q3_K: 110
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        case .iq4_nl: 18
        case .iq4_xs: 136
        }
    }
}

/// The 16 values of iq4_nl and iq4_xs's non-linear 4-bit code (`kvalues_iq4nl`).
let iq4Values: [Float] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

/// Converts `count` elements stored as `type` at `source` into f32 at `destination`; `count` must
/// be a multiple of `type.blockSize`.
public func dequantize(_ type: BlockType, from source: UnsafeRawPointer, to destination: UnsafeMutablePointer<Float>, count: Int) {
    precondition(count % type.blockSize == 0, "\(count) elements are not whole \(type) blocks")
    for b in 0..<count / type.blockSize {
        dequantizeBlock(type, source + b * type.blockBytes, destination + b * type.blockSize)
    }
}

@inline(__always) private func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 { p.load(fromByteOffset: offset, as: UInt8.self) }
@inline(__always) private func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float { halfToFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }

/// The 6-bit scale and minimum of sub-block j (0..<8) of q4_K and q5_K, from their 12 bytes.
@inline(__always) private func scaleMin(_ s: UnsafeRawPointer, _ j: Int) -> (scale: Float, min: Float) {
    if j < 4 { return (Float(byte(s, j) & 63), Float(byte(s, j + 4) & 63)) }
    let packed = byte(s, j + 4)
    return (Float((packed & 0x0F) | ((byte(s, j - 4) >> 2) & 0x30)), Float((packed >> 4) | ((byte(s, j) >> 2) & 0x30)))
}

private func dequantizeBlock(_ type: BlockType, _ p: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>) {
    switch type {
    case .q5_0, .q5_1:
        // d (f16), [m (f16)], qh: bit j is element j's fifth bit, qs: element j in the low nibble of
        // byte j, element j + 16 in its high nibble.
        let d = half(p, 0), offset = type == .q5_1 ? 4 : 2
        let m = type == .q5_1 ? half(p, 2) : 0
        let qh = p.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
        for j in 0..<16 {
            let q = byte(p, offset + 4 + j)
            let low = (q & 0x0F) | UInt8((qh >> UInt32(j)) & 1) << 4, high = (q >> 4) | UInt8((qh >> UInt32(j + 16)) & 1) << 4
            if type == .q5_0 {
                out[j] = d * Float(Int(low) - 16)
                out[j + 16] = d * Float(Int(high) - 16)
            } else {
                out[j] = d * Float(low) + m
                out[j + 16] = d * Float(high) + m
            }
        }
    case .q2_K:
        // scales[16] (low nibble: scale, high: minimum, per 16 elements), qs[64] (2 bits each), d, dmin.
        let d = half(p, 80), dmin = half(p, 82)
        for e in 0..<256 {
            let h = e / 128, shift = (e % 128) / 32, l = e % 32
            let sc = byte(p, e / 16)
            let q = Float((byte(p, 16 + h * 32 + l) >> UInt8(2 * shift)) & 3)
            out[e] = (d * Float(sc & 0x0F)) * q - dmin * Float(sc >> 4)
        }
    case .q3_K:
        // hmask[32] (the high bit, set: no offset), qs[64] (2 low bits), scales[12] (16 6-bit
        // scales, offset 32), d.
        let d = half(p, 108)
        var scales = [Float](repeating: 0, count: 16)
        for k in 0..<16 {
            let low = k < 8 ? byte(p, 96 + k) & 0x0F : byte(p, 96 + k - 8) >> 4
            let high = (byte(p, 104 + k % 4) >> UInt8(2 * (k / 4))) & 3
            scales[k] = d * Float(Int(Int8(bitPattern: low | high << 4)) - 32)
        }
        for e in 0..<256 {
            let h = e / 128, shift = (e % 128) / 32, l = e % 32
            let low = Int((byte(p, 32 + h * 32 + l) >> UInt8(2 * shift)) & 3)
            let set = (byte(p, l) >> UInt8(e / 32)) & 1
            out[e] = scales[e / 16] * Float(low - (set == 1 ? 0 : 4))
        }
    case .q4_K, .q5_K:
        // d, dmin, scales[12] (8 6-bit scales and minimums), [qh[32]: bit j of byte l is the fifth
        // bit of element 32j + l], qs[128]: sub-blocks 2c and 2c + 1 in the low and high nibbles
        // of bytes 32c..<32c + 32.
        let d = half(p, 0), dmin = half(p, 2), scales = p + 4
        let qs = type == .q4_K ? 16 : 48
        for j in 0..<8 {
            let (sc, mn) = scaleMin(scales, j)
            let dj = d * sc, mj = dmin * mn
            for l in 0..<32 {
                var q = (byte(p, qs + (j / 2) * 32 + l) >> UInt8(4 * (j % 2))) & 0x0F
                if type == .q5_K { q |= ((byte(p, 16 + l) >> UInt8(j)) & 1) << 4 }
                out[j * 32 + l] = dj * Float(q) - mj
            }
        }
    case .q6_K:
        // ql[128] (4 low bits), qh[64] (2 high bits), scales[16] (int8, per 16 elements), d; value
        // (q − 32) · d · scale.
        let d = half(p, 208)
        for e in 0..<256 {
            let h = e / 128, r = e % 128
            let low = (byte(p, h * 64 + r % 64) >> UInt8(4 * (r / 64))) & 0x0F
            let high = (byte(p, 128 + h * 32 + r % 32) >> UInt8(2 * (r / 32))) & 3
            let scale = d * Float(Int8(bitPattern: byte(p, 192 + e / 16)))
            out[e] = scale * Float(Int(Int8(bitPattern: low | high << 4)) - 32)
        }
    case .iq4_nl:
        let d = half(p, 0)
        for j in 0..<16 {
            let q = byte(p, 2 + j)
            out[j] = d * iq4Values[Int(q & 0x0F)]
            out[j + 16] = d * iq4Values[Int(q >> 4)]
        }
    case .iq4_xs:
        // d, scales_h (u16: 2 high bits per sub-block), scales_l[4] (4 low bits), qs[128]: sub-block
        // k's elements i and i + 16 in the low and high nibbles of byte 16k + i.
        let d = half(p, 0), high = p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        for k in 0..<8 {
            let low = (byte(p, 4 + k / 2) >> UInt8(4 * (k % 2))) & 0x0F
            let scale = d * Float(Int(Int8(bitPattern: low | UInt8((high >> UInt16(2 * k)) & 3) << 4)) - 32)
            for i in 0..<16 {
                let q = byte(p, 8 + 16 * k + i)
                out[32 * k + i] = scale * iq4Values[Int(q & 0x0F)]
                out[32 * k + i + 16] = scale * iq4Values[Int(q >> 4)]
            }
        }
    }
}
