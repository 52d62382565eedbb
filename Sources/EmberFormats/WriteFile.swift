import Foundation

/// Writes `data` to `path` through a temporary file in the same folder and a rename, so that the
/// file is either the old one or the whole new one. Errors (a full disk) are thrown.
public func writeFile(_ data: Data, to path: String) throws {
    let url = URL(fileURLWithPath: path)
    let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
    do {
        try data.write(to: temporary)
        guard rename(temporary.path, path) == 0 else { throw FormatError(String(cString: strerror(errno))) }
    } catch {
        try? FileManager.default.removeItem(at: temporary)
        throw FormatError("\(path): writing failed: \(error.localizedDescription)")
    }
}
