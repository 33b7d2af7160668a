import KeyCustody
import Metrics

/// The vault's metrics, through swift-metrics: whichever backend the process bootstraps receives them (vaultd
/// exports them in Prometheus text format at `/metrics`; without a backend they cost nothing). Labels carry ids
/// and reasons only, never secrets.
public enum VaultMetrics {
    public static let requests = "vault_http_requests_total"
    public static let bytesEncrypted = "vault_bytes_encrypted_total"
    public static let bytesDecrypted = "vault_bytes_decrypted_total"
    public static let custodyDuration = "vault_custody_operation_duration_seconds"
    public static let refusedReads = "vault_reads_refused_total"
    public static let auditWriteFailures = "vault_audit_write_failures_total"
    public static let archivesPastExpiry = "vault_archives_past_expiry"

    /// Buckets for custody latencies, which are microseconds for a keyring and milliseconds for an HSM.
    public static let custodyBuckets: [Duration] = [
        .microseconds(5), .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100),
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(5), .milliseconds(25),
        .milliseconds(100), .milliseconds(500), .seconds(2),
    ]

    static func encrypted(_ bytes: Int, force: ForceID) {
        Counter(label: bytesEncrypted, dimensions: [("force", force.rawValue)]).increment(by: bytes)
    }

    static func decrypted(_ bytes: Int, force: ForceID) {
        Counter(label: bytesDecrypted, dimensions: [("force", force.rawValue)]).increment(by: bytes)
    }

    static func refusedRead(force: ForceID, reason: String) {
        Counter(label: refusedReads, dimensions: [("force", force.rawValue), ("reason", reason)]).increment()
    }

    static func auditWriteFailed() {
        Counter(label: auditWriteFailures).increment()
    }

    static func archivesPastExpiry(_ count: Int, force: ForceID) {
        Gauge(label: archivesPastExpiry, dimensions: [("force", force.rawValue)]).record(count)
    }

    /// Times one custody call.
    static func custody<T>(_ operation: String, force: ForceID, _ body: () async throws -> T) async rethrows -> T {
        let start = ContinuousClock.now
        defer {
            Timer(label: custodyDuration, dimensions: [("force", force.rawValue), ("operation", operation)])
                .record(duration: ContinuousClock.now - start)
        }
        return try await body()
    }
}

extension VaultMetrics {
    /// The lines of a Prometheus text exposition an ops principal of `forces` may see: every sample labelled with one
    /// of those forces, every sample with no force label (the platform's own: HTTP requests, audit writes), and the
    /// `# HELP` and `# TYPE` lines; never another force's series.
    public static func visible(_ exposition: [UInt8], forces: Set<ForceID>) -> [UInt8] {
        let names = Set(forces.map(\.rawValue))
        let lines = exposition.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).filter { line in
            forceLabel(line).map(names.contains) ?? true
        }
        return Array(lines.joined(separator: [UInt8(ascii: "\n")]))
    }

    /// The value of a sample line's `force` label, if it has one (force ids need no escaping).
    static func forceLabel(_ line: ArraySlice<UInt8>) -> String? {
        guard line.first != UInt8(ascii: "#"), let open = line.firstIndex(of: UInt8(ascii: "{")),
            let close = line[open...].firstIndex(of: UInt8(ascii: "}")) else { return nil }
        let labels = String(decoding: line[(open + 1)..<close], as: UTF8.self)
        for pair in labels.split(separator: ",") where pair.hasPrefix("force=\"") {
            return String(pair.dropFirst("force=\"".count).prefix { $0 != "\"" })
        }
        return nil
    }
}
