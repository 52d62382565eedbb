import EmberTraining
import FuzzSupport

/// A training checkpoint folder: `trainer_state.json`, `config.json`, `model.safetensors` and
/// `optimizer.safetensors`, parted by `partSeparator`; a checkpoint that resumes takes one step.
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let files = parts(input(data, count), count: 4)
    writeFiles([("trainer_state.json", files[0]), ("config.json", files[1]), ("model.safetensors", files[2]), ("optimizer.safetensors", files[3])])
    _ = try? Trainer.resume(from: scratch)
    return 0
}

@_cdecl("fuzz_checkpoint_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
