// ember-mpi-check: every communicator operation with known answers, on the ranks mpirun starts
// (or on one process without it). Prints one line per rank and exits non-zero when any check fails.
//
//     mpirun -np 2 ember-mpi-check                      # this machine
//     mpirun --hostfile hosts -np 64 ember-mpi-check    # a cluster
import EmberDistributed
import Foundation

if CommandLine.arguments.dropFirst().contains(where: { $0 == "-h" || $0 == "--help" }) {
    print("""
    USAGE: mpirun -np N ember-mpi-check [--order-mismatch]

    Runs every collective Ember's parallel training uses (all-reduce sum/max/min in f32, f64 and
    Int64, reduce-scatter and all-gather with uneven parts, broadcast, send/receive around a ring,
    sub-groups, barrier) with rank-dependent values whose answers are known exactly, and checks the
    traffic each rank counted. Without mpirun it checks the single-process communicator.

    --order-mismatch: makes the ranks call collectives of different sizes under the collective
    order check (`ember pretrain --check-collective-order`) and succeeds when every rank reports it.
    """)
    exit(0)
}
do {
    let world = try worldCommunicator()
    if CommandLine.arguments.contains("--order-mismatch") {
        let checked = OrderCheckedCommunicator(world)
        var same = [Float](repeating: 1, count: 8)
        try checked.allReduce(&same, count: 8, .sum)  // the same call on every rank: passes
        var different = [Float](repeating: 1, count: world.rank == 0 ? 3 : 4)
        do {
            try checked.allReduce(&different, count: different.count, .sum)
            print("rank \(world.rank) of \(world.size): the mismatch was NOT caught")
            exit(1)
        } catch {
            print("rank \(world.rank) of \(world.size): caught: \(error)")
            exit(0)
        }
    }
    let (failures, checked) = try CollectiveCheck.run(world)
    let kind = world is MPICommunicator ? "Open MPI" : "single process"
    if failures.isEmpty {
        print("rank \(world.rank) of \(world.size) (\(kind)): \(checked.count) checks passed")
    } else {
        for failure in failures { print("FAILED \(failure)") }
        exit(1)
    }
} catch {
    FileHandle.standardError.write("ember-mpi-check: \(error)\n".data(using: .utf8)!)
    exit(1)
}
