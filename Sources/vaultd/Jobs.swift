import KeyCustody
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

/// vaultd's background duties:
/// - a signed checkpoint of every force's audit chain every `checkpointInterval` (and a last one at shutdown);
/// - the key jobs of every force (rewrap after a rotation, archive keys, retirement) every tick, so a rotation's
///   rewrap starts within seconds and resumes by itself after a restart;
/// - automatic rotation of the forces with a rotation period;
/// - shredding of expired, unheld archives every `shredInterval` (and once at start, finishing interrupted runs);
/// - while audit writes fail, a probe every tick so the vault becomes ready again by itself;
/// - for forces whose own custody service holds their keys: their signed use cases every `use_case_sync_seconds` (and at once when a read
///   misses one), and the witness
///   submission of each new checkpoint.
struct VaultJobs: Service {
    let engine: VaultEngine
    let checkpointInterval: Duration
    let shredInterval: Duration?
    let rotationDays: [ForceID: Int]
    let useCaseSync: Duration
    let logger: Logger

    func run() async throws {
        let clock = ContinuousClock()
        var nextCheckpoint = clock.now
        var nextShred = clock.now
        var nextUseCaseSync = clock.now
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            let ready = await engine.readiness() == nil
            if ready { try? await engine.recordPendingCustodyOpened() }
            if clock.now >= nextCheckpoint {
                await engine.checkpointAll()
                await engine.witnessAll()
                await engine.measureExpiredArchives()
                nextCheckpoint = clock.now.advanced(by: checkpointInterval)
            }
            if ready, clock.now >= nextUseCaseSync {
                for force in engine.forces where engine.remoteCustody(force) != nil {
                    do { try await engine.syncUseCases(force: force) } catch {
                        logger.warning("cannot take the use cases from the force's custody service",
                                       metadata: ["force": "\(force)", "error": "\(error)"])
                    }
                }
                nextUseCaseSync = clock.now.advanced(by: useCaseSync)
            }
            if ready {
                for force in engine.forces {
                    await rotateIfDue(force)
                    do {
                        let report = try await engine.runKeyJobs(force: force)
                        if report.didWork {
                            logger.info("key jobs", metadata: [
                                "force": "\(force)", "rewrapped": "\(report.rewrapped)",
                                "archive_keys": "\(report.archived)", "failed": "\(report.failed)",
                                "retired": "\(report.retired.map(\.description).joined(separator: ","))",
                            ])
                        }
                    } catch {
                        logger.error("key jobs failed; retrying", metadata: ["force": "\(force)", "error": "\(error)"])
                    }
                }
                if let shredInterval, clock.now >= nextShred {
                    for force in engine.forces {
                        do {
                            let report = try await engine.shredPass(force: force)
                            if !report.certificates.isEmpty {
                                logger.notice("expired archives shredded", metadata: [
                                    "force": "\(force)", "count": "\(report.certificates.count)",
                                ])
                            }
                        } catch {
                            logger.error("shredding failed; retrying at the next interval",
                                         metadata: ["force": "\(force)", "error": "\(error)"])
                        }
                    }
                    nextShred = clock.now.advanced(by: shredInterval)
                }
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

    /// Rotates `force`'s master key when its active version is older than the configured period.
    private func rotateIfDue(_ force: ForceID) async {
        guard let days = rotationDays[force] else { return }
        do {
            guard let rotation = try await engine.rotateIfDue(force: force, days: days) else { return }
            logger.notice("scheduled master key rotation", metadata: ["force": "\(force)", "to": "\(rotation.to)"])
        } catch {
            logger.error("scheduled rotation failed", metadata: ["force": "\(force)", "error": "\(error)"])
        }
    }
}
