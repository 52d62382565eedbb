import EmberFormats
import EmberModels
import FuzzSupport

/// A GGUF file: header, metadata and tensor table; the tensors of a file that loads lie inside it;
/// then the model (configuration, tokenizer, weights) and a forward pass when it loads.
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let path = writeFiles([("model.gguf", input(data, count))])[0]
    guard let file = try? GGUFFile(path: path) else { return 0 }
    for tensor in file.tensors {
        let bytes = tensor.byteCount ?? Int.max
        invariant(file.dataOffset + tensor.offset + bytes <= file.file.size, "tensor \(tensor.name) ends past the file")
        invariant(tensor.offset >= 0 && file.dataOffset <= file.file.size, "tensor \(tensor.name) starts outside the file")
    }
    if let tokenizer = try? GGUFTokenizer.load(file) { checkTokenizer(tokenizer) }
    guard let loaded = try? LoadedModel.load(path: path), let tokenizer = loaded.tokenizer else { return 0 }
    let ids = Array(tokenizer.encode("hi").prefix(2))
    if !ids.isEmpty, let logits = try? loaded.model.forward(ids, cache: loaded.model.makeCache(capacity: 4)) {
        invariant(logits.count == loaded.model.configuration.vocabularySize, "logits of \(logits.count) for a vocabulary of \(loaded.model.configuration.vocabularySize)")
    }
    return 0
}

@_cdecl("fuzz_gguf_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
