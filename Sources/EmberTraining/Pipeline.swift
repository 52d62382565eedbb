import EmberDistributed
import EmberNN
import EmberTensor
import Foundation

/// Pipeline parallelism: this rank is stage `stage` of `stages`, holding consecutive layers; the
/// micro-batches of a step run through the stages as the 1F1B schedule (PipeDream-Flush, as
/// Megatron runs it): stage r first runs min(P − r − 1, M) forwards (warm-up), then alternates one
/// forward and one backward (steady state), then runs the backwards left (cool-down). A forward
/// receives its input activations from the previous stage and sends its output to the next; a
/// backward receives the gradient of its output from the next stage and sends the gradient of its
/// input back. Receives block; sends go through a thread of their own, so that two neighbours
/// sending to each other at once cannot wait for each other. At most min(P − r, M) micro-batches
/// are in flight on stage r: their activations are what the stage keeps.
final class Pipeline {
    let communicator: any Communicator
    var stage: Int { communicator.rank }
    var stages: Int { communicator.size }
    private let sender = CommunicationThread()

    /// One forward (`backward` false) or backward of micro-batch `micro`, seconds from the step's start.
    struct Event: Equatable {
        var backward: Bool
        var micro: Int
        var start: Double
        var end: Double
    }

    /// The last step's events on this stage, in the order they ran, and the most micro-batches in flight.
    private(set) var trace: [Event] = []
    private(set) var mostInFlight = 0
    /// Seconds the last step's schedule took on this stage.
    private(set) var elapsed = 0.0

    init(communicator: any Communicator) { self.communicator = communicator }

    /// The order of a 1F1B step on stage r of P with M micro-batches: (backward, micro-batch).
    static func schedule(stage r: Int, stages P: Int, microBatches M: Int) -> [(backward: Bool, micro: Int)] {
        let warmup = min(P - r - 1, M)
        var order = (0..<warmup).map { (false, $0) }
        for i in 0..<(M - warmup) { order += [(false, warmup + i), (true, i)] }
        order += (M - warmup..<M).map { (true, $0) }
        return order
    }

    /// The bubble of a 1F1B pipeline whose stages take equal time: (P − 1) / (M + P − 1) of the step.
    static func bubble(stages P: Int, microBatches M: Int) -> Double { Double(P - 1) / Double(M + P - 1) }

    private struct InFlight {
        let tape: Tape
        let input: Variable?
        let output: Variable
    }

    /// Runs one step's micro-batches through this stage; `beforeBackward(k)` is called before the
    /// k-th backward (they run in micro-batch order). Returns the sum of the micro-batches' losses
    /// over their divisors on the last stage, 0 on the others.
    func run(_ parts: [MicroBatch], model: TrainableLlama, recompute: TrainableLlama.Recompute, pool: ThreadPool,
             beforeBackward: (Int) -> Void) throws -> Float {
        let batches = try parts.map { part -> TokenRows in
            guard let tokens = part.tokens else { throw TrainingError("this training objective cannot run in a pipeline (its micro-batches are not rows of tokens)") }
            return tokens
        }
        let start = DispatchTime.now().uptimeNanoseconds
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let first = stage == 0, last = stage == stages - 1
        var inFlight: [Int: InFlight] = [:]
        var loss: Float = 0
        trace = []
        mostInFlight = 0
        for (backward, m) in Self.schedule(stage: stage, stages: stages, microBatches: parts.count) {
            let batch = batches[m]
            var began = now()  // from when the inputs are here: waiting for a neighbour is idle time
            if !backward {
                let tape = Tape(pool: pool)
                let input = first ? nil : try receive(activationsFor: batch, model: model, tag: m)
                began = now()
                let output = model.forward(tape, inputs: first ? batch.inputs : nil, input: input, batch: batch.rows, tokens: batch.length,
                                           positions: batch.positions, recompute: recompute)
                if last {
                    let l = model.loss(tape, logits: output, targets: batch.targets)
                    loss += l.values[0] / parts[m].divisor
                    inFlight[m] = InFlight(tape: tape, input: input, output: l)
                } else {
                    send(output, tag: m)
                    inFlight[m] = InFlight(tape: tape, input: input, output: output)
                }
                mostInFlight = max(mostInFlight, inFlight.count)
            } else {
                let f = inFlight.removeValue(forKey: m)!
                if !last {
                    try communicator.receive(f.output.gradient.pointer, count: f.output.count, from: stage + 1, tag: 1_000_000 + m)
                    began = now()
                }
                beforeBackward(m)
                if last { f.tape.backward(f.output, seed: 1 / parts[m].divisor) } else { f.tape.backward() }
                if let input = f.input { send(input.gradient, count: input.count, tag: 1_000_000 + m, to: stage - 1) }
            }
            trace.append(Event(backward: backward, micro: m, start: began, end: now()))
        }
        try sender.wait()
        elapsed = now()
        return loss
    }

    /// The last step's schedule on every stage (a collective of the pipeline group): each stage's
    /// events, the most micro-batches it had in flight, and the seconds its schedule took.
    func gatherTraces() throws -> [(events: [Event], mostInFlight: Int, elapsed: Double)] {
        let width = 2 + 4 * trace.count
        var mine: [Float] = [Float(mostInFlight), Float(elapsed)]
        for e in trace { mine += [e.backward ? 1 : 0, Float(e.micro), Float(e.start), Float(e.end)] }
        var all = [Float](repeating: 0, count: width * stages)
        try mine.withUnsafeMutableBufferPointer { m in
            try all.withUnsafeMutableBufferPointer { try communicator.allGather(m.baseAddress!, into: $0.baseAddress!, counts: Array(repeating: width, count: stages)) }
        }
        return (0..<stages).map { r in
            let v = all[r * width..<(r + 1) * width].map { $0 }
            let events = stride(from: 2, to: width, by: 4).map { Event(backward: v[$0] == 1, micro: Int(v[$0 + 1]), start: Double(v[$0 + 2]), end: Double(v[$0 + 3])) }
            return (events, Int(v[0]), Double(v[1]))
        }
    }

    /// A forward over `batch` through every stage without recording anything; the loss on the last stage, 0 elsewhere.
    func evaluate(_ batch: TokenRows, model: TrainableLlama, pool: ThreadPool) throws -> Float {
        let tape = Tape(pool: pool, recording: false)
        let input = stage == 0 ? nil : try receive(activationsFor: batch, model: model, tag: 2_000_000)
        let output = model.forward(tape, inputs: stage == 0 ? batch.inputs : nil, input: input, batch: batch.rows, tokens: batch.length, positions: batch.positions)
        if stage == stages - 1 { return model.loss(tape, logits: output, targets: batch.targets).values[0] }
        send(output, tag: 2_000_000)
        try sender.wait()
        return 0
    }

    /// The activations a stage receives for `batch`: the residual stream's rows this rank holds.
    private func receive(activationsFor batch: TokenRows, model: TrainableLlama, tag: Int) throws -> Variable {
        let C = model.configuration.hiddenSize, rows = batch.rows * batch.length
        let held = model.tensor.map { $0.sequenceParallel ? shardCounts(rows, parts: $0.size)[$0.rank] : rows } ?? rows
        let buffer = FloatBuffer(uninitializedCount: max(1, held * C)).prefix(held * C)
        try communicator.receive(buffer.pointer, count: held * C, from: stage - 1, tag: tag)
        return Variable(shape: [held, C], value: buffer, requiresGradient: true)
    }

    private func send(_ v: Variable, tag: Int) { send(v.value, count: v.count, tag: tag, to: stage + 1) }

    private func send(_ buffer: FloatBuffer, count: Int, tag: Int, to destination: Int) {
        sender.submit { [communicator] in try communicator.send(buffer.pointer, count: count, to: destination, tag: tag) }
    }
}
