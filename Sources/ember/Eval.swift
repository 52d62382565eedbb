import ArgumentParser
import EmberEvaluation
import EmberFormats
import EmberModels
import EmberTensor
import Foundation

struct Eval: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate a model on tasks: multiple choice by log-likelihood, generation scored by exact match, code by pass@k, perplexity.",
        discussion: """
        A task is a JSON or YAML file over a JSONL data file, in lm-evaluation-harness's terms:

          {"task": "logiqa", "data": "logiqa.jsonl", "kind": "multiple_choice",
           "prompt": "Passage: {{context}}\\nQuestion: {{question}}\\nAnswer:",
           "choices": "{{choices}}", "target": "{{answer}}", "metrics": ["acc", "acc_norm"]}

        kind is multiple_choice, generate_until, code or perplexity; {{field}} is an item's field. Other fields: target_delimiter (" "), fewshot (0), fewshot_data, fewshot_target (a worked answer for the examples), fewshot_sampler (first or random), fewshot_delimiter ("\\n\\n"), description, seed, chat_template, limit, until (["\\n\\n"]), max_tokens (256), temperature (0), answer_pattern and answer_match (first or last), ignore_case, ignore_punctuation, ignore_regexes, for code: tests, entry_point, samples, k, timeout; for perplexity: chunk_context (score as `ember perplexity --context N`). docs/evaluation.md describes them; tasks/ holds the shipped ones (scripts/fetch-eval-data.py fetches their data).

        Metrics follow the harness: acc, acc_norm (log-likelihood over the choice's length in characters), exact_match, pass@k (the unbiased estimator), perplexity, word_perplexity, byte_perplexity and bits_per_byte, each with its standard error.

        With --model the model runs in this process: a question's choices share one computation of its context, and generations run batched. With --url, any OpenAI-compatible server's /v1/completions answers (echo with logprobs for log-likelihoods).

        --output DIR gets results.json (configuration, versions, every metric with its stderr) and samples-TASK.jsonl (per item: the prompt, the target, the choices' log-likelihoods or the output, the score), written item by item so that a run that stops keeps what it did.

        Examples:
          ember eval --model .cache/models/SmolLM2-135M-f32 --task tasks/logiqa.json --limit 100
          ember eval --url http://localhost:8000 --task tasks/gsm-symbolic.yaml --output runs/eval
        """)

    @Option(help: ArgumentHelp("A .gguf file or a Hugging Face model directory, run in this process.", valueName: "path"))
    var model: String?

    @Option(help: ArgumentHelp("An OpenAI-compatible server to evaluate instead (its base URL).", valueName: "url"))
    var url: String?

    @Option(name: .customLong("api-key"), help: "The server's API key (default: $OPENAI_API_KEY).")
    var apiKey: String?

    @Option(name: .customLong("model-name"), help: "The model name sent to the server (default: the first it lists at /v1/models).")
    var modelName: String?

    @Option(name: .customLong("task"), help: ArgumentHelp("A task file (.json, .yaml); repeatable.", valueName: "path"))
    var tasks: [String] = []

    @Option(help: "Evaluate only the first N items of each task.")
    var limit: Int?

    @Option(help: "Few-shot examples per item (overrides the task's).")
    var fewshot: Int?

    @Option(help: "The seed of sampling and few-shot draws (overrides the task's).")
    var seed: UInt64?

    @Option(help: ArgumentHelp("Where results.json and the samples go.", valueName: "dir"))
    var output: String?

    @Flag(name: .customLong("no-shared-context"), help: "Compute each choice's context again (to measure what sharing it saves).")
    var noSharedContext = false

    @Option(help: "Worker threads (default: all cores).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    func validate() throws {
        guard (model == nil) != (url == nil) else { throw ValidationError("give --model (run in this process) or --url (a server), not both") }
        guard !tasks.isEmpty else { throw ValidationError("give at least one --task FILE") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if let fewshot, fewshot < 0 { throw ValidationError("--fewshot must be at least 0") }
    }

    func run() async throws {
        var loadedTasks: [EvaluationTask] = []
        for path in tasks {
            var task = try EvaluationTask.load(path: path)
            if let limit { task.limit = limit }
            if let fewshot { task.fewshot = fewshot }
            if let seed { task.seed = seed }
            loadedTasks.append(task)
        }
        let backend: any EvaluationBackend
        if let model {
            ThreadPool.configureShared(threadCount: threads)
            let loaded = try LoadedModel.load(path: model)
            printError("f32 products: \(BLASCore.summary); integer products: \(KernelTier.current.name)")
            backend = InProcessBackend(model: loaded.model, prompting: try loaded.prompting(), name: model, sharedContext: !noSharedContext)
        } else {
            backend = try OpenAIBackend(url: url!, model: modelName, apiKey: apiKey ?? ProcessInfo.processInfo.environment["OPENAI_API_KEY"])
        }
        if let output { try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true) }
        var results: [TaskResult] = []
        var failed = false
        for task in loadedTasks {
            let evaluator = try Evaluator(task: task, backend: backend)
            if task.kind == .code { evaluator.runProgram = { program, timeout in await Sandbox.run(python: program, timeout: timeout) } }
            let start = Date()
            evaluator.progress = { done, total in
                let elapsed = Date().timeIntervalSince(start)
                let rate = elapsed > 0 ? Double(done) / elapsed : 0
                let eta = rate > 0 ? Double(total - done) / rate : .nan
                showProgress(Double(done) / Double(max(total, 1)),
                             String(format: "%@: %d/%d items, %.2f items/s, %@ left", task.name, done, total, rate, duration(eta)))
            }
            let result = await evaluator.run(samples: output.map { "\($0)/samples-\(task.name).jsonl" })
            endProgress()
            results.append(result)
            if let error = result.error {
                printError("\(task.name): stopped after \(result.items) of \(evaluator.itemCount) items: \(error)")
                failed = true
            }
            if let output { try writeResults(results, tasks: loadedTasks, backend: backend, to: output + "/results.json") }
        }
        print(table(results))
        if let output { printError("wrote \(output)/results.json and the samples") }
        if failed { throw ExitCode(1) }
    }

    /// The harness's table: task, items, metric, value ± stderr, and the time taken.
    func table(_ results: [TaskResult]) -> String {
        var lines = ["| task | items | metric | value | ± stderr | time |", "| --- | ---: | --- | ---: | ---: | ---: |"]
        for r in results {
            for (name, m) in r.metrics.sorted(by: { $0.key < $1.key }) {
                lines.append(String(format: "| %@ | %d | %@ | %.4f | %.4f | %@ |", r.task, r.items, name, m.value, m.stderr, duration(r.seconds)))
            }
            if r.metrics.isEmpty { lines.append("| \(r.task) | \(r.items) | - | - | - | \(duration(r.seconds)) |") }
        }
        return lines.joined(separator: "\n")
    }

    func writeResults(_ results: [TaskResult], tasks: [EvaluationTask], backend: any EvaluationBackend, to path: String) throws {
        var byTask: [String: Any] = [:]
        for r in results {
            var entry: [String: Any] = ["kind": r.kind, "items": r.items, "seconds": r.seconds]
            for (name, m) in r.metrics {
                entry[name] = m.value
                entry[name + "_stderr"] = m.stderr
            }
            if let error = r.error { entry["error"] = error }
            byTask[r.task] = entry
        }
        let configuration: [String: Any] = [
            "backend": backend.summary, "tasks": tasks.map { ["name": $0.name, "file": $0.data, "kind": $0.kind.rawValue, "fewshot": $0.fewshot,
                                                             "seed": $0.seed, "limit": $0.limit as Any? ?? NSNull(), "chat_template": $0.chatTemplate] },
            "threads": threads, "date": ISO8601DateFormatter().string(from: Date()),
        ]
        let document: [String: Any] = ["results": byTask, "config": configuration, "versions": ["ember": emberVersion, "results_format": 1]]
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        try writeFile(data, to: path)
    }
}
