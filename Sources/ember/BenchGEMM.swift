import ArgumentParser
import EmberTensor
import Foundation

struct BenchGEMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-gemm",
        abstract: "Time the training products in f32 (OpenBLAS SGEMM and Ember's AVX-512F kernel) and in bf16 (AVX-512 BF16), side by side.",
        discussion: """
        For each weight of the small and medium pretraining presets (and a square product that gives \
        each path's peak), times the three products a linear layer makes in a training step over \
        --tokens rows: the forward x · Wᵀ, the input gradient dy · W and the weight gradient dyᵀ · x, \
        each split across the threads as training splits it (one single-threaded call per thread). \
        Reports GFLOP/s of each path and their ratios to SGEMM (median of the repetitions). Without \
        AVX-512F the f32 kernel row is left out; without AVX-512 BF16 the bf16 path is SGEMM over \
        bf16-rounded copies, and says so.
        """)

    @Option(help: "Rows of activations per product (batch × sequence length).")
    var tokens = 2048

    @Option(help: "Threads (one product call each).")
    var threads = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "Timed runs of each case.")
    var repetitions = 5

    @Flag(help: "Only the square product: each path's peak.")
    var peak = false

    func validate() throws {
        guard tokens > 0, (1...1024).contains(threads), repetitions > 0 else {
            throw ValidationError("--tokens and --repetitions must be positive and --threads between 1 and 1024")
        }
    }

    func run() throws {
        ThreadPool.configureShared(threadCount: threads)
        let pool = ThreadPool.shared
        BLASCore.prepare()
        print("bf16 path: \(hasBF16Instructions ? "AVX-512 BF16 (vdpbf16ps)" : "SGEMM over bf16-rounded copies (this CPU has no AVX-512 BF16)"); \(threads) threads, \(tokens) rows")
        let own = hasAVX512F
        print("| weight [out, in] | SGEMM GFLOP/s |\(own ? " AVX-512F f32 GFLOP/s | f32 / SGEMM |" : "") bf16 GFLOP/s | bf16 / SGEMM |")
        print("| --- | ---: |\(own ? " ---: | ---: |" : "") ---: | ---: |")
        let cases: [(String, Int, Int)] = [
            ("small q, o [256, 256]", 256, 256), ("small k, v [128, 256]", 128, 256), ("small gate, up [1024, 256]", 1024, 256),
            ("small down [256, 1024]", 256, 1024), ("small head [4096, 256]", 4096, 256),
            ("medium q, o [512, 512]", 512, 512), ("medium k, v [256, 512]", 256, 512), ("medium gate, up [1536, 512]", 1536, 512),
            ("medium down [512, 1536]", 512, 1536), ("medium head [4096, 512]", 4096, 512), ("square [2048, 2048]", 2048, 2048),
        ]
        let chosen = usesOwnF32Kernel
        defer { usesOwnF32Kernel = chosen }
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        func r(_ x: Double) -> String { String(format: "%.2f", x) }
        for (name, n, k) in peak ? cases.suffix(1) : cases[...] {
            usesOwnF32Kernel = false
            let sgemm = gflops(n: n, k: k, pool: pool, precision: .f32)
            usesOwnF32Kernel = true
            let f32 = own ? gflops(n: n, k: k, pool: pool, precision: .f32) : 0
            let bf16 = gflops(n: n, k: k, pool: pool, precision: .bf16)
            print("| \(name) | \(f(sgemm)) |\(own ? " \(f(f32)) | \(r(f32 / sgemm)) |" : "") \(f(bf16)) | \(r(bf16 / sgemm)) |")
        }
    }

    /// GFLOP/s of the forward, input-gradient and weight-gradient products of a weight [n, k].
    func gflops(n: Int, k: Int, pool: ThreadPool, precision: Precision) -> Double {
        let m = tokens
        let x = FloatBuffer(count: m * k), w = FloatBuffer(count: n * k), y = FloatBuffer(count: m * n)
        let dx = FloatBuffer(count: m * k), dw = FloatBuffer(count: n * k)
        for (i, buffer) in [x, w, y].enumerated() {
            for j in 0..<buffer.count { buffer.pointer[j] = Float((j * 7 + i * 13) % 29) / 29 - 0.5 }
        }
        /// The forward and both gradients, split across the threads by training's own products.
        func step() {
            matmulLarge(x.pointer, w.pointer, y.pointer, m: m, n: n, k: k, precision: precision, pool: pool)
            matmulBackward(dy: y.pointer, x: x.pointer, w: w.pointer, dx: dx.pointer, dw: dw.pointer, m: m, n: n, k: k,
                           precision: precision, pool: pool)
        }
        step()  // warm-up: pages, packing buffers, OpenBLAS's core
        var times: [Double] = []
        for _ in 0..<repetitions {
            let start = DispatchTime.now().uptimeNanoseconds
            step()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return 3 * 2 * Double(m) * Double(n) * Double(k) / times.sorted()[times.count / 2] / 1e9
    }
}
