import CBLAS
import EmberTensor
import Foundation
import Testing

/// The OpenBLAS core Ember runs: chosen from the CPU's features when OpenBLAS picked a weaker one,
/// never one the CPU cannot run, and a user's OPENBLAS_CORETYPE kept.
@Suite struct BLASCoreTests {
    @Test func decisions() {
        // Debian's OpenBLAS 0.3.21 on a Xeon it does not know (family 6, model 207): Prescott.
        #expect(BLASCore.decide(cpuLevel: 4, detected: "Prescott", userSetting: nil) == "Cooperlake")
        #expect(BLASCore.decide(cpuLevel: 3, detected: "Prescott", userSetting: nil) == "SkylakeX")
        #expect(BLASCore.decide(cpuLevel: 2, detected: "Nehalem", userSetting: nil) == "Haswell")
        // What OpenBLAS chose is kept when it is as good as the features allow (or better, or unknown).
        #expect(BLASCore.decide(cpuLevel: 4, detected: "Cooperlake", userSetting: nil) == nil)
        #expect(BLASCore.decide(cpuLevel: 2, detected: "Zen", userSetting: nil) == nil)
        #expect(BLASCore.decide(cpuLevel: 3, detected: "SapphireRapids", userSetting: nil) == nil)
        #expect(BLASCore.decide(cpuLevel: 4, detected: "SomeFutureCore", userSetting: nil) == nil)
        // Never a core above the CPU's level; a CPU without AVX keeps the old kernels.
        #expect(BLASCore.decide(cpuLevel: 0, detected: "Prescott", userSetting: nil) == nil)
        // The user's choice stands.
        #expect(BLASCore.decide(cpuLevel: 4, detected: "Prescott", userSetting: "Haswell") == nil)
    }

    @Test func theCoreInUseIsTheBestThisCPURuns() {
        let level = Int(ember_blas_cpu_level())
        print("OpenBLAS core: \(BLASCore.summary); CPU level \(level)")
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"].map({ !$0.isEmpty }) ?? false {
            #expect(BLASCore.reason.hasPrefix("set by OPENBLAS_CORETYPE"))
        } else if let have = BLASCore.level(ofCore: BLASCore.name) {
            #expect(have >= level, "OpenBLAS runs \(BLASCore.name) although this CPU allows level \(level)")
        }
    }

    /// Switching the core in place works and computes the same product (in a child process, so
    /// that no other test's SGEMM sees the switch).
    @Test func switchingTheCoreInPlace() async {
        await #expect(processExitsWith: .success) {
            let n = 64
            let a = (0..<n * n).map { Float($0 % 7) * 0.5 }, b = (0..<n * n).map { Float($0 % 5) * 0.25 }
            func product() -> [Float] {
                var c = [Float](repeating: 0, count: n * n)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1, a, Int32(n), b, Int32(n), 0, &c, Int32(n))
                return c
            }
            let before = product()
            guard BLASCore.switchCore(to: "Haswell") || Int(ember_blas_cpu_level()) < 2 else { exit(1) }
            exit(product() == before ? 0 : 2)  // small integers: exact in any kernel
        }
    }
}
