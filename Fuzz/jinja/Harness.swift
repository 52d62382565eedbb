import EmberTokenizers
import FuzzSupport

/// A chat template, then a JSON message list (parted by `partSeparator`): parsed, then rendered
/// with and without the generation prompt and with the messages as tools too.
@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let files = parts(input(data, count), count: 2)
    guard let source = String(validating: files[0], as: UTF8.self), let template = try? ChatTemplate(source) else { return 0 }
    let messages = String(validating: files[1], as: UTF8.self).flatMap { try? JinjaValue(json: $0) }
        ?? .list([.dict(JinjaDict([("role", .string("user")), ("content", .string("Hello"))]))])
    for generation in [false, true] {
        _ = try? template.render(messages: messages, addGenerationPrompt: generation, bosToken: "<s>", eosToken: "</s>")
    }
    _ = try? template.render(messages: messages, addGenerationPrompt: true, tools: messages)
    return 0
}

@_cdecl("fuzz_jinja_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { runFuzzer(argc, argv, fuzz) }
