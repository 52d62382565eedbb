import Foundation

/// Known-answer checks of every communicator operation, with values that depend on the rank and
/// sizes that do not divide by the group size; every answer is a small integer, exact in f32, so
/// the checks compare for equality. Run by the tests on one process and by `ember-mpi-check` under
/// mpirun (which is also how a cluster's MPI setup can be checked).
public enum CollectiveCheck {
    /// Runs every check on `communicator`; returns what failed (empty when all passed) and what was checked.
    public static func run(_ c: any Communicator) throws -> (failures: [String], checked: [String]) {
        var failures: [String] = [], checked: [String] = []
        let n = c.size, r = c.rank
        let rankSum = Float(n * (n + 1) / 2)
        func expect(_ ok: Bool, _ what: String) {
            checked.append(what)
            if !ok { failures.append("rank \(r) of \(n): \(what)") }
        }
        let before = c.traffic

        // All-reduce: sum, max, min of f32; sums of f64 and Int64.
        let count = 1001
        var values = (0..<count).map { Float(r + 1) * Float($0 % 7 + 1) }
        try c.allReduce(&values, count: count, .sum)
        expect(values.indices.allSatisfy { values[$0] == rankSum * Float($0 % 7 + 1) }, "all-reduce sum of \(count) f32")
        values = (0..<count).map { Float(r * 1000 + $0 % 13) }
        try c.allReduce(&values, count: count, .max)
        expect(values.indices.allSatisfy { values[$0] == Float((n - 1) * 1000 + $0 % 13) }, "all-reduce max")
        values = (0..<count).map { Float(r * 1000 + $0 % 13) }
        try c.allReduce(&values, count: count, .min)
        expect(values.indices.allSatisfy { values[$0] == Float($0 % 13) }, "all-reduce min")
        var wide = (0..<3).map { Double(r + 1) * 1e12 + Double($0) }
        try c.allReduce(&wide, count: 3, .sum)
        expect(wide.indices.allSatisfy { wide[$0] == Double(rankSum) * 1e12 + Double(n * $0) }, "all-reduce sum of f64")
        var integers: [Int64] = [Int64(r) << 40, Int64(r)]
        try c.allReduce(&integers, count: 2, .sum)
        expect(integers == [Int64(n * (n - 1) / 2) << 40, Int64(n * (n - 1) / 2)], "all-reduce sum of Int64")

        // Reduce-scatter with uneven parts.
        let parts = shardCounts(count, parts: n)
        let offset = parts[..<r].reduce(0, +)
        let input = (0..<count).map { Float(r + 1) * Float($0 % 5 + 1) }
        var part = [Float](repeating: -1, count: parts[r])
        try c.reduceScatter(input, into: &part, counts: parts)
        expect(part.indices.allSatisfy { part[$0] == rankSum * Float((offset + $0) % 5 + 1) }, "reduce-scatter of \(count) values into parts \(parts)")

        // All-gather of parts of different sizes (rank q gives q + 2 values).
        let gatherCounts = (0..<n).map { $0 + 2 }
        let mine = (0..<gatherCounts[r]).map { Float(100 * r + $0) }
        var gathered = [Float](repeating: -1, count: gatherCounts.reduce(0, +))
        try c.allGather(mine, into: &gathered, counts: gatherCounts)
        let expected = (0..<n).flatMap { q in (0..<gatherCounts[q]).map { Float(100 * q + $0) } }
        expect(gathered == expected, "all-gather of parts \(gatherCounts)")

        // Broadcast from the last rank.
        var bytes = [UInt8](repeating: UInt8(r), count: 37)
        if r == n - 1 { bytes = (0..<37).map { UInt8($0 * 3 % 251) } }
        try bytes.withUnsafeMutableBytes { try c.broadcast($0.baseAddress!, bytes: 37, root: n - 1) }
        expect(bytes == (0..<37).map { UInt8($0 * 3 % 251) }, "broadcast of 37 bytes from rank \(n - 1)")

        // Send and receive around a ring (rank q sends q + 5 values to q + 1).
        let next = (r + 1) % n, previous = (r + n - 1) % n
        let outgoing = (0..<r + 5).map { Float(10 * r + $0) }
        var incoming = [Float](repeating: -1, count: previous + 5)
        if r % 2 == 0 {
            try c.send(outgoing, count: outgoing.count, to: next, tag: 7)
            try c.receive(&incoming, count: incoming.count, from: previous, tag: 7)
        } else {
            try c.receive(&incoming, count: incoming.count, from: previous, tag: 7)
            try c.send(outgoing, count: outgoing.count, to: next, tag: 7)
        }
        expect(incoming == (0..<previous + 5).map { Float(10 * previous + $0) }, "send and receive around the ring")

        // Sub-groups: even and odd ranks, ordered by descending rank.
        let group = try c.split(color: r % 2, key: -r)
        let members = stride(from: r % 2, to: n, by: 2).reversed().map { $0 }
        expect(group.size == members.count && group.rank == members.firstIndex(of: r), "split into even and odd ranks")
        var memberSum = Float(r)
        try group.allReduce(&memberSum, count: 1, .sum)
        expect(memberSum == Float(members.reduce(0, +)), "all-reduce within the sub-group")
        try c.barrier()

        // Traffic: what the calls above named, byte for byte.
        let t = c.traffic
        let allReduced = 3 * count * 4 + 3 * 8 + 2 * 8
        expect(t.allReduce - before.allReduce == allReduced, "traffic: \(t.allReduce - before.allReduce) bytes all-reduced, \(allReduced) named")
        expect(t.reduceScatter - before.reduceScatter == count * 4 && t.allGather - before.allGather == gatherCounts.reduce(0, +) * 4
               && t.broadcast - before.broadcast == 37 && t.sent - before.sent == outgoing.count * 4, "traffic of the other collectives")
        return (failures, checked)
    }
}
