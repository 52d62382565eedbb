import Foundation
import Hummingbird
import NIOCore
import Yams

/// The API's description (openapi.yaml, beside this file), served as JSON at `GET /openapi.json`.
enum OpenAPIDocument {
    static let json: Result<ByteBuffer, APIError> = {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
              let text = try? String(contentsOf: url, encoding: .utf8) else {
            return .failure(APIError(status: 404, message: "this build carries no openapi.yaml"))
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
