import Metrics
import Prometheus
import Vault

/// The Prometheus registry behind `GET /metrics`, bootstrapped as the process's swift-metrics backend.
struct PrometheusExporter: Sendable {
    let registry: PrometheusCollectorRegistry

    static func bootstrap() -> PrometheusExporter {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[VaultMetrics.custodyDuration] = VaultMetrics.custodyBuckets
        // Prometheus names allow [a-zA-Z0-9_:] only.
        factory.nameAndLabelSanitizer = { name, labels in
            (Self.sanitize(name), labels.map { (Self.sanitize($0.0), $0.1) })
        }
        MetricsSystem.bootstrap(factory)
        // Present from the start, so an alert on them has a series to watch.
        Counter(label: VaultMetrics.auditWriteFailures).increment(by: 0)
        return PrometheusExporter(registry: registry)
    }

    @Sendable static func sanitize(_ name: String) -> String {
        String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == ":") ? $0 : "_" })
    }

    func emit() -> [UInt8] { registry.emitToBuffer() }
}
