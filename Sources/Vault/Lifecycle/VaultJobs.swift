import KeyCustody
import Logging
import ServiceLifecycle

/// vaultd's background duties, one `Service` beside the API:
/// - a signed checkpoint of every force's audit chain every `checkpointInterval` (and a last one at shutdown);
/// - the key jobs of every force (rewrap after a rotation, archive keys, retirement) every tick, so a rotation's
///   rewrap starts within seconds and resumes by itself after a restart;
/// - automatic rotation of the forces with a rotation period;
/// - shredding of expired, unheld archives every `shredInterval` (and once at start, finishing interrupted runs);
/// - uploads interrupted by a crash of any instance collected every hour (at start too, by `VaultServer`);
/// - while audit writes fail, a probe every tick so the vault becomes ready again by itself;
/// - for forces whose own custody service holds their keys: their signed use cases every `use_case_sync_seconds`
///   (and at once when a read misses one), and the witness submission of each new checkpoint.
public struct VaultJobs: Service {
    let engine: VaultEngine
    let checkpointInterval: Duration
    let shredInterval: Duration?
    let rotationDays: [ForceID: Int]
    let useCaseSync: Duration
    let logger: Logger

    /// The duties as `configuration` schedules them.
    public init(engine: VaultEngine, configuration: ServerConfiguration, logger: Logger) {
        self.engine = engine
        checkpointInterval = .seconds(configuration.auditCheckpointSeconds)
        shredInterval = configuration.shredIntervalSeconds > 0 ? .seconds(configuration.shredIntervalSeconds) : nil
        rotationDays = configuration.rotationDays
        useCaseSync = .seconds(configuration.useCaseSyncSeconds)
        self.logger = logger
    }

    public func run() async throws {
        let clock = ContinuousClock()
        var nextCheckpoint = clock.now
        var nextShred = clock.now
        var nextUseCaseSync = clock.now
        var nextCollection = clock.now.advanced(by: .seconds(3600))
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            let ready = await engine.readiness() == nil
            if ready { try? await engine.recordPendingCustodyOpened() }
            if clock.now >= nextCheckpoint {
                await engine.checkpointAll()
                await engine.witnessAll()
                await engine.measureExpiredArchives()
                nextCheckpoint = clock.now.advanced(by: checkpointInterval)
            }
            if ready, clock.now >= nextCollection {
                do {
                    let collected = try await engine.collectStaleUploads()
                    if collected > 0 { logger.notice("collected \(collected) interrupted upload(s)") }
                } catch {
                    logger.error("cannot collect interrupted uploads; retrying in an hour",
                                 metadata: ["error": "\(error)"])
                }
                nextCollection = clock.now.advanced(by: .seconds(3600))
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
