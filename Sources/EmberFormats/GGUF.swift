import EmberTensor

/// A GGUF file (versions 2 and 3): metadata, the tensor table, and memory-mapped tensor data.
///
/// Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata pairs
/// (string key, u32 type, value), the tensor infos (string name, u32 dims, u64 × dims extents with the
/// fastest-varying first, u32 ggml type, u64 offset), padding to `general.alignment` (default 32),
/// then the tensor data. Strings are a u64 length and UTF-8 bytes.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    public let dataOffset: Int
    public let file: MappedFile

    private let tensorIndex: [String: Int]

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        path = file.path
        var cursor = ByteCursor(base: file.pointer, size: file.size, name: file.path)
        let magic = try cursor.read(UInt32.self, "the magic number")
        guard magic == 0x4655_4747 else {
            throw FormatError("\(path): not a GGUF file (bad magic number 0x\(String(magic, radix: 16)))")
        }
        version = try cursor.read(UInt32.self, "the version")
        guard version == 2 || version == 3 else {
            throw FormatError("\(path): unsupported GGUF version \(version) (supported: 2, 3)")
        }
        let tensorCount = try cursor.read(UInt64.self, "the tensor count")
        let metadataCount = try cursor.read(UInt64.self, "the metadata count")
        // Every metadata pair and tensor info takes more than 8 bytes: a count beyond that is a lie.
        guard tensorCount <= UInt64(file.size / 8), metadataCount <= UInt64(file.size / 8) else {
            throw FormatError("\(path): truncated file or absurd header: \(tensorCount) tensors and \(metadataCount) metadata pairs cannot fit in \(file.size) bytes")
        }

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        for index in 0..<Int(metadataCount) {
            let key = try Self.readString(&cursor, "metadata key \(index)")
            let typeID = try cursor.read(UInt32.self, "the type of \(key)")
            metadata[key] = try Self.readValue(&cursor, typeID: typeID, key: key)
            keys.append(key)
        }
        self.metadata = metadata
        metadataKeys = keys

        var alignment = 32
        if let value = metadata["general.alignment"] {
            guard let a = value.int, a > 0, a & (a - 1) == 0, a <= 1 << 20 else {
                throw FormatError("\(path): general.alignment must be a power of two, found \(value)")
            }
            alignment = a
        }
        self.alignment = alignment

        var infos: [GGUFTensorInfo] = []
        for index in 0..<Int(tensorCount) {
            let name = try Self.readString(&cursor, "tensor name \(index)")
            let dimensionCount = try cursor.read(UInt32.self, "the dimension count of \(name)")
            guard (1...4).contains(dimensionCount) else {
                throw FormatError("\(path): tensor \(name) has \(dimensionCount) dimensions (1 to 4 allowed)")
            }
            var extents: [Int] = []
            for _ in 0..<dimensionCount {
                let extent = try cursor.read(UInt64.self, "the shape of \(name)")
                guard extent > 0, extent < 1 << 40 else { throw FormatError("\(path): tensor \(name) has absurd extent \(extent)") }
                extents.append(Int(extent))
            }
            let typeID = try cursor.read(UInt32.self, "the type of \(name)")
            guard let type = GGMLType(rawValue: typeID) else {
                throw FormatError("\(path): tensor \(name) has unknown ggml type \(typeID)")
            }
            let offset = try cursor.read(UInt64.self, "the offset of \(name)")
            infos.append(GGUFTensorInfo(name: name, extents: extents, ggmlType: type, offset: Int(clamping: offset)))
        }
        tensors = infos
        dataOffset = (cursor.offset + alignment - 1) / alignment * alignment

        var index: [String: Int] = [:]
        for (i, info) in infos.enumerated() {
            guard index[info.name] == nil else { throw FormatError("\(path): tensor \(info.name) appears twice") }
            index[info.name] = i
            guard info.offset % alignment == 0 else {
                throw FormatError("\(path): tensor \(info.name) starts at offset \(info.offset), not a multiple of the alignment \(alignment)")
            }
            guard let bytes = info.byteCount else {
                throw FormatError("\(path): tensor \(info.name) has shape \(info.extents), not whole \(info.ggmlType) blocks, or too large")
            }
            let (end, overflow) = (dataOffset + info.offset).addingReportingOverflow(bytes)
            guard !overflow, end <= file.size else {
                throw FormatError("\(path): truncated file: tensor \(info.name) needs bytes up to \(end) but the file has \(file.size)")
            }
        }
        tensorIndex = index
    }

    public func tensorInfo(named name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// The start of a tensor's data inside the map.
    public func data(of info: GGUFTensorInfo) -> UnsafeRawPointer { file.pointer + dataOffset + info.offset }

    // MARK: Typed metadata access

    public func string(_ key: String) -> String? { metadata[key]?.string }
    public func int(_ key: String) -> Int? { metadata[key]?.int }
    public func float(_ key: String) -> Float? { metadata[key]?.double.map(Float.init) }

    public func requireInt(_ key: String) throws -> Int {
        guard let v = int(key) else { throw FormatError("\(path): metadata \(key) is missing or not an integer") }
        return v
    }

    // MARK: Parsing

    private static func readString(_ cursor: inout ByteCursor, _ what: String) throws -> String {
        let length = try cursor.read(UInt64.self, "the length of \(what)")
        guard length <= UInt64(cursor.remaining) else {
            throw FormatError("\(cursor.name): truncated or corrupt file: \(what) claims \(length) bytes but only \(cursor.remaining) remain")
        }
        let raw = try cursor.bytes(Int(length), what)
        return String(decoding: raw, as: UTF8.self)
    }

    private static func readValue(_ cursor: inout ByteCursor, typeID: UInt32, key: String) throws -> GGUFValue {
        switch typeID {
        case 0: return .uint8(try cursor.read(UInt8.self, key))
        case 1: return .int8(try cursor.read(Int8.self, key))
        case 2: return .uint16(try cursor.read(UInt16.self, key))
        case 3: return .int16(try cursor.read(Int16.self, key))
        case 4: return .uint32(try cursor.read(UInt32.self, key))
        case 5: return .int32(try cursor.read(Int32.self, key))
        case 6: return .float32(try cursor.readFloat(key))
        case 7:
            let b = try cursor.read(UInt8.self, key)
            guard b <= 1 else { throw FormatError("\(cursor.name): metadata \(key) is a bool holding \(b)") }
            return .bool(b == 1)
        case 8: return .string(try readString(&cursor, key))
        case 9:
            let elementType = try cursor.read(UInt32.self, "the element type of \(key)")
            let count = try cursor.read(UInt64.self, "the length of \(key)")
            guard count <= UInt64(cursor.remaining) else {
                throw FormatError("\(cursor.name): truncated or corrupt file: metadata array \(key) claims \(count) elements but only \(cursor.remaining) bytes remain")
            }
            guard elementType != 9 else { throw FormatError("\(cursor.name): metadata \(key) nests arrays, which Ember does not read") }
            var values: [GGUFValue] = []
            values.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { values.append(try readValue(&cursor, typeID: elementType, key: key)) }
            return .array(values)
        case 10: return .uint64(try cursor.read(UInt64.self, key))
        case 11: return .int64(try cursor.read(Int64.self, key))
        case 12: return .float64(try cursor.readDouble(key))
        default: throw FormatError("\(cursor.name): metadata \(key) has unknown value type \(typeID)")
        }
    }
}

/// One entry of the tensor table.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    /// Extents with the fastest-varying dimension first (GGUF's order): a [out, in] weight is [in, out].
    public let extents: [Int]
    public let ggmlType: GGMLType
    /// Offset from the start of the data section.
    public let offset: Int

    public var elementCount: Int { extents.reduce(1) { $0.multipliedReportingOverflow(by: $1).overflow ? Int.max : $0 * $1 } }

    public var byteCount: Int? {
        guard let type = ggmlType.dtype else { return ggmlType.byteCount(elements: elementCount) }
        guard extents[0] % type.blockSize == 0 else { return nil }
        return type.byteCount(elements: elementCount)
    }
}

/// GGML tensor type ids as stored in GGUF.
public enum GGMLType: UInt32, Sendable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// The Ember dtype for the types Ember computes with; nil for the others.
    public var dtype: DType? {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .q8_0: .q8_0
        case .q4_0: .q4_0
        case .q4_1: .q4_1
        case .q5_0: .q5_0
        case .q5_1: .q5_1
        case .q2_K: .q2_K
        case .q3_K: .q3_K
        case .q4_K: .q4_K
        case .q5_K: .q5_K
        case .q6_K: .q6_K
        case .iq4_nl: .iq4_nl
        case .iq4_xs: .iq4_xs
        default: nil
        }
    }

    public init(_ dtype: DType) {
        switch dtype {
        case .f32: self = .f32
        case .f16: self = .f16
        case .bf16: self = .bf16
        case .q8_0: self = .q8_0
        case .q4_0: self = .q4_0
        case .q4_1: self = .q4_1
        case .q5_0: self = .q5_0
        case .q5_1: self = .q5_1
        case .q2_K: self = .q2_K
        case .q3_K: self = .q3_K
        case .q4_K: self = .q4_K
        case .q5_K: self = .q5_K
        case .q6_K: self = .q6_K
        case .iq4_nl: self = .iq4_nl
        case .iq4_xs: self = .iq4_xs
        }
    }

    /// Sizes of the types Ember can skip over but not compute with (so that such files still open
    /// and inspect).
    func byteCount(elements: Int) -> Int? {
        let (block, bytes): (Int, Int) = switch self {
        case .q8_1: (32, 36)
        case .q8_K: (256, 292)
        case .i8: (1, 1)
        case .i16: (1, 2)
        case .i32: (1, 4)
        case .i64, .f64: (1, 8)
        default: (0, 0)
        }
        return byteCount(elements: elements, block: block, bytes: bytes)
    }

    private func byteCount(elements: Int, block: Int, bytes: Int) -> Int? {
        guard block > 0, elements % block == 0 else { return nil }
        let (n, overflow) = (elements / block).multipliedReportingOverflow(by: bytes)
        return overflow ? nil : n
    }
}

/// A GGUF metadata value.
public indirect enum GGUFValue: Sendable, Equatable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array([GGUFValue])

    public var int: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(v)
        case .bool(let v): v ? 1 : 0
        default: nil
        }
    }

    public var double: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: int.map(Double.init)
        }
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var array: [GGUFValue]? { if case .array(let a) = self { a } else { nil } }

    public var description: String {
        switch self {
        case .string(let s): s.count > 80 ? "\"\(s.prefix(77))...\"" : "\"\(s)\""
        case .array(let a):
            "[" + a.prefix(5).map(\.description).joined(separator: ", ") + (a.count > 5 ? ", ... (\(a.count) items)]" : "]")
        case .bool(let b): "\(b)"
        case .float32(let v): "\(v)"
        case .float64(let v): "\(v)"
        default: "\(int!)"
        }
    }
}
