/// What every Ember tokenizer offers.
public protocol Tokenizer: Sendable {
    /// Token ids for `text`. With `parseSpecial`, the text of special tokens (`<|im_start|>`) becomes
    /// those tokens; without, it is tokenized as ordinary text.
    func encode(_ text: String, parseSpecial: Bool) -> [Int]
    /// The bytes a token stands for (special tokens give their text).
    func bytes(of id: Int) -> [UInt8]
    var vocabularySize: Int { get }
    var bosTokenID: Int? { get }
    var eosTokenID: Int? { get }
    /// Tokens that end generation (the end-of-sequence token and end-of-turn markers).
    var endOfGenerationIDs: Set<Int> { get }
    func isSpecial(_ id: Int) -> Bool
    func id(of token: String) -> Int?
    /// The vocabulary entry of `id` as the tokenizer stores it (`Ġthe`, `##ing`).
    func token(_ id: Int) -> String?
    /// The text of `ids`. Invalid UTF-8 (a character cut between tokens) becomes U+FFFD.
    func decode(_ ids: [Int], skipSpecial: Bool) -> String
}

extension Tokenizer {
    public func encode(_ text: String) -> [Int] { encode(text, parseSpecial: false) }

    public func decode(_ ids: [Int]) -> String { decode(ids, skipSpecial: false) }

    /// Token ids for UTF-8 bytes from outside (a file, a socket): invalid UTF-8 is an error that
    /// gives the offset of the first bad byte, never a silent replacement.
    public func encode(utf8 bytes: [UInt8], parseSpecial: Bool) throws -> [Int] {
        try encode(validatedText(bytes), parseSpecial: parseSpecial)
    }

    /// Concatenated token bytes: the decoding of byte-level vocabularies.
    public func decodeBytes(_ ids: [Int], skipSpecial: Bool) -> String {
        var bytes: [UInt8] = []
        for id in ids where !(skipSpecial && isSpecial(id)) { bytes += self.bytes(of: id) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Turns a stream of token ids into text without ever splitting a UTF-8 character: bytes of an
/// incomplete character are held back until the token that completes it arrives.
public struct StreamingDecoder {
    private var pending: [UInt8] = []
    public init() {}

    /// Appends a token's bytes and returns the text that is now complete.
    public mutating func append(_ bytes: [UInt8]) -> String {
        pending += bytes
        let complete = completePrefixLength(pending)
        let text = String(decoding: pending[..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Whatever is left at the end of the stream (an incomplete character becomes U+FFFD).
    public mutating func finish() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }

    /// The length of the longest prefix that does not end inside a UTF-8 sequence that could still complete.
    private func completePrefixLength(_ bytes: [UInt8]) -> Int {
        var i = bytes.count
        var back = 0
        while i > 0, back < 4 {
            let b = bytes[i - 1]
            if b & 0xC0 != 0x80 {  // a lead byte or ASCII
                let need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
                return need > back + 1 && b >= 0xC0 ? i - 1 : bytes.count
            }
            i -= 1
            back += 1
        }
        return bytes.count
    }
}

/// `bytes` as a String, or an error naming the offset of the first byte that is not valid UTF-8.
public func validatedText(_ bytes: [UInt8]) throws -> String {
    if let text = String(validating: bytes, as: UTF8.self) { return text }
    var iterator = bytes.makeIterator()
    var decoder = UTF8()
    var offset = 0
    while case .scalarValue(let scalar) = decoder.decode(&iterator) { offset += UTF8.width(scalar) }
    throw TokenizerError("the input is not valid UTF-8 (byte \(offset) of \(bytes.count))")
}

/// A tokenizer file that cannot be used, with the reason.
public struct TokenizerError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
