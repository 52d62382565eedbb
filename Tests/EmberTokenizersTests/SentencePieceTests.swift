import EmberFormats
import EmberModels
import EmberTokenizers
import Foundation
import Testing

/// SentencePiece-style BPE against its references (fixtures from
/// scripts/fixtures/sentencepiece-reference.py): `.model` files trained with the `sentencepiece`
/// package against `SentencePieceProcessor.encode`, their `tokenizer.json` conversions against Hugging
/// Face `tokenizers`, and GGUF vocabularies against llama.cpp (llama) and `tokenizers` (bert).
@Suite struct SentencePieceTests {
    static let directory = "Tests/Fixtures/tokenizers/sentencepiece/"

    static func fixture(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path(directory + name)))) as! [String: Any]
    }

    struct Case {
        let name: String, text: String, ids: [Int], decoded: String?
        let raw: [String: Any]
    }

    static func cases(_ entry: [String: Any]) throws -> [Case] {
        try (entry["cases"] as! [[String: Any]]).map { c in
            let text = try (c["text"] as? String) ?? String(contentsOfFile: Fixtures.path(c["file"] as! String), encoding: .utf8)
            return Case(name: c["name"] as! String, text: text, ids: c["ids"] as! [Int], decoded: c["decoded"] as? String, raw: c)
        }
    }

    /// Compares every case; prints where the first difference is.
    static func check(_ label: String, _ tokenizer: any Tokenizer, _ cases: [Case], parseSpecial: Bool,
                      expected: (Case) -> [Int] = { $0.ids }) {
        var equal = 0
        for c in cases {
            let ids = tokenizer.encode(c.text, parseSpecial: parseSpecial)
            let want = expected(c)
            if ids == want { equal += 1 } else {
                let at = zip(ids, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(ids.count, want.count)
                Issue.record("\(label) \(c.name) \(c.text.prefix(40).debugDescription): at \(at): \(Array(ids.dropFirst(at).prefix(6))) vs \(Array(want.dropFirst(at).prefix(6)))")
            }
            if let decoded = c.decoded, want == c.ids { #expect(tokenizer.decode(want, skipSpecial: false) == decoded, "\(label) \(c.name) decode") }
        }
        print("\(label): \(equal)/\(cases.count) cases equal")
    }

    @Test(arguments: ["llama", "gemma", "plain"])
    func modelFileMatchesSentencePiece(name: String) throws {
        let entry = try #require(try Self.fixture("sentencepiece-ids.json")["models"] as? [String: Any])[name] as! [String: Any]
        let tokenizer = try SentencePieceModel.load(path: Fixtures.path(Self.directory + (entry["file"] as! String)))
        Self.check("\(name).model", tokenizer, try Self.cases(entry), parseSpecial: false)
    }

    @Test(arguments: ["llama-legacy", "llama-metaspace", "llama-spm", "gemma", "llama-nfkc-split"])
    func tokenizerJSONMatchesHuggingFace(name: String) throws {
        let entry = try #require(try Self.fixture("sentencepiece-json-ids.json")["tokenizers"] as? [String: Any])[name] as! [String: Any]
        let tokenizer = try TokenizerJSON.load(path: Fixtures.path(Self.directory + (entry["file"] as! String)))
        // Hugging Face's encode always matches added special tokens in the text.
        Self.check(name, tokenizer, try Self.cases(entry), parseSpecial: true)
    }

    /// llama.cpp defines how a GGUF `llama` vocabulary reads (its ids are stored where they differ from
    /// sentencepiece's); the `bert` vocabulary is held to Hugging Face, whose ids llama.cpp misses on
    /// Hangul jamo.
    @Test(arguments: ["llama", "minilm"])
    func ggufVocabularyMatchesReference(name: String) throws {
        let entry = try #require(try Self.fixture("gguf-vocab-ids.json")["vocabularies"] as? [String: Any])[name] as! [String: Any]
        let tokenizer = try GGUFTokenizer.load(GGUFFile(path: Fixtures.path(Self.directory + (entry["file"] as! String))))
        let cases = try Self.cases(entry)
        Self.check("\(name).vocab.gguf", tokenizer, cases, parseSpecial: false) { c in
            name == "llama" ? (c.raw["llama_cpp_ids"] as? [Int] ?? c.ids) : c.ids
        }
    }

    @Test func streamingDecodeNeverSplitsACharacter() throws {
        let tokenizer = try SentencePieceModel.load(path: Fixtures.path(Self.directory + "llama.model"))
        let text = "Grüße 👨‍👩‍👧 龘 — 天。"
        let ids = tokenizer.encode(text)
        var decoder = StreamingDecoder()
        var pieces: [String] = []
        for id in ids { pieces.append(decoder.append(tokenizer.bytes(of: id))) }
        pieces.append(decoder.finish())
        #expect(!pieces.joined().contains("\u{FFFD}"))
        #expect(pieces.joined() == " " + text)
    }

    @Test func rejectsBrokenModelFiles() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.path(Self.directory + "llama.model"))))
        func error(_ data: [UInt8]) -> String? {
            do { _ = try SentencePieceModel.load(bytes: data); return nil } catch { return "\(error)" }
        }
        for cut in [1, 7, bytes.count / 3, bytes.count - 5] {
            let message = error(Array(bytes.prefix(cut)))
            #expect(message != nil, "cut at \(cut)")
            print("truncated at \(cut): \(message ?? "loaded")")
        }
        #expect(error([])?.contains("no pieces") == true)
        #expect(error(Array("{\"model\": 1}".utf8)) != nil)
        // A unigram model: the trainer_spec's model_type (field 3) set to 1.
        let unigram: [UInt8] = [0x0A, 0x05, 0x0A, 0x01, 0x61, 0x18, 0x01, 0x12, 0x02, 0x18, 0x01]
        #expect(error(unigram)?.contains("unigram models are not supported") == true)
    }

    @Test func rejectsUnknownComponents() throws {
        func error(_ json: String) -> String? {
            do { _ = try TokenizerJSON.load(data: Data(json.utf8)); return nil } catch { return "\(error)" }
        }
        let model = #""model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"], "byte_fallback": true}"#
        #expect(error(#"{\#(model), "normalizer": {"type": "Precompiled"}}"#)?.contains("normalizer Precompiled is not supported") == true)
        #expect(error(#"{\#(model), "pre_tokenizer": {"type": "Whitespace"}}"#)?.contains("pre-tokenizer Whitespace is not supported") == true)
        #expect(error(#"{\#(model), "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(?<"}, "behavior": "Isolated"}}"#)?
            .contains("regular expression") == true)
        #expect(error(#"{\#(model), "decoder": {"type": "CTC"}}"#)?.contains("decoder CTC is not supported") == true)
        #expect(error(#"{\#(model), "post_processor": {"type": "Custom"}}"#)?.contains("post-processor Custom is not supported") == true)
        #expect(error(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a z"], "byte_fallback": true}}"#)?
            .contains("names a token that is not in the vocabulary") == true)
        #expect(error(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}}"#)?
            .contains("unknown token <unk> is not in the vocabulary") == true)
    }
}
