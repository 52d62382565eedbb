import EmberTensor

/// A value in the autograd graph: a row-major f32 buffer with its shape, and a gradient buffer of
/// the same shape made on first use. Parameters are variables that live across steps; activations
/// are made by the ops of one step.
public final class Variable: @unchecked Sendable {
    public let shape: [Int]
    public let value: FloatBuffer
    public var name: String
    /// False for frozen parameters and for inputs: no gradient is computed for them.
    public var requiresGradient: Bool
    private var storedGradient: FloatBuffer?

    public init(shape: [Int], value: FloatBuffer? = nil, name: String = "", requiresGradient: Bool = true) {
        let count = shape.reduce(1, *)
        precondition(value == nil || value!.count == count, "shape \(shape) does not hold \(value!.count) values")
        self.shape = shape
        self.value = value ?? FloatBuffer(count: count)
        self.name = name
        self.requiresGradient = requiresGradient
    }

    /// A parameter whose value and gradient live elsewhere (views into a `ParameterArena`).
    public init(shape: [Int], value: FloatBuffer, gradient: FloatBuffer, name: String) {
        precondition(value.count == shape.reduce(1, *) && gradient.count == value.count, "shape \(shape) does not match its buffers")
        self.shape = shape
        self.value = value
        self.name = name
        requiresGradient = true
        storedGradient = gradient
    }

    /// An op's output, which its forward kernel overwrites whole.
    init(output shape: [Int]) {
        self.shape = shape
        value = FloatBuffer(uninitializedCount: shape.reduce(1, *))
        name = ""
        requiresGradient = true
    }

    public convenience init(shape: [Int], values: [Float], name: String = "", requiresGradient: Bool = true) {
        self.init(shape: shape, value: FloatBuffer(values), name: name, requiresGradient: requiresGradient)
    }

    public var count: Int { value.count }
    public var pointer: UnsafeMutablePointer<Float> { value.pointer }
    public var values: [Float] { Array(UnsafeBufferPointer(start: value.pointer, count: value.count)) }

    /// The gradient, made (zero) on first use.
    public var gradient: FloatBuffer {
        if let storedGradient { return storedGradient }
        let g = FloatBuffer(count: count)
        storedGradient = g
        return g
    }

    public var hasGradient: Bool { requiresGradient && storedGradient != nil }

    /// The gradient buffer when this variable wants one.
    var gradientIfWanted: UnsafeMutablePointer<Float>? { requiresGradient ? gradient.pointer : nil }

    public func zeroGradient() {
        if let g = storedGradient { g.pointer.update(repeating: 0, count: count) }
    }
}

/// Records the backward step of each op as the forward runs, and runs them in reverse.
///
/// Ops are coarse (a whole matrix product, a whole attention), each a pair of kernels from
/// `EmberTensor`; the tape only sequences them. Backward steps add into gradients, so a variable
/// used twice (a residual stream) collects both contributions, and parameter gradients accumulate
/// across micro-batches until they are zeroed.
public final class Tape {
    private var steps: [() -> Void] = []
    public let pool: ThreadPool
    /// False for a forward pass whose gradients are never wanted (evaluation): nothing is kept, so
    /// each activation is freed as soon as the next op no longer needs it.
    public let recording: Bool

    public init(pool: ThreadPool = .shared, recording: Bool = true) {
        self.pool = pool
        self.recording = recording
    }

    /// Adds a backward step; it runs after every step recorded later.
    public func record(_ step: @escaping () -> Void) {
        if recording { steps.append(step) }
    }

    /// Seeds d(loss) = `seed` and runs every recorded step in reverse, then forgets them.
    public func backward(_ loss: Variable, seed: Float = 1) {
        precondition(loss.count == 1, "backward starts from a scalar")
        loss.gradient.pointer[0] += seed
        backward()
    }

    /// Runs the recorded steps in reverse (gradients of the outputs already seeded). Each step is
    /// dropped once it has run, so the activations and gradients only it held are freed as the
    /// backward goes.
    public func backward() {
        while let step = steps.popLast() { step() }
    }

}
