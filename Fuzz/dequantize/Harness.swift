import EmberTensor
import Foundation
import FuzzSupport

/// Random blocks of a quantized type (the first byte picks it): dequantized, and as a one-row
/// weight matrix multiplied by a vector at every kernel tier this CPU runs, each product within
/// the 8-bit activations' rounding of the dequantized dot product.
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = input(data, count)
    let types = DType.allCases.filter(\.isQuantized)
    guard let first = bytes.first else { return 0 }
    let type = types[Int(first) % types.count]
    let blocks = (bytes.count - 1) / type.blockBytes
    guard blocks > 0 else { return 0 }
    let columns = blocks * type.blockSize
    let storage = UnsafeMutableRawPointer.allocate(byteCount: blocks * type.blockBytes, alignment: 64)
    defer { storage.deallocate() }
    bytes.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress! + 1, byteCount: blocks * type.blockBytes) }
    let weights = dequantize(type, from: storage, count: columns)
    guard weights.allSatisfy(\.isFinite) else { return 0 }
    let x = (0..<columns).map { Float(sin(Double($0) * 0.37)) }
    var reference = 0.0, scale = 0.0, cancelled = 0.0
    for i in 0..<columns { reference += Double(weights[i]) * Double(x[i]); scale += abs(Double(weights[i])) }
    for b in 0..<blocks {
        let sum = (b * type.blockSize..<(b + 1) * type.blockSize).reduce(0.0) { $0 + abs(Double(x[$1])) }
        cancelled += termBound(type, storage + b * type.blockBytes) * sum
    }
    let matrix = WeightMatrix(type: type, rows: 1, columns: columns, data: storage, owner: nil)
    for tier in KernelTier.supported {
        var y: Float = .nan
        KernelTier.$override.withValue(tier) { x.withUnsafeBufferPointer { matrix.multiply($0.baseAddress!, &y, m: 1) } }
        guard y.isFinite || !scale.isFinite || scale > 1e30 else { invariant(false, "\(type) at tier \(tier): product \(y) of finite weights"); return 0 }
        invariant(abs(Double(y) - reference) <= 0.02 * scale + 1e-5 * cancelled + 1e-3,
                  "\(type) at tier \(tier): product \(y), dequantized dot product \(reference)")
    }
    return 0
}

/// For the types whose elements are a scaled value plus a minimum, the largest magnitude either
/// term reaches in the block at `block`. The integer products form the two terms apart (as
/// llama.cpp's do), so where they cancel (a weight of 0 from two terms of thousands) the f32
/// rounding of each remains, which the dequantized weights cannot show: the tolerance allows
/// 1e-5 of these terms times the activations.
func termBound(_ type: DType, _ block: UnsafeRawPointer) -> Double {
    func half(_ offset: Int) -> Double { Double(abs(halfToFloat(block.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))) }
    switch type {
    case .q4_1: return half(0) * 15 + half(2)
    case .q5_1: return half(0) * 31 + half(2)
    case .q2_K: return half(80) * 15 * 3 + half(82) * 15
    case .q4_K: return half(0) * 63 * 15 + half(2) * 63
    case .q5_K: return half(0) * 63 * 31 + half(2) * 63
    default: return 0
    }
}

@_cdecl("fuzz_dequantize_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
