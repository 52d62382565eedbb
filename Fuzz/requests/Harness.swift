import EmberInference
import EmberModels
import EmberServer
import Foundation
import FuzzSupport
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded

/// A request body for one of the server's endpoints (the first byte picks it), answered by the
/// real router over a tiny model (`EMBER_FUZZ_MODEL`, by default the GGUF seed's tiny LLaMA with
/// fill-in-the-middle tokens):
/// no answer is a 5xx, and every error is OpenAI's error shape.
let endpoints: [(HTTPRequest.Method, String)] = [
    (.post, "/v1/chat/completions"), (.post, "/v1/completions"), (.post, "/tokenize"), (.post, "/detokenize"),
    (.post, "/infill"), (.post, "/pooling"), (.post, "/v1/embeddings"), (.get, "/v1/models"), (.get, "/health"),
    (.post, "/v1/load_lora_adapter"), (.post, "/v1/unload_lora_adapter"), (.get, "/openapi.json"), (.get, "/metrics"),
    (.put, "/v1/completions"),
]

let responder: RouterResponder<BasicRequestContext> = {
    let path = ProcessInfo.processInfo.environment["EMBER_FUZZ_MODEL"] ?? "Fuzz/seeds/gguf/tiny-llama.gguf"
    let loaded: LoadedModel, prompting: Prompting
    do {
        loaded = try LoadedModel.load(path: path)
        prompting = try loaded.prompting()
    } catch {
        FileHandle.standardError.write(Data("the requests harness needs a tiny model (EMBER_FUZZ_MODEL): \(error)\n".utf8))
        exit(2)
    }
    var configuration = Engine.Configuration(blockCount: 16, maxModelLength: 64)
    configuration.maxTokensLimit = 8
    let engine = Engine(model: loaded.model, tokenizer: loaded.tokenizer!, configuration: configuration)
    engine.start()
    // Runtime adapters may come from Fuzz/ only (it holds no adapter folder: every load is refused).
    let server = OpenAIServer(engine: engine, modelName: "tiny", prompting: prompting, apiKey: nil, loraRoot: "Fuzz", fim: loaded.fillInTheMiddle)
    return server.router().buildResponder()
}()

/// Collects a response body.
struct Collector: ResponseBodyWriter {
    let sink: Sink
    final class Sink: @unchecked Sendable { var bytes: [UInt8] = [] }
    mutating func write(_ buffer: ByteBuffer) async throws { sink.bytes += buffer.readableBytesView }
    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

@_cdecl("LLVMFuzzerTestOneInput") public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = input(data, count)
    guard let first = bytes.first else { return 0 }
    let (method, path) = endpoints[Int(first) % endpoints.count]
    let body = Array(bytes.dropFirst())
    let done = DispatchSemaphore(value: 0)
    Task {
        defer { done.signal() }
        let request = Request(head: HTTPRequest(method: method, scheme: "http", authority: "localhost", path: path,
                                                headerFields: [.contentType: "application/json"]),
                              body: RequestBody(buffer: ByteBuffer(bytes: body)))
        let context = BasicRequestContext(source: ApplicationRequestContextSource(channel: EmbeddedChannel(), logger: Logger(label: "fuzz")))
        let response: Response
        do {
            response = try await responder.respond(to: request, context: context)
        } catch let error as HTTPResponseError {
            invariant(error.status.code < 500, "\(path) threw \(error.status) for \(String(decoding: body, as: UTF8.self).debugDescription)")
            return
        } catch {
            invariant(false, "\(path) threw \(error) for \(String(decoding: body, as: UTF8.self).debugDescription)")
            return
        }
        let sink = Collector.Sink()
        try? await response.body.write(Collector(sink: sink))
        let status = response.status.code
        // 501 is llama-server's answer to /infill on a model without fill-in-the-middle tokens.
        invariant(status < 500 || status == 501, "\(path) answered \(status) to \(String(decoding: body, as: UTF8.self).debugDescription): \(String(decoding: sink.bytes, as: UTF8.self))")
        if status >= 400 {
            let object = try? JSONSerialization.jsonObject(with: Data(sink.bytes)) as? [String: Any]
            let error = object?["error"] as? [String: Any]
            invariant(error?["message"] is String && error?["type"] is String, "\(path) answered \(status) without OpenAI's error shape: \(String(decoding: sink.bytes, as: UTF8.self))")
        }
    }
    done.wait()
    return 0
}

@_cdecl("fuzz_requests_main") public func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    _ = responder
    return runFuzzer(argc, argv, fuzz)
}
