/// A reader for the protocol-buffer wire format, enough to walk a SentencePiece `.model` file:
/// each field is a key (field number << 3 | wire type) followed by a varint, a fixed 32/64-bit
/// value or a length-prefixed byte string. Every read is bounds-checked; malformed input throws.
struct ProtobufReader {
    enum Value {
        case varint(UInt64)
        case fixed64(UInt64)
        case bytes(ArraySlice<UInt8>)
        case fixed32(UInt32)

        var bool: Bool? { if case .varint(let v) = self { return v != 0 } else { return nil } }
        var int: Int? { if case .varint(let v) = self { return Int(truncatingIfNeeded: Int32(truncatingIfNeeded: v)) } else { return nil } }
        var float: Float? { if case .fixed32(let v) = self { return Float(bitPattern: v) } else { return nil } }
        var slice: ArraySlice<UInt8>? { if case .bytes(let b) = self { return b } else { return nil } }
        var string: String? { slice.flatMap { String(validating: $0, as: UTF8.self) } }
    }

    private let bytes: ArraySlice<UInt8>
    private var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    var isAtEnd: Bool { position >= bytes.endIndex }

    /// The next (field number, value), or nil at the end of the message.
    mutating func next() throws -> (field: Int, value: Value)? {
        if isAtEnd { return nil }
        let key = try varint()
        let field = Int(key >> 3)
        guard field > 0 else { throw TokenizerError("protobuf field number 0 at byte \(position - bytes.startIndex)") }
        switch key & 7 {
        case 0: return (field, .varint(try varint()))
        case 1: return (field, .fixed64(UInt64(littleEndianBytes: try take(8))))
        case 2:
            let length = try varint()
            guard length <= UInt64(bytes.endIndex - position) else {
                throw TokenizerError("protobuf field \(field) claims \(length) bytes but \(bytes.endIndex - position) remain (truncated file?)")
            }
            return (field, .bytes(try take(Int(length))))
        case 5: return (field, .fixed32(UInt32(truncatingIfNeeded: UInt64(littleEndianBytes: try take(4)))))
        case let type: throw TokenizerError("protobuf wire type \(type) of field \(field) is not supported")
        }
    }

    private mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard bytes.endIndex - position >= n else { throw TokenizerError("protobuf data ends inside a field (truncated file?)") }
        defer { position += n }
        return bytes[position..<position + n]
    }

    private mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        for shift in stride(from: 0, to: 64, by: 7) {
            guard position < bytes.endIndex else { throw TokenizerError("protobuf data ends inside a varint (truncated file?)") }
            let b = bytes[position]
            position += 1
            result |= UInt64(b & 0x7F) << UInt64(shift)
            if b & 0x80 == 0 { return result }
        }
        throw TokenizerError("protobuf varint longer than 10 bytes")
    }
}

extension UInt64 {
    init(littleEndianBytes b: ArraySlice<UInt8>) {
        var v: UInt64 = 0
        for (i, byte) in b.enumerated() { v |= UInt64(byte) << UInt64(8 * i) }
        self = v
    }
}
