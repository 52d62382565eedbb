import EmberTokenizers

/// What every tokenizer that loads must do: ids inside the vocabulary, a decoding for every id,
/// and, for byte-level BPE, every probe text back exactly when the vocabulary has a token for each
/// of its bytes (a byte without one is dropped, as llama.cpp and Hugging Face tokenizers drop it).
public func checkTokenizer(_ tokenizer: any Tokenizer) {
    for text in probeTexts {
        for special in [false, true] {
            let ids = tokenizer.encode(text, parseSpecial: special)
            invariant(ids.allSatisfy { (0..<tokenizer.vocabularySize).contains($0) },
                      "encode(\(text.debugDescription)) gave an id outside 0..<\(tokenizer.vocabularySize): \(ids)")
            let decoded = tokenizer.decode(ids, skipSpecial: false)
            _ = tokenizer.decode(ids, skipSpecial: true)
            if !special, tokenizer is ByteLevelBPETokenizer, text.utf8.allSatisfy({ tokenizer.id(of: String(ByteLevel.byteToScalar[Int($0)])).map { !tokenizer.isSpecial($0) } ?? false }) {
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
