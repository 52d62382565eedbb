import EmberFormats
import EmberModels
import EmberTokenizers
import Foundation
import Testing

/// Broken GGUF vocabularies and broken text: each is a clear error, never a crash.
@Suite struct VocabularyBadInputTests {
    /// A vocabulary-only GGUF with the given tokenizer metadata.
    static func load(_ metadata: [(String, GGUFValue)]) -> String {
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("llama"))] + metadata
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("vocab-\(UUID().uuidString).gguf").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            try w.write(to: path)
            _ = try GGUFTokenizer.load(GGUFFile(path: path))
            return "loaded"
        } catch {
            return "\(error)"
        }
    }

    static let pieces: [GGUFValue] = ["<unk>", "<s>", "</s>", "▁a", "a", "b"].map { .string($0) }

    @Test func brokenVocabulariesAreRefusedByName() {
        #expect(Self.load([]).contains("tokenizer.ggml.model is missing"))
        #expect(Self.load([("tokenizer.ggml.model", .string("rwkv")), ("tokenizer.ggml.tokens", .array(Self.pieces))])
            .contains("tokenizer model rwkv is not supported"))
        #expect(Self.load([("tokenizer.ggml.model", .string("llama"))]).contains("tokenizer.ggml.tokens is missing"))
        #expect(Self.load([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", .array(Self.pieces))])
            .contains("tokenizer.ggml.scores is missing"))
        #expect(Self.load([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", .array(Self.pieces)),
                           ("tokenizer.ggml.scores", .array([.float32(0)]))]).contains("one score per token"))
        #expect(Self.load([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", .array(Self.pieces)),
                           ("tokenizer.ggml.token_type", .array([.int32(1)]))]).contains("token_type has 1 entries for 6 tokens"))
        #expect(Self.load([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", .array([.uint32(7), .uint32(8)]))])
            .contains("tokenizer.ggml.tokens[0] is not a string"))
        #expect(Self.load([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", .array(Self.pieces)),
                           ("tokenizer.ggml.scores", .array(Self.pieces.map { _ in .float32(0) })),
                           ("tokenizer.ggml.bos_token_id", .uint32(99))]).contains("bos_token_id = 99 is outside the vocabulary"))
        #expect(Self.load([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("gpt2")),
                           ("tokenizer.ggml.tokens", .array(Self.pieces)), ("tokenizer.ggml.merges", .array([.string("a zz")]))])
            .contains("names a token that is not in the vocabulary"))
        #expect(Self.load([("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("falcon")),
                           ("tokenizer.ggml.tokens", .array(Self.pieces))]).contains("pre-tokenizer falcon is not supported"))
        #expect(Self.load([("tokenizer.ggml.model", .string("bert")), ("tokenizer.ggml.tokens", .array(Self.pieces))])
            .contains("unknown token"))
        #expect(Self.load([("tokenizer.ggml.model", .string("llama")), ("tokenizer.ggml.tokens", .array(Self.pieces)),
                           ("tokenizer.ggml.scores", .array(Self.pieces.map { _ in .float32(0) }))]) == "loaded")
    }

    @Test func truncatedVocabularyFilesAreRefused() throws {
        let path = Fixtures.path("Tests/Fixtures/tokenizers/sentencepiece/llama.vocab.gguf")
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        for cut in [10, 100, bytes.count / 2, bytes.count - 3] {
            let truncated = FileManager.default.temporaryDirectory.appendingPathComponent("cut-\(cut).gguf").path
            FileManager.default.createFile(atPath: truncated, contents: Data(bytes.prefix(cut)))
            defer { try? FileManager.default.removeItem(atPath: truncated) }
            #expect(throws: (any Error).self, "cut at \(cut)") { _ = try GGUFTokenizer.load(GGUFFile(path: truncated)) }
        }
    }

    @Test func invalidUTF8IsAnErrorWithItsOffset() throws {
        let tokenizer = try SentencePieceModel.load(path: Fixtures.path("Tests/Fixtures/tokenizers/sentencepiece/llama.model"))
        #expect(try tokenizer.encode(utf8: Array("héllo".utf8), parseSpecial: false) == tokenizer.encode("héllo"))
        for (bytes, offset) in [([0x61, 0x62, 0xFF, 0x63], 2), ([0xC3], 0), ([0x61, 0xE2, 0x82], 1), ([0x61, 0xED, 0xA0, 0x80], 1)] as [([UInt8], Int)] {
            #expect(throws: TokenizerError("the input is not valid UTF-8 (byte \(offset) of \(bytes.count))")) {
                _ = try tokenizer.encode(utf8: bytes, parseSpecial: false)
            }
        }
    }
}
