import Foundation
import Hummingbird
import NIOCore
import Yams

/// The API's description (openapi.yaml, beside this file), served as JSON at `GET /openapi.json`.
enum OpenAPIDocument {
    static let json: Result<ByteBuffer, APIError> = {
        // The resource bundle SwiftPM builds beside the executable (Bundle.module would stop the
        // process when an installed binary has left it behind).
        let url = Bundle.main.executableURL?.deletingLastPathComponent()
            .appendingPathComponent("Ember_EmberServer.resources/openapi.yaml")
        guard let url, let text = try? String(contentsOf: url, encoding: .utf8) else {
            return .failure(APIError(status: 404, message: "openapi.yaml is not beside this executable (Ember_EmberServer.resources)"))
        }
        do {
            guard let document = try Yams.load(yaml: text) else { return .failure(APIError(status: 404, message: "openapi.yaml is empty")) }
            return .success(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])))
        } catch {
            return .failure(APIError(status: 404, message: "openapi.yaml cannot be read: \(error)"))
        }
    }()

    static func response() throws -> Response {
        let body = try json.get()
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: body))
    }
}
