import CBLAS

/// The products of a frozen weight in training (LoRA's base, QLoRA's quantized base): f32
/// arithmetic whatever the storage type, with no f32 copy of the matrix. Quantized, f16 and bf16
/// weights are expanded a tile of rows at a time into a small per-thread buffer and multiplied by
/// SGEMM there; f32 weights are multiplied where they lie.
extension WeightMatrix {
    /// y [m, rows] = x [m, columns] · Wᵀ, the activations as they are (not rounded to the weight's type).
    public func multiplyInFloat(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, m: Int, pool: ThreadPool = .shared) {
        if type == .f32 {
            matmulLarge(x, data.assumingMemoryBound(to: Float.self), y, m: m, n: rows, k: columns, pool: pool)
        } else {
            multiplyByDequantizedSlabs(x, y, m: m, pool: pool)
        }
    }

    /// dx [m, columns] += dy [m, rows] · W: the input gradient of `multiplyInFloat`. Each thread takes
    /// a range of whole blocks of columns and walks the rows in tiles, expanding only its part of
    /// each tile, so no two threads write the same values.
    public func multiplyTransposedAccumulating(_ dy: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>, m: Int, pool: ThreadPool = .shared) {
        if type == .f32 {
            matmulBackward(dy: dy, x: dy, w: data.assumingMemoryBound(to: Float.self), dx: dx, dw: nil, m: m, n: rows, k: columns, pool: pool)
            return
        }
        BLASCore.prepare()
        let blocks = columns / type.blockSize, parts = min(pool.threadCount, blocks)
        let tileRows = 128
        pool.parallelFor(parts) { part in
            let blockRange = (part * blocks / parts)..<((part + 1) * blocks / parts)
            let first = blockRange.lowerBound * type.blockSize, width = blockRange.count * type.blockSize
            guard width > 0 else { return }
            let tile = UnsafeMutablePointer<Float>.allocate(capacity: tileRows * width)
            defer { tile.deallocate() }
            var r0 = 0
            while r0 < rows {
                let count = min(tileRows, rows - r0)
                for r in 0..<count {
                    dequantize(type, from: row(r0 + r) + blockRange.lowerBound * type.blockBytes, to: tile + r * width, count: width)
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(width), Int32(count), 1,
                            dy + r0, Int32(rows), tile, Int32(width), 1, dx + first, Int32(columns))
                r0 += count
            }
        }
    }
}
