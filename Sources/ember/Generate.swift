import ArgumentParser
import EmberInference
import EmberModels
import EmberTokenizers
import Foundation

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a prompt, streaming the text to standard output.",
        discussion: """
        Temperature 0 is greedy decoding. With --chat the prompt is wrapped in the model's chat format;
        with --chat and no --prompt, an interactive conversation reads your messages from standard input
        (an empty line or end of input ends it).

        The text comes from the same engine, sampler and prompt handling as `ember serve`: the same
        prompt, seed and sampling options give the same text as POST /v1/completions.

        Examples:
          ember generate --model model.gguf --prompt "The capital of France is" --temperature 0
          ember generate --model model.gguf --prompt "Once upon a time" --seed 7 --top-k 20 --min-p 0.05
          ember generate --model model.gguf --chat --prompt "Give me three names for a cat."
        """)

    @OptionGroup var options: ModelOptions
    @OptionGroup var arithmetic: ArithmeticOption
    @OptionGroup var adapter: AdapterOption

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

    @Option(name: .customLong("min-p"), help: "Drop tokens less likely than min-p times the most likely one.")
    var minP: Float = 0

    @Option(name: .customLong("repetition-penalty"), help: "Divide positive (multiply negative) logits of tokens already seen; 1 is off.")
    var repetitionPenalty: Float = 1

    @Option(name: .customLong("presence-penalty"), help: "Subtract from the logit of every token generated so far.")
    var presencePenalty: Float = 0

    @Option(name: .customLong("frequency-penalty"), help: "Subtract this times the number of times a token was generated.")
    var frequencyPenalty: Float = 0

    @Option(help: "Stop before this text (repeat for several).")
    var stop: [String] = []

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
        guard minP >= 0 && minP <= 1 else { throw ValidationError("--min-p must be in [0, 1]") }
        guard repetitionPenalty > 0 else { throw ValidationError("--repetition-penalty must be positive") }
        if let context { guard context >= 2 else { throw ValidationError("--context must be at least 2") } }
        guard prompt != nil || chat else { throw ValidationError("give --prompt TEXT, or --chat for a conversation") }
    }

    var sampling: SamplingParameters {
        var p = SamplingParameters()
        p.temperature = temperature
        p.topK = topK
        p.topP = topP
        p.minP = minP
        p.repetitionPenalty = repetitionPenalty
        p.presencePenalty = presencePenalty
        p.frequencyPenalty = frequencyPenalty
        p.stop = stop
        p.seed = seed
        return p
    }

    func run() async throws {
        let loaded = try options.load()
        let prompting = try loaded.prompting()
        let model = loaded.model
        let capacity = min(context ?? min(model.configuration.maxPositionEmbeddings, 4096), model.configuration.maxPositionEmbeddings)
        let lora = try adapter.load(for: loaded)
        let generator: any ReplyGenerator = switch arithmetic.arithmetic {
        case .fast: EngineReplies(model: model, tokenizer: prompting.tokenizer, capacity: capacity, adapter: lora)
        case .llamaCppExact: ExactReplies(model: model, tokenizer: prompting.tokenizer, capacity: capacity, adapter: lora)
        }

        /// Generates after `tokens`; returns the reply's text.
        @discardableResult
        func reply(to tokens: [Int]) async throws -> String {
            guard tokens.count < capacity else {
                throw CommandError("the prompt has \(tokens.count) tokens but the context holds \(capacity); shorten it or raise --context")
            }
            var parameters = sampling
            parameters.maxTokens = min(maxTokens, capacity - tokens.count)
            guard parameters.maxTokens > 0 else { return "" }
            let start = Date()
            var promptSeconds = 0.0, generated = 0, text = ""
            try await generator.generate(tokens, parameters: parameters) { event in
                switch event {
                case .started: promptSeconds = Date().timeIntervalSince(start)
                case .delta(_, let piece, let ids, _):
                    generated += ids.count
                    text += piece
                    printFlushed(piece)
                case .finished, .failed: break
                }
            }
            if verbose {
                let genSeconds = Date().timeIntervalSince(start) - promptSeconds
                printError(String(format: "\n[prompt: %d tokens, %.1f tokens/s; generated: %d tokens, %.1f tokens/s; %@]",
                                  tokens.count, Double(tokens.count) / max(promptSeconds, 1e-9), generated,
                                  Double(generated) / max(genSeconds, 1e-9), arithmetic.arithmetic.rawValue))
            }
            return text
        }

        if !chat {
            try await reply(to: prompting.tokens(prompt!))
            printFlushed("\n")
            return
        }
        var messages: [ChatFormat.Message] = system.map { [.init(role: "system", content: $0)] } ?? []
        if let prompt {
            messages.append(.init(role: "user", content: prompt))
            try await reply(to: prompting.tokens(chat: messages))
            printFlushed("\n")
            return
        }
        printError("Chatting with \(loaded.path). Type a message; an empty line ends the conversation.")
        while true {
            printError("> ", terminator: "")
            guard let line = readLine(), !line.isEmpty else { break }
            messages.append(.init(role: "user", content: line))
            let answer = try await reply(to: prompting.tokens(chat: messages))
            messages.append(.init(role: "assistant", content: answer))
            printFlushed("\n")
        }
    }
}

/// Runs one reply and hands its events over as they come.
protocol ReplyGenerator {
    func generate(_ prompt: [Int], parameters: SamplingParameters, _ handle: (GenerationEvent) -> Void) async throws
}

/// The default: the serving engine, one request at a time; its prefix cache keeps a conversation's
/// earlier turns.
final class EngineReplies: ReplyGenerator {
    let engine: Engine
    let adapter: InferenceAdapter?

    init(model: Llama, tokenizer: any Tokenizer, capacity: Int, adapter: InferenceAdapter?) {
        self.adapter = adapter
        var configuration = Engine.Configuration(blockCount: (capacity + 15) / 16, maxModelLength: capacity)
        configuration.maxSequences = 1
        configuration.maxTokensLimit = capacity
        engine = Engine(model: model, tokenizer: tokenizer, configuration: configuration)
        engine.start()
    }

    deinit { engine.stop() }

    func generate(_ prompt: [Int], parameters: SamplingParameters, _ handle: (GenerationEvent) -> Void) async throws {
        let (_, events) = try engine.submit(prompt: prompt, parameters: parameters, adapter: adapter)
        for await event in events {
            if case .failed(let message) = event { throw CommandError(message) }
            handle(event)
        }
    }
}

/// --llama-cpp-exact: llama.cpp's arithmetic over a contiguous KV cache, with the same sampler and
/// stop strings as the engine.
final class ExactReplies: ReplyGenerator {
    let model: Llama
    let tokenizer: any Tokenizer
    let cache: KVCache
    /// The tokens the cache holds, so that each chat turn only feeds what is new.
    var history: [Int] = []
    let adapter: InferenceAdapter?

    init(model: Llama, tokenizer: any Tokenizer, capacity: Int, adapter: InferenceAdapter?) {
        self.adapter = adapter
        self.model = model
        self.tokenizer = tokenizer
        cache = model.makeCache(capacity: capacity)
    }

    func generate(_ prompt: [Int], parameters p: SamplingParameters, _ handle: (GenerationEvent) -> Void) async throws {
        let keep = min(zip(history, prompt).prefix { $0 == $1 }.count, prompt.count - 1, cache.count)
        cache.truncate(to: keep)
        history = prompt
        var logits = try model.forward(Array(prompt[keep...]), cache: cache, adapter: adapter)
        handle(.started(promptTokens: prompt.count, cachedTokens: keep))
        var sampler = Sampler(parameters: p, seed: p.seed ?? 0)
        var decoder = StreamingDecoder(), stops = StopMatcher(stops: p.stop)
        var seen = Set(prompt), counts: [Int: Int] = [:], produced = 0
        var reason = FinishReason.length, stoppedByText = false
        while produced < p.maxTokens {
            let token = sampler.sample(logits, seen: p.repetitionPenalty != 1 ? seen : [], counts: counts).token
            if tokenizer.endOfGenerationIDs.contains(token) || p.stopTokenIDs.contains(token) { reason = .stop; break }
            produced += 1
            counts[token, default: 0] += 1
            seen.insert(token)
            history.append(token)
            let (release, stopped) = stops.append(decoder.append(tokenizer.bytes(of: token)))
            handle(.delta(choice: 0, text: release, tokens: [token], logprobs: []))
            if stopped { reason = .stop; stoppedByText = true; break }
            if produced < p.maxTokens { logits = try model.forward([token], cache: cache, adapter: adapter) }
        }
        if !stoppedByText {
            let (release, stopped) = stops.append(decoder.finish())
            let tail = release + (stopped ? "" : stops.flush())
            if !tail.isEmpty { handle(.delta(choice: 0, text: tail, tokens: [], logprobs: [])) }
        }
        handle(.finished(choice: 0, reason: reason, completionTokens: produced))
    }
}
