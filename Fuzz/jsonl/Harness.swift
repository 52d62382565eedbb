import EmberEvaluation
import EmberTraining
import FuzzSupport

/// A JSONL data file, read as TRL's fine-tuning formats and as an evaluation task's documents; a
/// file that loads has every example in its detected format.
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let path = writeFiles([("data.jsonl", input(data, count))])[0]
    if let dataset = try? FineTuningDataset.load(path: path) {
        invariant(!dataset.examples.isEmpty, "a dataset loaded with no examples")
    }
    _ = try? Document.load(path: path)
    return 0
}

@_cdecl("fuzz_jsonl_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
