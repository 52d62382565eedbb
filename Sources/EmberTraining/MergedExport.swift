import EmberFormats
import EmberModels
import Foundation

extension TrainableLlama {
    /// Adds a LoRA adapter's update (α / r) · B · A into this whole model's weights (PEFT's
    /// `merge_and_unload`).
    public func merge(_ adapter: LoRAAdapter) {
        precondition(layout.isWhole && lora == nil, "an adapter merges into a whole model's own weights")
        let c = configuration
        let byName = Dictionary(uniqueKeysWithValues: parameters.map { ($0.name, $0) })
        for layer in 0..<c.layerCount {
            for target in adapter.configuration.targets {
                let w = byName[LlamaTensor(target.role, layer: layer, c).name(.huggingFace)]!
                for (i, d) in adapter.delta(layer: layer, target).enumerated() { w.pointer[i] += d }
            }
        }
    }
}

/// A model folder with a LoRA adapter merged into the base's weights (PEFT's `merge_and_unload`),
/// as transformers loads it: `LlamaForCausalLM`, or for a SEQ_CLS adapter (a reward model)
/// `LlamaForSequenceClassification` with one label, no `lm_head`, the adapter's `score.weight`
/// and `pad_token_id` (where transformers finds each sequence's last token). The folder is
/// written beside `directory` and renamed onto it at the end.
public enum MergedExport {
    public static func write(base: String, adapter: LoRAAdapter, padTokenID: Int? = nil, tokenizerFiles: [String], to directory: String) throws {
        let model = try TrainableLlama(directory: base)
        model.merge(adapter)
        let files = FileManager.default, partial = directory + ".partial"
        try? files.removeItem(atPath: partial)
        try files.createDirectory(atPath: partial, withIntermediateDirectories: true)
        do {
            if let score = adapter.score {
                guard let padTokenID else { throw TrainingError("a reward model needs its pad token id") }
                var tensors = model.parameters.filter { $0.name != "lm_head.weight" }.map { p in
                    SafetensorsWriter.Tensor(name: p.name, shape: p.shape, data: UnsafeBufferPointer(start: UnsafePointer(p.pointer), count: p.count))
                }
                tensors.append(.init(name: "score.weight", shape: [1, score.count], data: UnsafeBufferPointer(start: score.pointer, count: score.count)))
                try withExtendedLifetime((model, adapter)) {
                    try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: partial + "/model.safetensors")
                }
                var c = model.configuration
                c.architectures = ["LlamaForSequenceClassification"]
                c.padTokenID = padTokenID
                var config = try JSONSerialization.jsonObject(with: JSONEncoder().encode(c)) as! [String: Any]
                config["id2label"] = ["0": "LABEL_0"]
                config["label2id"] = ["LABEL_0": 0]
                try writeFile(JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]), to: partial + "/config.json")
            } else {
                try model.save(to: partial)
            }
            for path in tokenizerFiles {
                try files.copyItem(atPath: path, toPath: partial + "/" + (path as NSString).lastPathComponent)
            }
        } catch {
            try? files.removeItem(atPath: partial)
            throw TrainingError("writing the merged model \(directory) failed: \(error)")
        }
        try? files.removeItem(atPath: directory)
        guard rename(partial, directory) == 0 else { throw TrainingError("cannot rename \(partial) to \(directory)") }
    }
}
