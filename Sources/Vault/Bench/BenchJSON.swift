import Foundation
import KeyCustody

/// The `--json` output of `vault bench`: figures as JSON numbers (a ratio is `0.946`, never `"0.946"`), keys sorted.
/// The vault's own `JSONValue` has integers only, since what it signs must have one canonical form; a benchmark's
/// figures are decimals, for a reader and a plotting tool.
public indirect enum BenchJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    /// A decimal figure written with `digits` digits after the point (non-finite values become `null`).
    case number(Double, digits: Int)
    case string(String)
    case array([BenchJSON])
    case object([String: BenchJSON])

    /// A figure with three digits after the point.
    public static func figure(_ value: Double, _ digits: Int = 3) -> BenchJSON { .number(value, digits: digits) }

    public var text: String {
        switch self {
        case .null: "null"
        case .bool(let value): value ? "true" : "false"
        case .integer(let value): String(value)
        case .number(let value, let digits): value.isFinite ? String(format: "%.\(digits)f", value) : "null"
        case .string(let value): JSONValue.string(value).canonicalString
        case .array(let values): "[" + values.map(\.text).joined(separator: ",") + "]"
        case .object(let members):
            "{" + members.keys.sorted().map { JSONValue.string($0).canonicalString + ":" + members[$0]!.text }
                .joined(separator: ",") + "}"
        }
    }
}
