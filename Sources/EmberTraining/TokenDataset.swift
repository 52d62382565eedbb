import EmberFormats
import EmberModels
import EmberTensor
import Foundation

/// A file of token ids (`train.bin`, `val.bin`), written by `ember prepare-data` and read
/// memory-mapped by training. Layout (little-endian; see docs/formats.md):
///
///     0   8 bytes  magic "EMBERTOK"
///     8   u32      format version (1)
///     12  u32      bytes per token (2 or 4)
///     16  u64      token count
///     24  u32      vocabulary size
///     28  u32      reserved (0)
///     32  count × (2 or 4) bytes of unsigned token ids
///
/// Documents follow each other, each ended by the tokenizer's end-of-text token.
public final class TokenFile: @unchecked Sendable {
    public static let magic = Array("EMBERTOK".utf8)
    public static let headerSize = 32

    public let path: String
    public let count: Int
    public let vocabularySize: Int
    let width: Int
    let file: MappedFile

    public init(path: String) throws {
        let file = try MappedFile(path: path)
        self.file = file
        self.path = path
        guard file.size >= Self.headerSize, Array(UnsafeRawBufferPointer(start: file.pointer, count: 8)) == Self.magic else {
            throw FormatError("\(path): not an Ember token file (no EMBERTOK header); make one with `ember prepare-data`")
        }
        func u32(_ offset: Int) -> Int { Int(UInt32(littleEndian: file.pointer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))) }
        let version = u32(8), width = u32(12)
        guard version == 1 else { throw FormatError("\(path): token file version \(version); this Ember reads version 1") }
        self.width = width
        guard width == 2 || width == 4 else { throw FormatError("\(path): \(width) bytes per token; expected 2 or 4") }
        let count = Int(UInt64(littleEndian: file.pointer.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
        self.count = count
        vocabularySize = u32(24)
        guard count >= 0, count <= (file.size - Self.headerSize) / width, Self.headerSize + count * width == file.size else {
            throw FormatError("\(path): truncated: the header promises \(count) tokens but the file holds \((file.size - Self.headerSize) / width)")
        }
    }

    public subscript(i: Int) -> Int32 {
        let base = file.pointer + Self.headerSize
        return width == 2 ? Int32(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                          : Int32(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
    }

    /// Writes `tokens` as a token file through a temporary file and a rename.
    public static func write(_ tokens: [Int32], vocabularySize: Int, to path: String) throws {
        let width = vocabularySize <= 1 << 16 ? 2 : 4
        var data = Data(capacity: headerSize + tokens.count * width)
        data.append(contentsOf: magic)
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { data.append(contentsOf: $0) } }
        append(UInt32(1))
        append(UInt32(width))
        append(UInt64(tokens.count))
        append(UInt32(vocabularySize))
        append(UInt32(0))
        if width == 2 {
            for t in tokens { append(UInt16(t)) }
        } else {
            for t in tokens { append(UInt32(bitPattern: t)) }
        }
        try writeFile(data, to: path)
    }
}

/// A prepared data folder: `train.bin`, `val.bin`, `dataset.json` and the tokenizer file.
public struct TokenDataset: Sendable {
    public struct Description: Codable, Sendable {
        public var format = "ember-tokens"
        public var version = 1
        public var tokenizer: String
        public var vocabularySize: Int
        public var endOfTextTokenID: Int?
        public var documents: [String: Int]
        public var tokens: [String: Int]
        public var sources: [String]

        enum CodingKeys: String, CodingKey {
            case format, version, tokenizer, documents, tokens, sources
            case vocabularySize = "vocab_size"
            case endOfTextTokenID = "eos_token_id"
        }

        public init(tokenizer: String, vocabularySize: Int, endOfTextTokenID: Int?, documents: [String: Int], tokens: [String: Int], sources: [String]) {
            self.tokenizer = tokenizer
            self.vocabularySize = vocabularySize
            self.endOfTextTokenID = endOfTextTokenID
            self.documents = documents
            self.tokens = tokens
            self.sources = sources
        }
    }

    public let directory: String
    public let description: Description
    public let train: TokenFile
    public let validation: TokenFile

    public init(directory: String) throws {
        self.directory = directory
        let path = directory + "/dataset.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FormatError("\(directory): no dataset.json; prepare the folder with `ember prepare-data`")
        }
        do {
            description = try JSONDecoder().decode(Description.self, from: data)
        } catch {
            throw FormatError("\(path): not a valid dataset description")
        }
        train = try TokenFile(path: directory + "/train.bin")
        validation = try TokenFile(path: directory + "/val.bin")
    }

    public var tokenizerPath: String { directory + "/" + description.tokenizer }
}

/// Training windows drawn reproducibly: each is `length + 1` consecutive tokens at an offset drawn
/// uniformly from a seeded generator, split into inputs (the first `length`) and targets (the last
/// `length`). The generator's state is the whole data position.
public struct WindowSampler: Sendable {
    public private(set) var generator: SplitMix64
    public let length: Int

    /// A new sampler from a seed, or a saved one from `generator.state`.
    public init(seed: UInt64, length: Int) {
        generator = SplitMix64(seed: seed)
        self.length = length
    }

    /// `batch` windows from `file` as row-major inputs and targets [batch × length].
    public mutating func next(batch: Int, from file: TokenFile) -> (inputs: [Int32], targets: [Int32]) {
        let span = file.count - length
        precondition(span >= 1)
        var inputs: [Int32] = [], targets: [Int32] = []
        inputs.reserveCapacity(batch * length)
        targets.reserveCapacity(batch * length)
        for _ in 0..<batch {
            let offset = Int(generator.next() % UInt64(span))
            for i in 0..<length {
                inputs.append(file[offset + i])
                targets.append(file[offset + i + 1])
            }
        }
        return (inputs, targets)
    }

    /// `count` windows spread evenly over `file` (the same every time), for evaluation.
    public static func evenlySpaced(_ count: Int, length: Int, from file: TokenFile) -> (inputs: [Int32], targets: [Int32]) {
        let span = file.count - length - 1
        var inputs: [Int32] = [], targets: [Int32] = []
        for w in 0..<count {
            let offset = count == 1 ? 0 : w * span / (count - 1)
            for i in 0..<length {
                inputs.append(file[offset + i])
                targets.append(file[offset + i + 1])
            }
        }
        return (inputs, targets)
    }
}
