import EmberTokenizers
import FuzzSupport

/// A SentencePiece `.model` (protobuf); a tokenizer that loads encodes and decodes the probe texts.
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let tokenizer = try? SentencePieceModel.load(bytes: input(data, count)) else { return 0 }
    checkTokenizer(tokenizer)
    return 0
}

@_cdecl("fuzz_sentencepiece_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
