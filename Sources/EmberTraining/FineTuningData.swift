import EmberTokenizers
import Foundation

/// A fine-tuning dataset in one of TRL's standard formats, read from JSONL (one JSON object a
/// line; blank lines are skipped). The keys of the first example decide the format, and every
/// other line must have the same:
///
///     language modelling   {"text": "..."}                  conversational: {"messages": [...]}
///     prompt-completion    {"prompt": ..., "completion": ...}
///     prompt-only          {"prompt": ..., "answer": ...}             ("answer" optional)
///     preference           {"prompt": ..., "chosen": ..., "rejected": ...}   ("prompt" optional)
///
/// Each of prompt, completion, chosen and rejected is a string, or (conversational) a list of
/// messages `{"role": ..., "content": ...}`; further keys of a message (`tool_calls`, `name`)
/// and of the line (`tools`) reach the chat template as they are. A line that is not JSON, misses
/// a field, or has a field of the wrong type is an error naming the file and the line.
public struct FineTuningDataset: Sendable {
    public enum Format: String, Sendable {
        case languageModeling = "language modelling"
        case promptCompletion = "prompt-completion"
        case promptOnly = "prompt-only"
        case preference
    }

    /// A string, or a list of messages.
    public enum Content: Sendable {
        case text(String)
        case messages([JinjaValue])

        public var isConversational: Bool { if case .messages = self { true } else { false } }
    }

    public struct Example: Sendable {
        /// The line of the file it came from (1-based).
        public var line: Int
        /// `text` or `messages` (language modelling), or the prompt.
        public var prompt: Content?
        /// The completion, or the chosen answer of a preference pair.
        public var completion: Content?
        public var rejected: Content?
        /// The line's `tools`, for templates that describe them.
        public var tools: JinjaValue?
        /// The line's `answer` (a string or a number, as text): what a reward function checks a
        /// prompt-only example's completions against.
        public var answer: String?
    }

    public let path: String
    public let format: Format
    public let conversational: Bool
    public let examples: [Example]

    public init(path: String, format: Format, conversational: Bool, examples: [Example]) {
        self.path = path
        self.format = format
        self.conversational = conversational
        self.examples = examples
    }

    public static func load(path: String) throws -> FineTuningDataset {
        guard let data = FileManager.default.contents(atPath: path) else { throw TrainingError("\(path): cannot read the file") }
        var examples: [Example] = []
        var format: Format?, conversational = false, firstLine = 0
        var number = 0
        for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            let bytes = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw[...]
            guard bytes.contains(where: { ![0x20, 0x09].contains($0) }) else { continue }
            func fail(_ message: String) -> TrainingError { TrainingError("\(path):\(number): \(message)") }
            guard let text = String(validating: bytes, as: UTF8.self) else { throw fail("not valid UTF-8") }
            let value: JinjaValue
            do { value = try JinjaValue(json: text) } catch let error as JinjaError { throw fail(error.message) }
            guard case .dict(let object) = value else { throw fail("not a JSON object") }
            let (lineFormat, example) = try parse(object, line: number, fail: fail)
            let lineConversational = [example.prompt, example.completion, example.rejected].contains { $0?.isConversational ?? false }
            if let format {
                guard lineFormat == format else {
                    throw fail("a \(lineFormat.rawValue) example, but the file is \(format.rawValue) (from line \(firstLine)); keys here: \(object.keys.joined(separator: ", "))")
                }
                guard lineConversational == conversational else {
                    throw fail("\(lineConversational ? "messages" : "plain text"), but the examples before are \(conversational ? "messages" : "plain text")")
                }
            } else {
                (format, conversational, firstLine) = (lineFormat, lineConversational, number)
            }
            examples.append(example)
        }
        guard let format else { throw TrainingError("\(path): no examples (one JSON object a line)") }
        return FineTuningDataset(path: path, format: format, conversational: conversational, examples: examples)
    }

    private static func parse(_ object: JinjaDict, line: Int, fail: (String) -> TrainingError) throws -> (Format, Example) {
        func content(_ key: String) throws -> Content? {
            guard let value = object[key] else { return nil }
            switch value {
            case .none: return nil
            case .string(let text): return .text(text)
            case .list(let items):
                for (i, item) in items.enumerated() {
                    guard case .dict(let message) = item else { throw fail("'\(key)': message \(i + 1) is not an object") }
                    guard case .string = message["role"] else { throw fail("'\(key)': message \(i + 1) has no string 'role'") }
                    switch message["content"] {
                    case .string?, .list?: break
                    case nil, .none?:
                        guard message["tool_calls"] != nil else { throw fail("'\(key)': message \(i + 1) has no 'content'") }
                    default: throw fail("'\(key)': message \(i + 1) has a 'content' that is neither a string nor a list")
                    }
                }
                return .messages(items)
            default: throw fail("'\(key)' must be a string or a list of messages")
            }
        }
        var example = Example(line: line, tools: object["tools"])
        switch object["answer"] {
        case nil, .none?: break
        case .string(let text)?: example.answer = text
        case .int(let n)?: example.answer = String(n)
        case .double(let x)?: example.answer = String(x)
        default: throw fail("'answer' must be a string or a number")
        }
        if object["chosen"] != nil || object["rejected"] != nil {
            guard let chosen = try content("chosen") else { throw fail("a preference example needs 'chosen'") }
            guard let rejected = try content("rejected") else { throw fail("a preference example needs 'rejected'") }
            (example.prompt, example.completion, example.rejected) = (try content("prompt"), chosen, rejected)
            return (.preference, example)
        }
        if object["completion"] != nil {
            guard let prompt = try content("prompt") else { throw fail("a prompt-completion example needs 'prompt'") }
            guard let completion = try content("completion") else { throw fail("'completion' is null") }
            (example.prompt, example.completion) = (prompt, completion)
            return (.promptCompletion, example)
        }
        if let prompt = try content("prompt") {
            example.prompt = prompt
            return (.promptOnly, example)
        }
        for key in ["messages", "text"] {
            if let text = try content(key) {
                guard key == "text" || text.isConversational else { throw fail("'messages' must be a list of messages") }
                example.prompt = text
                return (.languageModeling, example)
            }
        }
        throw fail("none of TRL's formats: expected 'text', 'messages', 'prompt' (and 'completion'), or 'chosen' and 'rejected'; keys here: \(object.keys.joined(separator: ", "))")
    }
}

extension JinjaValue {
    /// The string of a message's key, when it is one.
    func string(_ key: String) -> String? {
        guard case .dict(let d) = self, case .string(let s)? = d[key] else { return nil }
        return s
    }
}
