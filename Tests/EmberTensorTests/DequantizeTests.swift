import EmberTensor
import Testing

/// Dequantization against `gguf.quants.dequantize` (fixtures from scripts/fixtures/dequant.py),
/// compared bit for bit, signed zeros and subnormals included.
@Suite struct DequantizeTests {
    /// Every stored type but f32; the 5-bit, K-quant and non-linear 4-bit types through their integer
    /// form (`integerSubBlock`), which the integer products read too.
    @Test(arguments: DType.allCases.filter { $0 != .f32 })
    func matchesGGUFBitForBit(type: DType) throws {
        let raw = try Fixtures.bytes("Tests/Fixtures/dequant/\(type.rawValue).bin")
        let expected = try Fixtures.floats("Tests/Fixtures/dequant/\(type.rawValue).f32")
        let count = raw.count / type.blockBytes * type.blockSize
        #expect(count == expected.count && raw.count % type.blockBytes == 0)
        let actual = raw.withUnsafeBytes { dequantize(type, from: $0.baseAddress!, count: count) }
        let mismatches = zip(actual, expected).enumerated().filter { $0.element.0.bitPattern != $0.element.1.bitPattern }
        let largest = zip(actual, expected).map { abs($0 - $1) }.max() ?? 0
        print("\(type.rawValue): \(count) values in \(count / type.blockSize) blocks, \(mismatches.count) differ in any bit, max |Δ| \(largest)")
        #expect(mismatches.isEmpty, "first mismatch: \(mismatches.first.map { "\($0.offset): \($0.element)" } ?? "")")
    }

    @Test func halfConversionsRoundTrip() {
        for bits in stride(from: 0, through: 0xFFFF, by: 7).map(UInt16.init) where !halfToFloat(bits).isNaN {
            #expect(floatToHalf(halfToFloat(bits)) == bits)
            #expect(floatToBFloat16(bfloat16ToFloat(bits)) == bits || bfloat16ToFloat(bits).isNaN)
        }
        #expect(floatToBFloat16(1.00390625) == 0x3F80)  // a tie rounds to even
    }
}
