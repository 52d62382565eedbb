import EmberTensor
import Foundation

/// libFuzzer's driver: runs `body` on every input it generates, with the usual flags
/// (`-max_total_time=`, `-runs=`, a corpus folder).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// A harness's entry point: hands the command line to libFuzzer.
public func runFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                      _ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt {
    // One thread per process: libFuzzer's jobs take the cores, and a worker pool per input would
    // only add scheduling noise to the coverage.
    ThreadPool.configureShared(threadCount: 1)
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, body)
}

/// The input as bytes.
public func input(_ data: UnsafePointer<UInt8>?, _ count: Int) -> [UInt8] {
    guard let data, count > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: count))
}

/// A broken invariant: a crash that libFuzzer records with the input that caused it.
public func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        FileHandle.standardError.write(Data("invariant broken: \(message())\n".utf8))
        abort()
    }
}

/// The marker between the files of a multi-file input (a folder's config and weights).
public let partSeparator: [UInt8] = Array("\n\u{1}--ember-fuzz-part--\u{1}\n".utf8)

/// An input cut at each separator into at most `count` parts (the last keeps any further separators).
public func parts(_ bytes: [UInt8], count: Int) -> [[UInt8]] {
    var result: [[UInt8]] = []
    var start = 0, i = 0
    while i + partSeparator.count <= bytes.count, result.count < count - 1 {
        if bytes[i] == partSeparator[0] && Array(bytes[i..<(i + partSeparator.count)]) == partSeparator {
            result.append(Array(bytes[start..<i]))
            i += partSeparator.count
            start = i
        } else {
            i += 1
        }
    }
    result.append(Array(bytes[start...]))
    while result.count < count { result.append([]) }
    return result
}

/// A scratch folder in memory for this process, emptied for each input.
public let scratch: String = {
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let path = "\(base)/ember-fuzz-\(getpid())"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    atexit { try? FileManager.default.removeItem(atPath: "/dev/shm/ember-fuzz-\(getpid())") }
    return path
}()

/// Writes the files of one input into the scratch folder (removing what the last input left) and
/// returns their paths.
@discardableResult
public func writeFiles(_ files: [(name: String, bytes: [UInt8])]) -> [String] {
    if let old = try? FileManager.default.contentsOfDirectory(atPath: scratch) {
        for name in old { try? FileManager.default.removeItem(atPath: scratch + "/" + name) }
    }
    return files.map { file in
        let path = scratch + "/" + file.name
        _ = FileManager.default.createFile(atPath: path, contents: Data(file.bytes))
        return path
    }
}

/// Texts a loaded tokenizer must encode and decode back: ASCII, accents, CJK, emoji, controls.
public let probeTexts = ["Hello, world!", "  two  spaces\tand a tab\n", "naïve café", "日本語のテキスト", "emoji 🙂👍🏽", "x\u{0}y", "1234567890", ""]
