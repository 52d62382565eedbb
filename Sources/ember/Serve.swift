import ArgumentParser
import EmberInference
import EmberModels
import EmberServer
import EmberTensor
import Foundation
import Hummingbird

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a model over an OpenAI-compatible HTTP API.",
        discussion: """
        A BERT sentence-transformers folder (such as all-MiniLM-L6-v2) is served as an embedding model: POST /v1/embeddings (OpenAI's: input as a string, a list of strings or of token ids; encoding_format float or base64), GET /v1/models, POST /tokenize, GET /health.

        Endpoints of a generative model: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, POST /tokenize, POST /detokenize, GET /health, GET /metrics (Prometheus), and for models with fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, <fim_middle>, as `ember sft --fim-rate` adds) POST /infill (llama.cpp's: input_prefix, input_suffix, input_extra, prompt) and "suffix" on /v1/completions.

        Many requests run at once: each engine step batches the sequences that are decoding with chunks of new prompts (up to --max-batched-tokens tokens and --max-num-seqs sequences), over a paged KV cache of --kv-cache-memory bytes that also keeps recent prompt prefixes for reuse. SIGINT or SIGTERM stops accepting connections, lets running requests finish, and exits.

        Examples:
          ember serve --model model.gguf --port 8000
          ember serve --model model.gguf --lora-modules alpaca=runs/lora/adapter code=runs/code/adapter   # "model": "alpaca" picks that adapter
          curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"messages": [{"role": "user", "content": "Hi!"}]}'
        """)

    @OptionGroup var options: ModelOptions

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on.")
    var port = 8000

    @Option(help: "Most sequences in one step.")
    var maxNumSeqs = 16

    @Option(help: "Most tokens in one step (decodes plus prompt chunks).")
    var maxBatchedTokens = 512

    @Option(help: ArgumentHelp("KV cache size: bytes, or with a unit (512MiB, 2GiB).", valueName: "size"))
    var kvCacheMemory = "1GiB"

    @Option(help: "Longest sequence, prompt plus output (default: the model's context, at most 8192).")
    var maxModelLen: Int?

    @Option(help: "Largest max_tokens a request may ask for.")
    var maxTokensLimit = 4096

    @Option(help: "Require 'Authorization: Bearer KEY' on every request except /health.")
    var apiKey: String?

    @Option(help: "The model name clients use (default: the file or directory name).")
    var servedModelName: String?

    @Option(name: .customLong("lora-modules"), parsing: .upToNextOption,
            help: ArgumentHelp("LoRA adapters to serve beside the base, as NAME=DIR (PEFT folders: adapter_config.json and adapter_model.safetensors); a request's \"model\": NAME runs under that adapter, in the same batches as the others.", valueName: "name=dir"))
    var loraModules: [String] = []

    @Option(help: ArgumentHelp("Allow loading LoRA adapters at run time (POST /v1/load_lora_adapter, /v1/unload_lora_adapter), from folders inside this one only.", valueName: "dir"))
    var loraRoot: String?

    @Flag(name: .customLong("spm-infill"), help: "Fill-in-the-middle prompts in SPM order (suffix, then prefix) rather than PSM.")
    var spmInfill = false

    @Option(help: "Requests that may wait beyond the running batch (--max-num-seqs); more are answered 429 with Retry-After.")
    var maxQueuedRequests = ServerLimits().maxQueuedRequests

    @Option(help: ArgumentHelp("Seconds a request may run before it is stopped and answered 503.", valueName: "seconds"))
    var requestTimeout = ServerLimits().requestTimeout

    @Option(help: ArgumentHelp("Seconds a client has to send a whole request; slower clients are disconnected.", valueName: "seconds"))
    var readTimeout = ServerLimits().readTimeout

    @Option(help: "Open connections at most; one more is answered 503 and closed.")
    var maxConnections = ServerLimits().maxConnections

    @Option(help: ArgumentHelp("Largest request body, in bytes (413 above it).", valueName: "bytes"))
    var maxBodyBytes = ServerLimits().maxBodyBytes

    /// The server's limits from the options.
    var limits: ServerLimits {
        var limits = ServerLimits()
        limits.maxQueuedRequests = maxQueuedRequests
        limits.requestTimeout = requestTimeout
        limits.readTimeout = readTimeout
        limits.maxConnections = maxConnections
        limits.maxBodyBytes = maxBodyBytes
        return limits
    }

    func validate() throws {
        guard maxQueuedRequests >= 0 else { throw ValidationError("--max-queued-requests must be 0 or more") }
        guard requestTimeout > 0, readTimeout > 0 else { throw ValidationError("--request-timeout and --read-timeout must be positive") }
        guard maxConnections >= 1, maxBodyBytes >= 1 else { throw ValidationError("--max-connections and --max-body-bytes must be at least 1") }
        if let loraRoot {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: loraRoot, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ValidationError("--lora-root \(loraRoot) is not a folder")
            }
        }
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535") }
        guard maxNumSeqs >= 1 else { throw ValidationError("--max-num-seqs must be at least 1") }
        guard maxBatchedTokens >= 1 else { throw ValidationError("--max-batched-tokens must be at least 1") }
        guard Self.bytes(kvCacheMemory) != nil else { throw ValidationError("--kv-cache-memory: give bytes or a size such as 512MiB or 2GiB") }
        if let maxModelLen { guard maxModelLen >= 2 else { throw ValidationError("--max-model-len must be at least 2") } }
        for module in loraModules {
            let parts = module.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { throw ValidationError("--lora-modules takes NAME=DIR, not \(module)") }
        }
    }

    static func bytes(_ text: String) -> Int? {
        let units: [(String, Int)] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000), ("B", 1)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            return Double(text.dropLast(suffix.count)).flatMap { $0 > 0 ? Int($0 * Double(scale)) : nil }
        }
        return Int(text).flatMap { $0 > 0 ? $0 : nil }
    }

    func run() async throws {
        if SentenceEncoder.isEncoder(path: options.model) { return try await serveEmbeddings() }
        let loaded = try options.load(prefetch: true)
        let tokenizer = try loaded.requireTokenizer()
        let model = loaded.model
        let context = min(maxModelLen ?? min(model.configuration.maxPositionEmbeddings, 8192), model.configuration.maxPositionEmbeddings)
        var configuration = Engine.Configuration(
            blockCount: Engine.blocks(forMemory: Self.bytes(kvCacheMemory)!, configuration: model.configuration), maxModelLength: context)
        guard configuration.blockCount >= 1 else { throw CommandError("--kv-cache-memory \(kvCacheMemory) holds not even one block") }
        configuration.maxSequences = maxNumSeqs
        configuration.maxBatchedTokens = maxBatchedTokens
        configuration.maxTokensLimit = maxTokensLimit
        let engine = Engine(model: model, tokenizer: tokenizer, configuration: configuration)
        engine.start()
        let kvTokens = configuration.blockCount * configuration.blockSize, threads = options.threads
        let name = servedModelName ?? URL(fileURLWithPath: options.model).deletingPathExtension().lastPathComponent
        var adapters: [InferenceAdapter] = []
        for module in loraModules {
            let parts = module.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts[0] != name, !adapters.contains(where: { $0.name == parts[0] }) else {
                throw CommandError("--lora-modules: the name \(parts[0]) is already taken (by the base or another adapter)")
            }
            do {
                adapters.append(InferenceAdapter(try LoRAAdapter.load(directory: parts[1], for: model.configuration), name: parts[0], for: model))
            } catch {
                throw CommandError("--lora-modules \(parts[0]): \(error)")
            }
            let lora = adapters.last!.adapter.configuration
            printError("adapter \(parts[0]): rank \(lora.rank), alpha \(lora.alpha) on \(lora.targets.map(\.rawValue).joined(separator: ",")) from \(parts[1])")
        }
        let fim = loaded.fillInTheMiddle
        if let fim { printError("fill-in-the-middle tokens \(fim.prefix), \(fim.suffix), \(fim.middle): POST /infill answers") }
        let server = OpenAIServer(engine: engine, modelName: name, prompting: try loaded.prompting(), apiKey: apiKey, limits: limits,
                                  adapters: adapters, loraRoot: loraRoot, fim: fim, spmInfill: spmInfill)
        let app = Application(router: server.router(), server: limits.http1(), configuration: .init(address: .hostname(host, port: port), serverName: "ember"),
                              onServerRunning: { _ in
                                  printError("Serving \(name) on http://\(host):\(port) (\(kvTokens) KV tokens, context \(context), \(threads) threads)")
                              })
        try await app.runService()
        engine.stop()
        printError("Stopped.")
    }

    /// An embedding model's server: only the options that apply to it.
    private func serveEmbeddings() async throws {
        guard loraModules.isEmpty, loraRoot == nil else { throw CommandError("--lora-modules: \(options.model) is an embedding model, which takes no adapters") }
        ThreadPool.configureShared(threadCount: options.threads)
        let encoder = try SentenceEncoder(path: options.model, prefetch: true)
        let name = servedModelName ?? URL(fileURLWithPath: options.model).lastPathComponent
        let server = EmbeddingServer(encoder: encoder, modelName: name, apiKey: apiKey, limits: limits)
        let threads = options.threads
        let app = Application(router: server.router(), server: limits.http1(), configuration: .init(address: .hostname(host, port: port), serverName: "ember"),
                              onServerRunning: { _ in
                                  printError("Serving embedding model \(name) (\(encoder.dimensions) dimensions, \(encoder.pooling.rawValue) pooling\(encoder.normalize ? ", normalised" : ""), inputs cut at \(encoder.maxSequenceLength) tokens) on http://\(host):\(port) (\(threads) threads)")
                              })
        try await app.runService()
        printError("Stopped.")
    }
}
