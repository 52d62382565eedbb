import EmberModels
import EmberTokenizers
import Foundation

/// A training sequence of supervised fine-tuning: its token ids, and which of them the loss
/// learns (the completion or the assistant's turns; every token for plain language modelling).
public struct SupervisedSequence: Sendable, Equatable {
    public var ids: [Int32]
    public var learned: [Bool]
    public init(ids: [Int32], learned: [Bool]) {
        precondition(ids.count == learned.count)
        self.ids = ids
        self.learned = learned
    }
    public var count: Int { ids.count }
    /// Tokens whose prediction the loss scores: learned tokens other than the first.
    public var scoredCount: Int { learned.dropFirst().reduce(0) { $0 + ($1 ? 1 : 0) } }
}

/// How examples too long for the maximum length are handled.
public enum OverlongExamples: String, Codable, Sendable, CaseIterable {
    /// Left out, and counted.
    case drop
    /// Cut to the maximum length (TRL's `truncation_mode="keep_start"`); those left with no
    /// learned token are left out.
    case truncate
}

/// Which tokens of an example the loss learns.
public enum LearnedTokens: String, Codable, Sendable, CaseIterable {
    /// The completion of prompt-completion data, the assistant's turns of conversations, and
    /// every token of plain text.
    case completion
    /// Every token.
    case all
}

/// Turns a `FineTuningDataset` into `SupervisedSequence`s as TRL's `SFTTrainer` tokenizes:
///
/// - plain text: the text with EOS appended when it does not end with it, every token learned;
/// - plain prompt-completion: prompt and prompt + completion (EOS appended to the completion when
///   missing) tokenized apart; the completion is what follows the longest common prefix of the two;
/// - conversational prompt-completion: the same with the chat template, the prompt rendered with
///   the generation prompt;
/// - conversations (`messages`): the chat template's rendering, learning the assistant's turns.
///
/// The assistant's turns are found without `{% generation %}` markers (SmolLM2's template has
/// none): for each assistant message k, the conversation up to it is rendered with the
/// generation prompt (its turn starts where that prefix's tokens end) and up to and including it
/// without (its turn ends there, less trailing whitespace tokens, such as the newline after
/// `<|im_end|>` that the template writes between turns). Both renderings must be prefixes of the
/// whole conversation's; a template for which they are not is an error naming the example.
///
/// With `fim`, plain text documents go through the fill-in-the-middle transformation (numbered by
/// their line), EOS after the middle.
public struct SupervisedTokenizer {
    public let prompting: Prompting
    public var learned: LearnedTokens = .completion
    public var fim: FIMTransform?

    public init(prompting: Prompting, learned: LearnedTokens = .completion, fim: FIMTransform? = nil) {
        self.prompting = prompting
        self.learned = learned
        self.fim = fim
    }

    /// Why examples were left out, with counts.
    public struct Skipped: Sendable, Equatable, CustomStringConvertible {
        public var emptyAssistantTurn = 0
        public var emptyCompletion = 0
        public var tooLong = 0
        public var nothingLearned = 0
        /// Preference pairs whose chosen and rejected answers are the same tokens.
        public var identicalAnswers = 0
        /// GRPO prompts with no tokens.
        public var emptyPrompt = 0
        public init() {}
        public var total: Int { emptyAssistantTurn + emptyCompletion + tooLong + nothingLearned + identicalAnswers + emptyPrompt }
        public var description: String {
            [(emptyAssistantTurn, "with an empty assistant turn"), (emptyCompletion, "with an empty completion"),
             (tooLong, "longer than the maximum length"), (nothingLearned, "with no learned token"),
             (identicalAnswers, "with chosen equal to rejected"), (emptyPrompt, "with an empty prompt")]
                .filter { $0.0 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
        }
    }

    /// The sequences of the examples that are kept, in order, and why the others were left out.
    public func sequences(_ data: FineTuningDataset, maximumLength: Int, overlong: OverlongExamples = .drop) throws
        -> (sequences: [SupervisedSequence], lines: [Int], skipped: Skipped) {
        guard data.format == .languageModeling || data.format == .promptCompletion else {
            throw TrainingError("\(data.path): supervised fine-tuning reads language-modelling or prompt-completion data; this file is \(data.format.rawValue)")
        }
        var out: [SupervisedSequence] = [], lines: [Int] = [], skipped = Skipped()
        for example in data.examples {
            func fail(_ message: String) -> TrainingError { TrainingError("\(data.path):\(example.line): \(message)") }
            guard var sequence = try sequence(example, fail: fail, skipped: &skipped) else { continue }
            if sequence.count > maximumLength {
                guard overlong == .truncate else { skipped.tooLong += 1; continue }
                sequence.ids.removeLast(sequence.count - maximumLength)
                sequence.learned.removeLast(sequence.learned.count - maximumLength)
            }
            guard sequence.scoredCount > 0 else { skipped.nothingLearned += 1; continue }
            out.append(sequence)
            lines.append(example.line)
        }
        return (out, lines, skipped)
    }

    /// nil when the example is left out (counted in `skipped`).
    func sequence(_ example: FineTuningDataset.Example, fail: (String) -> TrainingError, skipped: inout Skipped) throws -> SupervisedSequence? {
        let all = learned == .all
        func render(_ messages: [JinjaValue], generationPrompt: Bool) throws -> [Int32] {
            do {
                let text = try prompting.chatFormat.prompt(messages: .list(messages), tools: example.tools, addGenerationPrompt: generationPrompt)
                return prompting.tokens(text).map(Int32.init)
            } catch let error as JinjaError {
                throw fail("the chat template cannot render this example: \(error.message)")
            }
        }
        let eos = prompting.chatFormat.eosToken
        func withEOS(_ text: String) -> String {
            guard let eos, !text.hasSuffix(eos) else { return text }
            return text + eos
        }
        func plain(_ text: String) -> [Int32] { prompting.tokens(text).map(Int32.init) }
        switch (example.prompt, example.completion) {
        case (.text(let text)?, nil):
            if let fim, let (ids, header) = fillInTheMiddle(text, document: example.line, fim, eos: eos) {
                return SupervisedSequence(ids: ids, learned: ids.indices.map { $0 >= header })
            }
            let ids = plain(withEOS(text))
            return SupervisedSequence(ids: ids, learned: Array(repeating: true, count: ids.count))
        case (.text(let prompt)?, .text(let completion)?):
            guard !completion.isEmpty else { skipped.emptyCompletion += 1; return nil }
            let head = plain(prompt), ids = plain(prompt + withEOS(completion))
            let start = all ? 0 : commonPrefixLength(head, ids)
            return SupervisedSequence(ids: ids, learned: (0..<ids.count).map { $0 >= start })
        case (.messages(let prompt)?, .messages(let completion)?):
            guard completion.contains(where: { !isEmptyTurn($0) }) else { skipped.emptyCompletion += 1; return nil }
            let head = try render(prompt, generationPrompt: true), ids = try render(prompt + completion, generationPrompt: false)
            let start = all ? 0 : commonPrefixLength(head, ids)
            return SupervisedSequence(ids: ids, learned: (0..<ids.count).map { $0 >= start })
        case (.messages(let messages)?, nil):
            let ids = try render(messages, generationPrompt: false)
            if all { return SupervisedSequence(ids: ids, learned: Array(repeating: true, count: ids.count)) }
            var learned = [Bool](repeating: false, count: ids.count)
            for (k, message) in messages.enumerated() where message.string("role") == "assistant" {
                if isEmptyTurn(message) { skipped.emptyAssistantTurn += 1; return nil }
                let before = try render(Array(messages[..<k]), generationPrompt: true)
                let through = try render(Array(messages[...k]), generationPrompt: false)
                guard ids.starts(with: before), ids.starts(with: through), before.count <= through.count else {
                    throw fail("the chat template does not render this conversation as a sequence of its prefixes, so the assistant's turn \(k + 1) cannot be found")
                }
                var end = through.count
                while end > before.count, isWhitespace(ids[end - 1]) { end -= 1 }
                for i in before.count..<end { learned[i] = true }
            }
            guard learned.contains(true) else { skipped.nothingLearned += 1; return nil }
            return SupervisedSequence(ids: ids, learned: learned)
        default:
            throw fail("plain text and messages are mixed in one example")
        }
    }

    /// The FIM-transformed tokens of a document (nil when it stays whole), laid out as an infill
    /// prompt is: the context header (not learned; its length is returned with the ids), BOS when
    /// the model wants one, the transformed pieces, then EOS.
    private func fillInTheMiddle(_ text: String, document: Int, _ fim: FIMTransform, eos: String?) -> (ids: [Int32], header: Int)? {
        var body = text
        if let eos, body.hasSuffix(eos) { body.removeLast(eos.count) }
        let tokenizer = prompting.tokenizer
        let encode = { (text: String) in tokenizer.encode(text, parseSpecial: true) }
        guard var ids = fim.apply(body, document: document, encode: encode) else { return nil }
        if prompting.addBOS, let bos = tokenizer.bosTokenID { ids.insert(bos, at: 0) }
        if let eos { ids += encode(eos) }
        let header = fim.tokens.contextHeader(encode: { tokenizer.encode($0, parseSpecial: false) })
        return ((header + ids).map(Int32.init), header.count)
    }

    private func isEmptyTurn(_ message: JinjaValue) -> Bool {
        guard case .dict(let d) = message, d["tool_calls"] == nil else { return false }
        switch d["content"] {
        case .string(let s)?: return s.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
        case .list(let l)?: return l.isEmpty
        default: return true
        }
    }

    private func isWhitespace(_ id: Int32) -> Bool {
        let text = prompting.tokenizer.decode([Int(id)])
        return !text.isEmpty && text.allSatisfy(\.isWhitespace)
    }
}

func commonPrefixLength(_ a: [Int32], _ b: [Int32]) -> Int {
    var n = 0
    while n < a.count, n < b.count, a[n] == b[n] { n += 1 }
    return n
}

/// Best-fit-decreasing packing as TRL's `pack_dataset(strategy="bfd")` does it: sequences (by
/// length, longest first; equal lengths in their order) each go into the open bin with the least
/// room that still holds them (of equally full bins, the one filled first), or a new bin of
/// `capacity`. Returns the bins in the order they were opened, each the indices of its
/// sequences in the order they went in. Lengths must be from 1 to `capacity`.
public func packBestFitDecreasing(lengths: [Int], capacity: Int) -> [[Int]] {
    precondition(capacity >= 1 && lengths.allSatisfy { (1...capacity).contains($0) }, "lengths must be from 1 to the capacity")
    let order = lengths.indices.sorted { lengths[$0] != lengths[$1] ? lengths[$0] > lengths[$1] : $0 < $1 }
    var bins: [[Int]] = []
    // The open bins with r tokens of room, first filled first (room 0 is never searched).
    var byRoom = [[Int]](repeating: [], count: capacity + 1), heads = [Int](repeating: 0, count: capacity + 1)
    for i in order {
        let length = lengths[i]
        var room = length
        while room < capacity, heads[room] == byRoom[room].count { room += 1 }
        let bin: Int
        if room < capacity {
            bin = byRoom[room][heads[room]]
            heads[room] += 1
        } else {
            bin = bins.count
            bins.append([])
            room = capacity
        }
        bins[bin].append(i)
        byRoom[room - length].append(bin)
    }
    return bins
}
