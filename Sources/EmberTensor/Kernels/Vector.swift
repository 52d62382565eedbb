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

/// The 4 × 4 dot products of four rows of `w` (`wStride` apart) with four rows of `x` (`xStride`
/// apart), each summed in `dot4`'s order: element k of result j is w row j · x row k.
@inline(__always)
public func dot4x4(_ w: UnsafePointer<Float>, wStride: Int, _ x: UnsafePointer<Float>, xStride: Int, _ n: Int)
    -> (SIMD4<Float>, SIMD4<Float>, SIMD4<Float>, SIMD4<Float>) {
    var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>(), a03 = SIMD16<Float>()
    var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>(), a13 = SIMD16<Float>()
    var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>(), a23 = SIMD16<Float>()
    var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>(), a33 = SIMD16<Float>()
    var i = 0
    let rw = UnsafeRawPointer(w), rx = UnsafeRawPointer(x), ws = 4 * wStride, xs = 4 * xStride
    while i + 16 <= n {
        let o = 4 * i
        let x0 = rx.loadUnaligned(fromByteOffset: o, as: SIMD16<Float>.self), x1 = rx.loadUnaligned(fromByteOffset: o + xs, as: SIMD16<Float>.self)
        let x2 = rx.loadUnaligned(fromByteOffset: o + 2 * xs, as: SIMD16<Float>.self), x3 = rx.loadUnaligned(fromByteOffset: o + 3 * xs, as: SIMD16<Float>.self)
        let w0 = rw.loadUnaligned(fromByteOffset: o, as: SIMD16<Float>.self)
        a00.addProduct(w0, x0); a01.addProduct(w0, x1); a02.addProduct(w0, x2); a03.addProduct(w0, x3)
        let w1 = rw.loadUnaligned(fromByteOffset: o + ws, as: SIMD16<Float>.self)
        a10.addProduct(w1, x0); a11.addProduct(w1, x1); a12.addProduct(w1, x2); a13.addProduct(w1, x3)
        let w2 = rw.loadUnaligned(fromByteOffset: o + 2 * ws, as: SIMD16<Float>.self)
        a20.addProduct(w2, x0); a21.addProduct(w2, x1); a22.addProduct(w2, x2); a23.addProduct(w2, x3)
        let w3 = rw.loadUnaligned(fromByteOffset: o + 3 * ws, as: SIMD16<Float>.self)
        a30.addProduct(w3, x0); a31.addProduct(w3, x1); a32.addProduct(w3, x2); a33.addProduct(w3, x3)
        i += 16
    }
    var out = (SIMD4<Float>(a00.sum(), a01.sum(), a02.sum(), a03.sum()), SIMD4<Float>(a10.sum(), a11.sum(), a12.sum(), a13.sum()),
               SIMD4<Float>(a20.sum(), a21.sum(), a22.sum(), a23.sum()), SIMD4<Float>(a30.sum(), a31.sum(), a32.sum(), a33.sum()))
    while i < n {
        for k in 0..<4 {
            out.0[k] += w[i] * x[k * xStride + i]
            out.1[k] += w[wStride + i] * x[k * xStride + i]
            out.2[k] += w[2 * wStride + i] * x[k * xStride + i]
            out.3[k] += w[3 * wStride + i] * x[k * xStride + i]
        }
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

/// A row-major [rows, columns] matrix as [columns, rows] (GPT-2's Conv1D weights are stored [in, out]).
public func transposed(_ values: [Float], rows: Int, columns: Int) -> [Float] {
    precondition(values.count == rows * columns, "transposed: \(values.count) values are not \(rows) × \(columns)")
    var out = [Float](repeating: 0, count: values.count)
    for r in 0..<rows { for c in 0..<columns { out[c * rows + r] = values[r * columns + c] } }
    return out
}
