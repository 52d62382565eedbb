import ArgumentParser
import EmberFormats
import EmberModels
import Foundation

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a model's metadata and tensor table.")

    @Option(help: ArgumentHelp("A .gguf file or a Hugging Face model directory.", valueName: "path"))
    var model: String

    func run() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: model, isDirectory: &isDirectory) else {
            throw FormatError("\(model): no such file or directory")
        }
        if isDirectory.boolValue {
            let configuration = try LlamaConfiguration.load(configPath: model + "/config.json")
            print("configuration:")
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(configuration), as: UTF8.self))
            let tensors = try SafetensorsCollection(directory: model)
            print("\ntensors:")
            for name in tensors.names {
                let (_, entry) = tensors.entry(name)!
                print("  \(name.padding(toLength: 52, withPad: " ", startingAt: 0)) \(entry.dtype.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0)) \(entry.shape)")
            }
            return
        }
        let gguf = try GGUFFile(path: model)
        print("GGUF version \(gguf.version), \(gguf.metadata.count) metadata entries, \(gguf.tensors.count) tensors, alignment \(gguf.alignment)")
        print("\nmetadata:")
        for key in gguf.metadataKeys {
            print("  \(key) = \(gguf.metadata[key]!)")
        }
        print("\ntensors (shape with the fastest-varying dimension first, as GGUF stores it):")
        var total = 0
        for info in gguf.tensors {
            let bytes = info.byteCount ?? 0
            total += bytes
            print("  \(info.name.padding(toLength: 28, withPad: " ", startingAt: 0)) \(String(describing: info.ggmlType).padding(toLength: 6, withPad: " ", startingAt: 0)) \(String(describing: info.extents).padding(toLength: 16, withPad: " ", startingAt: 0)) \(bytes) bytes")
        }
        print(String(format: "\n%.1f MiB of tensor data", Double(total) / 1_048_576))
    }
}
