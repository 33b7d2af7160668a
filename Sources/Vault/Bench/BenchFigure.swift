import KeyCustody

/// One figure of `vault bench`: what was measured, the baseline measured in the same run, their ratio, and the target
/// of DESIGN section 10 it is judged against. Every bench prints its figures the same way (`line`), puts them in its
/// `--json` object under `figures` (`json`), and `vault bench all --report` charts them (`BenchReport`). A missed
/// target is reported, never an error: a bench exits non-zero only when it could not run.
public struct BenchFigure: Sendable {
    /// How the figure is judged.
    public enum Target: Sendable {
        /// measured / baseline ≥ the value (a throughput against a plain tool's).
        case ratioAtLeast(Double)
        /// measured ≥ the value, in the figure's unit (the baseline, if any, is for comparison only).
        case atLeast(Double)
        /// measured ≤ the value, in the figure's unit (a latency or a memory growth).
        case atMost(Double)
    }

    /// A stable name for JSON and the chart (`embedded_read`).
    public var key: String
    /// What a reader sees (`embedded read over TLS`).
    public var title: String
    public var unit: String
    public var measured: Double
    public var baselineTitle: String?
    public var baseline: Double?
    public var target: Target

    public init(key: String, title: String, unit: String, measured: Double, baselineTitle: String? = nil,
                baseline: Double? = nil, target: Target)
    {
        self.key = key
        self.title = title
        self.unit = unit
        self.measured = measured
        self.baselineTitle = baselineTitle
        self.baseline = baseline
        self.target = target
    }

    /// measured / baseline, when there is a baseline.
    public var ratio: Double? {
        guard let baseline, baseline > 0 else { return nil }
        return measured / baseline
    }

    /// How far the figure is toward its target: 1 is exactly on it, above 1 better than it (for a latency, the target
    /// over the measured value).
    public var score: Double {
        switch target {
        case .ratioAtLeast(let goal): (ratio ?? 0) / goal
        case .atLeast(let goal): measured / goal
        case .atMost(let goal): measured > 0 ? goal / measured : .infinity
        }
    }

    public var met: Bool { score >= 1 }

    public var targetText: String {
        switch target {
        case .ratioAtLeast(let goal): "ratio >= \(Self.format(goal))"
        case .atLeast(let goal): ">= \(Self.format(goal)) \(unit)"
        case .atMost(let goal): "<= \(Self.format(goal)) \(unit)"
        }
    }

    /// One line: `embedded read over TLS: 912 MB/s; baseline plain HTTPS download 1010 MB/s; ratio 0.90; target ratio
    /// >= 0.8: met`.
    public var line: String {
        var text = "\(title): \(Self.format(measured)) \(unit)"
        if let baseline {
            text += "; baseline \(baselineTitle ?? "") \(Self.format(baseline)) \(unit)"
        }
        if let ratio { text += "; ratio " + String(format: "%.2f", ratio) }
        return text + "; target \(targetText): " + (met ? "met" : "missed")
            + " (" + String(format: "%.2f", score) + " x target)"
    }

    public var json: BenchJSON {
        var members: [String: BenchJSON] = [
            "key": .string(key), "title": .string(title), "unit": .string(unit), "measured": .figure(measured),
            "score": .figure(score), "met": .bool(met), "target": .string(targetText),
        ]
        switch target {
        case .ratioAtLeast(let goal): members["target_ratio"] = .figure(goal)
        case .atLeast(let goal): members["target_at_least"] = .figure(goal)
        case .atMost(let goal): members["target_at_most"] = .figure(goal)
        }
        if let baseline { members["baseline"] = .figure(baseline) }
        if let baselineTitle { members["baseline_title"] = .string(baselineTitle) }
        if let ratio { members["ratio"] = .figure(ratio) }
        return .object(members)
    }

    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "-" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return abs(value) >= 100 ? String(format: "%.0f", value) : String(format: "%.2f", value)
    }
}
