import CMPI
import Foundation

/// Ranks of an Open MPI job (started by `mpirun`). `world()` initialises MPI once per process
/// (thread level MULTIPLE: a communication thread may call it while the main thread computes)
/// and finalises it at exit; errors come back as `CommunicationError`s naming the call and its
/// sequence number rather than aborting inside MPI.
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    let handle: MPI_Comm
    private let lock = NSLock()
    private var counted = Traffic()

    init(handle: MPI_Comm) {
        self.handle = handle
        var r: Int32 = 0, n: Int32 = 0
        MPI_Comm_rank(handle, &r)
        MPI_Comm_size(handle, &n)
        rank = Int(r)
        size = Int(n)
        MPI_Comm_set_errhandler(handle, ember_mpi_errors_return())
    }

    /// Whether this process was started by mpirun (Open MPI's or PMIx's environment is set).
    public static var launchedByMPI: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["OMPI_COMM_WORLD_SIZE"] != nil || environment["PMIX_RANK"] != nil
    }

    nonisolated(unsafe) private static var worldCommunicator: MPICommunicator?
    private static let initialisation = NSLock()

    /// All ranks of the job; initialises MPI on first use.
    public static func world() throws -> MPICommunicator {
        try initialisation.withLock {
            if let worldCommunicator { return worldCommunicator }
            var provided: Int32 = 0
            let rc = ember_mpi_init(ember_mpi_thread_multiple(), &provided)
            guard rc == ember_mpi_success() else { throw CommunicationError("MPI_Init_thread failed: \(errorText(rc))") }
            guard provided == ember_mpi_thread_multiple() else {
                throw CommunicationError("this Open MPI gives thread level \(provided), not MPI_THREAD_MULTIPLE, which overlapping communication needs")
            }
            atexit {
                var finalized: Int32 = 0
                MPI_Finalized(&finalized)
                if finalized == 0 { MPI_Finalize() }
            }
            let world = MPICommunicator(handle: ember_mpi_comm_world())
            worldCommunicator = world
            return world
        }
    }

    static func errorText(_ code: Int32) -> String {
        var text = [CChar](repeating: 0, count: Int(ember_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        MPI_Error_string(code, &text, &length)
        return String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var traffic: Traffic { lock.withLock { counted } }

    /// Seconds any MPI call may wait before the job is ended with a message naming the call
    /// (0, the default: no limit).
    public static var collectiveTimeout: Double {
        get { CollectiveWatchdog.shared.limit }
        set { CollectiveWatchdog.shared.limit = newValue }
    }

    /// Runs one MPI call, counts it, and turns a failure into an error naming the call.
    private func call(_ name: String, _ update: (inout Traffic) -> Void, _ body: () -> Int32) throws {
        let sequence = lock.withLock {
            update(&counted)
            counted.calls += 1
            return counted.calls
        }
        let watched = CollectiveWatchdog.shared.begin("rank \(rank) of \(size): \(name) (call \(sequence))")
        let rc = body()
        CollectiveWatchdog.shared.end(watched)
        guard rc == ember_mpi_success() else {
            throw CommunicationError("rank \(rank) of \(size): \(name) (call \(sequence)) failed: \(Self.errorText(rc))")
        }
    }

    private static func datatype(_ kind: ScalarKind) -> MPI_Datatype {
        switch kind {
        case .float: ember_mpi_float()
        case .double: ember_mpi_double()
        case .int64: ember_mpi_int64()
        }
    }

    public func split(color: Int, key: Int) throws -> any Communicator {
        var group: MPI_Comm? = nil
        try call("MPI_Comm_split", { _ in }) { MPI_Comm_split(handle, Int32(color), Int32(key), &group) }
        guard let group else { throw CommunicationError("MPI_Comm_split gave no communicator") }
        return MPICommunicator(handle: group)
    }

    public func allReduce<T: CommunicationScalar>(_ buffer: UnsafeMutablePointer<T>, count: Int, _ operation: ReduceOperation) throws {
        let op = switch operation {
        case .sum: ember_mpi_sum()
        case .max: ember_mpi_max()
        case .min: ember_mpi_min()
        }
        // MPI counts are 32-bit: large buffers go in pieces.
        var done = 0
        repeat {
            let n = min(count - done, Int(Int32.max))
            try call("MPI_Allreduce of \(n) values", { $0.allReduce += n * T.kind.bytes }) {
                MPI_Allreduce(ember_mpi_in_place(), buffer + done, Int32(n), Self.datatype(T.kind), op, handle)
            }
            done += n
        } while done < count
    }

    public func reduceScatter(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        try check(counts, "reduce-scatter")
        let counts32 = try counts.map { c -> Int32 in
            guard c <= Int32.max else { throw CommunicationError("reduce-scatter: a part of \(c) values is over MPI's limit") }
            return Int32(c)
        }
        try call("MPI_Reduce_scatter of \(counts.reduce(0, +)) values", { $0.reduceScatter += counts.reduce(0, +) * 4 }) {
            MPI_Reduce_scatter(input, output, counts32, ember_mpi_float(), ember_mpi_sum(), handle)
        }
    }

    public func allGather(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        try check(counts, "all-gather")
        var displacements: [Int32] = [], total = 0
        for c in counts {
            displacements.append(Int32(total))
            total += c
        }
        guard total <= Int32.max else { throw CommunicationError("all-gather of \(total) values is over MPI's limit") }
        let counts32 = counts.map { Int32($0) }
        // A rank's part already in its place in the output is gathered in place (MPI forbids overlap otherwise).
        let inPlace = input == UnsafePointer(output + Int(displacements[rank]))
        let source: UnsafeRawPointer? = inPlace ? UnsafeRawPointer(ember_mpi_in_place()) : UnsafeRawPointer(input)
        try call("MPI_Allgatherv of \(total) values", { $0.allGather += total * 4 }) {
            MPI_Allgatherv(source, counts32[rank], ember_mpi_float(), output, counts32, displacements, ember_mpi_float(), handle)
        }
    }

    public func broadcast(_ buffer: UnsafeMutableRawPointer, bytes: Int, root: Int) throws {
        guard bytes <= Int32.max else { throw CommunicationError("broadcast of \(bytes) bytes is over MPI's limit") }
        try call("MPI_Bcast of \(bytes) bytes from rank \(root)", { $0.broadcast += bytes }) {
            MPI_Bcast(buffer, Int32(bytes), ember_mpi_byte(), Int32(root), handle)
        }
    }

    public func send(_ buffer: UnsafePointer<Float>, count: Int, to destination: Int, tag: Int) throws {
        try call("MPI_Send of \(count) values to rank \(destination)", { $0.sent += count * 4 }) {
            MPI_Send(buffer, Int32(count), ember_mpi_float(), Int32(destination), Int32(tag), handle)
        }
    }

    public func receive(_ buffer: UnsafeMutablePointer<Float>, count: Int, from source: Int, tag: Int) throws {
        try call("MPI_Recv of \(count) values from rank \(source)", { $0.received += count * 4 }) {
            MPI_Recv(buffer, Int32(count), ember_mpi_float(), Int32(source), Int32(tag), handle, ember_mpi_status_ignore())
        }
    }

    public func barrier() throws {
        try call("MPI_Barrier", { _ in }) { MPI_Barrier(handle) }
    }

    public func abort(code: Int32) -> Never {
        MPI_Abort(handle, code)
        exit(code)
    }
}

/// The job's communicator: all of mpirun's ranks when started by it, otherwise a single process.
public func worldCommunicator() throws -> any Communicator {
    MPICommunicator.launchedByMPI ? try MPICommunicator.world() : LocalCommunicator()
}
