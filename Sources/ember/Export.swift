import ArgumentParser
import EmberModels
import EmberTraining
import Foundation

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a trained model directory as a GGUF file for llama.cpp.",
        discussion: """
        INPUT is a Hugging Face LLaMA directory with config.json, model.safetensors and a byte-level BPE tokenizer.json, such as the model/ folder or a checkpoint of `ember pretrain`. Norms are always f32; --type sets the matrices.

        Example:
          ember export --input runs/tiny/model --gguf tiny.gguf --type q8_0
          llama-cli -m tiny.gguf -p "def "
        """)

    @Option(help: ArgumentHelp("The model directory.", valueName: "dir"))
    var input: String

    @Option(help: ArgumentHelp("The GGUF file to write.", valueName: "path"))
    var gguf: String

    @Option(help: "Matrix type: f32, f16 or q8_0.")
    var type: GGUFExport.MatrixType = .f32

    func run() throws {
        let start = Date()
        try GGUFExport.write(directory: input, to: gguf, type: type)
        let size = (try? FileManager.default.attributesOfItem(atPath: gguf)[.size] as? Int) ?? 0
        printError(String(format: "wrote %@ (%@, %.1f MB) in %.1f s", gguf, type.rawValue, Double(size) / 1e6, Date().timeIntervalSince(start)))
    }
}

extension GGUFExport.MatrixType: ExpressibleByArgument {}
