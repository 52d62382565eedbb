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

    /// `bosToken` and `eosToken` name the tokens when the model's settings do (a Hugging Face
    /// `tokenizer_config.json`); otherwise they are the tokenizer's own.
    public init(template source: String?, tokenizer: (any Tokenizer)?, bosToken: String? = nil, eosToken: String? = nil) throws {
        template = try ChatTemplate(source ?? Self.chatML)
        self.bosToken = bosToken ?? tokenizer?.bosTokenID.flatMap { tokenizer?.token($0) }
        self.eosToken = eosToken ?? tokenizer?.eosTokenID.flatMap { tokenizer?.token($0) }
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

/// Turns text or a conversation into the token ids a model is prompted with. The one place that
/// decides about the beginning-of-sequence token and renders the chat template, for every command
/// and the server alike.
public struct Prompting: Sendable {
    public let tokenizer: any Tokenizer
    public let chatFormat: ChatFormat
    /// Whether the model expects a beginning-of-sequence token before the text.
    public let addBOS: Bool

    public init(tokenizer: any Tokenizer, chatFormat: ChatFormat, addBOS: Bool) {
        self.tokenizer = tokenizer
        self.chatFormat = chatFormat
        self.addBOS = addBOS
    }

    /// `text`'s ids, special-token text read as the special tokens (unless `parseSpecial` is false),
    /// after BOS when the model wants one and the text does not already begin with it.
    public func tokens(_ text: String, parseSpecial: Bool = true) -> [Int] {
        var ids = tokenizer.encode(text, parseSpecial: parseSpecial)
        if addBOS, let bos = tokenizer.bosTokenID, ids.first != bos { ids.insert(bos, at: 0) }
        return ids
    }

    /// The prompt of a conversation, ending with the opening of the assistant's turn.
    public func tokens(chat messages: [ChatFormat.Message]) throws -> [Int] {
        tokens(try chatFormat.prompt(messages))
    }

    /// The prompt of OpenAI-style message objects (and `tools`); template errors are `JinjaError`s.
    public func tokens(chat messages: JinjaValue, tools: JinjaValue?, addGenerationPrompt: Bool) throws -> [Int] {
        tokens(try chatFormat.prompt(messages: messages, tools: tools, addGenerationPrompt: addGenerationPrompt))
    }
}
