import EmberModels
import FuzzSupport

/// A PEFT adapter folder: `adapter_config.json`, then `adapter_model.safetensors`, checked against
/// the small LLaMA of the LoRA test fixtures (hidden 32, 2 layers, 4 heads of 8 over 2 key/value heads,
/// vocabulary 64).
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let files = parts(input(data, count), count: 2)
    writeFiles([("adapter_config.json", files[0]), ("adapter_model.safetensors", files[1])])
    let base = LlamaConfiguration(hiddenSize: 32, intermediateSize: 64, layerCount: 2, headCount: 4, kvHeadCount: 2,
                                  headDim: 8, vocabularySize: 64, maxPositionEmbeddings: 64, tieWordEmbeddings: true)
    guard let adapter = try? LoRAAdapter.load(directory: scratch, for: base) else { return 0 }
    let rank = adapter.configuration.rank
    for (layer, row) in adapter.weights.enumerated() {
        for (target, pair) in row {
            let shapes = LoRAAdapter.shapes(target, rank: rank, base)
            invariant(pair.a.count == shapes.a.reduce(1, *) && pair.b.count == shapes.b.reduce(1, *), "layer \(layer) \(target): A \(pair.a.count), B \(pair.b.count) for \(shapes)")
            _ = adapter.delta(layer: layer, target)
        }
    }
    return 0
}

@_cdecl("fuzz_adapter_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
