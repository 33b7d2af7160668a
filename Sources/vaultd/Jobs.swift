import Logging
import Metrics
import Prometheus
import ServiceLifecycle
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

/// vaultd's background duties: a signed checkpoint of every force's audit chain every `checkpointInterval` (and a
/// last one at shutdown), and, while audit writes fail, a probe every two seconds so the vault becomes ready again
/// by itself when the cause goes away.
struct VaultJobs: Service {
    let engine: VaultEngine
    let checkpointInterval: Duration
    let logger: Logger

    func run() async throws {
        let clock = ContinuousClock()
        var nextCheckpoint = clock.now
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            if await engine.readiness() == nil { try? await engine.recordPendingCustodyOpened() }
            if clock.now >= nextCheckpoint {
                await engine.checkpointAll()
                await engine.measureExpiredArchives()
                nextCheckpoint = clock.now.advanced(by: checkpointInterval)
            }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(2)) }
            } catch {
                break
            }
        }
        await engine.checkpointAll()
        logger.info("audit chains checkpointed at shutdown")
    }
}
