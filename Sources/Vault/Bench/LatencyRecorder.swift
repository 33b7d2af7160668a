import Histogram

/// Latencies of one kind of operation, for `vault bench`: an HDR histogram (three significant digits, nanoseconds up
/// to an hour) rather than a sorted array of samples, so a long run costs constant memory and percentiles come from
/// a kept library.
public struct LatencyRecorder: Sendable {
    private var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000_000,
                                              numberOfSignificantValueDigits: .three)

    public init() {}

    /// Records one latency in seconds (values beyond an hour are recorded as an hour).
    public mutating func record(seconds: Double) {
        let nanoseconds = seconds.isFinite && seconds > 0 ? UInt64(min(seconds * 1e9, 3.6e12)) : 0
        _ = histogram.record(Swift.max(1, nanoseconds))
    }

    public var count: Int { Int(histogram.totalCount) }

    /// The latency at `percentile` (0...100), in seconds; 0 with nothing recorded.
    public func seconds(atPercentile percentile: Double) -> Double {
        count == 0 ? 0 : Double(histogram.valueAtPercentile(percentile)) / 1e9
    }

    public var p50: Double { seconds(atPercentile: 50) }
    public var p90: Double { seconds(atPercentile: 90) }
    public var p99: Double { seconds(atPercentile: 99) }
    public var max: Double { count == 0 ? 0 : Double(histogram.max) / 1e9 }
}
