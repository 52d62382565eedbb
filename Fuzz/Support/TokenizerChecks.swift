import EmberTokenizers

/// What every tokenizer that loads must do: ids inside the vocabulary, a decoding for every id,
/// and, for byte-level BPE (which can spell any text), every probe text back exactly.
public func checkTokenizer(_ tokenizer: any Tokenizer) {
    for text in probeTexts {
        for special in [false, true] {
            let ids = tokenizer.encode(text, parseSpecial: special)
            invariant(ids.allSatisfy { (0..<tokenizer.vocabularySize).contains($0) },
                      "encode(\(text.debugDescription)) gave an id outside 0..<\(tokenizer.vocabularySize): \(ids)")
            let decoded = tokenizer.decode(ids, skipSpecial: false)
            _ = tokenizer.decode(ids, skipSpecial: true)
            if !special, tokenizer is ByteLevelBPETokenizer {
                invariant(decoded == text, "byte-level BPE did not round-trip \(text.debugDescription): \(ids) decode to \(decoded.debugDescription)")
            }
        }
    }
    for id in [0, tokenizer.vocabularySize - 1] where id >= 0 {
        _ = tokenizer.bytes(of: id)
        _ = tokenizer.token(id)
        _ = tokenizer.isSpecial(id)
    }
}
