/// Embedding lookup. Shapes: table [V, C]; ids [N]; out [N, C].   out_t = table[ids_t]
public func embeddingForward(table: UnsafePointer<Float>, ids: UnsafePointer<Int32>, out: UnsafeMutablePointer<Float>,
                             count N: Int, dim C: Int, pool: ThreadPool = .shared) {
    pool.parallelRanges(N) { range in
        for t in range { (out + t * C).update(from: table + Int(ids[t]) * C, count: C) }
    }
}

/// The gradient of `embeddingForward`, added into dtable [V, C]: dtable[ids_t] += dout_t.
/// Threads split the columns, so repeated ids never race.
public func embeddingBackward(dout: UnsafePointer<Float>, ids: UnsafePointer<Int32>, dtable: UnsafeMutablePointer<Float>,
                              count N: Int, dim C: Int, pool: ThreadPool = .shared) {
    pool.parallelRanges(C, minimumChunk: 16) { columns in
        for t in 0..<N {
            let source = dout + t * C, target = dtable + Int(ids[t]) * C
            for c in columns { target[c] += source[c] }
        }
    }
}
