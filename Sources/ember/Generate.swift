import ArgumentParser
import EmberModels
import EmberTokenizers
import Foundation

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a prompt, streaming the text to standard output.",
        discussion: """
        Temperature 0 is greedy decoding. With --chat the prompt is wrapped in the model's chat format;
        with --chat and no --prompt, an interactive conversation reads your messages from standard input
        (an empty line or end of input ends it).
        """)

    @OptionGroup var options: ModelOptions

    @Option(help: "The text to continue (or, with --chat, the user's message).")
    var prompt: String?

    @Option(name: .customLong("max-tokens"), help: "Most tokens to generate per reply.")
    var maxTokens = 256

    @Option(help: "Sampling temperature; 0 picks the most likely token every time.")
    var temperature: Float = 0.8

    @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens (0: all).")
    var topK = 40

    @Option(name: .customLong("top-p"), help: "Sample among the most likely tokens whose probabilities add up to p.")
    var topP: Float = 0.95

    @Option(help: "Random seed; the same seed gives the same text.")
    var seed: UInt64 = 0

    @Option(help: "Context length in tokens (default: the model's, at most 4096).")
    var context: Int?

    @Flag(help: "Use the model's chat format.")
    var chat = false

    @Option(help: "With --chat: the system message (default: the model's own).")
    var system: String?

    @Flag(help: "Print timing to standard error at the end.")
    var verbose = false

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must not be negative") }
        guard temperature >= 0 else { throw ValidationError("--temperature must not be negative") }
        guard topK >= 0 else { throw ValidationError("--top-k must not be negative") }
        guard topP > 0 && topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        if let context { guard context >= 2 else { throw ValidationError("--context must be at least 2") } }
        guard prompt != nil || chat else { throw ValidationError("give --prompt TEXT, or --chat for a conversation") }
    }

    func run() throws {
        let loaded = try options.load()
        let tokenizer = try loaded.requireTokenizer()
        let model = loaded.model
        let capacity = context ?? min(model.configuration.maxPositionEmbeddings, 4096)
        let cache = model.makeCache(capacity: capacity)
        var sampler = Sampler(temperature: temperature, topK: topK, topP: topP, seed: seed)
        let format = try loaded.chatFormat()
        /// The tokens the cache holds, so that each chat turn only feeds what is new.
        var history: [Int] = []

        /// Generates after `text`; returns the reply's text.
        @discardableResult
        func reply(to text: String, parseSpecial: Bool) throws -> String {
            var tokens = tokenizer.encode(text, parseSpecial: parseSpecial)
            if loaded.addBOS, let bos = tokenizer.bosTokenID, tokens.first != bos { tokens.insert(bos, at: 0) }
            // Reuse the cached prefix the new prompt shares with what the cache holds.
            let shared = zip(history, tokens).prefix { $0 == $1 }.count
            let keep = min(shared, tokens.count - 1, cache.count)
            cache.truncate(to: keep)
            history = tokens
            let input = Array(tokens[keep...])
            guard cache.count + input.count < capacity else {
                throw CommandError("the prompt has \(input.count) tokens but the context holds \(capacity - cache.count) more; shorten it or raise --context")
            }
            let start = Date()
            var logits = try model.forward(input, cache: cache)
            let promptSeconds = Date().timeIntervalSince(start)
            var decoder = StreamingDecoder()
            var generated = 0
            var replyText = ""
            let genStart = Date()
            while generated < maxTokens, cache.count < capacity {
                let next = sampler.sample(logits[...])
                generated += 1
                if tokenizer.endOfGenerationIDs.contains(next) { break }
                history.append(next)
                let piece = decoder.append(tokenizer.bytes(of: next))
                replyText += piece
                printFlushed(piece)
                if cache.count + 1 >= capacity { break }
                logits = try model.forward([next], cache: cache)
            }
            let tail = decoder.finish()
            replyText += tail
            printFlushed(tail)
            if verbose {
                let genSeconds = Date().timeIntervalSince(genStart)
                printError(String(format: "\n[prompt: %d tokens, %.1f tokens/s; generated: %d tokens, %.1f tokens/s]",
                                  input.count, Double(input.count) / promptSeconds, generated, Double(generated) / max(genSeconds, 1e-9)))
            }
            return replyText
        }

        if !chat {
            try reply(to: prompt!, parseSpecial: false)
            printFlushed("\n")
            return
        }
        var messages: [ChatFormat.Message] = system.map { [.init(role: "system", content: $0)] } ?? []
        if let prompt {
            messages.append(.init(role: "user", content: prompt))
            try reply(to: format.prompt(messages), parseSpecial: true)
            printFlushed("\n")
            return
        }
        printError("Chatting with \(loaded.path). Type a message; an empty line ends the conversation.")
        while true {
            printError("> ", terminator: "")
            guard let line = readLine(), !line.isEmpty else { break }
            messages.append(.init(role: "user", content: line))
            let answer = try reply(to: format.prompt(messages), parseSpecial: true)
            messages.append(.init(role: "assistant", content: answer))
            printFlushed("\n")
        }
    }
}
