import EmberTensor

/// Contiguous key/value cache of one sequence: for each layer, keys and values [capacity, Hkv·D],
/// stored as f16 like llama.cpp's default cache.
public final class KVCache: @unchecked Sendable {
    public let capacity: Int
    public let kvDim: Int
    /// Positions filled so far; the next token goes to position `count`.
    public internal(set) var count = 0
    let keys: [UnsafeMutablePointer<Float16>]
    let values: [UnsafeMutablePointer<Float16>]

    public init(configuration: LlamaConfiguration, capacity: Int) {
        self.capacity = capacity
        kvDim = configuration.kvDim
        let size = capacity * configuration.kvDim
        keys = (0..<configuration.layerCount).map { _ in .allocate(capacity: max(size, 1)) }
        values = (0..<configuration.layerCount).map { _ in .allocate(capacity: max(size, 1)) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Stores `count` positions of keys and values [count, Hkv·D] for `layer` from position `start` on.
    func store(layer: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>, at start: Int, count: Int) {
        let base = start * kvDim
        for i in 0..<count * kvDim {
            keys[layer][base + i] = Float16(k[i])
            values[layer][base + i] = Float16(v[i])
        }
    }

    /// Forgets everything (the buffers are reused).
    public func reset() { count = 0 }

    /// Keeps only the first `length` positions.
    public func truncate(to length: Int) { count = min(count, max(0, length)) }
}
