import EmberTraining
import Foundation
import Testing

/// GRPO's rewards without a model: the final number, a format, and an outside program, with the
/// program's failures (a crash, a hang, garbage, the wrong count) as errors naming them.
@Suite struct RewardFunctionTests {
    @Test func finalNumberAndFormat() throws {
        #expect(VerifiableReward.lastNumber("She has 3 apples, then 1,250 more: $1,253.50 in all.") == 1253.5)
        #expect(VerifiableReward.lastNumber("no digits") == nil)
        #expect(VerifiableReward.lastNumber("the answer is -7") == -7)
        let item = { (completion: String) in RewardItem(prompt: "q", completion: completion, answer: "#### 1,253") }
        #expect(try VerifiableReward.finalNumber.reward(item("so 1200 + 53 = 1253")) == 1)
        #expect(try VerifiableReward.finalNumber.reward(item("1253 is wrong, it is 1254")) == 0)
        #expect(try VerifiableReward.finalNumber.reward(item("I do not know")) == 0)
        #expect(try VerifiableReward.finalNumber.reward(RewardItem(prompt: "q", completion: "4")) == 0)
        let format = VerifiableReward.format(#"<think>.*</think>\s*<answer>.*</answer>"#)
        #expect(try format.reward(item("<think>add\nthem</think> <answer>1253</answer>")) == 1)
        #expect(try format.reward(item("<answer>1253</answer>")) == 0)
        #expect(throws: TrainingError.self) { try VerifiableReward.format("(unclosed").reward(item("x")) }
    }

    static let items = [RewardItem(prompt: "2+2", completion: "4", answer: "4"), RewardItem(prompt: "3+3", completion: "7", answer: "6")]

    /// The error of running `script` as the reward command. Only the hang is meant to meet its
    /// timeout; the others get a wide one, since under ThreadSanitizer on two busy cores the
    /// notice that a program has ended once took more than 20 s to arrive.
    func error(_ script: String, timeout: Double = 300, items: [RewardItem] = Self.items) -> String? {
        do {
            _ = try ExternalReward(command: ["sh", "-c", script], timeout: timeout).rewards(items)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func externalCommandRewards() throws {
        // One number a line for each JSONL item: here, whether the completion equals the answer.
        let script = #"while IFS= read -r line; do case "$line" in *'"completion":"4"'*) echo 1 ;; *) echo 0.25 ;; esac; done"#
        #expect(try ExternalReward(command: ["sh", "-c", script]).rewards(Self.items) == [1, 0.25])
    }

    @Test func externalCommandFailuresAreErrors() throws {
        let crash = error("cat > /dev/null; echo boom >&2; exit 3")
        let start = Date()
        let hang = error("sleep 30", timeout: 1)
        let waited = Date().timeIntervalSince(start)
        let garbage = error("cat > /dev/null; echo 1; echo banana")
        let short = error("cat > /dev/null; echo 1")
        let infinite = error("cat > /dev/null; echo 1; echo inf")
        let missing = error("exec /nonexistent/reward")
        // More input than a pipe holds, to a program that reads none of it: the write fails with
        // EPIPE (never SIGPIPE, which would end this process) and the exit status is the error.
        let long = String(repeating: "x", count: 4096)
        let unread = error("exit 4", items: (0..<64).map { RewardItem(prompt: long, completion: "\($0)") })
        for (name, message) in [("unread input", unread), ("crash", crash), ("hang", hang), ("garbage", garbage), ("too few lines", short), ("infinity", infinite), ("missing program", missing)] {
            print("reward command, \(name): \(message ?? "no error")")
        }
        #expect(crash?.contains("exited with status 3: boom") == true)
        #expect(hang?.contains("did not answer 2 items within 1.0 s") == true && waited < 10)
        #expect(garbage?.contains("line 2 is 'banana'") == true)
        #expect(short?.contains("printed 1 lines for 2 items") == true)
        #expect(infinite?.contains("not a finite number") == true)
        #expect(missing?.contains("exited with status 127") == true)
        #expect(unread?.contains("exited with status 4") == true)
    }
}
