import EmberModels
import Foundation
import Testing

/// Each decoder family against its two references, on tiny random models that
/// scripts/fixtures/architectures.py builds with transformers and converts with llama.cpp's
/// convert_hf_to_gguf.py: the Hugging Face folder against transformers' logits, the GGUF file against
/// llama.cpp's, teacher-forced over 32 tokens, and the greedy continuations of both.
///
/// Tolerance: Ember keeps keys and values in f16, as llama.cpp does by default; f16 rounds each to
/// 2⁻¹¹ relative, and on these models (logits with a standard deviation of about 1.1) that moves the
/// logits by up to ~0.02 (llama.cpp's own f16-cache run differs from transformers by 0.0049–0.0207,
/// and by < 1e-5 with an f32 cache). So max |Δ| ≤ 0.05 against either reference; every argmax
/// must agree (the script redraws weights until each top logit leads the next by at least 0.02).
@Suite struct ArchitectureTests {
    static let families = ["llama3", "qwen2", "qwen3", "mistral", "gemma2", "phi3", "glm4", "gpt2"]

    struct Reference {
        let tokens: [Int], promptLength: Int
        let transformers: [[Float]], llamaCpp: [[Float]]
        let transformersGreedy: [Int], llamaCppGreedy: [Int]
    }

    static func reference(_ name: String) throws -> Reference {
        let r = try Fixtures.json("Tests/Fixtures/architectures/\(name)/reference.json") as! [String: Any]
        func rows(_ key: String) -> [[Float]] { (r[key] as! [[Double]]).map { $0.map(Float.init) } }
        return Reference(tokens: r["tokens"] as! [Int], promptLength: r["prompt_length"] as! Int, transformers: rows("transformers_logits"),
                         llamaCpp: rows("llamacpp_logits"), transformersGreedy: r["transformers_greedy"] as! [Int],
                         llamaCppGreedy: r["llamacpp_greedy"] as! [Int])
    }

    /// Teacher-forced logits [T][V] and the greedy continuation of the first `promptLength` tokens.
    static func run(_ model: Llama, _ reference: Reference) throws -> (logits: [[Float]], greedy: [Int]) {
        let V = model.configuration.vocabularySize
        let flat = try model.forward(reference.tokens, cache: model.makeCache(capacity: 64), outputs: .all)
        let logits = (0..<reference.tokens.count).map { Array(flat[$0 * V..<($0 + 1) * V]) }
        let cache = model.makeCache(capacity: 64)
        var next = try model.forward(Array(reference.tokens.prefix(reference.promptLength)), cache: cache)
        var greedy: [Int] = []
        for _ in 0..<reference.transformersGreedy.count {
            let token = next.indices.max { next[$0] < next[$1] }!
            greedy.append(token)
            next = try model.forward([token], cache: cache)
        }
        return (logits, greedy)
    }

    static func compare(_ ours: [[Float]], _ theirs: [[Float]]) -> (difference: Float, argmax: Int) {
        var difference: Float = 0, argmax = 0
        for (a, b) in zip(ours, theirs) {
            difference = max(difference, zip(a, b).map { abs($0 - $1) }.max()!)
            if a.indices.max(by: { a[$0] < a[$1] }) == b.indices.max(by: { b[$0] < b[$1] }) { argmax += 1 }
        }
        return (difference, argmax)
    }

    @Test(arguments: families)
    func matchesTransformersAndLlamaCpp(family: String) throws {
        let reference = try Self.reference(family)
        let folder = try LoadedModel.load(path: Fixtures.path("Tests/Fixtures/architectures/\(family)/hf"))
        let gguf = try LoadedModel.load(path: Fixtures.path("Tests/Fixtures/architectures/\(family)/model.gguf"))
        // llama.cpp converts Mistral as llama, without its window.
        #expect(folder.model.configuration.family == gguf.model.configuration.family || family == "mistral")
        let (hfLogits, hfGreedy) = try Self.run(folder.model, reference)
        let (ggufLogits, ggufGreedy) = try Self.run(gguf.model, reference)
        let transformers = Self.compare(hfLogits, reference.transformers), llamaCpp = Self.compare(ggufLogits, reference.llamaCpp)
        let T = reference.tokens.count
        print("\(family) (\(folder.model.configuration.family.rawValue)): folder vs transformers max |Δ| \(transformers.difference), argmax \(transformers.argmax)/\(T); "
              + "GGUF vs llama.cpp max |Δ| \(llamaCpp.difference), argmax \(llamaCpp.argmax)/\(T); greedy \(hfGreedy == reference.transformersGreedy ? "=" : "≠") transformers, "
              + "\(ggufGreedy == reference.llamaCppGreedy ? "=" : "≠") llama.cpp")
        #expect(transformers.difference <= 0.05 && transformers.argmax == T)
        #expect(llamaCpp.difference <= 0.05 && llamaCpp.argmax == T)
        #expect(hfGreedy == reference.transformersGreedy)
        #expect(ggufGreedy == reference.llamaCppGreedy)
        // The serving path (paged cache, integer products where the weights are quantized) in two
        // chunks, as a prompt arrives: the same logits up to rounding.
        let paged = try Self.paged(folder.model, reference.tokens)
        let pagedDifference = Self.compare(paged, reference.transformers)
        print("\(family): paged serving path vs transformers max |Δ| \(pagedDifference.difference), argmax \(pagedDifference.argmax)/\(T)")
        #expect(pagedDifference.difference <= 0.05 && pagedDifference.argmax == T)
    }

    /// Teacher-forced logits through `forward(batch:)` on a paged cache of 16-token blocks, in chunks of 20 and 12.
    static func paged(_ model: Llama, _ tokens: [Int]) throws -> [[Float]] {
        let cache = PagedKVCache(configuration: model.configuration, blockCount: 4, blockSize: 16)
        let first = try model.forward(batch: [.init(tokens: Array(tokens[..<20]), start: 0, blocks: [0, 1, 2, 3], wantsLogits: true, allLogits: true)],
                                      cache: cache)
        let second = try model.forward(batch: [.init(tokens: Array(tokens[20...]), start: 20, blocks: [0, 1, 2, 3], wantsLogits: true, allLogits: true)],
                                       cache: cache)
        return first + second
    }
}
