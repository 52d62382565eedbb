import EmberTensor
import Foundation

/// One completion to reward: the prompt it answers, the completion, and the reference answer
/// when the data has one.
public struct RewardItem: Sendable, Equatable {
    public var prompt: String
    public var completion: String
    public var answer: String?
    public init(prompt: String, completion: String, answer: String? = nil) {
        self.prompt = prompt
        self.completion = completion
        self.answer = answer
    }
}

/// Rewards that need no model: the completion's final number against the answer (GSM8K-style
/// problems), or whether the completion matches a format.
public enum VerifiableReward: Sendable {
    /// 1 when the last number in the completion equals the answer's number, else 0 (commas and a
    /// leading `$` ignored, as lm-evaluation-harness's flexible GSM8K extraction reads numbers).
    case finalNumber
    /// 1 when the regular expression matches somewhere in the completion, else 0.
    case format(String)

    public func reward(_ item: RewardItem) throws -> Double {
        switch self {
        case .finalNumber:
            guard let answer = item.answer.flatMap(Self.lastNumber), let given = Self.lastNumber(item.completion) else { return 0 }
            return answer == given ? 1 : 0
        case .format(let pattern):
            let regex: NSRegularExpression
            do { regex = try NSRegularExpression(pattern: pattern, options: [.dotMatchesLineSeparators]) } catch {
                throw TrainingError("the format reward's pattern \(pattern) is not a valid regular expression")
            }
            let range = NSRange(item.completion.startIndex..., in: item.completion)
            return regex.firstMatch(in: item.completion, range: range) == nil ? 0 : 1
        }
    }

    private nonisolated(unsafe) static let numberPattern = try! NSRegularExpression(pattern: #"-?\$?[0-9][0-9,]*(\.[0-9]+)?"#)

    /// The value of the last number written in `text` (`-1,234.5`, `$12`), if any.
    public static func lastNumber(_ text: String) -> Double? {
        let matches = numberPattern.matches(in: text, range: NSRange(text.startIndex..., in: text))
        guard let last = matches.last, let range = Range(last.range, in: text) else { return nil }
        return Double(text[range].filter { $0 != "," && $0 != "$" })
    }
}

/// A reward computed by an outside program: it reads the items as JSONL on standard input (one
/// `{"prompt", "completion", "answer"}` object a line) and prints one number a line, in order.
/// A program that exits with an error, does not finish within `timeout` seconds, or prints
/// anything but one finite number per item is an error naming what it did; on a timeout it is
/// killed with every process it started.
public struct ExternalReward: Sendable {
    public var command: [String]
    public var timeout: Double

    public init(command: [String], timeout: Double = 60) {
        precondition(!command.isEmpty)
        self.command = command
        self.timeout = timeout
    }

    public func rewards(_ items: [RewardItem]) throws -> [Double] {
        // A program that exits without reading all of its input must give this process EPIPE on
        // the write, not SIGPIPE's default, which would end it.
        signal(SIGPIPE, SIG_IGN)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        let input = Pipe(), output = Pipe(), errors = Pipe()
        (process.standardInput, process.standardOutput, process.standardError) = (input, output, errors)
        let name = command.joined(separator: " ")
        let finished = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in finished.signal() }
        do { try process.runWithDefaultSignalMask() } catch { throw TrainingError("the reward command \(name) could not start: \(error.localizedDescription)") }
        let lines = try items.map { item -> Data in
            var object: [String: Any] = ["prompt": item.prompt, "completion": item.completion]
            object["answer"] = item.answer ?? NSNull()
            return try JSONSerialization.data(withJSONObject: object) + Data("\n".utf8)
        }
        // Written and read on their own threads, so that a program that prints before it has read
        // everything, or never reads, cannot block this one.
        let collected = OutputBox()
        let group = DispatchGroup()
        for (pipe, keep) in [(output, true), (errors, false)] {
            DispatchQueue.global().async(group: group) {
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                if keep { collected.output = data } else { collected.errors = data }
            }
        }
        DispatchQueue.global().async {
            for line in lines { guard (try? input.fileHandleForWriting.write(contentsOf: line)) != nil else { break } }
            try? input.fileHandleForWriting.close()
        }
        if finished.wait(timeout: .now() + timeout) == .timedOut {
            // The program's process group too (Foundation starts it as the leader of its own), so
            // that what it started stops with it.
            kill(-process.processIdentifier, SIGKILL)
            kill(process.processIdentifier, SIGKILL)
            finished.wait()
            throw TrainingError("the reward command \(name) did not answer \(items.count) items within \(timeout) s; it was stopped")
        }
        group.wait()
        let stderr = String(decoding: collected.errors.suffix(500), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let how = process.terminationReason == .exit ? "exited with status \(process.terminationStatus)" : "was killed by signal \(process.terminationStatus)"
            throw TrainingError("the reward command \(name) \(how)\(stderr.isEmpty ? "" : ": \(stderr)")")
        }
        let printed = String(decoding: collected.output, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        let values = printed.last == "" ? Array(printed.dropLast()) : printed
        guard values.count == items.count else {
            throw TrainingError("the reward command \(name) printed \(values.count) lines for \(items.count) items (one number a line)")
        }
        return try values.enumerated().map { i, text in
            guard let value = Double(text), value.isFinite else {
                throw TrainingError("the reward command \(name): line \(i + 1) is '\(text.prefix(80))', not a finite number")
            }
            return value
        }
    }
}

private final class OutputBox: @unchecked Sendable {
    var output = Data()
    var errors = Data()
}
