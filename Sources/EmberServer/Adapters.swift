import EmberModels
import Foundation

/// The LoRA adapters a server answers under their names: those given at start (--lora-modules)
/// and, when a root folder is set (--lora-root), those loaded and unloaded at run time through
/// vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, from folders inside that root only.
final class AdapterRegistry: @unchecked Sendable {
    /// The folder runtime adapters must lie in, resolved (nil: no loading at run time).
    let root: String?
    private var adapters: [InferenceAdapter]
    private let lock = NSLock()

    init(_ adapters: [InferenceAdapter], root: String?) {
        self.adapters = adapters
        self.root = root.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().standardizedFileURL.path }
    }

    var all: [InferenceAdapter] { lock.withLock { adapters } }

    func named(_ name: String) -> InferenceAdapter? { lock.withLock { adapters.first { $0.name == name } } }

    /// `path` (relative to the root, or absolute) as a folder inside the root, every symbolic link
    /// followed: `..`, absolute paths elsewhere and links that lead out are refused.
    static func confined(_ path: String, to root: String) throws -> String {
        guard !path.isEmpty else { throw APIError.badRequest("'lora_path' must be a non-empty path", param: "lora_path") }
        guard !path.contains("\0") else {
            throw APIError(status: 404, message: "no adapter folder '\(path)' under --lora-root", param: "lora_path", code: "adapter_not_found")
        }
        let joined = path.hasPrefix("/") ? path : root + "/" + path
        let resolved = URL(fileURLWithPath: joined).resolvingSymlinksInPath().standardizedFileURL.path
        guard resolved == root || resolved.hasPrefix(root == "/" ? "/" : root + "/") else {
            throw APIError(status: 403, message: "'lora_path' must lie inside the server's --lora-root", type: "permission_error", param: "lora_path")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw APIError(status: 404, message: "no adapter folder '\(path)' under --lora-root", param: "lora_path", code: "adapter_not_found")
        }
        return resolved
    }

    /// Loads a PEFT adapter folder under `name`.
    func load(name: String, path: String, baseName: String, model: Llama) throws {
        guard let root else { throw APIError(status: 404, message: "adapters are not loaded at run time here; start the server with --lora-root DIR") }
        guard !name.isEmpty, name != baseName else { throw APIError.badRequest("'lora_name' must be a name other than the base model's", param: "lora_name") }
        let folder = try Self.confined(path, to: root)
        let adapter: LoRAAdapter
        do {
            adapter = try LoRAAdapter.load(directory: folder, for: model.configuration)
        } catch {
            throw APIError.badRequest("the adapter in '\(path)' cannot be loaded: \(error)", param: "lora_path")
        }
        let loaded = InferenceAdapter(adapter, name: name, for: model)
        try lock.withLock {
            guard !adapters.contains(where: { $0.name == name }) else {
                throw APIError.badRequest("an adapter named '\(name)' is already loaded", param: "lora_name")
            }
            adapters.append(loaded)
        }
    }

    /// Unloads the adapter `name`; requests already running under it finish with it.
    func unload(name: String) throws {
        guard root != nil else { throw APIError(status: 404, message: "adapters are not loaded at run time here; start the server with --lora-root DIR") }
        try lock.withLock {
            guard let index = adapters.firstIndex(where: { $0.name == name }) else {
                throw APIError(status: 404, message: "no adapter named '\(name)' is loaded", param: "lora_name", code: "model_not_found")
            }
            adapters.remove(at: index)
        }
    }
}
