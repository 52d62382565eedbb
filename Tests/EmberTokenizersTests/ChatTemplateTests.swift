import EmberTokenizers
import Foundation
import Testing

/// Chat templates rendered by Ember's Jinja interpreter against Python jinja2 as transformers
/// configures it (fixtures from scripts/fixtures/chat-templates.py): the real templates of
/// SmolLM2, LLaMA-2, LLaMA-3, LLaMA-3.1, Mistral, Qwen2.5 and Gemma, and small templates covering the
/// language constructs one by one. Outputs are compared byte for byte; error cases must fail, and
/// `raise_exception` with the template's own message.
@Suite struct ChatTemplateTests {
    static func fixture(_ name: String) throws -> JinjaDict {
        let text = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/chat-templates/\(name)"), encoding: .utf8)
        guard case .dict(let d) = try JinjaValue(json: text) else { throw JinjaError("\(name) is not a JSON object") }
        return d
    }

    /// The fixed clock of the fixtures (`strftime_now_time`, a naive local time; rendered in UTC here).
    static func clock(_ root: JinjaDict) throws -> Date {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate, .withTime, .withColonSeparatorInTime, .withDashSeparatorInDate]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return try #require(formatter.date(from: root["strftime_now_time"]?.text ?? ""))
    }

    /// Renders every case; returns (equal, total) and records an issue for each difference.
    static func check(_ label: String, template source: String?, cases: [JinjaValue], now: Date) -> (Int, Int) {
        var equal = 0
        for entry in cases {
            guard case .dict(let c) = entry else {
                Issue.record("\(label): a case in the fixture is not an object: \(entry)")
                continue
            }
            let name = c["name"]?.text ?? "?"
            let src = source ?? c["template"]?.text ?? ""
            var variables: [String: JinjaValue] = [:]
            if case .dict(let v)? = c["variables"] { for (k, value) in v.pairs { variables[k] = value } }
            do {
                let output = try ChatTemplate(src).render(variables, now: now, timeZone: TimeZone(identifier: "UTC")!)
                if let expected = c["output"]?.text, c["output"] != nil, case .string = c["output"]! {
                    if output == expected { equal += 1 } else {
                        let at = zip(output, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(output.count, expected.count)
                        Issue.record("\(label) \(name): differs at character \(at): \(String(output.dropFirst(max(0, at - 20)).prefix(60)).debugDescription) vs \(String(expected.dropFirst(max(0, at - 20)).prefix(60)).debugDescription)")
                    }
                } else {
                    Issue.record("\(label) \(name): rendered, but jinja2 raised \(c["error_type"]?.text ?? "?"): \(c["error"]?.text ?? "")")
                }
            } catch let error as JinjaError {
                guard let expected = c["error"]?.text, c["error"] != nil else {
                    Issue.record("\(label) \(name): \(error.message)")
                    continue
                }
                if c["error_type"]?.text == "TemplateError" {
                    // raise_exception: the template's own message.
                    if error.raisedByTemplate && error.message == expected { equal += 1 } else {
                        Issue.record("\(label) \(name): raised \(error.message.debugDescription), jinja2 \(expected.debugDescription)")
                    }
                } else {
                    equal += 1
                    print("  \(label) \(name): \(error.message)  (jinja2: \(expected))")
                }
            } catch {
                Issue.record("\(label) \(name): \(error)")
            }
        }
        print("\(label): \(equal)/\(cases.count) cases equal")
        return (equal, cases.count)
    }

    @Test func realTemplatesRenderLikeJinja2() throws {
        let root = try Self.fixture("renderings.json")
        guard case .dict(let templates)? = root["templates"] else { throw JinjaError("no templates") }
        let now = try Self.clock(root)
        for (name, entry) in templates.pairs {
            guard case .dict(let t) = entry, case .list(let cases)? = t["cases"] else {
                Issue.record("template \(name): the fixture entry has no list of cases")
                continue
            }
            let source = try String(contentsOfFile: Fixtures.path("Tests/Fixtures/chat-templates/\(t["file"]!.text)"), encoding: .utf8)
            _ = Self.check(name, template: source, cases: cases, now: now)
        }
    }

    @Test func constructsRenderLikeJinja2() throws {
        let root = try Self.fixture("constructs.json")
        guard case .list(let cases)? = root["cases"] else { throw JinjaError("no cases") }
        _ = Self.check("constructs", template: nil, cases: cases, now: try Self.clock(root))
    }

    @Test func errorsNameTheConstruct() throws {
        func message(_ source: String, _ variables: [String: JinjaValue] = [:]) -> String {
            do { _ = try ChatTemplate(source).render(variables); return "rendered" } catch { return "\(error)" }
        }
        #expect(message("{% if true %}x").contains("'if'"))
        #expect(message("{% for x in y %}x").contains("'for'"))
        #expect(message("{{ x | shout }}").contains("no filter named 'shout'"))
        #expect(message("{% include 'other.jinja' %}").contains("unknown tag 'include'"))
        #expect(message("{{ x ").contains("not closed"))
        #expect(message("{{ x is prime }}").contains("no test named 'prime'"))
        #expect(message("{{ 1 + 'a' }}").contains("unsupported operand types"))
        #expect(message("{{ missing.attr }}").contains("'missing' is undefined"))
        #expect(message("{{ " + String(repeating: "(", count: 900) + "1" + String(repeating: ")", count: 900) + " }}").contains("nested too deeply"))
        #expect(message("{{ " + String(repeating: "not ", count: 1000) + "x }}").contains("nested too deeply"))
        #expect(message("{{ " + String(repeating: "-", count: 1000) + "1 }}").contains("nested too deeply"))
        #expect(message("{{ 1" + String(repeating: " + 1", count: 100_000) + " }}").contains("too long"))
    }
}
