import Glibc

/// Buffers in pages of their own: ZeRO hands parts of them back to the system and counts what
/// stays resident.
extension FloatBuffer {
    /// Zeros in pages of their own (an anonymous mapping), so that parts can be handed back to the
    /// system with `release` and count as memory again only once written: how a ZeRO rank holds
    /// the whole flat address range of a model while only its shard, and the block in use, occupy memory.
    public convenience init(pagedCount count: Int) {
        let bytes = Self.pageRounded(max(count, 1) * 4)
        guard let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), memory != MAP_FAILED else {
            fatalError("cannot map \(bytes) bytes: \(String(cString: strerror(errno)))")
        }
        self.init(mapping: memory.bindMemory(to: Float.self, capacity: max(count, 1)), count: count)
    }

    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    static func pageRounded(_ bytes: Int) -> Int { (bytes + pageSize - 1) / pageSize * pageSize }

    /// The whole pages inside values `range`, as a byte range of the address space.
    private func pages(_ range: Range<Int>) -> Range<Int> {
        let start = Int(bitPattern: pointer + range.lowerBound), end = Int(bitPattern: pointer + range.upperBound)
        let first = (start + Self.pageSize - 1) / Self.pageSize * Self.pageSize, last = end / Self.pageSize * Self.pageSize
        return first..<max(first, last)
    }

    /// Hands the whole pages inside values `range` back to the system (they read as zeros, and
    /// occupy memory again when written); the values on pages shared with the rest are kept.
    /// Only for memory of its own or of its base's mapping; elsewhere nothing happens.
    public func release(_ range: Range<Int>) {
        guard paged || base?.paged == true else { return }
        let p = pages(range)
        if !p.isEmpty { madvise(UnsafeMutableRawPointer(bitPattern: p.lowerBound), p.count, MADV_DONTNEED) }
    }

    /// Sets values `range` to zero, releasing its whole pages where the memory is paged.
    public func zero(_ range: Range<Int>) {
        guard paged || base?.paged == true else { return (pointer + range.lowerBound).update(repeating: 0, count: range.count) }
        release(range)
        let p = pages(range), start = Int(bitPattern: pointer)
        if p.isEmpty { return (pointer + range.lowerBound).update(repeating: 0, count: range.count) }
        let head = (p.lowerBound - start) / 4 - range.lowerBound, tail = range.upperBound - (p.upperBound - start) / 4
        (pointer + range.lowerBound).update(repeating: 0, count: head)
        (pointer + range.upperBound - tail).update(repeating: 0, count: tail)
    }

    /// Bytes of values `range` that occupy memory now (pages resident, as `mincore` reports; the
    /// partial pages at both ends count whole).
    public func residentBytes(_ range: Range<Int>? = nil) -> Int {
        let range = range ?? 0..<count
        guard !range.isEmpty else { return 0 }
        let start = Int(bitPattern: pointer + range.lowerBound) / Self.pageSize * Self.pageSize
        let end = Int(bitPattern: pointer + range.upperBound)
        let pageCount = (end - start + Self.pageSize - 1) / Self.pageSize
        var flags = [UInt8](repeating: 0, count: pageCount)
        guard mincore(UnsafeMutableRawPointer(bitPattern: start), end - start, &flags) == 0 else { return range.count * 4 }
        return flags.reduce(0) { $0 + Int($1 & 1) } * Self.pageSize
    }

    func unmapPages() { munmap(pointer, Self.pageRounded(max(count, 1) * 4)) }
}
