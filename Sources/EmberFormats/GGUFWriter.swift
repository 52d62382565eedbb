import EmberTensor
import Foundation

/// Writes GGUF v3 files: metadata, then tensor infos, then the tensor data aligned to `alignment`.
///
///     var writer = GGUFWriter()
///     writer.metadata.append(("general.architecture", .string("llama")))
///     writer.addTensor(name: "token_embd.weight", type: .f32, extents: [4, 2], data: bytes)
///     try writer.write(to: "model.gguf")
public struct GGUFWriter {
    public var metadata: [(String, GGUFValue)] = []
    public var alignment = 32
    private var tensors: [(name: String, type: GGMLType, extents: [Int], data: [UInt8])] = []

    public init() {}

    /// Adds a tensor; `extents` are in GGUF order (fastest-varying first).
    public mutating func addTensor(name: String, type: GGMLType, extents: [Int], data: [UInt8]) {
        tensors.append((name, type, extents, data))
    }

    /// The file's bytes.
    public func bytes() -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func putString(_ s: String) { put(UInt64(s.utf8.count)); out += Array(s.utf8) }
        func putValue(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): put(x)
            case .int8(let x): put(x)
            case .uint16(let x): put(x)
            case .int16(let x): put(x)
            case .uint32(let x): put(x)
            case .int32(let x): put(x)
            case .uint64(let x): put(x)
            case .int64(let x): put(x)
            case .float32(let x): put(x.bitPattern)
            case .float64(let x): put(x.bitPattern)
            case .bool(let x): put(UInt8(x ? 1 : 0))
            case .string(let s): putString(s)
            case .array(let a):
                put(a.first.map(Self.typeID) ?? 4)
                put(UInt64(a.count))
                a.forEach(putValue)
            }
        }
        put(UInt32(0x4655_4747))
        put(UInt32(3))
        put(UInt64(tensors.count))
        put(UInt64(metadata.count))
        for (key, value) in metadata {
            putString(key)
            put(Self.typeID(value))
            putValue(value)
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        for (t, o) in zip(tensors, offsets) {
            putString(t.name)
            put(UInt32(t.extents.count))
            t.extents.forEach { put(UInt64($0)) }
            put(t.type.rawValue)
            put(UInt64(o))
        }
        out += [UInt8](repeating: 0, count: (alignment - out.count % alignment) % alignment)
        for t in tensors {
            out += t.data
            out += [UInt8](repeating: 0, count: (alignment - t.data.count % alignment) % alignment)
        }
        return out
    }

    /// Writes the file atomically: to a temporary name beside it, then renamed into place.
    public func write(to path: String) throws {
        let temporary = path + ".partial"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(bytes())) else {
            throw FormatError("\(path): cannot write")
        }
        guard rename(temporary, path) == 0 else {
            try? FileManager.default.removeItem(atPath: temporary)
            throw FormatError("\(path): cannot move the finished file into place")
        }
    }

    static func typeID(_ v: GGUFValue) -> UInt32 {
        switch v {
        case .uint8: 0
        case .int8: 1
        case .uint16: 2
        case .int16: 3
        case .uint32: 4
        case .int32: 5
        case .float32: 6
        case .bool: 7
        case .string: 8
        case .array: 9
        case .uint64: 10
        case .int64: 11
        case .float64: 12
        }
    }
}
