import EmberTensor

/// Contiguous key/value cache of one sequence: for each layer, keys and values [capacity, Hkv·D].
public final class KVCache: @unchecked Sendable {
    public let capacity: Int
    public let kvDim: Int
    /// Positions filled so far; the next token goes to position `count`.
    public internal(set) var count = 0
    let keys: [FloatBuffer]
    let values: [FloatBuffer]

    public init(configuration: LlamaConfiguration, capacity: Int) {
        self.capacity = capacity
        kvDim = configuration.kvDim
        keys = (0..<configuration.layerCount).map { _ in FloatBuffer(count: capacity * configuration.kvDim) }
        values = (0..<configuration.layerCount).map { _ in FloatBuffer(count: capacity * configuration.kvDim) }
    }

    /// Forgets everything (the buffers are reused).
    public func reset() { count = 0 }

    /// Keeps only the first `length` positions.
    public func truncate(to length: Int) { count = min(count, max(0, length)) }
}
