/// The merge step every BPE tokenizer in Ember shares: a table from adjacent symbol pairs to the
/// symbol they merge into and the merge's priority (rank; lower merges first).
///
/// Merging follows both Hugging Face `tokenizers` and SentencePiece: repeatedly merge the pair with
/// the lowest rank, the leftmost one on ties, until no adjacent pair has a rank. A heap over the
/// pairs of a linked list of symbols keeps this O(n log n), so a SentencePiece text of megabytes
/// (encoded as one sequence) merges as fast as a short word.
struct BPEMerges: Sendable {
    /// (left id << 32 | right id) → (rank, merged id)
    private let table: [UInt64: (rank: Int32, merged: Int32)]

    /// From a ranked merge list (`"Ġ t"`, highest priority first), as in `tokenizer.json` and GGUF `gpt2` vocabularies.
    /// A merge whose product is one of `unreachable` (special tokens) is left out: ordinary text
    /// never merges into a special token, which would decode as its text rather than its bytes.
    init(list: [String], vocabulary: [String: Int], unreachable: Set<Int> = []) throws {
        var table: [UInt64: (rank: Int32, merged: Int32)] = [:]
        table.reserveCapacity(list.count)
        for (rank, merge) in list.enumerated() {
            let parts = merge.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw TokenizerError("merge \(rank) \"\(merge)\" is not two tokens separated by a space") }
            guard let l = vocabulary[String(parts[0])], let r = vocabulary[String(parts[1])] else {
                throw TokenizerError("merge \(rank) \"\(merge)\" names a token that is not in the vocabulary")
            }
            guard let m = vocabulary[String(parts[0]) + String(parts[1])] else {
                throw TokenizerError("merge \(rank) \"\(merge)\" produces a token that is not in the vocabulary")
            }
            let key = UInt64(l) << 32 | UInt64(r)
            if table[key] == nil, !unreachable.contains(m) { table[key] = (Int32(rank), Int32(m)) }
        }
        self.table = table
    }

    /// From SentencePiece scores: any two symbols whose concatenation is a mergeable piece merge, the
    /// piece with the highest score first. Every split of every piece into two vocabulary entries is a pair.
    init(pieces: [String], scores: [Float], mergeable: (Int) -> Bool, vocabulary: [String: Int]) {
        let distinct = Set(pieces.indices.filter(mergeable).map { scores[$0] }).sorted(by: >)
        let rankOf = Dictionary(uniqueKeysWithValues: distinct.enumerated().map { ($1, Int32($0)) })
        var table: [UInt64: (rank: Int32, merged: Int32)] = [:]
        for (id, piece) in pieces.enumerated() where mergeable(id) {
            let scalars = Array(piece.unicodeScalars)
            guard scalars.count > 1, let rank = rankOf[scores[id]] else { continue }
            for cut in 1..<scalars.count {
                var left = String.UnicodeScalarView(), right = String.UnicodeScalarView()
                left.append(contentsOf: scalars[..<cut])
                right.append(contentsOf: scalars[cut...])
                guard let l = vocabulary[String(left)], let r = vocabulary[String(right)] else { continue }
                table[UInt64(l) << 32 | UInt64(r)] = (rank, Int32(id))
            }
        }
        self.table = table
    }

    @inline(__always)
    func lookup(_ left: Int32, _ right: Int32) -> (rank: Int32, merged: Int32)? {
        guard left >= 0, right >= 0 else { return nil }
        return table[UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))]
    }

    /// Merges `symbols` (ids; negative ids never merge). Returns the surviving symbols with the index
    /// of the first original symbol each one covers.
    func merge(_ symbols: [Int32]) -> [(id: Int32, start: Int)] {
        let n = symbols.count
        if n < 2 { return symbols.enumerated().map { ($1, $0) } }
        var ids = symbols
        var next = [Int32](unsafeUninitializedCapacity: n) { b, c in for i in 0..<n { b[i] = Int32(i + 1) }; c = n }
        next[n - 1] = -1
        var prev = [Int32](unsafeUninitializedCapacity: n) { b, c in for i in 0..<n { b[i] = Int32(i - 1) }; c = n }
        var heap = MinHeap()
        for i in 0..<n - 1 {
            if let m = lookup(ids[i], ids[i + 1]) { heap.push(UInt64(UInt32(m.rank)) << 32 | UInt64(i)) }
        }
        while let top = heap.pop() {
            let rank = Int32(truncatingIfNeeded: top >> 32), left = Int(UInt32(truncatingIfNeeded: top))
            guard ids[left] >= -1 else { continue }  // merged away
            let right = Int(next[left])
            guard right >= 0, let m = lookup(ids[left], ids[right]), m.rank == rank else { continue }  // stale
            ids[left] = m.merged
            ids[right] = -2
            let after = next[right]
            next[left] = after
            if after >= 0 { prev[Int(after)] = Int32(left) }
            let before = prev[left]
            if before >= 0, let p = lookup(ids[Int(before)], ids[left]) { heap.push(UInt64(UInt32(p.rank)) << 32 | UInt64(before)) }
            if after >= 0, let p = lookup(ids[left], ids[Int(after)]) { heap.push(UInt64(UInt32(p.rank)) << 32 | UInt64(left)) }
        }
        var out: [(id: Int32, start: Int)] = []
        var i = 0
        while i >= 0 {
            out.append((ids[i], i))
            i = Int(next[i])
        }
        return out
    }
}

/// A binary min-heap of packed (rank << 32 | position) keys.
private struct MinHeap {
    private var items: [UInt64] = []

    mutating func push(_ key: UInt64) {
        items.append(key)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if items[parent] <= items[i] { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> UInt64? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if items.isEmpty { return first }
        items[0] = last
        var i = 0
        let n = items.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var smallest = i
            if l < n, items[l] < items[smallest] { smallest = l }
            if r < n, items[r] < items[smallest] { smallest = r }
            if smallest == i { break }
            items.swapAt(i, smallest)
            i = smallest
        }
        return first
    }
}
