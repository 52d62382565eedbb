#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. Tensor data is used in place from the map.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let pointer: UnsafeRawPointer
    public let size: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw FormatError("\(path): cannot open (\(String(cString: strerror(errno))))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw FormatError("\(path): cannot stat") }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw FormatError("\(path): not a regular file") }
        size = Int(info.st_size)
        if size == 0 {
            pointer = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64))
            return
        }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw FormatError("\(path): cannot map into memory")
        }
        pointer = UnsafeRawPointer(base)
    }

    /// Reads every page through the map, so that all of it is resident from now on: a server's
    /// memory then stays flat instead of growing as requests reach new rows of an embedding table
    /// (llama.cpp populates its model maps the same way). Returns a checksum so the reads happen.
    @discardableResult
    public func prefetch() -> UInt8 {
        var sum: UInt8 = 0
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        for offset in stride(from: 0, to: size, by: max(page, 1)) { sum &+= pointer.load(fromByteOffset: offset, as: UInt8.self) }
        return sum
    }

    deinit {
        if size == 0 { UnsafeMutableRawPointer(mutating: pointer).deallocate() }
        else { munmap(UnsafeMutableRawPointer(mutating: pointer), size) }
    }
}

/// Bounds-checked little-endian reads over a byte range; every read past the end is a `FormatError`.
struct ByteCursor {
    let base: UnsafeRawPointer
    let size: Int
    let name: String
    var offset = 0

    var remaining: Int { size - offset }

    mutating func bytes(_ count: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        guard count >= 0, count <= remaining else {
            throw FormatError("\(name): truncated file: \(what()) needs \(count) bytes at offset \(offset) but only \(remaining) remain")
        }
        defer { offset += count }
        return UnsafeRawBufferPointer(start: base + offset, count: count)
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        let raw = try bytes(MemoryLayout<T>.size, what())
        return T(littleEndian: raw.loadUnaligned(as: T.self))
    }

    mutating func readFloat(_ what: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try read(UInt32.self, what()))
    }

    mutating func readDouble(_ what: @autoclosure () -> String) throws -> Double {
        Double(bitPattern: try read(UInt64.self, what()))
    }
}
