import ArgumentParser
import EmberModels
import EmberTensor
import EmberTraining
import Foundation

struct BenchRollouts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-rollouts",
        abstract: "Time GRPO's rollouts: G completions per prompt through the engine at once, against one sequence at a time.",
        discussion: """
        Loads --model as `ember grpo` trains it (with --lora-rank, a new LoRA over the frozen base, its B zero as PEFT starts it, so that the completions are the base's) and samples --num-generations completions of each of the first --prompts prompts of --data, with the same seeds: first all of them in flight together (the engine's continuous batching on the paged KV cache, as a GRPO step makes them), then one request at a time through the same engine. Prints both rates, their ratio and how many completions came out token for token the same.

        Example:
          ember bench-rollouts --model .cache/models/SmolLM2-135M-f32 --data .cache/grpo/test.jsonl --lora-rank 16 --lora-targets all-linear
        """)

    @Option(help: ArgumentHelp("A Hugging Face model folder (or, with --lora-rank, a GGUF file).", valueName: "dir")) var model: String
    @Option(help: ArgumentHelp("Prompt-only JSONL, as `ember grpo` reads it.", valueName: "file")) var data: String
    @Option(help: "Prompts to use.") var prompts: Int = 2
    @Option(name: .customLong("num-generations"), help: "Completions per prompt, G.") var generations: Int = 8
    @Option(name: .customLong("max-completion-length"), help: "Tokens of the longest completion.") var maxCompletionLength: Int = 128
    @Option(help: "Sampling temperature.") var temperature: Double = 1
    @Option(help: "Seed of the first completion (each next one adds 1).") var seed: UInt64 = 1
    @OptionGroup var loraOptions: LoRAOptions
    @Option(help: "Worker threads (default: all cores).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    func run() throws {
        ThreadPool.configureShared(threadCount: threads)
        let policy: TrainableLlama, prompting: Prompting
        if let lora = try loraOptions.configuration() {
            let adapted = try TrainableLlama.withLoRA(base: model, lora: lora)
            (policy, prompting) = (adapted.model, try adapted.base.prompting())
        } else {
            (policy, prompting) = (try TrainableLlama(directory: model), try LoadedModel.prompting(directory: model))
        }
        let (all, _) = try SupervisedTokenizer(prompting: prompting).prompts(FineTuningDataset.load(path: data), maximumLength: 1 << 30,
                                                                            completionLength: maxCompletionLength)
        guard all.count >= prompts else { throw CommandError("\(data) has \(all.count) usable prompts; --prompts asks for \(prompts)") }
        let chosen = Array(all.prefix(prompts)).map(\.ids)
        let longest = chosen.map(\.count).max()! + maxCompletionLength
        let rollouts = try RolloutEngine(policy: policy, prompting: prompting, maxLength: longest, maxSequences: max(16, prompts * generations))
        var p = SamplingParameters()
        p.temperature = Float(temperature)
        p.maxTokens = maxCompletionLength
        p.seed = seed
        printError("\(prompts) prompts × \(generations) completions of at most \(maxCompletionLength) tokens, \(threads) threads")
        var rows: [(String, Int, Double)] = []
        var outputs: [[[RolloutEngine.Completion]]] = []
        for oneAtATime in [false, true] {
            let before = rollouts.generatedTokens
            let out = try rollouts.generate(chosen, n: generations, parameters: p, oneAtATime: oneAtATime)
            rows.append((oneAtATime ? "one sequence at a time" : "engine, all \(prompts * generations) in flight", rollouts.generatedTokens - before,
                         rollouts.lastSeconds))
            outputs.append(out)
        }
        print("| generation | tokens | seconds | tokens/s |")
        print("| --- | ---: | ---: | ---: |")
        for (name, tokens, seconds) in rows { print(String(format: "| %@ | %d | %.2f | %.1f |", name, tokens, seconds, Double(tokens) / seconds)) }
        let speedup = (Double(rows[0].1) / rows[0].2) / (Double(rows[1].1) / rows[1].2)
        let same = zip(outputs[0].joined(), outputs[1].joined()).filter { $0.tokens == $1.tokens }.count
        print(String(format: "\nengine / one at a time: %.2f× tokens/s; %d of %d completions token for token the same", speedup, same, prompts * generations))
    }
}
