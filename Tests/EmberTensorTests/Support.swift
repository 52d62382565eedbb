import Foundation

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    static func bytes(_ relative: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path(relative)))) }

    static func floats(_ relative: String) throws -> [Float] {
        let raw = try bytes(relative)
        return raw.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    static func json(_ relative: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(relative)))) as! [String: Any]
    }
}

/// Largest |a − b| over two equally long arrays.
func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "\(a.count) vs \(b.count) values")
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// A JSON array of numbers (null meaning −∞) as f32.
func floats(_ value: Any?) -> [Float] {
    (value as! [Any]).map { ($0 as? Double).map(Float.init) ?? -.infinity }
}

/// Uniform values in [−1, 1) from a 64-bit linear congruential generator: the same draws on every run.
struct SeededFloats {
    var state: UInt64

    mutating func next(_ n: Int) -> [Float] {
        (0..<n).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Double(state >> 40) / Double(1 << 24)) * 2 - 1
        }
    }
}
