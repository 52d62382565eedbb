import EmberTokenizers
import Foundation

/// Turns a conversation into a prompt with the model's own chat template (GGUF
/// `tokenizer.chat_template`, or `chat_template` in a model directory's `tokenizer_config.json`),
/// rendered as transformers renders it. A model without a template gets ChatML.
public struct ChatFormat: Sendable {
    public struct Message: Sendable {
        public var role: String
        public var content: String
        public init(role: String, content: String) {
            self.role = role
            self.content = content
        }
    }

    /// ChatML, for models that carry no template of their own.
    public static let chatML = """
        {% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
        {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
        """

    public let template: ChatTemplate
    public let bosToken: String?
    public let eosToken: String?

    public init(template source: String?, tokenizer: (any Tokenizer)?) throws {
        template = try ChatTemplate(source ?? Self.chatML)
        bosToken = tokenizer?.bosTokenID.flatMap { tokenizer?.token($0) }
        eosToken = tokenizer?.eosTokenID.flatMap { tokenizer?.token($0) }
    }

    /// The prompt for `messages`, ending with the opening of the assistant's turn when `addGenerationPrompt`.
    public func prompt(_ messages: [Message], addGenerationPrompt: Bool = true) throws -> String {
        let list = JinjaValue.list(messages.map { .dict(JinjaDict([("role", .string($0.role)), ("content", .string($0.content))])) })
        return try prompt(messages: list, addGenerationPrompt: addGenerationPrompt)
    }

    /// The prompt for OpenAI-style message objects (and `tools`, when given).
    public func prompt(messages: JinjaValue, tools: JinjaValue? = nil, addGenerationPrompt: Bool = true) throws -> String {
        try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt, bosToken: bosToken, eosToken: eosToken, tools: tools)
    }
}
