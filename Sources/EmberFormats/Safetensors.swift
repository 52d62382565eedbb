import EmberTensor
import Foundation

/// A safetensors file: u64 little-endian header length N, N bytes of JSON
/// `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
/// then the data, with offsets relative to the end of the header. Tensors are used in place from the map.
public final class SafetensorsFile: @unchecked Sendable {
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let begin: Int
        public let end: Int
    }

    public let path: String
    public let entries: [String: Entry]
    /// Tensors of dtypes Ember does not compute with (I64 position ids, BOOL masks): name → dtype.
    /// The file opens; reading one of them is an error that names it.
    public let otherTensors: [String: String]
    public let metadata: [String: String]
    public let file: MappedFile
    private let dataStart: Int

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        path = file.path
        guard file.size >= 8 else { throw FormatError("\(path): truncated file: \(file.size) bytes, too short for a safetensors header") }
        let headerLength = UInt64(littleEndian: file.pointer.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(file.size - 8) else {
            throw FormatError("\(path): header claims \(headerLength) bytes but the file has only \(file.size - 8) after the length")
        }
        dataStart = 8 + Int(headerLength)
        let headerData = Data(bytes: file.pointer + 8, count: Int(headerLength))
        guard let json = try? JSONSerialization.jsonObject(with: headerData), let header = json as? [String: Any] else {
            throw FormatError("\(path): the header is not a JSON object")
        }
        var entries: [String: Entry] = [:], otherTensors: [String: String] = [:]
        var metadata: [String: String] = [:]
        let dataSize = file.size - dataStart
        for (name, value) in header {
            if name == "__metadata__" {
                for (k, v) in value as? [String: Any] ?? [:] { metadata[k] = "\(v)" }
                continue
            }
            guard let object = value as? [String: Any], let dtypeName = object["dtype"] as? String,
                  let shape = object["shape"] as? [Int], let offsets = object["data_offsets"] as? [Int], offsets.count == 2
            else { throw FormatError("\(path): tensor \(name) has a malformed header entry") }
            guard shape.allSatisfy({ $0 >= 0 && $0 < 1 << 40 }) else { throw FormatError("\(path): tensor \(name) has absurd shape \(shape)") }
            let count = shape.reduce(1, *)
            guard offsets[0] >= 0, offsets[1] >= offsets[0], offsets[1] <= dataSize else {
                throw FormatError("\(path): truncated file: tensor \(name) occupies bytes \(offsets[0])..<\(offsets[1]) but the data section has \(dataSize)")
            }
            guard let dtype = Self.dtypes[dtypeName] else {
                otherTensors[name] = dtypeName
                continue
            }
            guard dtype.byteCount(elements: count) == offsets[1] - offsets[0] else {
                throw FormatError("\(path): tensor \(name) has shape \(shape) of \(dtypeName) but \(offsets[1] - offsets[0]) bytes")
            }
            entries[name] = Entry(name: name, dtype: dtype, shape: shape, begin: offsets[0], end: offsets[1])
        }
        self.entries = entries
        self.otherTensors = otherTensors
        self.metadata = metadata
    }

    public func data(of entry: Entry) -> UnsafeRawPointer { file.pointer + dataStart + entry.begin }

    static let dtypes: [String: DType] = ["F32": .f32, "F16": .f16, "BF16": .bf16]
}

/// The tensors of a model directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
public struct SafetensorsCollection: Sendable {
    public let files: [SafetensorsFile]
    private let owner: [String: Int]

    public init(directory: String) throws {
        let fm = FileManager.default
        let single = directory + "/model.safetensors"
        let index = directory + "/model.safetensors.index.json"
        var paths: [String]
        if fm.fileExists(atPath: single) {
            paths = [single]
        } else if fm.fileExists(atPath: index) {
            guard let data = fm.contents(atPath: index),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let map = json["weight_map"] as? [String: String]
            else { throw FormatError("\(index): not a safetensors index (no weight_map)") }
            paths = Array(Set(map.values)).sorted().map { directory + "/" + $0 }
        } else {
            throw FormatError("\(directory): no model.safetensors or model.safetensors.index.json")
        }
        files = try paths.map { try SafetensorsFile(path: $0) }
        var owner: [String: Int] = [:]
        for (i, f) in files.enumerated() { for name in f.entries.keys { owner[name] = i } }
        self.owner = owner
    }

    public func entry(_ name: String) -> (SafetensorsFile, SafetensorsFile.Entry)? {
        guard let i = owner[name], let e = files[i].entries[name] else { return nil }
        return (files[i], e)
    }

    public var names: [String] { owner.keys.sorted() }
}

/// Writes f32 tensors as a safetensors file: an 8-byte little-endian header length, a JSON header
/// (name → dtype, shape, byte offsets; plus `__metadata__`), padded with spaces to 8 bytes, then the
/// data in header order. Write errors (a full disk) are thrown, never ignored.
public enum SafetensorsWriter {
    public struct Tensor {
        public let name: String
        public let shape: [Int]
        public let data: UnsafeBufferPointer<Float>
        public init(name: String, shape: [Int], data: UnsafeBufferPointer<Float>) {
            precondition(shape.reduce(1, *) == data.count, "\(name): shape \(shape) does not hold \(data.count) values")
            self.name = name
            self.shape = shape
            self.data = data
        }
    }

    public static func write(_ tensors: [Tensor], metadata: [String: String] = ["format": "pt"], to path: String) throws {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.data.count]] as [String: Any]
            offset += 4 * t.data.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw FormatError("\(path): cannot create the file")
        }
        defer { try? handle.close() }
        do {
            try handle.write(contentsOf: withUnsafeBytes(of: UInt64(json.count).littleEndian) { Data($0) })
            try handle.write(contentsOf: json)
            for t in tensors { try handle.write(contentsOf: Data(buffer: t.data)) }
            try handle.synchronize()
        } catch {
            throw FormatError("\(path): writing failed: \(error.localizedDescription)")
        }
    }
}
