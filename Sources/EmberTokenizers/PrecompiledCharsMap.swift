/// SentencePiece's compiled normalization rules (`precompiled_charsmap`, e.g. for `nmt_nfkc`): a
/// double-array trie over UTF-8 byte strings whose values are offsets of NUL-terminated replacement
/// strings. Normalization takes, at each position, the longest rule that matches there.
///
/// Layout: a little-endian UInt32 giving the trie's size in bytes, the trie (UInt32 units), then the
/// replacement strings.
struct PrecompiledCharsMap: Sendable {
    private let units: [UInt32]
    private let replacements: [UInt8]

    init(_ blob: ArraySlice<UInt8>) throws {
        guard blob.count >= 4 else { throw TokenizerError("precompiled_charsmap is shorter than its header") }
        let trieBytes = Int(UInt64(littleEndianBytes: blob.prefix(4)))
        guard trieBytes % 4 == 0, trieBytes >= 4, trieBytes <= blob.count - 4 else {
            throw TokenizerError("precompiled_charsmap claims a \(trieBytes)-byte trie in \(blob.count - 4) bytes")
        }
        let trie = blob.dropFirst(4).prefix(trieBytes)
        units = stride(from: trie.startIndex, to: trie.endIndex, by: 4).map { UInt32(truncatingIfNeeded: UInt64(littleEndianBytes: trie[$0..<$0 + 4])) }
        replacements = Array(blob.dropFirst(4 + trieBytes))
    }

    /// The longest rule matching at the start of `bytes`: (matched length, replacement bytes).
    func longestMatch(_ bytes: ArraySlice<UInt8>) -> (length: Int, replacement: ArraySlice<UInt8>)? {
        var best: (length: Int, value: Int)?
        var node = 0
        guard !units.isEmpty else { return nil }
        node ^= Self.offset(units[0])
        for (i, byte) in bytes.enumerated() {
            node ^= Int(byte)
            guard node < units.count else { break }
            let unit = units[node]
            guard Self.label(unit) == UInt32(byte) else { break }
            node ^= Self.offset(unit)
            guard node < units.count else { break }
            if (unit >> 8) & 1 == 1 { best = (i + 1, Int(units[node] & 0x7FFF_FFFF)) }
        }
        guard let best, best.value < replacements.count else { return nil }
        let end = replacements[best.value...].firstIndex(of: 0) ?? replacements.endIndex
        return (best.length, replacements[best.value..<end])
    }

    private static func offset(_ unit: UInt32) -> Int { Int((unit >> 10) << ((unit & (1 << 9)) >> 6)) }
    private static func label(_ unit: UInt32) -> UInt32 { unit & (1 << 31 | 0xFF) }
}
