/// Element types Ember stores. The block types are laid out exactly as GGUF defines them:
///
/// | type  | block | bytes | layout                                                   |
/// |-------|-------|-------|----------------------------------------------------------|
/// | q8_0  | 32    | 34    | f16 scale `d`, 32 × int8 `q`;          x = d·q            |
/// | q4_0  | 32    | 18    | f16 scale `d`, 16 bytes of nibbles;    x = d·(q − 8)      |
/// | q4_1  | 32    | 20    | f16 `d`, f16 min `m`, 16 bytes nibbles; x = d·q + m       |
///
/// In the 4-bit types byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble.
public enum DType: String, Sendable, CaseIterable {
    case f32, f16, bf16, q8_0, q4_0, q4_1

    /// Elements per block (1 for the plain floating-point types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: 1
        case .q8_0, .q4_0, .q4_1: 32
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
        }
    }

    public var isQuantized: Bool { blockSize > 1 }

    /// Bytes needed for `count` elements, or nil when `count` is not a whole number of blocks
    /// or the size overflows.
    public func byteCount(elements count: Int) -> Int? {
        guard count >= 0, count % blockSize == 0 else { return nil }
        let (bytes, overflow) = (count / blockSize).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }
}
