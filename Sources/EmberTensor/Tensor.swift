/// A dense, row-major f32 tensor: a value type for tests, attention masks and small utilities.
/// Hot loops, and the autograd tape's `Variable`s, work on raw buffers with explicit dimensions
/// instead (see `Kernels/` and `FloatBuffer`).
public struct Tensor: Sendable, Equatable {
    public var shape: [Int]
    public var storage: [Float]

    public init(shape: [Int], storage: [Float]) {
        precondition(shape.reduce(1, *) == storage.count, "shape \(shape) does not hold \(storage.count) elements")
        self.shape = shape
        self.storage = storage
    }

    public init(zeros shape: [Int]) {
        self.init(shape: shape, storage: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    public var count: Int { storage.count }
}
