/// A problem with a model or tokenizer file, phrased for the person who supplied it:
/// one line that names the file and what is wrong.
public struct FormatError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
