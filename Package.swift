// swift-tools-version: 6.0
import PackageDescription

// Numeric targets are compiled for AVX2/FMA (x86-64 from 2013 on); the kernels rely on it. Only the
// kernels (EmberTensor) drop Swift's runtime checks (-Ounchecked); every other target keeps its
// preconditions and bounds checks in the binary users and tests run.
let numericFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell", "-wmo"])]
let kernelFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell", "-Ounchecked", "-wmo"])]

let package = Package(
    name: "Ember",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "ember", targets: ["ember"]),
        .executable(name: "ember-mpi-check", targets: ["ember-mpi-check"]),
        .library(name: "EmberTensor", targets: ["EmberTensor"]),
        .library(name: "EmberTokenizers", targets: ["EmberTokenizers"]),
        .library(name: "EmberFormats", targets: ["EmberFormats"]),
        .library(name: "EmberModels", targets: ["EmberModels"]),
        .library(name: "EmberInference", targets: ["EmberInference"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // The HTTP parts that a connection-level handler (limits, slow clients) sees; already under Hummingbird.
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        // openapi.yaml, the API's description, is served as JSON at /openapi.json.
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "EmberTensor", dependencies: ["CBLAS", "CKernels"], swiftSettings: kernelFlags),
        .target(name: "EmberTokenizers"),
        .target(name: "EmberFormats", dependencies: ["EmberTensor"], swiftSettings: numericFlags),
        .target(name: "EmberNN", dependencies: ["EmberTensor"], swiftSettings: numericFlags),
        .target(name: "EmberModels", dependencies: ["EmberFormats", "EmberTokenizers"], swiftSettings: numericFlags),
        .target(name: "EmberDistributed", dependencies: ["CMPI"], swiftSettings: numericFlags),
        .target(name: "EmberTraining", dependencies: ["EmberModels", "EmberNN", "EmberDistributed", "EmberInference"], swiftSettings: numericFlags),
        .target(name: "EmberInference", dependencies: ["EmberModels"], swiftSettings: numericFlags),
        .target(name: "EmberEvaluation", dependencies: ["EmberInference"], swiftSettings: numericFlags),
        .target(name: "EmberServer", dependencies: ["EmberInference", .product(name: "Hummingbird", package: "hummingbird"),
                                                  .product(name: "NIOHTTPTypes", package: "swift-nio-extras"), "Yams"],
                resources: [.copy("openapi.yaml")]),
        .executableTarget(name: "ember", dependencies: [
            "EmberModels", "EmberServer", "EmberTraining", "EmberEvaluation", .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "ember-mpi-check", dependencies: ["EmberDistributed"]),
        .testTarget(name: "EmberTensorTests", dependencies: ["EmberTensor", "CBLAS"], path: "Tests/EmberTensorTests"),
        .testTarget(name: "EmberFormatsTests", dependencies: ["EmberFormats"], path: "Tests/EmberFormatsTests"),
        .testTarget(name: "EmberTokenizersTests", dependencies: ["EmberTokenizers", "EmberFormats", "EmberModels"], path: "Tests/EmberTokenizersTests"),
        .testTarget(name: "EmberModelsTests", dependencies: ["EmberModels"], path: "Tests/EmberModelsTests"),
        .testTarget(name: "EmberInferenceTests", dependencies: ["EmberInference"], path: "Tests/EmberInferenceTests"),
        .testTarget(name: "EmberTrainingTests", dependencies: ["EmberNN", "EmberModels", "EmberFormats", "EmberTokenizers", "EmberTraining"], path: "Tests/EmberTrainingTests"),
        .testTarget(name: "EmberEvaluationTests", dependencies: ["EmberEvaluation", "EmberModels"], path: "Tests/EmberEvaluationTests"),
        .testTarget(name: "EmberDistributedTests", dependencies: ["EmberDistributed"], path: "Tests/EmberDistributedTests"),
    ]
)

// Fuzz harnesses (Fuzz/), one executable per reader, built only for `make fuzz`: EMBER_FUZZ=1 with
// `-sanitize=fuzzer,address` (scripts/fuzz.sh). libFuzzer supplies the entry point, so the harnesses
// are parsed as libraries.
if Context.environment["EMBER_FUZZ"] != nil {
    package.dependencies += [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ]
    let harnesses: [(name: String, dependencies: [Target.Dependency])] = [
        ("gguf", ["EmberModels"]), ("safetensors", ["EmberModels"]), ("tokenizer-json", ["EmberTokenizers"]),
        ("sentencepiece", ["EmberTokenizers"]), ("jinja", ["EmberTokenizers"]), ("jsonl", ["EmberTraining", "EmberEvaluation"]),
        ("adapter", ["EmberModels"]), ("checkpoint", ["EmberTraining"]), ("dequantize", ["EmberTensor"]),
        ("requests", ["EmberServer", .product(name: "Hummingbird", package: "hummingbird"),
                      .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "Logging", package: "swift-log")]),
    ]
    package.targets.append(.target(name: "FuzzSupport", dependencies: ["EmberTokenizers", "EmberTensor"], path: "Fuzz/Support"))
    for harness in harnesses {
        package.products.append(.executable(name: "fuzz-\(harness.name)", targets: ["fuzz-\(harness.name)"]))
        package.targets.append(.executableTarget(name: "fuzz-\(harness.name)", dependencies: ["FuzzSupport"] + harness.dependencies,
                                                 path: "Fuzz/\(harness.name)", swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
    }
}
