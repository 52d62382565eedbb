import ArgumentParser
import EmberModels
import EmberTraining
import Foundation

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a trained model directory as a GGUF file for llama.cpp, or with a LoRA merged as a Hugging Face folder.",
        discussion: """
        INPUT is a Hugging Face LLaMA or GPT-2 directory with config.json, model.safetensors and a byte-level BPE tokenizer.json, such as the model/ folder or a checkpoint of `ember pretrain`. Norms are always f32; --type sets the matrices.

        --add-fim-tokens DIR writes INPUT to DIR as a Hugging Face folder with <fim_prefix>, <fim_middle>, <fim_suffix> and <fim_pad> added to its vocabulary (the embedding grows by four rows at the mean of the others), as `ember sft --fim-rate` does before training; with --gguf, that folder is then exported.

        --merge-lora DIR writes the model with a LoRA adapter (a PEFT folder, such as `ember sft --lora-rank`'s adapter/) merged into its weights: W + (α / r) · B · A, to --gguf, or with --hf-output DIR to a Hugging Face folder (LlamaForCausalLM; for a reward model's SEQ_CLS adapter, LlamaForSequenceClassification) that the training commands start from. --lora DIR writes the adapter alone as llama.cpp's GGUF LoRA adapter (for llama-cli and llama-server --lora); INPUT is then its base, a folder or a GGUF file.

        Examples:
          ember export --input runs/tiny/model --gguf tiny.gguf --type q8_0
          llama-cli -m tiny.gguf -p "def "
          ember export --input .cache/models/SmolLM2-135M-f32 --merge-lora runs/lora/adapter --gguf merged.gguf
          ember export --input .cache/models/SmolLM2-135M-f32 --merge-lora runs/lora/adapter --hf-output runs/sft-merged
          ember export --input .cache/models/SmolLM2-135M-f32 --lora runs/lora/adapter --gguf adapter.gguf
          llama-perplexity -m base.gguf --lora adapter.gguf -f text.txt
          ember export --input runs/fim/model --gguf fim.gguf && llama-server -m fim.gguf   # /infill with the FIM tokens' ids in the file
        """)

    @Option(help: ArgumentHelp("The model directory (with --lora: the adapter's base, a directory or a GGUF file).", valueName: "path"))
    var input: String

    @Option(help: ArgumentHelp("The GGUF file to write.", valueName: "path"))
    var gguf: String?

    @Option(name: .customLong("add-fim-tokens"), help: ArgumentHelp("Write INPUT with fill-in-the-middle tokens added to this Hugging Face folder.", valueName: "dir"))
    var addFIMTokens: String?

    @Option(help: "Matrix type: f32, f16 or q8_0.")
    var type: GGUFExport.MatrixType = .f32

    @Option(name: .customLong("merge-lora"), help: ArgumentHelp("Merge this LoRA adapter (a PEFT folder) into the weights written.", valueName: "dir"))
    var mergeLora: String?

    @Option(help: ArgumentHelp("Write this LoRA adapter (a PEFT folder) as a GGUF LoRA adapter instead of a model.", valueName: "dir"))
    var lora: String?

    @Option(name: .customLong("hf-output"), help: ArgumentHelp("With --merge-lora: write the merged model to this Hugging Face folder.", valueName: "dir"))
    var hfOutput: String?

    func validate() throws {
        guard gguf != nil || addFIMTokens != nil || hfOutput != nil else { throw ValidationError("give --gguf FILE (or --add-fim-tokens DIR, or --merge-lora with --hf-output DIR)") }
        guard hfOutput == nil || mergeLora != nil else { throw ValidationError("--hf-output writes a merged model: give --merge-lora ADAPTER") }
        guard addFIMTokens == nil || (lora == nil && mergeLora == nil) else { throw ValidationError("--add-fim-tokens writes a whole model; leave out --lora and --merge-lora") }
        guard mergeLora == nil || lora == nil else { throw ValidationError("give --merge-lora (a merged model) or --lora (the adapter alone), not both") }
    }

    func run() throws {
        let start = Date()
        var input = self.input
        if let addFIMTokens {
            let tokens = try FIMVocabulary.add(to: input, output: addFIMTokens)
            printError(String(format: "wrote %@ with %@ as tokens %d–%d in %.1f s", addFIMTokens, FillInTheMiddle.addedNames.joined(separator: ", "),
                              tokens.prefix, tokens.prefix + 3, Date().timeIntervalSince(start)))
            input = addFIMTokens
        }
        if let hfOutput, let mergeLora {
            let adapter = try LoRAAdapter.load(directory: mergeLora, for: LlamaConfiguration.load(configPath: input + "/config.json"))
            let prompting = try LoadedModel.prompting(directory: input)
            let pad = prompting.paddingToken
            try MergedExport.write(base: input, adapter: adapter, padTokenID: pad, tokenizerFiles: SupervisedObjective.tokenizerFiles(in: input), to: hfOutput)
            printError(String(format: "wrote %@ (%@, LoRA merged) in %.1f s", hfOutput, adapter.score == nil ? "LlamaForCausalLM" : "LlamaForSequenceClassification",
                              Date().timeIntervalSince(start)))
        }
        guard let gguf else { return }
        if let lora {
            let base = try LoadedModel.load(path: input)
            let adapter = try LoRAAdapter.load(directory: lora, for: base.model.configuration)
            try GGUFExport.writeAdapter(adapter, configuration: base.model.configuration, name: URL(fileURLWithPath: lora).lastPathComponent, to: gguf)
        } else {
            let merged = try mergeLora.map { try LoRAAdapter.load(directory: $0, for: LlamaConfiguration.load(configPath: input + "/config.json")) }
            if merged?.score != nil { throw CommandError("\(mergeLora!) is a reward model's adapter (a score head): merge it with --hf-output DIR; GGUF holds generating models") }
            try GGUFExport.write(directory: input, to: gguf, type: type, merging: merged)
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: gguf)[.size] as? Int) ?? 0
        let what = lora != nil ? "LoRA adapter, f32" : mergeLora != nil ? type.rawValue + ", LoRA merged" : type.rawValue
        printError(String(format: "wrote %@ (%@, %.1f MB) in %.1f s", gguf, what, Double(size) / 1e6, Date().timeIntervalSince(start)))
    }
}

extension GGUFExport.MatrixType: ExpressibleByArgument {}
