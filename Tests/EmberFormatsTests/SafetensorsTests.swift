import EmberFormats
import EmberTensor
import Foundation
import Testing

/// A safetensors file from a header object and raw data.
func safetensorsBytes(_ header: String, data: [UInt8], claimedLength: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    var out: [UInt8] = []
    withUnsafeBytes(of: (claimedLength ?? UInt64(h.count)).littleEndian) { out += $0 }
    return out + h + data
}

func safetensorsError(_ bytes: [UInt8]) -> String? {
    let path = temporaryFile(bytes, suffix: ".safetensors")
    defer { try? FileManager.default.removeItem(atPath: path) }
    do { _ = try SafetensorsFile(path: path); return nil } catch let e as FormatError { return e.message } catch { return "\(error)" }
}

@Suite struct SafetensorsTests {
    let values: [Float] = [1, -2, 0.5, 3]

    @Test func readsF32F16AndBF16() throws {
        let f32 = values.withUnsafeBytes { Array($0) }
        let f16: [UInt8] = [0x00, 0x3C, 0x00, 0xC0]          // 1, -2
        let bf16: [UInt8] = [0x80, 0x3F, 0x00, 0xC0]         // 1, -2
        let header = #"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"#
            + #""b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},"c":{"dtype":"BF16","shape":[2],"data_offsets":[20,24]}}"#
        let path = temporaryFile(safetensorsBytes(header, data: f32 + f16 + bf16), suffix: ".safetensors")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try SafetensorsFile(path: path)
        #expect(file.metadata["format"] == "pt")
        let a = try #require(file.entries["a"])
        #expect(a.shape == [2, 2] && a.dtype == .f32)
        #expect(dequantize(.f32, from: file.data(of: a), count: 4) == values)
        #expect(dequantize(.f16, from: file.data(of: file.entries["b"]!), count: 2) == [1, -2])
        #expect(dequantize(.bf16, from: file.data(of: file.entries["c"]!), count: 2) == [1, -2])
    }

    @Test func rejectsHeaderLongerThanFile() {
        let bytes = safetensorsBytes("{}", data: [], claimedLength: 1 << 40)
        #expect(safetensorsError(bytes)?.contains("header claims") == true)
    }

    @Test func rejectsTruncatedFiles() {
        #expect(safetensorsError([1, 2, 3])?.contains("truncated") == true)
        let header = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#
        #expect(safetensorsError(safetensorsBytes(header, data: [0, 0, 0, 0]))?.contains("truncated") == true)
    }

    @Test func rejectsMalformedHeaders() {
        #expect(safetensorsError(safetensorsBytes("{not json", data: []))?.contains("not a JSON object") == true)
        let noShape = #"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#
        #expect(safetensorsError(safetensorsBytes(noShape, data: [0, 0, 0, 0]))?.contains("malformed") == true)
        let wrongSize = #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#
        #expect(safetensorsError(safetensorsBytes(wrongSize, data: [UInt8](repeating: 0, count: 8)))?.contains("but 8 bytes") == true)
    }

    /// A tensor of a dtype Ember does not compute with (an I64 position_ids buffer, an F64) does not
    /// stop the file from opening; it is set aside by name (and refused if a model reads it), and its
    /// offsets are still checked against the file.
    @Test func setsAsideOtherDtypes() throws {
        let header = #"{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#
        let path = temporaryFile(safetensorsBytes(header, data: [UInt8](repeating: 0, count: 16)), suffix: ".safetensors")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try SafetensorsFile(path: path)
        #expect(file.otherTensors == ["a": "F64"] && file.entries["a"] == nil && file.entries["b"]?.shape == [2])
        let outside = #"{"a":{"dtype":"I64","shape":[4],"data_offsets":[0,32]}}"#
        #expect(safetensorsError(safetensorsBytes(outside, data: [UInt8](repeating: 0, count: 8)))?.contains("truncated") == true)
    }
}
