import CKernels

/// A linear layer's weight, stored in any `DType`, usually memory-mapped straight from a model file.
///
/// Shape [rows, columns] = [out features, in features], row-major; a row is `columns / blockSize` blocks.
/// `multiply` computes y [M, rows] = x [M, columns] · Wᵀ in llama.cpp's float arithmetic:
/// - quantized weights: x is quantized to 8-bit blocks; with few rows of x (decoding) each thread
///   walks a range of weight rows taking direct dot products over the stored blocks, with more it
///   decodes each weight row once into a small buffer and reuses it for four rows of x at a time;
/// - f16 / bf16 weights: direct dot products for few rows of x; for many, each thread expands a slab
///   of weight rows into a small f32 buffer and runs SGEMM on it;
/// - f32 weights: SGEMM;
/// - the 5-bit, K-quant and non-linear 4-bit types: the integer products (`multiplyByIntegers`),
///   or, on a CPU without a kernel tier, slabs of rows dequantized and multiplied by SGEMM.
/// `multiplyByIntegers` (IntegerProducts.swift) is the serving path's integer form for quantized weights.
public struct WeightMatrix: @unchecked Sendable {
    public let type: DType
    public let rows: Int
    public let columns: Int
    public let data: UnsafeRawPointer
    /// Keeps the memory behind `data` alive (a mapped file or an owned buffer).
    public let owner: AnyObject?
    /// The rows repacked for the integer products, once they are first needed.
    let packedRows = PackedRows.Slot()

    public init(type: DType, rows: Int, columns: Int, data: UnsafeRawPointer, owner: AnyObject?) {
        precondition(columns % type.blockSize == 0, "row length \(columns) is not a whole number of \(type) blocks")
        self.type = type
        self.rows = rows
        self.columns = columns
        self.data = data
        self.owner = owner
    }

    public var rowBytes: Int { columns / type.blockSize * type.blockBytes }

    public func row(_ r: Int) -> UnsafeRawPointer { data + r * rowBytes }

    /// Row `r` as f32 (an embedding lookup).
    public func dequantizeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        dequantize(type, from: row(r), to: out, count: columns)
    }


    /// Rows of x at or above which quantized rows are decoded once into a buffer and reused for every row of x.
    static let decodeThreshold = 4

    /// Rows of x up to which f32 products are direct dot products rather than SGEMM.
    public static let directF32Rows = 32

    /// Rows of x at or above which f16 / bf16 products switch from direct dot products to dequantize + SGEMM.
    public static let gemmThreshold = 6

    /// y [m, rows] = x [m, columns] · Wᵀ
    ///
    /// The activations first take the form llama.cpp gives them for this weight type: 8-bit blocks
    /// for quantized weights, f16 / bf16 for those; f32 weights use x as it is.
    public func multiply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, m: Int, pool: ThreadPool = .shared) {
        switch type {
        case .f32:
            let w = data.assumingMemoryBound(to: Float.self)
            guard m <= Self.directF32Rows else { return matmul(x, w, y, m: m, n: rows, k: columns, pool: pool) }
            // Decode batches: each weight row is read from memory once, for every row of x (SGEMM
            // would pack the whole matrix first, doubling the traffic of a memory-bound product).
            pool.parallelRanges(rows, minimumChunk: 16) { range in
                var r = range.lowerBound
                // Four weight rows against four rows of x at a time: half the loads per product.
                while r + 4 <= range.upperBound, m >= 4 {
                    let row = w + r * columns
                    var i = 0
                    while i + 4 <= m {
                        let t = dot4x4(row, wStride: columns, x + i * columns, xStride: columns, columns)
                        for k in 0..<4 {
                            y[(i + k) * rows + r] = t.0[k]
                            y[(i + k) * rows + r + 1] = t.1[k]
                            y[(i + k) * rows + r + 2] = t.2[k]
                            y[(i + k) * rows + r + 3] = t.3[k]
                        }
                        i += 4
                    }
                    for j in 0..<4 {
                        for i in i..<m { y[i * rows + r + j] = dot1(row + j * columns, x + i * columns, columns) }
                    }
                    r += 4
                }
                for r in r..<range.upperBound {
                    let row = w + r * columns
                    var i = 0
                    while i + 4 <= m {
                        let four = dot4(row, x + i * columns, stride: columns, columns)
                        for k in 0..<4 { y[(i + k) * rows + r] = four[k] }
                        i += 4
                    }
                    while i < m {
                        y[i * rows + r] = dot1(row, x + i * columns, columns)
                        i += 1
                    }
                }
            }
        case .f16, .bf16:
            let rounded = FloatBuffer(count: m * columns)
            rounded.pointer.update(from: x, count: m * columns)
            roundActivations(rounded.pointer, count: m * columns, to: type)
            if m >= Self.gemmThreshold {
                multiplyByDequantizedSlabs(rounded.pointer, y, m: m, pool: pool)
            } else {
                pool.parallelRanges(rows, minimumChunk: 16) { range in
                    for r in range {
                        for i in 0..<m { y[i * rows + r] = floatDot(type, row(r), rounded.pointer + i * columns, count: columns) }
                    }
                }
            }
        case .q8_0, .q4_0, .q4_1:
            multiplyByDotProducts(Q8Activations(quantizing: x, rows: m, columns: columns), y, m: m, pool: pool)
        case .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_nl, .iq4_xs:
            // No float lanes of llama.cpp's to follow: the integer products, which quantize x as
            // llama.cpp does for these types; f32 products of the exact values without a kernel tier.
            if Self.integerProductsAvailable {
                Self.multiplyByIntegers(x, m: m, by: [(self, y)], pool: pool)
            } else {
                multiplyByDequantizedSlabs(x, y, m: m, pool: pool)
            }
        }
    }

    /// Several products of one input (Q, K and V; gate and up): y_i [m, rows_i] = x [m, columns] · W_iᵀ,
    /// with the input quantized once for all the quantized weights among them.
    public static func multiply(_ x: UnsafePointer<Float>, m: Int, by products: [(weight: WeightMatrix, output: UnsafeMutablePointer<Float>)],
                                pool: ThreadPool = .shared) {
        var quantized: Q8Activations?
        for (weight, output) in products {
            guard weight.type.hasFloatLanes else {
                weight.multiply(x, output, m: m, pool: pool)
                continue
            }
            if quantized == nil { quantized = Q8Activations(quantizing: x, rows: m, columns: weight.columns) }
            weight.multiplyByDotProducts(quantized!, output, m: m, pool: pool)
        }
    }

    private func multiplyByDotProducts(_ x: Q8Activations, _ y: UnsafeMutablePointer<Float>, m: Int, pool: ThreadPool) {
        let blocks = columns / 32
        let withMinimums = type == .q4_1
        x.lanes.withUnsafeBufferPointer { lanes in
            x.scales.withUnsafeBufferPointer { d in
                x.sums.withUnsafeBufferPointer { s in
                    if m < Self.decodeThreshold {
                        pool.parallelRanges(rows, minimumChunk: 16) { range in
                            for r in range {
                                for i in 0..<m {
                                    y[i * rows + r] = quantizedDot(type, row(r), lanes.baseAddress! + i * columns, scales: d.baseAddress! + i * blocks,
                                                                   sums: s.baseAddress! + i * blocks, blocks: blocks)
                                }
                            }
                        }
                        return
                    }
                    pool.parallelRanges(rows, minimumChunk: 16) { range in
                        let decoded = DecodedRow(blocks: blocks)
                        defer { decoded.deallocate() }
                        for r in range {
                            decoded.decode(type, row(r))
                            var i = 0
                            while i + 4 <= m {
                                let four = decoded.dot4(lanes.baseAddress! + i * columns, stride: columns, scales: d.baseAddress! + i * blocks,
                                                        sums: s.baseAddress! + i * blocks, blockStride: blocks, withMinimums: withMinimums)
                                for k in 0..<4 { y[(i + k) * rows + r] = four[k] }
                                i += 4
                            }
                            while i < m {
                                y[i * rows + r] = decoded.dot(lanes.baseAddress! + i * columns, scales: d.baseAddress! + i * blocks,
                                                              sums: s.baseAddress! + i * blocks, withMinimums: withMinimums)
                                i += 1
                            }
                        }
                    }
                }
            }
        }
    }

    /// Each thread expands a slab of weight rows to f32 and multiplies it with SGEMM.
    func multiplyByDequantizedSlabs(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, m: Int, pool: ThreadPool) {
        BLASCore.prepare()
        let slabRows = max(16, min(256, (1 << 16) / columns))
        let slabs = (rows + slabRows - 1) / slabRows
        pool.parallelFor(slabs) { s in
            let first = s * slabRows
            let count = min(slabRows, rows - first)
            let slab = UnsafeMutablePointer<Float>.allocate(capacity: count * columns)
            defer { slab.deallocate() }
            dequantize(type, from: row(first), to: slab, count: count * columns)
            sgemmNT(x, slab, y + first, m: m, n: count, k: columns, ldy: rows)
        }
    }
}

/// An aligned f32 buffer: owned, or a view of part of another buffer (which it keeps alive).
public final class FloatBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    /// The buffer this one is a view into; nil when this one owns its memory.
    public let base: FloatBuffer?

    public init(count: Int) {
        self.count = count
        pointer = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: count)
        base = nil
    }

    /// A buffer whose contents are undefined until written (for outputs a kernel overwrites whole).
    public init(uninitializedCount count: Int) {
        self.count = count
        pointer = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        base = nil
    }

    /// The owner of an anonymous mapping (`init(pagedCount:)`), unmapped when freed.
    init(mapping pointer: UnsafeMutablePointer<Float>, count: Int) {
        self.count = count
        self.pointer = pointer
        base = nil
        paged = true
    }

    /// Values `offset ..< offset + count` of `base`, sharing its memory.
    public init(viewing base: FloatBuffer, offset: Int, count: Int) {
        precondition(offset >= 0 && count >= 0 && offset + count <= base.count, "view \(offset)..<\(offset + count) outside a buffer of \(base.count)")
        self.count = count
        pointer = base.pointer + offset
        self.base = base
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    /// Whether the memory is a mapping of its own (`init(pagedCount:)`).
    public private(set) var paged = false

    deinit {
        if paged {
            unmapPages()
        } else if base == nil {
            pointer.deallocate()
        }
    }

}

/// Every training step allocates and frees the same large activation buffers; by default glibc
/// returns them to the kernel and takes them back, faulting in and zeroing every page each step.
/// After this call freed memory stays in the heap for the next step.
public func keepFreedMemory() {
    ember_keep_freed_memory()
}
