import EmberInference
import EmberModels
import EmberTensor
import Foundation

/// Generation from the weights being trained, in memory: Ember's engine (continuous batching over
/// the paged KV cache) running on the policy as it is at the moment of the call. A whole model's
/// matrices are read where the trainer keeps them (`TrainableLlama.inferenceModel`), so every
/// optimizer step is seen at once; a LoRA's base is the frozen base, and its adapter is copied from
/// the trained A and B at each call. No file is written and no second process runs.
///
/// The prefix cache is off: the keys and values of a prompt computed under earlier weights are not
/// those of the current ones. Each completion is a request of its own, with its own seed, so that
/// the draws do not depend on how many run together.
public final class RolloutEngine {
    public struct Completion: Sendable, Equatable {
        /// The generated tokens, with the end-of-turn token when the model stopped by itself.
        public var tokens: [Int32]
        public var text: String
        /// Whether it ended with an end-of-generation token (false: cut at the length limit).
        public var stopped: Bool
    }

    public let policy: TrainableLlama
    public let prompting: Prompting
    public let engine: Engine
    /// The token a stopped completion ends with (the chat format's end of turn).
    public let endToken: Int32
    private var calls = 0
    /// Generated tokens and seconds over every call.
    public private(set) var generatedTokens = 0
    public private(set) var seconds = 0.0
    /// Seconds of the last call.
    public private(set) var lastSeconds = 0.0

    /// `maxLength`: the longest prompt + completion; `maxSequences`: sequences decoded together.
    public init(policy: TrainableLlama, prompting: Prompting, maxLength: Int, maxSequences: Int = 16) throws {
        guard policy.gpt2 == nil else {
            throw TrainingError("generating from the weights being trained runs LLaMA-path models; GPT-2 trains with pretrain and sft")
        }
        self.policy = policy
        self.prompting = prompting
        let model = policy.lora == nil ? policy.inferenceModel() : Llama(configuration: policy.configuration, weights: policy.base!)
        var configuration = Engine.Configuration(blockCount: maxSequences * ((maxLength + 15) / 16 + 1), maxModelLength: maxLength)
        configuration.maxSequences = maxSequences
        configuration.maxTokensLimit = maxLength
        configuration.maxBatchedTokens = max(512, maxLength)
        configuration.prefixCaching = false
        engine = Engine(model: model, tokenizer: prompting.tokenizer, configuration: configuration)
        endToken = Int32(prompting.paddingToken)
        engine.start()
    }

    deinit { engine.stop() }

    /// The adapter as the policy's A and B are now (nil for a whole model, or with the adapter off).
    func currentAdapter() -> InferenceAdapter? {
        guard policy.lora != nil, policy.adapterEnabled else { return nil }
        calls += 1
        return InferenceAdapter(policy.adapter(), name: "policy-\(calls)", for: engine.model)
    }

    /// `n` completions of each prompt, all requests in flight together (or one sequence at a time
    /// with `oneAtATime`, for comparison). Choice j of prompt i is sampled with seed `seed + i·n + j`
    /// when a seed is given.
    public func generate(_ prompts: [[Int32]], n: Int, parameters: SamplingParameters, oneAtATime: Bool = false) throws -> [[Completion]] {
        let adapter = currentAdapter()
        let start = Date()
        // One request per prompt and choice, with its own seed, so that the draws are the same
        // however many run together. The engine hands each request's events to `box` on its own
        // thread, so this thread waits without any task having to run.
        let pairs = prompts.indices.flatMap { i in (0..<n).map { (i, $0) } }
        let box = Collected(count: pairs.count)
        let done = DispatchSemaphore(value: 0)
        func submit(_ k: Int) throws {
            let (i, j) = pairs[k]
            var p = parameters
            p.n = 1
            p.seed = parameters.seed.map { $0 &+ UInt64(i * n + j) }
            _ = try engine.submit(prompt: prompts[i].map(Int.init), parameters: p, adapter: adapter) { event in
                if let event { box.add(k, event) } else { done.signal() }
            }
        }
        do {
            var running = 0
            defer { for _ in 0..<running { done.wait() } }  // every request has ended, even after an error
            for k in pairs.indices {
                try submit(k)
                running += 1
                if oneAtATime {
                    done.wait()
                    running -= 1
                }
            }
        }
        if let failure = box.failure { throw TrainingError("generation failed: \(failure)") }
        let flat = box.results.map { c in Completion(tokens: c.tokens.map(Int32.init) + (c.stopped ? [endToken] : []), text: c.text, stopped: c.stopped) }
        let results = prompts.indices.map { i in Array(flat[i * n..<(i + 1) * n]) }
        lastSeconds = Date().timeIntervalSince(start)
        seconds += lastSeconds
        generatedTokens += results.joined().reduce(0) { $0 + $1.tokens.count }
        return results
    }
}

/// What the events of several requests carried, gathered from their tasks.
private final class Collected: @unchecked Sendable {
    struct Choice { var tokens: [Int] = [], text = "", stopped = false }
    private let lock = NSLock()
    private(set) var results: [Choice]
    private(set) var failure: String?

    init(count: Int) { results = Array(repeating: Choice(), count: count) }

    func add(_ k: Int, _ event: GenerationEvent) {
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case .delta(_, let text, let tokens, _):
            results[k].tokens += tokens
            results[k].text += text
        case .finished(_, let reason, _): results[k].stopped = reason == .stop
        case .failed(let message): failure = message
        case .started: break
        }
    }
}
