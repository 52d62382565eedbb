import ArgumentParser
import EmberModels
import EmberTensor
import Foundation

@main
struct Ember: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ember",
        abstract: "Run LLaMA-family language models on the CPU.",
        discussion: """
        MODEL is a .gguf file, or a directory holding config.json and model.safetensors (or its shards).
        The default model is fetched by scripts/fetch-model.sh into .cache/models/.

        Examples:
          ember serve --model model.gguf --port 8000
          ember generate --model model.gguf --prompt "The capital of France is" --temperature 0
          ember generate --model model.gguf --chat
          ember perplexity --model model.gguf --file text.txt --context 512
          ember bench --model model.gguf --threads 2
          ember tokenize --tokenizer model.gguf --text "Hello world"
          ember inspect --model model.gguf
          ember pretrain --preset tiny --output runs/tiny
          ember sft --model base --data train.jsonl --output runs/sft
        """,
        version: emberVersion,
        subcommands: [Serve.self, Generate.self, Perplexity.self, Eval.self, Bench.self, BenchAttention.self, Tokenize.self, Embed.self, TrainTokenizer.self, PrepareData.self, Pretrain.self, FineTune.self, TrainReward.self, DPO.self, GRPOCommand.self, PPOCommand.self, BenchRollouts.self, BenchGEMM.self, Export.self, Inspect.self])
}

/// Ember's version, in `ember --version` and evaluation results.
let emberVersion = "0.1.0"

/// Options every model-running command shares.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("A .gguf file or a Hugging Face model directory.", valueName: "path"))
    var model: String

    @Option(name: .long, help: "Worker threads (default: all cores).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    func validate() throws {
        guard (1...1024).contains(threads) else { throw ValidationError("--threads must be between 1 and 1024") }
    }

    func load(prefetch: Bool = false) throws -> LoadedModel {
        ThreadPool.configureShared(threadCount: threads)
        return try LoadedModel.load(path: model, prefetch: prefetch)
    }
}

/// `--lora`: run under a LoRA adapter (a PEFT folder) over the model.
struct AdapterOption: ParsableArguments {
    @Option(name: .customLong("lora"), help: ArgumentHelp("Apply a LoRA adapter: a PEFT folder (adapter_config.json, adapter_model.safetensors), such as an ember sft run's adapter/.", valueName: "dir"))
    var lora: String?

    func load(for loaded: LoadedModel) throws -> InferenceAdapter? {
        guard let lora else { return nil }
        do {
            return InferenceAdapter(try LoRAAdapter.load(directory: lora, for: loaded.model.configuration), name: lora, for: loaded.model)
        } catch {
            throw CommandError("--lora \(lora): \(error)")
        }
    }
}

/// Writes to standard error without buffering.
func printError(_ text: String, terminator: String = "\n") {
    FileHandle.standardError.write(Data((text + terminator).utf8))
}

/// Writes to standard output and flushes, so streamed text appears as it is produced.
func printFlushed(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
}

/// A failure found while running a command (as opposed to a malformed command line):
/// printed as one line, without the usage text.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `--llama-cpp-exact`, for the commands that run a model (generate, perplexity, bench).
struct ArithmeticOption: ParsableArguments {
    @Flag(name: .customLong("llama-cpp-exact"),
          help: "Compute as llama.cpp does, operation by operation: logits equal to llama.cpp's, slower. By default the serving path's arithmetic runs (integer products where the CPU has them), whose logits differ from llama.cpp's by rounding.")
    var llamaCppExact = false

    var arithmetic: Arithmetic { llamaCppExact ? .llamaCppExact : .fast }
}
