import Foundation

/// A Hugging Face chat template (a Jinja string such as a `tokenizer_config.json` `chat_template`
/// or a GGUF `tokenizer.chat_template`), rendered as transformers' `apply_chat_template` renders it:
/// `trim_blocks` and `lstrip_blocks` on, loop controls, the `tojson` filter without ASCII escaping,
/// and the globals `raise_exception`, `strftime_now`, `namespace`, `range` and `dict`.
///
///     let template = try ChatTemplate(source)
///     let prompt = try template.render(["messages": try JinjaValue(json: messagesJSON),
///                                       "add_generation_prompt": .bool(true)])
///
/// A construct outside the supported subset is a `JinjaError` naming it, at parse time where possible.
public struct ChatTemplate: Sendable {
    public let source: String
    let nodes: [JinjaNode]

    public init(_ source: String) throws {
        self.source = source
        var lexer = JinjaLexer(source)
        var parser = JinjaParser(try lexer.segments())
        nodes = try parser.template()
    }

    /// Renders with `variables`; `now` and `timeZone` feed `strftime_now`.
    public func render(_ variables: [String: JinjaValue], now: Date = Date(), timeZone: TimeZone = .current) throws -> String {
        var interpreter = JinjaInterpreter(variables: variables, now: now, timeZone: timeZone)
        var output = ""
        _ = try interpreter.run(nodes, into: &output)
        return output
    }

    /// The usual variables: `messages` (OpenAI-style dicts), `add_generation_prompt`, the special
    /// tokens' texts and, when given, `tools`.
    public func render(messages: JinjaValue, addGenerationPrompt: Bool, bosToken: String? = nil, eosToken: String? = nil,
                       tools: JinjaValue? = nil, extra: [String: JinjaValue] = [:]) throws -> String {
        var variables = extra
        variables["messages"] = messages
        variables["add_generation_prompt"] = .bool(addGenerationPrompt)
        if let bosToken { variables["bos_token"] = .string(bosToken) }
        if let eosToken { variables["eos_token"] = .string(eosToken) }
        if let tools { variables["tools"] = tools }
        return try render(variables)
    }
}
extension JinjaNode: @unchecked Sendable {}
