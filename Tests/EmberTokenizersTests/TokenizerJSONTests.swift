import EmberTokenizers
import Foundation
import Testing

/// tokenizer.json files against Hugging Face `tokenizers` (fixtures from
/// scripts/fixtures/tokenizers-reference.py and pretokenizer-splits.py; `make test` writes the
/// two tokenizer.json files into .cache/models).
@Suite struct TokenizerJSONTests {
    nonisolated(unsafe) static let reference = Result { try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("Tests/Fixtures/tokenizers/reference-ids.json")))) as! [String: Any] }
    static let files = ["smollm2": ".cache/models/SmolLM2-135M-tokenizer/tokenizer.json", "minilm": ".cache/models/all-minilm-l6-v2/tokenizer.json"]

    @Test(arguments: ["smollm2", "minilm"])
    func idsMatchHuggingFace(name: String) throws {
        let tokenizer = try TokenizerJSON.load(path: Fixtures.path(Self.files[name]!))
        let cases = try #require(try Self.reference.get()[name] as? [String: Any])
        for file in ["tokenizer.txt", "parity.txt"] {
            let expected = cases[file] as! [String: Any]
            let text = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/text/\(file)"), encoding: .utf8)
            let ids = tokenizer.encode(text, parseSpecial: true)
            let first = zip(ids, expected["ids"] as! [Int]).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            print("\(name) \(file): \(ids.count) ids, first difference from tokenizers at \(first.map(String.init) ?? "none")")
            #expect(ids == expected["ids"] as! [Int])
            if let tokens = expected["tokens"] as? [String] { #expect(ids.map { tokenizer.token($0) ?? "" } == tokens) }
            #expect(tokenizer.decode(ids, skipSpecial: false) == expected["decoded"] as! String)
        }
        for key in ["specials", "long_word"] {
            guard let c = cases[key] as? [String: Any] else { continue }
            #expect(tokenizer.encode(c["text"] as! String, parseSpecial: true) == c["ids"] as! [Int], "\(key)")
        }
    }

    @Test(arguments: [PreTokenizer.gpt2, .llama3, .qwen2])
    func preTokenizersSplitLikeTheRegex(pattern: PreTokenizer) throws {
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("Tests/Fixtures/tokenizers/pretokenizer-splits.json")))) as! [String: Any]
        let text = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/text/tokenizer.txt"), encoding: .utf8) + (fixture["extra"] as! String)
        let scalars = Array(text.unicodeScalars)
        let pieces = pattern.split(scalars).map { String(String.UnicodeScalarView(scalars[$0])) }
        let expected = fixture[pattern.rawValue] as! [String]
        let first = zip(pieces, expected).enumerated().first { $0.element.0 != $0.element.1 }
        print("\(pattern): \(pieces.count) pieces (tokenizers: \(expected.count)), first difference \(first.map { "\($0.offset): \($0.element)" } ?? "none")")
        #expect(pieces == expected)
    }

    @Test func rejectsBrokenFiles() throws {
        func error(_ json: String) -> String? {
            do { _ = try TokenizerJSON.load(data: Data(json.utf8)); return nil } catch { return "\(error)" }
        }
        let full = try String(contentsOfFile: Fixtures.path(Self.files["smollm2"]!), encoding: .utf8)
        #expect(error(String(full.prefix(full.count / 2)))?.contains("not a JSON object") == true)
        #expect(error(#"{"model": {"type": "Unigram", "vocab": []}}"#)?.contains("model type Unigram is not supported") == true)
        #expect(error(#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a c"]}, "pre_tokenizer": {"type": "ByteLevel"}}"#)?
            .contains("names a token that is not in the vocabulary") == true)
        #expect(error(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}}"#)?
            .contains("pre-tokenizer Whitespace is not supported") == true)
        #expect(error(#"{"model": {"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "[UNK]"}}"#)?
            .contains("unknown token [UNK] is not in the vocabulary") == true)
        #expect(error(#"{"normalizer": {"type": "NFKC"}, "model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}}"#)?
            .contains("normalizer NFKC is not supported") == true)
        // Found by the fuzzer: a negative id indexed the vocabulary array.
        #expect(error(#"{"added_tokens": [{"id": -3, "content": "<x>"}], "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}"#)?
            .contains("added token \"<x>\" has the negative id -3") == true)
    }
}
