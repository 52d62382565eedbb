import EmberFormats
import EmberTensor
import EmberTokenizers
import Foundation

/// A model ready to run, from either a `.gguf` file or a Hugging Face directory
/// (`config.json` + `model.safetensors` or its shards).
public struct LoadedModel: Sendable {
    public let path: String
    public let model: Llama
    /// nil when a model directory has no tokenizer.json.
    public let tokenizer: (any Tokenizer)?
    public let chatTemplate: String?
    /// Whether the model expects a beginning-of-sequence token before the text.
    public let addBOS: Bool
    public let gguf: GGUFFile?
    /// The BOS and EOS tokens a model directory's tokenizer_config.json names.
    var specialTokens: (bos: String?, eos: String?) = (nil, nil)

    /// The model's fill-in-the-middle tokens, when it has them.
    public var fillInTheMiddle: FillInTheMiddle? { tokenizer.flatMap { FillInTheMiddle(tokenizer: $0, gguf: gguf) } }

    /// The model's chat format (its own template, or ChatML when it has none).
    public func chatFormat() throws -> ChatFormat {
        try Self.chatFormat(path, template: chatTemplate, tokenizer: tokenizer, specialTokens: specialTokens)
    }

    private static func chatFormat(_ path: String, template: String?, tokenizer: (any Tokenizer)?, specialTokens: (bos: String?, eos: String?)) throws -> ChatFormat {
        do {
            return try ChatFormat(template: template, tokenizer: tokenizer, bosToken: specialTokens.bos, eosToken: specialTokens.eos)
        } catch let error as JinjaError {
            throw FormatError("\(path): the chat template cannot be used: \(error.message)")
        }
    }

    /// How prompts become tokens for this model (its tokenizer, chat format and BOS setting).
    public func prompting() throws -> Prompting {
        Prompting(tokenizer: try requireTokenizer(), chatFormat: try chatFormat(), addBOS: addBOS)
    }

    /// - Parameter prefetch: read every page of the weights' files now (a server's memory then stays
    ///   flat rather than growing as requests touch new parts of them; see `MappedFile.prefetch`).
    public static func load(path: String, prefetch: Bool = false) throws -> LoadedModel {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FormatError("\(path): no such file or directory")
        }
        if isDirectory.boolValue { return try loadDirectory(path, prefetch: prefetch) }
        let gguf = try GGUFFile(path: path)
        if prefetch { gguf.file.prefetch() }
        let configuration = try LlamaConfiguration(gguf: gguf)
        let weights = try LlamaWeights.load(from: GGUFTensorSource(gguf: gguf), configuration: configuration, format: .gguf,
                                            ropeMode: configuration.family.ropeMode(.gguf))
        let tokenizer = try GGUFTokenizer.load(gguf)
        guard tokenizer.vocabularySize == configuration.vocabularySize else {
            throw FormatError("\(path): the tokenizer has \(tokenizer.vocabularySize) tokens but the model \(configuration.vocabularySize)")
        }
        return LoadedModel(path: path, model: Llama(configuration: configuration, weights: weights), tokenizer: tokenizer,
                           chatTemplate: gguf.string("tokenizer.chat_template"),
                           addBOS: gguf.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false, gguf: gguf)
    }

    private static func loadDirectory(_ path: String, prefetch: Bool) throws -> LoadedModel {
        let configPath = path + "/config.json"
        guard FileManager.default.fileExists(atPath: configPath) else { throw FormatError("\(path): no config.json in the model directory") }
        let configuration = try LlamaConfiguration.load(configPath: configPath)
        let tensors = try SafetensorsCollection(directory: path)
        if prefetch { tensors.files.forEach { $0.file.prefetch() } }
        let weights = try LlamaWeights.load(from: SafetensorsTensorSource(collection: tensors, path: path), configuration: configuration,
                                            format: .huggingFace, ropeMode: configuration.family.ropeMode(.huggingFace))
        let (tokenizer, settings) = try tokenizerFiles(path)
        return LoadedModel(path: path, model: Llama(configuration: configuration, weights: weights), tokenizer: tokenizer,
                           chatTemplate: settings.chatTemplate, addBOS: settings.addBOS, gguf: nil, specialTokens: (settings.bos, settings.eos))
    }

    /// The tokenizer, chat template and BOS setting of a Hugging Face model directory, without its
    /// weights: how training prompts become tokens.
    public static func prompting(directory path: String) throws -> Prompting {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw FormatError("\(path): no such model directory")
        }
        let (tokenizer, settings) = try tokenizerFiles(path)
        guard let tokenizer else { throw FormatError("\(path): no tokenizer.json in the model directory") }
        let format = try chatFormat(path, template: settings.chatTemplate, tokenizer: tokenizer, specialTokens: (settings.bos, settings.eos))
        return Prompting(tokenizer: tokenizer, chatFormat: format, addBOS: settings.addBOS)
    }

    private static func tokenizerFiles(_ path: String) throws -> ((any Tokenizer)?, TokenizerSettings) {
        let tokenizerPath = path + "/tokenizer.json"
        var tokenizer: (any Tokenizer)?
        if FileManager.default.fileExists(atPath: tokenizerPath) {
            do {
                tokenizer = try TokenizerJSON.load(path: tokenizerPath)
            } catch let error as TokenizerError {
                throw FormatError(error.message)
            }
        }
        return (tokenizer, try tokenizerConfig(path + "/tokenizer_config.json"))
    }

    typealias TokenizerSettings = (chatTemplate: String?, addBOS: Bool, bos: String?, eos: String?)

    /// The chat template, BOS setting and BOS and EOS tokens of a Hugging Face `tokenizer_config.json`, when there is one.
    private static func tokenizerConfig(_ path: String) throws -> TokenizerSettings {
        guard let data = FileManager.default.contents(atPath: path) else { return (nil, false, nil, nil) }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FormatError("\(path): not a JSON object")
        }
        var template = object["chat_template"] as? String
        if template == nil, let named = object["chat_template"] as? [[String: Any]] {
            template = (named.first { $0["name"] as? String == "default" } ?? named.first)?["template"] as? String
        }
        /// A token is its text, or an AddedToken object with "content".
        func token(_ key: String) -> String? { object[key] as? String ?? (object[key] as? [String: Any])?["content"] as? String }
        return (template, object["add_bos_token"] as? Bool ?? false, token("bos_token"), token("eos_token"))
    }

    /// The tokenizer, or an error saying this model has none Ember can read.
    public func requireTokenizer() throws -> any Tokenizer {
        guard let tokenizer else { throw FormatError("\(path): no tokenizer.json beside the model, so text cannot be tokenized") }
        return tokenizer
    }
}
