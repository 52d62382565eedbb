import Foundation

/// ChatML prompts (`<|im_start|>role\n…<|im_end|>\n`), the format of SmolLM2 and Qwen models.
public struct ChatFormat: Sendable {
    /// The system message the model's own template adds when the conversation has none.
    public var defaultSystemPrompt: String?

    public init(template: String?) {
        defaultSystemPrompt = nil
        // SmolLM2's template inserts a fixed system turn; find its text between the markers.
        if let template, let start = template.range(of: "<|im_start|>system\n"),
           let end = template.range(of: "<|im_end|>", range: start.upperBound..<template.endIndex) {
            let text = String(template[start.upperBound..<end.lowerBound])
            if !text.contains("{") { defaultSystemPrompt = text }
        }
    }

    public func turn(role: String, content: String) -> String {
        "<|im_start|>\(role)\n\(content)<|im_end|>\n"
    }

    /// The text that opens a conversation with one user message and asks for the assistant's reply.
    public func prompt(user: String, system: String? = nil, firstTurn: Bool = true) -> String {
        var text = ""
        if firstTurn, let s = system ?? defaultSystemPrompt { text += turn(role: "system", content: s) }
        return text + turn(role: "user", content: user) + "<|im_start|>assistant\n"
    }
}
