import EmberFormats
import EmberTensor
import EmberTokenizers
import Foundation

/// A small random LLaMA written as GGUF, for tests that need a whole model file but not a real one.
/// Its vocabulary is the 256 byte tokens plus two chat markers; the knobs break it on purpose.
struct TinyModel {
    var architecture = "llama"
    var headCount = 4
    var kvHeadCount = 2
    var layerCount = 2
    var contextLength = 64
    var omitTensor: String?
    var omitMetadata: String?
    var queryType: GGMLType = .f32
    let hidden = 32, intermediate = 64

    var vocabulary: [String] { ByteLevel.byteToScalar.map { String($0) } + ["<|im_start|>", "<|im_end|>"] }

    func bytes() -> [UInt8] {
        var w = GGUFWriter()
        let a = architecture
        w.metadata = [
            ("general.architecture", .string(a)),
            ("\(a).embedding_length", .uint32(UInt32(hidden))), ("\(a).feed_forward_length", .uint32(UInt32(intermediate))),
            ("\(a).block_count", .uint32(UInt32(layerCount))), ("\(a).attention.head_count", .uint32(UInt32(headCount))),
            ("\(a).attention.head_count_kv", .uint32(UInt32(kvHeadCount))), ("\(a).context_length", .uint32(UInt32(contextLength))),
            ("\(a).rope.freq_base", .float32(10000)), ("\(a).attention.layer_norm_rms_epsilon", .float32(1e-5)),
            ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("smollm")),
            ("tokenizer.ggml.tokens", .array(vocabulary.map { .string($0) })),
            ("tokenizer.ggml.token_type", .array(vocabulary.indices.map { .int32($0 >= 256 ? 3 : 1) })),
            ("tokenizer.ggml.merges", .array([])),
            ("tokenizer.ggml.eos_token_id", .uint32(257)),
        ]
        w.metadata.removeAll { $0.0 == omitMetadata }
        var random = SplitMix(seed: 7)
        func tensor(_ name: String, _ extents: [Int], type: GGMLType = .f32, scale: Float = 0.2) {
            guard name != omitTensor else { return }
            let count = extents.reduce(1, *)
            if type == .f32 {
                let values = (0..<count).map { _ in (Float(random.next() % 2001) / 1000 - 1) * scale }
                w.addTensor(name: name, type: .f32, extents: extents, data: values.withUnsafeBytes { Array($0) })
            } else {  // q6_K or q8_K, zeros: only the size matters
                w.addTensor(name: name, type: type, extents: extents, data: [UInt8](repeating: 0, count: count / 256 * (type == .q8_K ? 292 : 210)))
            }
        }
        let headDim = hidden / headCount
        tensor("token_embd.weight", [hidden, vocabulary.count], scale: 1)
        tensor("output_norm.weight", [hidden], scale: 1)
        for i in 0..<layerCount {
            tensor("blk.\(i).attn_norm.weight", [hidden], scale: 1)
            tensor("blk.\(i).attn_q.weight", [hidden, headCount * headDim], type: i == 0 ? queryType : .f32)
            tensor("blk.\(i).attn_k.weight", [hidden, kvHeadCount * headDim])
            tensor("blk.\(i).attn_v.weight", [hidden, kvHeadCount * headDim])
            tensor("blk.\(i).attn_output.weight", [headCount * headDim, hidden])
            tensor("blk.\(i).ffn_norm.weight", [hidden], scale: 1)
            tensor("blk.\(i).ffn_gate.weight", [hidden, intermediate])
            tensor("blk.\(i).ffn_up.weight", [hidden, intermediate])
            tensor("blk.\(i).ffn_down.weight", [intermediate, hidden])
        }
        return w.bytes()
    }

    /// Writes the model to a temporary file and returns its path.
    func write() -> String {
        let path = NSTemporaryDirectory() + "ember-tiny-\(UUID().uuidString).gguf"
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes()))
        return path
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
