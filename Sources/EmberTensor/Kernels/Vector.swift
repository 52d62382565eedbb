/// Small vector primitives shared by the kernels. `n` is any length; the bodies use 8-wide SIMD
/// with a scalar tail.

@inline(__always)
public func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
    var i = 0
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    while i + 16 <= n {
        acc0.addProduct(ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self),
                        rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self))
        acc1.addProduct(ra.loadUnaligned(fromByteOffset: 4 * i + 32, as: SIMD8<Float>.self),
                        rb.loadUnaligned(fromByteOffset: 4 * i + 32, as: SIMD8<Float>.self))
        i += 16
    }
    var sum = (acc0 + acc1).sum()
    while i < n { sum += a[i] * b[i]; i += 1 }
    return sum
}

/// The dot products of one row `w` with four rows of `x` (`stride` apart): w is read once.
@inline(__always)
public func dot4(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, stride: Int, _ n: Int) -> SIMD4<Float> {
    var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
    var i = 0
    let rw = UnsafeRawPointer(w), rx = UnsafeRawPointer(x), s = 4 * stride
    while i + 16 <= n {
        let v = rw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
        a0.addProduct(v, rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self))
        a1.addProduct(v, rx.loadUnaligned(fromByteOffset: 4 * i + s, as: SIMD16<Float>.self))
        a2.addProduct(v, rx.loadUnaligned(fromByteOffset: 4 * i + 2 * s, as: SIMD16<Float>.self))
        a3.addProduct(v, rx.loadUnaligned(fromByteOffset: 4 * i + 3 * s, as: SIMD16<Float>.self))
        i += 16
    }
    var out = SIMD4<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum())
    while i < n {
        for k in 0..<4 { out[k] += w[i] * x[k * stride + i] }
        i += 1
    }
    return out
}

/// One dot product summed in `dot4`'s order, so that a row of x gets the same bits whether it is
/// multiplied alone or among others.
@inline(__always)
public func dot1(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var a = SIMD16<Float>()
    var i = 0
    let rw = UnsafeRawPointer(w), rx = UnsafeRawPointer(x)
    while i + 16 <= n {
        a.addProduct(rw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self), rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self))
        i += 16
    }
    var out = a.sum()
    while i < n {
        out += w[i] * x[i]
        i += 1
    }
    return out
}

/// y += alpha · x
@inline(__always)
public func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    let va = SIMD8<Float>(repeating: alpha)
    let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
    while i + 8 <= n {
        var v = ry.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        v.addProduct(va, rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self))
        ry.storeBytes(of: v, toByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n { y[i] += alpha * x[i]; i += 1 }
}

/// y += x
@inline(__always)
public func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
    for i in 0..<n { y[i] += x[i] }
}
