import Foundation
import Testing

/// Paths of the repository's fixtures and of the default model (fetched by scripts/fetch-model.sh).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }
    static let defaultModel = path(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")

    static func json(_ relative: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(relative))))
    }
}

/// Writes `bytes` to a fresh temporary file and returns its path.
func temporaryFile(_ bytes: [UInt8], suffix: String = ".gguf") -> String {
    let path = NSTemporaryDirectory() + "ember-\(UUID().uuidString)\(suffix)"
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    return path
}
