import EmberFormats
import EmberModels
import EmberTokenizers
import Foundation

/// Tokenizes text files into a data folder (`train.bin`, `val.bin`, `dataset.json`, a copy of the
/// tokenizer). Each file is one document, ended by the tokenizer's end-of-text token. A
/// `validationFraction` of the documents, spread evenly over the inputs (at least one when there
/// are two or more; for a single document, the last part of its tokens), form the validation split.
public func prepareData(tokenizer: any Tokenizer, tokenizerPath: String, inputs: [String], output: String, validationFraction: Double,
                        progress: (_ done: Int, _ total: Int, _ tokens: Int) -> Void = { _, _, _ in }) throws -> TokenDataset.Description {
    guard !inputs.isEmpty else { throw TrainingError("no input files") }
    guard (0..<1).contains(validationFraction) else { throw TrainingError("the validation fraction must be in [0, 1)") }
    let endOfText = tokenizer.eosTokenID ?? tokenizer.id(of: "<|endoftext|>")
    var documents: [[Int32]] = []
    var total = 0
    for (i, path) in inputs.enumerated() {
        guard let data = FileManager.default.contents(atPath: path) else { throw TrainingError("cannot read \(path)") }
        guard let text = String(validating: data, as: UTF8.self) else { throw TrainingError("\(path) is not valid UTF-8") }
        var ids = tokenizer.encode(text, parseSpecial: false).map(Int32.init)
        if let endOfText { ids.append(Int32(endOfText)) }
        total += ids.count
        documents.append(ids)
        progress(i + 1, inputs.count, total)
    }
    let held = documents.count == 1 || validationFraction == 0 ? 0 : max(1, Int((Double(documents.count) * validationFraction).rounded()))
    var train: [Int32], validation: [Int32]
    if documents.count == 1 {
        let all = documents[0], cut = all.count - Int(Double(all.count) * validationFraction)
        train = Array(all[..<cut])
        validation = Array(all[cut...])
    } else {
        // Held-out documents spread evenly over the inputs, so that both splits see the same mix.
        let heldOut = Set((0..<held).map { Int((Double($0) + 0.5) * Double(documents.count) / Double(held)) })
        train = documents.indices.filter { !heldOut.contains($0) }.flatMap { documents[$0] }
        validation = documents.indices.filter(heldOut.contains).flatMap { documents[$0] }
    }
    try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
    try TokenFile.write(train, vocabularySize: tokenizer.vocabularySize, to: output + "/train.bin")
    try TokenFile.write(validation, vocabularySize: tokenizer.vocabularySize, to: output + "/val.bin")
    let name = (tokenizerPath as NSString).lastPathComponent
    let copy = output + "/" + name
    if URL(fileURLWithPath: copy).standardizedFileURL != URL(fileURLWithPath: tokenizerPath).standardizedFileURL {
        guard let bytes = FileManager.default.contents(atPath: tokenizerPath) else { throw TrainingError("cannot read \(tokenizerPath)") }
        try writeFile(bytes, to: copy)
    }
    let description = TokenDataset.Description(
        tokenizer: name, vocabularySize: tokenizer.vocabularySize, endOfTextTokenID: endOfText,
        documents: ["train": documents.count - held, "val": held],
        tokens: ["train": train.count, "val": validation.count], sources: inputs)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try writeFile(encoder.encode(description), to: output + "/dataset.json")
    return description
}

/// The default corpus: the Python standard library's own sources, which every machine with
/// `python3` has. Files are taken in path order (test suites and installed packages left out)
/// until `limit` bytes.
public func pythonStandardLibrarySources(limit: Int) throws -> [String] {
    var roots: [String] = []
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    if (try? process.run()) != nil {
        process.waitUntilExit()
        if process.terminationStatus == 0, let line = String(data: pipe.fileHandleForReading.readDataToEndOfFile(), encoding: .utf8) {
            roots.append(line.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
    roots += ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib")) ?? []).filter { $0.hasPrefix("python3") }.sorted().map { "/usr/lib/" + $0 }
    guard let root = roots.first(where: { FileManager.default.fileExists(atPath: $0 + "/os.py") }) else {
        throw TrainingError("no Python standard library found for the default corpus (install python3, or give --data)")
    }
    var files: [String] = []
    var size = 0
    let skipped: Set = ["test", "tests", "site-packages", "dist-packages", "idlelib", "__pycache__", "lib2to3"]
    guard let walker = FileManager.default.enumerator(atPath: root) else { throw TrainingError("cannot list \(root)") }
    var candidates: [String] = []
    while let relative = walker.nextObject() as? String {
        if skipped.contains((relative as NSString).lastPathComponent) { walker.skipDescendants(); continue }
        if relative.hasSuffix(".py") { candidates.append(relative) }
    }
    for relative in candidates.sorted() {
        let path = root + "/" + relative
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path), let bytes = attributes[.size] as? Int, bytes > 0 else { continue }
        files.append(path)
        size += bytes
        if size >= limit { break }
    }
    guard !files.isEmpty else { throw TrainingError("\(root) holds no Python sources") }
    return files
}
