import Foundation
import Testing

/// Paths of the repository's fixtures and of the default model (fetched by scripts/fetch-model.sh).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }
    static let defaultModel = path(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    static var hasDefaultModel: Bool { FileManager.default.fileExists(atPath: defaultModel) }

    static func json(_ relative: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(relative))))
    }
}
