/// Finds stop strings in generated text, including ones that span tokens, and holds back text that
/// might still turn into one. Only the held-back bytes are kept: released text can never be part of
/// a later match, because everything that could start one is held.
public struct StopMatcher {
    private let stops: [[UInt8]]
    private var pending: [UInt8] = []

    public init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty }.map { Array($0.utf8) } }

    /// Adds decoded text; returns the text now safe to release and whether a stop string ended it.
    public mutating func append(_ piece: String) -> (release: String, stopped: Bool) {
        pending += piece.utf8
        if stops.isEmpty { return (flush(), false) }
        var earliest: Int?
        for s in stops where s.count <= pending.count {
            for i in 0...(pending.count - s.count) where pending[i] == s[0] && pending[i..<i + s.count].elementsEqual(s) {
                earliest = min(earliest ?? i, i)
                break
            }
        }
        if let earliest {
            defer { pending = [] }
            return (String(decoding: pending[..<earliest], as: UTF8.self), true)
        }
        // Hold back the longest suffix that is a prefix of a stop string, in whole characters.
        var hold = 0
        for s in stops {
            for k in stride(from: min(s.count - 1, pending.count), to: hold, by: -1)
            where pending[(pending.count - k)...].elementsEqual(s[..<k]) {
                hold = k
                break
            }
        }
        var end = pending.count - hold
        while end > 0, end < pending.count, pending[end] & 0xC0 == 0x80 { end -= 1 }
        defer { pending.removeFirst(end) }
        return (String(decoding: pending[..<end], as: UTF8.self), false)
    }

    /// Releases whatever was held back (generation ended for another reason).
    public mutating func flush() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }
}
