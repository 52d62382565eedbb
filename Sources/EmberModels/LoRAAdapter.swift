import EmberFormats
import EmberTensor
import Foundation

/// A linear layer of a LLaMA block that LoRA can adapt, by its Hugging Face module name.
public enum LoRATarget: String, CaseIterable, Codable, Sendable {
    case query = "q_proj", key = "k_proj", value = "v_proj", output = "o_proj"
    case gate = "gate_proj", up = "up_proj", down = "down_proj"

    public var role: LlamaTensor.Role {
        switch self {
        case .query: .query
        case .key: .key
        case .value: .value
        case .output: .attentionOutput
        case .gate: .gate
        case .up: .up
        case .down: .down
        }
    }

    /// The module's path inside a block (`self_attn.q_proj`, `mlp.gate_proj`).
    var modulePath: String { (self == .gate || self == .up || self == .down ? "mlp." : "self_attn.") + rawValue }

    /// `all-linear` (every projection, as PEFT expands it, the output head left out) or a
    /// comma-separated list of module names.
    public static func parse(_ text: String) throws -> [LoRATarget] {
        if text == "all-linear" { return allCases }
        var targets: [LoRATarget] = []
        for name in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
            guard let t = LoRATarget(rawValue: name) else {
                throw FormatError("LoRA target \(name) is not a linear layer of this model (\(allCases.map(\.rawValue).joined(separator: ", ")), or all-linear)")
            }
            if !targets.contains(t) { targets.append(t) }
        }
        guard !targets.isEmpty else { throw FormatError("no LoRA targets given") }
        return allCases.filter(targets.contains)
    }
}

/// What a LoRA adapter is: W' = W + (α / r) · B · A on each target, A [r, in] and B [out, r]
/// (α / √r with rsLoRA). Saved as PEFT's `adapter_config.json`.
public struct LoRAConfiguration: Codable, Sendable, Equatable {
    public var rank: Int
    public var alpha: Float
    public var dropout: Float
    public var targets: [LoRATarget]
    public var rankStabilized: Bool
    /// The base model the adapter was trained on (a path or a hub name), as PEFT records it.
    public var baseModel: String
    /// A reward or value model's adapter (PEFT's task_type SEQ_CLS): the model ends in a scalar
    /// score head [1, hidden] (`LlamaForSequenceClassification`'s `score`, one label), trained
    /// whole beside the LoRA matrices (PEFT's `modules_to_save`) and saved in the adapter.
    public var scoreHead: Bool

    public init(rank: Int = 8, alpha: Float = 8, dropout: Float = 0, targets: [LoRATarget] = [.query, .value], rankStabilized: Bool = false,
                baseModel: String = "", scoreHead: Bool = false) {
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = targets
        self.rankStabilized = rankStabilized
        self.baseModel = baseModel
        self.scoreHead = scoreHead
    }

    /// PEFT's name of the score head's weight in a SEQ_CLS adapter.
    public static let scoreTensorName = "base_model.model.score.weight"

    public var scale: Float { rankStabilized ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    public func validate() throws {
        guard rank >= 1 else { throw FormatError("LoRA rank must be at least 1") }
        guard alpha > 0, alpha.isFinite else { throw FormatError("LoRA alpha must be positive") }
        guard dropout >= 0, dropout < 1 else { throw FormatError("LoRA dropout must be in [0, 1)") }
        guard !targets.isEmpty else { throw FormatError("no LoRA targets given") }
    }

    /// PEFT's tensor name for A (`lora_A`) or B (`lora_B`) of `target` in block `layer`.
    public static func tensorName(layer: Int, _ target: LoRATarget, b: Bool) -> String {
        "base_model.model.model.layers.\(layer).\(target.modulePath).lora_\(b ? "B" : "A").weight"
    }

    /// PEFT's `adapter_config.json` fields.
    func peftJSON() -> [String: Any] {
        ["peft_type": "LORA", "task_type": scoreHead ? "SEQ_CLS" : "CAUSAL_LM", "r": rank, "lora_alpha": Double(alpha), "lora_dropout": Double(dropout),
         "target_modules": targets.map(\.rawValue), "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
         "init_lora_weights": true, "use_rslora": rankStabilized, "use_dora": false, "base_model_name_or_path": baseModel,
         "modules_to_save": scoreHead ? ["classifier", "score"] : NSNull(), "layers_to_transform": NSNull(), "revision": NSNull()]
    }

    /// Reads PEFT's `adapter_config.json`, refusing what Ember does not apply (DoRA, biases,
    /// extra trained modules, a subset of layers, regex targets).
    public static func load(path: String) throws -> LoRAConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else { throw FormatError("\(path): no such file") }
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw FormatError("\(path): not a JSON object") }
        func refuse(_ why: String) -> FormatError { FormatError("\(path): \(why)") }
        guard (o["peft_type"] as? String)?.uppercased() == "LORA" else { throw refuse("not a LoRA adapter (peft_type \(o["peft_type"] ?? "missing"))") }
        guard let rank = o["r"] as? Int else { throw refuse("r (the rank) is missing or not an integer") }
        let alpha = (o["lora_alpha"] as? NSNumber)?.floatValue ?? 8
        if o["use_dora"] as? Bool == true { throw refuse("DoRA adapters are not supported") }
        if let bias = o["bias"] as? String, bias != "none" { throw refuse("adapters with trained biases (bias \(bias)) are not supported") }
        let task = o["task_type"] as? String ?? "CAUSAL_LM"
        let saved = (o["modules_to_save"] as? [Any])?.compactMap { $0 as? String } ?? []
        let scoreHead = task == "SEQ_CLS"
        guard task == "CAUSAL_LM" || scoreHead else { throw refuse("task_type \(task) is not supported (CAUSAL_LM and SEQ_CLS are)") }
        if let other = saved.first(where: { !(scoreHead && ["classifier", "score"].contains($0)) }) {
            throw refuse("adapters with fully trained modules besides a SEQ_CLS score head (modules_to_save \(other)) are not supported")
        }
        if !(o["layers_to_transform"] is NSNull || o["layers_to_transform"] == nil) { throw refuse("adapters of a subset of layers are not supported") }
        if o["fan_in_fan_out"] as? Bool == true { throw refuse("fan_in_fan_out adapters (GPT-2 Conv1D layout) do not apply to LLaMA") }
        if let patterns = o["rank_pattern"] as? [String: Any], !patterns.isEmpty { throw refuse("per-module ranks (rank_pattern) are not supported") }
        if let patterns = o["alpha_pattern"] as? [String: Any], !patterns.isEmpty { throw refuse("per-module alphas (alpha_pattern) are not supported") }
        let targets: [LoRATarget]
        if let names = o["target_modules"] as? [String] {
            targets = try LoRATarget.parse(names.joined(separator: ","))
        } else if let name = o["target_modules"] as? String {
            targets = try LoRATarget.parse(name)
        } else {
            throw refuse("target_modules is missing")
        }
        let configuration = LoRAConfiguration(rank: rank, alpha: alpha, dropout: (o["lora_dropout"] as? NSNumber)?.floatValue ?? 0,
                                              targets: targets, rankStabilized: o["use_rslora"] as? Bool ?? false,
                                              baseModel: o["base_model_name_or_path"] as? String ?? "", scoreHead: scoreHead)
        do { try configuration.validate() } catch let e as FormatError { throw refuse(e.message) }
        return configuration
    }
}

/// A LoRA adapter's weights: for each block and target, A [r, in] and B [out, r] in f32, in
/// Hugging Face's row order (the order PEFT saves).
public struct LoRAAdapter: @unchecked Sendable {
    public let configuration: LoRAConfiguration
    /// [layer][target] → (A, B).
    public let weights: [[LoRATarget: (a: FloatBuffer, b: FloatBuffer)]]
    /// The score head [1, hidden] of a SEQ_CLS adapter (`configuration.scoreHead`).
    public let score: FloatBuffer?

    public init(configuration: LoRAConfiguration, weights: [[LoRATarget: (a: FloatBuffer, b: FloatBuffer)]], score: FloatBuffer? = nil) {
        precondition(configuration.scoreHead == (score != nil), "a SEQ_CLS adapter carries a score head, and only it")
        self.configuration = configuration
        self.weights = weights
        self.score = score
    }

    /// The shapes of A and B for `target` in a model of configuration `c`.
    public static func shapes(_ target: LoRATarget, rank: Int, _ c: LlamaConfiguration) -> (a: [Int], b: [Int]) {
        let shape = LlamaTensor(target.role, layer: 0, c).shape
        return ([rank, shape[1]], [shape[0], rank])
    }

    /// Loads `adapter_config.json` and `adapter_model.safetensors` from `directory` and checks
    /// them against the model they are to adapt: every tensor present with the shape the rank and
    /// the model give, and nothing else.
    public static func load(directory: String, for c: LlamaConfiguration) throws -> LoRAAdapter {
        let configuration = try LoRAConfiguration.load(path: directory + "/adapter_config.json")
        let path = directory + "/adapter_model.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { throw FormatError("\(directory): no adapter_model.safetensors") }
        let file = try SafetensorsFile(path: path)
        var expected = Set<String>()
        let r = configuration.rank
        let weights = try (0..<c.layerCount).map { layer in
            var row: [LoRATarget: (a: FloatBuffer, b: FloatBuffer)] = [:]
            for target in configuration.targets {
                let (aShape, bShape) = shapes(target, rank: r, c)
                func read(_ b: Bool, _ shape: [Int]) throws -> FloatBuffer {
                    let name = LoRAConfiguration.tensorName(layer: layer, target, b: b)
                    expected.insert(name)
                    guard let entry = file.entries[name] else {
                        throw FormatError("\(path): \(name) is missing (the adapter's config names \(target.rawValue) with rank \(r) over \(c.layerCount) layers)")
                    }
                    guard entry.shape == shape else {
                        let what = b ? "out features × rank" : "rank × in features"
                        throw FormatError("\(path): \(name) has shape \(entry.shape), but rank \(r) on this model needs \(shape) (\(what)); the adapter was made for another base model\(configuration.baseModel.isEmpty ? "" : " (\(configuration.baseModel))") or another rank")
                    }
                    let buffer = FloatBuffer(uninitializedCount: shape.reduce(1, *))
                    dequantize(entry.dtype, from: file.data(of: entry), to: buffer.pointer, count: buffer.count)
                    return buffer
                }
                row[target] = (try read(false, aShape), try read(true, bShape))
            }
            return row
        }
        var score: FloatBuffer?
        if configuration.scoreHead {
            let name = LoRAConfiguration.scoreTensorName
            expected.insert(name)
            guard let entry = file.entries[name], entry.shape == [1, c.hiddenSize] else {
                throw FormatError("\(path): a SEQ_CLS adapter needs \(name) of shape [1, \(c.hiddenSize)] (one label on this model's hidden size)")
            }
            score = FloatBuffer(uninitializedCount: c.hiddenSize)
            dequantize(entry.dtype, from: file.data(of: entry), to: score!.pointer, count: c.hiddenSize)
        }
        if let extra = file.entries.keys.sorted().first(where: { !expected.contains($0) }) {
            throw FormatError("\(path): \(extra) does not belong to a rank-\(r) LoRA of \(configuration.targets.map(\.rawValue).joined(separator: ", ")) on a model of \(c.layerCount) layers")
        }
        return LoRAAdapter(configuration: configuration, weights: weights, score: score)
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `directory` (which must exist).
    public func save(to directory: String) throws {
        var tensors: [SafetensorsWriter.Tensor] = []
        for (layer, row) in weights.enumerated() {
            for target in configuration.targets {
                let (a, b) = row[target]!
                let r = configuration.rank
                tensors.append(.init(name: LoRAConfiguration.tensorName(layer: layer, target, b: false), shape: [r, a.count / r],
                                     data: UnsafeBufferPointer(start: a.pointer, count: a.count)))
                tensors.append(.init(name: LoRAConfiguration.tensorName(layer: layer, target, b: true), shape: [b.count / r, r],
                                     data: UnsafeBufferPointer(start: b.pointer, count: b.count)))
            }
        }
        if let score {
            tensors.append(.init(name: LoRAConfiguration.scoreTensorName, shape: [1, score.count], data: UnsafeBufferPointer(start: score.pointer, count: score.count)))
        }
        try withExtendedLifetime((weights, score)) {
            try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: directory + "/adapter_model.safetensors")
        }
        let json = try JSONSerialization.data(withJSONObject: configuration.peftJSON(), options: [.prettyPrinted, .sortedKeys])
        try writeFile(json, to: directory + "/adapter_config.json")
    }

    /// The weights with B's query and key rows in the RoPE pairing `mode` stores them in (GGUF's
    /// for `.interleaved`; Hugging Face's, as saved, for `.neox`), or back from it with `inverse`.
    public func weights(rowOrder mode: RopeMode, _ c: LlamaConfiguration, inverse: Bool = false) -> [[LoRATarget: (a: FloatBuffer, b: FloatBuffer)]] {
        guard mode == .interleaved else { return weights }
        return weights.map { row in
            var ordered = row
            for (target, heads) in [(LoRATarget.query, c.headCount), (.key, c.kvHeadCount)] {
                guard let (a, b) = row[target] else { continue }
                let values = Array(UnsafeBufferPointer(start: b.pointer, count: b.count))
                ordered[target] = (a, FloatBuffer(LlamaTensor.interleavePairs(values, heads: heads, columns: configuration.rank, inverse: inverse)))
            }
            return ordered
        }
    }

    /// ΔW = scale · B · A of `target` in block `layer`, [out, in], in Hugging Face's row order.
    public func delta(layer: Int, _ target: LoRATarget) -> [Float] {
        let (a, b) = weights[layer][target]!, r = configuration.rank, inputs = a.count / r, outputs = b.count / r, s = configuration.scale
        var out = [Float](repeating: 0, count: outputs * inputs)
        for o in 0..<outputs {
            for k in 0..<r {
                let coefficient = s * b.pointer[o * r + k], row = a.pointer + k * inputs
                for i in 0..<inputs { out[o * inputs + i] += coefficient * row[i] }
            }
        }
        return out
    }
}

/// An adapter ready to apply at inference: A and B per target in the base's row order (GGUF's
/// RoPE pairing for a GGUF base), added to the base's products for the rows that ask for it, so
/// that one batch can mix rows of several adapters and of the base.
public final class InferenceAdapter: @unchecked Sendable {
    public let name: String
    public let adapter: LoRAAdapter
    /// Salts the prefix cache's block keys: rows under another adapter have other keys and values.
    /// Each adapter loaded gets its own, so that one loaded later under a name used before never
    /// meets the cached rows of the first.
    public let cacheKey: UInt64
    let matrices: [[LoRATarget: (a: FloatBuffer, b: FloatBuffer)]]

    private static let loaded = NSLock()
    nonisolated(unsafe) private static var count: UInt64 = 0

    public init(_ adapter: LoRAAdapter, name: String, for model: Llama) {
        self.name = name
        self.adapter = adapter
        let serial = Self.loaded.withLock { () -> UInt64 in
            Self.count += 1
            return Self.count
        }
        var key: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 + withUnsafeBytes(of: serial.littleEndian, Array.init) { key = (key ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        cacheKey = key | 1
        matrices = adapter.weights(rowOrder: model.weights.ropeMode, model.configuration)
    }

    /// y[rows] += scale · (x[rows] · Aᵀ) · Bᵀ for `target` of block `layer`, x [T, in] and y [T, out].
    func apply(layer: Int, _ target: LoRATarget, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows: Range<Int>, pool: ThreadPool) {
        guard let (a, b) = matrices[layer][target], !rows.isEmpty else { return }
        let r = adapter.configuration.rank, inputs = a.count / r, outputs = b.count / r, n = rows.count
        let h = FloatBuffer(uninitializedCount: n * r)
        matmul(x + rows.lowerBound * inputs, a.pointer, h.pointer, m: n, n: r, k: inputs, pool: pool)
        let s = adapter.configuration.scale
        for i in 0..<n * r { h.pointer[i] *= s }
        matmul(h.pointer, b.pointer, y + rows.lowerBound * outputs, m: n, n: outputs, k: r, accumulate: true, pool: pool)
    }
}
