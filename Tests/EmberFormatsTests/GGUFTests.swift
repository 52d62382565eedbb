import EmberFormats
import EmberTensor
import Foundation
import Testing

/// Writes `bytes` to a fresh temporary file and returns its path.
func temporaryFile(_ bytes: [UInt8], suffix: String = ".gguf") -> String {
    let path = NSTemporaryDirectory() + "ember-\(UUID().uuidString)\(suffix)"
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    return path
}

/// Opens a GGUF from bytes and returns the error message, or nil when it opened.
func ggufError(_ bytes: [UInt8]) -> String? {
    let path = temporaryFile(bytes)
    defer { try? FileManager.default.removeItem(atPath: path) }
    do { _ = try GGUFFile(path: path); return nil } catch let e as FormatError { return e.message } catch { return "\(error)" }
}

func sampleGGUF(alignment: Int = 32) -> GGUFWriter {
    var w = GGUFWriter()
    w.alignment = alignment
    w.metadata = [
        ("general.architecture", .string("llama")), ("general.alignment", .uint32(UInt32(alignment))),
        ("u8", .uint8(200)), ("i8", .int8(-5)), ("u16", .uint16(60000)), ("i16", .int16(-300)),
        ("u32", .uint32(4_000_000_000)), ("i32", .int32(-7)), ("f32", .float32(1.5)), ("bool", .bool(true)),
        ("str", .string("héllo")), ("u64", .uint64(1 << 40)), ("i64", .int64(-(1 << 40))), ("f64", .float64(0.25)),
        ("ints", .array([.int32(1), .int32(2), .int32(3)])), ("strings", .array([.string("a"), .string("bc")])),
    ]
    let values: [Float] = (0..<8).map { Float($0) * 0.5 }
    w.addTensor(name: "a", type: .f32, extents: [4, 2], data: values.withUnsafeBytes { Array($0) })
    w.addTensor(name: "b", type: .f16, extents: [3], data: [0, 0x3C, 0, 0x40, 0, 0xC0])
    return w
}

@Suite struct GGUFReaderTests {
    @Test(arguments: [32, 64])
    func roundTripsEveryValueType(alignment: Int) throws {
        let path = temporaryFile(sampleGGUF(alignment: alignment).bytes())
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try GGUFFile(path: path)
        #expect(file.version == 3)
        #expect(file.alignment == alignment)
        #expect(file.dataOffset % alignment == 0)
        #expect(file.metadata["u8"] == .uint8(200) && file.metadata["i16"] == .int16(-300))
        #expect(file.metadata["u32"] == .uint32(4_000_000_000) && file.metadata["i64"] == .int64(-(1 << 40)))
        #expect(file.metadata["f32"] == .float32(1.5) && file.metadata["f64"] == .float64(0.25))
        #expect(file.string("str") == "héllo" && file.metadata["bool"] == .bool(true))
        #expect(file.metadata["strings"] == .array([.string("a"), .string("bc")]))
        #expect(file.metadataKeys.first == "general.architecture")
        let a = try #require(file.tensorInfo(named: "a"))
        #expect(a.extents == [4, 2] && a.ggmlType == .f32)
        #expect(dequantize(.f32, from: file.data(of: a), count: 8) == (0..<8).map { Float($0) * 0.5 })
        let b = try #require(file.tensorInfo(named: "b"))
        #expect(dequantize(.f16, from: file.data(of: b), count: 3) == [1, 2, -2])
    }

    @Test func rejectsWrongMagic() {
        var bytes = sampleGGUF().bytes()
        bytes[0] = UInt8(ascii: "X")
        #expect(ggufError(bytes)?.contains("not a GGUF file") == true)
    }

    @Test func rejectsUnsupportedVersion() {
        var bytes = sampleGGUF().bytes()
        bytes[4] = 1
        #expect(ggufError(bytes)?.contains("unsupported GGUF version 1") == true)
    }

    @Test func rejectsEveryTruncation() {
        let bytes = sampleGGUF().bytes()
        // Cut inside the header, the metadata, the tensor table and the data.
        for length in [0, 3, 10, 23, 40, 120, 300, bytes.count - 60, bytes.count - 30] where length < bytes.count {
            let message = ggufError(Array(bytes[..<length]))
            #expect(message?.contains("truncated") == true, "length \(length) of \(bytes.count): \(message ?? "opened")")
        }
    }

    @Test func rejectsTensorDataPastTheEnd() {
        var w = GGUFWriter()
        w.addTensor(name: "big", type: .f32, extents: [1000], data: [UInt8](repeating: 0, count: 16))
        let message = ggufError(w.bytes())
        #expect(message?.contains("tensor big needs bytes up to") == true, "\(message ?? "opened")")
    }

    @Test func rejectsUnknownTensorType() {
        var w = GGUFWriter()
        w.addTensor(name: "t", type: .f32, extents: [8], data: [UInt8](repeating: 0, count: 32))
        var bytes = w.bytes()
        // The type id sits after name (8 + 1 bytes), dimension count (4) and one extent (8).
        let typeOffset = 24 + 8 + 1 + 4 + 8
        bytes[typeOffset] = 99
        #expect(ggufError(bytes)?.contains("unknown ggml type 99") == true)
    }

    @Test func rejectsAbsurdCounts() {
        var bytes = sampleGGUF().bytes()
        for i in 8..<16 { bytes[i] = 0xFF }  // tensor count 2^64 − 1
        #expect(ggufError(bytes)?.contains("absurd") == true)
        var lengthLie = sampleGGUF().bytes()
        // The first key's length: claim a petabyte.
        for i in 24..<32 { lengthLie[i] = 0x7F }
        #expect(ggufError(lengthLie)?.contains("claims") == true)
    }

    @Test func rejectsNonPowerOfTwoAlignment() {
        var w = sampleGGUF()
        w.metadata[1] = ("general.alignment", .uint32(24))
        #expect(ggufError(w.bytes())?.contains("power of two") == true)
    }

    @Test func rejectsDuplicateTensors() {
        var w = GGUFWriter()
        w.addTensor(name: "t", type: .f32, extents: [8], data: [UInt8](repeating: 0, count: 32))
        w.addTensor(name: "t", type: .f32, extents: [8], data: [UInt8](repeating: 0, count: 32))
        #expect(ggufError(w.bytes())?.contains("appears twice") == true)
    }

    @Test func rejectsMissingFile() {
        #expect(throws: FormatError.self) { try GGUFFile(path: "/nonexistent/model.gguf") }
    }
}
