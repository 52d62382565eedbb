import EmberFormats
import EmberModels
import EmberTokenizers
import Foundation
import Testing

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }
}

@Suite struct ByteLevelBPETests {
    /// A toy vocabulary: the 256 byte tokens, then merges "h e", "he l", "hel l", "hell o", "Ġ w".
    static func toy() throws -> ByteLevelBPETokenizer {
        let bytes = ByteLevel.byteToScalar.map { String($0) }
        return try ByteLevelBPETokenizer(tokens: bytes + ["he", "hel", "hell", "hello", "Ġw", "<|end|>"],
                                         merges: ["h e", "he l", "hel l", "hell o", "Ġ w"],
                                         preTokenizer: .gpt2, controlTokens: [261], eosTokenID: 261)
    }

    @Test func mergesInRankOrder() throws {
        let bpe = try Self.toy()
        #expect(bpe.encode("hello") == [259])
        #expect(bpe.encode("hello world").prefix(2) == [259, 260])
        #expect(bpe.encode("hel") == [257])
        #expect(bpe.decode(bpe.encode("hello world, ü!")) == "hello world, ü!")
    }

    @Test func specialTokensOnlyWhenAsked() throws {
        let bpe = try Self.toy()
        #expect(bpe.encode("a<|end|>", parseSpecial: true) == [Int(UInt8(ascii: "a")), 261])
        #expect(bpe.encode("a<|end|>", parseSpecial: false).count == 8)
    }

    /// A vocabulary whose merges reach a control token ("æĹ¥", the byte-level spelling of 日, made
    /// a control token) and whose byte "x" is user-defined: plain text uses neither, so it decodes
    /// back whole (a fuzzed GGUF vocabulary once made "日本語" decode as "æĹ¥本語").
    @Test func ordinaryTextNeverBecomesASpecialToken() throws {
        let bytes = ByteLevel.byteToScalar.map { String($0) }
        let bpe = try ByteLevelBPETokenizer(tokens: bytes + ["æĹ", "æĹ¥"], merges: ["æ Ĺ", "æĹ ¥"],
                                            preTokenizer: .gpt2, controlTokens: [257], userTokens: [Int(UInt8(ascii: "x"))])
        let ids = bpe.encode("日本語", parseSpecial: false)
        #expect(ids.first == 256 && !ids.contains(257))
        #expect(bpe.decode(ids, skipSpecial: false) == "日本語")
        #expect(bpe.encode("日", parseSpecial: true) == [256, Int(ByteLevel.byteToScalar.firstIndex(of: "¥")!)])
        #expect(bpe.decode(bpe.encode("a x b", parseSpecial: false), skipSpecial: false) == "a x b")
    }

    @Test func rejectsMergesOfUnknownTokens() {
        #expect(throws: TokenizerError.self) {
            try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: ["a c"], preTokenizer: .gpt2)
        }
        #expect(throws: TokenizerError.self) {
            try ByteLevelBPETokenizer(tokens: ["a", "b"], merges: ["a b"], preTokenizer: .gpt2)  // "ab" missing
        }
    }

    @Test func gpt2PreTokenization() {
        func pieces(_ text: String, _ p: PreTokenizer = .gpt2) -> [String] {
            let scalars = Array(text.unicodeScalars)
            return p.split(scalars).map { String(String.UnicodeScalarView(scalars[$0])) }
        }
        #expect(pieces("Hello world's  end!!\n") == ["Hello", " world", "'s", " ", " end", "!!", "\n"])
        #expect(pieces("x   y") == ["x", "  ", " y"])
        #expect(pieces("abc 123") == ["abc", " 123"])
        #expect(pieces("abc 123", .smollm) == ["abc", " ", "1", "2", "3"])
    }

    @Test func streamingDecodeNeverSplitsCharacters() {
        var decoder = StreamingDecoder()
        let bytes = Array("a€😀".utf8)  // 1 + 3 + 4 bytes
        var text = ""
        var emitted: [String] = []
        for b in bytes {
            let piece = decoder.append([b])
            emitted.append(piece)
            text += piece
        }
        text += decoder.finish()
        #expect(text == "a€😀")
        #expect(emitted.filter { !$0.isEmpty } == ["a", "€", "😀"])
    }
}

/// SmolLM2's GGUF vocabulary against llama.cpp's tokenizer (fixtures from
/// scripts/fixtures/llama-cpp-reference.sh) on a text mixing scripts, emoji, whitespace and digits.
@Suite struct GGUFVocabularyTests {
    @Test(arguments: [false, true])
    func matchesLlamaTokenize(parseSpecial: Bool) throws {
        let gguf = try GGUFFile(path: Fixtures.path(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        let tokenizer = try GGUFTokenizer.load(gguf)
        let text = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/text/tokenizer.txt"), encoding: .utf8)
        let file = parseSpecial ? "tokenizer-ids-special.json" : "tokenizer-ids.json"
        let expected = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("Tests/Fixtures/llama.cpp/\(file)")))) as! [Int]
        let ids = tokenizer.encode(text, parseSpecial: parseSpecial)
        let firstDifference = zip(ids, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        print("tokenizer (parseSpecial: \(parseSpecial)): \(ids.count) ids, llama.cpp \(expected.count), first difference at \(firstDifference.map(String.init) ?? "none")")
        #expect(ids == expected)
        #expect(tokenizer.decode(ids) == text)
    }
}
