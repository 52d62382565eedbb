/// GGUF's 5-bit types, K-quants (super-blocks of 256 with 4-, 6- or 8-bit sub-block scales, as
/// llama.cpp's Q2_K … Q6_K files mix them) and non-linear 4-bit types, read through one integer
/// form: every 32 elements are small integers q_j with an f32 scale per 16 elements and, for the
/// types with minimums, an f32 minimum per 16:
///
///     x_j = scale · q_j (+ minimum)
///
/// Each f16 scale times a sub-block's integer scale needs at most 11 + 8 bits, so the f32 scale is
/// exact, and every value of that form is exactly the value ggml and `gguf.quants.dequantize`
/// compute. Dequantization (one product and one addition per element, never fused) is
/// bit-identical to `gguf.quants.dequantize`; the integer products (IntegerProducts.swift) take the
/// integers and scales as they are.
///
/// Layouts are ggml's (`ggml-common.h`).
public struct IntegerSubBlock {
    /// The 32 integers, each in −127...127.
    public var values = SIMD32<Int8>()
    /// The scale of elements 0..<16 and 16..<32.
    public var scales = SIMD2<Float>()
    /// The minimum of elements 0..<16 and 16..<32 (zero for the types without).
    public var minimums = SIMD2<Float>()
}

extension DType {
    /// The types read through `IntegerSubBlock`.
    public var hasIntegerSubBlocks: Bool { isQuantized && !hasFloatLanes }

    /// Whether the integer form has minimums: q5_1, q2_K, q4_K and q5_K.
    public var hasMinimums: Bool { self == .q5_1 || self == .q2_K || self == .q4_K || self == .q5_K }

    /// Whether the two halves of a sub-block have scales of their own: q2_K, q3_K and q6_K.
    public var hasHalfScales: Bool { self == .q2_K || self == .q3_K || self == .q6_K }
}

/// The 16 values of iq4_nl and iq4_xs's non-linear 4-bit code (`kvalues_iq4nl`).
let iq4Values: SIMD16<Int8> = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

@inline(__always) private func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 { p.load(fromByteOffset: offset, as: UInt8.self) }
@inline(__always) private func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float { halfToFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }

/// The 6-bit scale and minimum of sub-block j (0..<8) of q4_K and q5_K, from their 12 bytes.
@inline(__always) private func scaleMin(_ s: UnsafeRawPointer, _ j: Int) -> (scale: Float, min: Float) {
    if j < 4 { return (Float(byte(s, j) & 63), Float(byte(s, j + 4) & 63)) }
    let packed = byte(s, j + 4)
    return (Float((packed & 0x0F) | ((byte(s, j - 4) >> 2) & 0x30)), Float((packed >> 4) | ((byte(s, j) >> 2) & 0x30)))
}

/// The 6-bit scale (offset 32 removed) of sub-block k (0..<16) of q3_K, from its 12 scale bytes at `s`.
@inline(__always) private func q3Scale(_ s: UnsafeRawPointer, _ k: Int) -> Float {
    let low = k < 8 ? byte(s, k) & 0x0F : byte(s, k - 8) >> 4
    let high = (byte(s, 8 + k % 4) >> UInt8(2 * (k / 4))) & 3
    return Float(Int(low | high << 4) - 32)
}

/// Sub-block `s` (elements 32s ..< 32s + 32) of the block at `p`, for a type with `hasIntegerSubBlocks`.
@inline(__always)
public func integerSubBlock(_ type: DType, _ p: UnsafeRawPointer, _ s: Int) -> IntegerSubBlock {
    var out = IntegerSubBlock()
    switch type {
    case .q5_0, .q5_1:
        // d (f16), [m (f16)], qh: bit j is element j's fifth bit, qs: element j in the low nibble of
        // byte j, element j + 16 in its high nibble.
        let d = half(p, 0), offset = type == .q5_1 ? 4 : 2, bias: Int8 = type == .q5_0 ? 16 : 0
        let qh = p.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
        for j in 0..<16 {
            let q = byte(p, offset + 4 + j)
            out.values[j] = Int8((q & 0x0F) | UInt8((qh >> UInt32(j)) & 1) << 4) - bias
            out.values[j + 16] = Int8((q >> 4) | UInt8((qh >> UInt32(j + 16)) & 1) << 4) - bias
        }
        out.scales = SIMD2(repeating: d)
        if type == .q5_1 { out.minimums = SIMD2(repeating: half(p, 2)) }
    case .q2_K:
        // scales[16] (low nibble: scale, high: minimum, per 16 elements), qs[64] (2 bits each), d, dmin.
        let d = half(p, 80), dmin = half(p, 82)
        for l in 0..<32 { out.values[l] = Int8((byte(p, 16 + (s / 4) * 32 + l) >> UInt8(2 * (s % 4))) & 3) }
        for h in 0..<2 {
            let sc = byte(p, 2 * s + h)
            out.scales[h] = d * Float(sc & 0x0F)
            out.minimums[h] = -(dmin * Float(sc >> 4))
        }
    case .q3_K:
        // hmask[32] (the high bit, set: no offset), qs[64] (2 low bits), scales[12] (16 6-bit
        // scales, offset 32), d.
        let d = half(p, 108)
        for l in 0..<32 {
            let low = Int8((byte(p, 32 + (s / 4) * 32 + l) >> UInt8(2 * (s % 4))) & 3)
            out.values[l] = low - ((byte(p, l) >> UInt8(s)) & 1 == 1 ? 0 : 4)
        }
        out.scales = SIMD2(d * q3Scale(p + 96, 2 * s), d * q3Scale(p + 96, 2 * s + 1))
    case .q4_K, .q5_K:
        // d, dmin, scales[12] (8 6-bit scales and minimums), [qh[32]: bit j of byte l is the fifth
        // bit of element 32j + l], qs[128]: sub-blocks 2c and 2c + 1 in the low and high nibbles
        // of bytes 32c..<32c + 32.
        let (sc, mn) = scaleMin(p + 4, s)
        let qs = type == .q4_K ? 16 : 48
        for l in 0..<32 {
            var q = (byte(p, qs + (s / 2) * 32 + l) >> UInt8(4 * (s % 2))) & 0x0F
            if type == .q5_K { q |= ((byte(p, 16 + l) >> UInt8(s)) & 1) << 4 }
            out.values[l] = Int8(q)
        }
        out.scales = SIMD2(repeating: half(p, 0) * sc)
        out.minimums = SIMD2(repeating: -(half(p, 2) * mn))
    case .q6_K:
        // ql[128] (4 low bits), qh[64] (2 high bits), scales[16] (int8, per 16 elements), d; value
        // (q − 32) · d · scale.
        let d = half(p, 208), h = s / 4
        for l in 0..<32 {
            let r = 32 * (s % 4) + l
            let low = (byte(p, h * 64 + r % 64) >> UInt8(4 * (r / 64))) & 0x0F
            let high = (byte(p, 128 + h * 32 + l) >> UInt8(2 * (s % 4))) & 3
            out.values[l] = Int8(low | high << 4) - 32
        }
        out.scales = SIMD2(d * Float(Int8(bitPattern: byte(p, 192 + 2 * s))), d * Float(Int8(bitPattern: byte(p, 193 + 2 * s))))
    case .iq4_nl:
        for j in 0..<16 {
            let q = byte(p, 2 + j)
            out.values[j] = iq4Values[Int(q & 0x0F)]
            out.values[j + 16] = iq4Values[Int(q >> 4)]
        }
        out.scales = SIMD2(repeating: half(p, 0))
    case .iq4_xs:
        // d, scales_h (u16: 2 high bits per sub-block), scales_l[4] (4 low bits), qs[128]: sub-block
        // k's elements i and i + 16 in the low and high nibbles of byte 16k + i.
        let high = p.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        let low = (byte(p, 4 + s / 2) >> UInt8(4 * (s % 2))) & 0x0F
        for i in 0..<16 {
            let q = byte(p, 8 + 16 * s + i)
            out.values[i] = iq4Values[Int(q & 0x0F)]
            out.values[i + 16] = iq4Values[Int(q >> 4)]
        }
        out.scales = SIMD2(repeating: half(p, 0) * Float(Int(low | UInt8((high >> UInt16(2 * s)) & 3) << 4) - 32))
    case .f32, .f16, .bf16, .q8_0, .q4_0, .q4_1:
        preconditionFailure("\(type) has no integer sub-blocks")
    }
    return out
}

/// Dequantizes `count` elements of a type with `hasIntegerSubBlocks` (a multiple of its block size).
func dequantizeSubBlocks(_ type: DType, from source: UnsafeRawPointer, to destination: UnsafeMutablePointer<Float>, count: Int) {
    let perBlock = type.blockSize / 32, minimums = type.hasMinimums
    for b in 0..<count / type.blockSize {
        let block = source + b * type.blockBytes
        for s in 0..<perBlock {
            let sub = integerSubBlock(type, block, s), out = destination + b * type.blockSize + 32 * s
            for j in 0..<32 {
                let product = sub.scales[j / 16] * Float(sub.values[j])
                // Without a minimum nothing is added: d · 0 keeps the sign of d, as in the reference.
                out[j] = minimums ? product + sub.minimums[j / 16] : product
            }
        }
    }
}
