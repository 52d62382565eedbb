import EmberTensor

/// Layers, losses and optimizers build on `EmberTensor`'s paired forward/backward kernels.
/// The inference path needs none of them yet; this module marks their place in the dependency order.
public enum EmberNN {
    public static let version = "0.1.0"
}
