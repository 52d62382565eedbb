import CBLAS
import Foundation

/// Which OpenBLAS kernels ("core") run the f32 products, and why.
///
/// OpenBLAS picks its core from the CPU model when it loads. A release that predates the CPU does not
/// know the model and falls back to its oldest x86-64 kernels (Debian's 0.3.21 runs SSE3 kernels on
/// recent Xeons, a quarter of the speed). Ember compares the core OpenBLAS chose with the best one
/// the CPU's features allow and, when OpenBLAS chose lower, switches it before the first product
/// through OpenBLAS's own dynamic-architecture entry points. A core is only ever chosen from
/// features the CPU reports, so it can always run; `OPENBLAS_CORETYPE` set by the user is kept.
public enum BLASCore {
    /// The core in use, as OpenBLAS names it (e.g. "Cooperlake").
    public static var name: String { prepare(); return current() }

    /// Why this core runs: "chosen by OpenBLAS", "set by OPENBLAS_CORETYPE", or "chosen by Ember; …".
    public static var reason: String { prepare(); return selection.reason }

    /// One line for progress output: "OpenBLAS core Cooperlake (chosen by OpenBLAS)".
    public static var summary: String { "OpenBLAS core \(name) (\(reason))" }

    /// Chooses the core (once) and makes OpenBLAS single-threaded: Ember splits products over its
    /// own thread pool. Called before every product; costs an atomic load after the first call.
    @inline(__always)
    public static func prepare() { _ = selection }

    /// The level of kernels a core name stands for, on `ember_blas_cpu_level`'s scale; nil for a
    /// name this table does not know.
    public static func level(ofCore name: String) -> Int? {
        switch name.lowercased() {
        case "sapphirerapids", "cooperlake": 4
        case "skylakex": 3
        case "haswell", "zen": 2
        case "sandybridge", "bulldozer", "piledriver", "steamroller", "excavator": 1
        case "prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "nano", "opteron", "opteron_sse3",
             "barcelona", "bobcat", "katmai", "coppermine", "northwood", "banias", "athlon": 0
        default: nil
        }
    }

    /// The core for a CPU of `cpuLevel` whose OpenBLAS chose `detected`: nil keeps OpenBLAS's
    /// choice, otherwise the name to switch to. `userSetting` is OPENBLAS_CORETYPE.
    public static func decide(cpuLevel: Int, detected: String, userSetting: String?) -> String? {
        if let userSetting, !userSetting.isEmpty { return nil }
        // A core this table does not know (a newer OpenBLAS) is trusted.
        guard let have = level(ofCore: detected), have < cpuLevel else { return nil }
        return ["Sandybridge", "Haswell", "SkylakeX", "Cooperlake"][cpuLevel - 1]
    }

    private static func current() -> String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name)
    }

    private typealias Entry = @convention(c) () -> Void

    private static let selection: (name: String, reason: String) = {
        defer { openblas_set_num_threads(1) }
        let detected = current()
        let user = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"]
        if let user, !user.isEmpty { return (detected, "set by OPENBLAS_CORETYPE=\(user)") }
        guard let wanted = decide(cpuLevel: Int(ember_blas_cpu_level()), detected: detected, userSetting: user) else {
            return (detected, "chosen by OpenBLAS")
        }
        guard switchCore(to: wanted) else {
            return (detected, "chosen by OpenBLAS; this build cannot switch to \(wanted)")
        }
        return (current(), "chosen by Ember from the CPU's features; OpenBLAS had chosen \(detected)")
    }()

    /// Re-runs OpenBLAS's core selection with OPENBLAS_CORETYPE set to `name` (restoring the
    /// environment afterwards); false when the library has no dynamic architecture or the switch
    /// did not take.
    @discardableResult
    public static func switchCore(to name: String) -> Bool {
        let process = dlopen(nil, RTLD_LAZY)  // the program and the libraries it loaded
        guard let quit = dlsym(process, "gotoblas_dynamic_quit"), let initialise = dlsym(process, "gotoblas_dynamic_init") else {
            return false
        }
        let previous = getenv("OPENBLAS_CORETYPE").map { String(cString: $0) }
        setenv("OPENBLAS_CORETYPE", name, 1)
        unsafeBitCast(quit, to: Entry.self)()
        unsafeBitCast(initialise, to: Entry.self)()
        if let previous { setenv("OPENBLAS_CORETYPE", previous, 1) } else { unsetenv("OPENBLAS_CORETYPE") }
        return current().lowercased() == name.lowercased()
    }
}
