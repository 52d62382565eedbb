/// Element types Ember stores. The block types are laid out exactly as GGUF defines them:
///
/// | type  | block | bytes | layout                                                   |
/// |-------|-------|-------|----------------------------------------------------------|
/// | q8_0  | 32    | 34    | f16 scale `d`, 32 × int8 `q`;          x = d·q            |
/// | q4_0  | 32    | 18    | f16 scale `d`, 16 bytes of nibbles;    x = d·(q − 8)      |
/// | q4_1  | 32    | 20    | f16 `d`, f16 min `m`, 16 bytes nibbles; x = d·q + m       |
///
/// In the 4-bit types byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble.
/// The 5-bit types, the K-quants (super-blocks of 256) and the non-linear 4-bit types are described
/// in BlockQuants.swift.
public enum DType: String, Sendable, CaseIterable {
    case f32, f16, bf16, q8_0, q4_0, q4_1
    case q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs

    /// Elements per block (1 for the plain floating-point types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: 1
        case .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .iq4_nl: 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_xs: 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: 4
        case .f16, .bf16: 2
        case .q8_0: 34
        case .q4_0: 18
        case .q4_1: 20
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

    public var isQuantized: Bool { blockSize > 1 }

    /// The types whose products `WeightMatrix.multiply` forms in llama.cpp's own float lanes
    /// (`--llama-cpp-exact`); the other block types are multiplied there through f32.
    public var hasFloatLanes: Bool { self == .q8_0 || self == .q4_0 || self == .q4_1 }

    /// Bytes needed for `count` elements, or nil when `count` is not a whole number of blocks
    /// or the size overflows.
    public func byteCount(elements count: Int) -> Int? {
        guard count >= 0, count % blockSize == 0 else { return nil }
        let (bytes, overflow) = (count / blockSize).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }
}
