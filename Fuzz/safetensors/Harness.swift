import EmberFormats
import EmberModels
import FuzzSupport

/// A Hugging Face folder: `config.json`, then `model.safetensors`, parted by `partSeparator`.
/// Every entry of a file that loads lies inside it and holds exactly its shape's bytes; then the
/// model loads from the folder and runs when it can.
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let files = parts(input(data, count), count: 2)
    let paths = writeFiles([("config.json", files[0]), ("model.safetensors", files[1])])
    if let file = try? SafetensorsFile(path: paths[1]) {
        for entry in file.entries.values {
            invariant(entry.begin >= 0 && entry.begin <= entry.end, "\(entry.name) has begin \(entry.begin) and end \(entry.end)")
            invariant(file.data(of: entry) + (entry.end - entry.begin) <= file.file.pointer + file.file.size, "\(entry.name) ends past the file")
            let elements = entry.shape.reduce(1, *)
            invariant((entry.end - entry.begin) == elements / entry.dtype.blockSize * entry.dtype.blockBytes, "\(entry.name): \(entry.end - entry.begin) bytes for shape \(entry.shape)")
        }
    }
    _ = try? LlamaConfiguration.load(configPath: paths[0])
    guard let loaded = try? LoadedModel.load(path: scratch) else { return 0 }
    if let logits = try? loaded.model.forward([0], cache: loaded.model.makeCache(capacity: 2)) {
        invariant(logits.count == loaded.model.configuration.vocabularySize, "logits of \(logits.count) for a vocabulary of \(loaded.model.configuration.vocabularySize)")
    }
    return 0
}

@_cdecl("fuzz_safetensors_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
