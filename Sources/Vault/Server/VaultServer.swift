import Hummingbird
import KeyCustody
import Logging
import ServiceLifecycle

/// Everything `vaultd serve` runs, made from its configuration: each force's custody, the catalog, the blob store,
/// the audit signer and the engine, with the start-up duties done; then the services to run (the catalog's pool,
/// the HTTPS API, the background jobs). vaultd itself only loads the configuration and runs the services.
public struct VaultServer: Sendable {
    public let engine: VaultEngine
    public let configuration: ServerConfiguration
    /// The client CRL (`tls.client_crl`), read at start and again whenever the file changes.
    let revocations: ClientRevocationList?
    /// PostgreSQL's connection pool (nil on SQLite); closed after the API and the jobs have stopped.
    let catalogPool: Task<Void, Never>?

    /// Opens custody and storage and makes the engine. Secrets read from the environment (custody PINs and
    /// passphrases, PGPASSWORD, S3 keys) are scrubbed from it once read. Then the start-up duties: the job leases of
    /// this instance's previous life are freed, uploads a crash left behind are collected, the tokens of principals
    /// removed from the configuration are revoked (adding one back does not revive them), and each force's
    /// custody is recorded in its audit chain (retried by the jobs while the trail or a force's custody service is
    /// unavailable; vaultd starts anyway, not ready).
    /// `scrubStorageSecrets` false leaves the storage secrets (`PGPASSWORD`, the S3 keys) in the environment: only for a
    /// process that holds other users of them (the in-process tests, whose test servers share one set).
    public static func open(configuration: ServerConfiguration, logger: Logger, scrubStorageSecrets: Bool = true)
        async throws -> VaultServer
    {
        let custody = try CustodyConfiguration.load(path: configuration.custodyFile)
        let named = custody.forces.map(\.id) + configuration.principals.values.flatMap { $0.grants.values.flatMap { $0 } }
        if named.contains(.platform) {
            throw CustodyError(.invalidConfiguration, "force id \(ForceID.platform) is reserved for the platform's "
                                + "own audit chain: no force or role may name it")
        }
        var custodians: [ForceID: any KeyCustodian] = [:]
        // On the embedded default vaultd holds each keyring's writer lock while it serves it. On PostgreSQL several
        // instances may serve the same forces: each keyring change then takes the lock for itself and every
        // instance picks up the others' changes.
        let keyringMode: KeyringCustody.Mode = configuration.postgresURL == nil ? .readWrite : .shared
        for force in custody.forces {
            // A remote force's custody service is not called here: vaultd starts even while it is down.
            custodians[force.id] = try custody.open(force.id, mode: keyringMode, logger: logger,
                                                    remote: RemoteCustody.opener)
        }
        for force in custody.forces {
            for name in force.backend.secretVariables { SecretSource.scrubEnvironment(name) }
        }
        if let unserved = configuration.rotationDays.keys.sorted().first(where: { custodians[$0] == nil }) {
            throw CustodyError(.invalidConfiguration, "[rotation] names force \(unserved), which the custody file "
                                + "does not serve")
        }
        let revocations = try configuration.clientCRL.map { path in
            try ClientRevocationList(path: path, caFile: configuration.clientCA ?? "")
        }
        try FileBlobStore.makeDirectory(configuration.dataDirectory)
        let (catalog, catalogPool) = try await Storage.openCatalog(configuration.catalog, logger: logger)
        do {
            let blobs = try await Storage.openBlobs(configuration.blobs)
            // Storage secrets are read by now: none stays in the environment.
            if scrubStorageSecrets {
                for name in ["PGPASSWORD"] + S3Settings.secretVariables { SecretSource.scrubEnvironment(name) }
            }
            let signer = try await openAuditSigner(configuration, catalog: catalog,
                                                   forces: custody.forces.map(\.id) + [.platform], logger: logger)
            var settings = LifecycleSettings()
            settings.retrievalGrantSeconds = Int64(configuration.retrievalGrantHours) * 3600
            settings.rewrapBatchSize = configuration.rewrapBatchSize
            settings.instance = configuration.instance ?? LifecycleSettings.defaultInstance(port: configuration.port)
            settings.leaseSeconds = Int64(configuration.jobLeaseSeconds)
            let engine = VaultEngine(catalog: catalog, blobs: blobs, custodians: custodians, signer: signer,
                                     logger: logger, settings: settings)
            let server = VaultServer(engine: engine, configuration: configuration, revocations: revocations,
                                     catalogPool: catalogPool)
            try await server.startUp(logger: logger)
            return server
        } catch {
            catalogPool?.cancel()
            throw error
        }
    }

    /// The audit key: on its token (`[audit_key]`) or in the data directory. A new key is made only for a catalog no
    /// key has signed yet: one that has checkpoints would go on under a key none of its verifiers knows, and the
    /// break would pass for a fresh start.
    static func openAuditSigner(_ configuration: ServerConfiguration, catalog: any Catalog, forces: [ForceID],
                                logger: Logger) async throws -> AuditSigner
    {
        func refuseIfSigned(_ missing: String, _ remedy: String) async throws {
            for force in forces where try await !catalog.auditCheckpoints(force: force, from: 0, through: .max).isEmpty {
                throw VaultError(.malformedAudit, "the audit signing key \(missing) is missing, but the catalog holds "
                                    + "checkpoints signed with it (force \(force)): \(remedy); vaultd does not sign on "
                                    + "with a new key")
            }
        }
        guard let location = configuration.auditKey else {
            if !AuditSigner.exists(in: configuration.dataDirectory) {
                try await refuseIfSigned("\(configuration.dataDirectory)/\(AuditSigner.privateKeyFile)",
                                         "restore the key file from its backup")
            }
            return try AuditSigner.loadOrCreate(in: configuration.dataDirectory)
        }
        let pin = try location.pin.read()
        if case .environment(let name) = location.pin { SecretSource.scrubEnvironment(name) }
        let exists = try PKCS11SigningKey.exists(module: location.module, tokenLabel: location.token, pin: pin,
                                                 label: location.label, logger: logger)
        if !exists {
            try await refuseIfSigned("\(location.label) on token \(location.token)",
                                     "put the token that holds it back")
        }
        let key = try PKCS11SigningKey.open(module: location.module, tokenLabel: location.token, pin: pin,
                                            label: location.label, create: !exists, logger: logger)
        return try AuditSigner(token: key, publicKeyDirectory: configuration.dataDirectory)
    }

    /// The start-up duties (see `open`).
    func startUp(logger: Logger) async throws {
        let freed = try await engine.releaseLeasesOfPreviousRun()
        if freed > 0 {
            logger.notice("freed the job leases of this instance's previous run",
                          metadata: ["count": "\(freed)", "instance": "\(engine.settings.instance)"])
        }
        let collected = try await engine.collectStaleUploads()
        if collected > 0 { logger.notice("collected \(collected) interrupted upload(s)") }
        let revoked = try await TokenAdministration(catalog: engine.catalog, principals: configuration.principals)
            .revokeRemovedPrincipals()
        if !revoked.isEmpty {
            logger.notice("revoked the tokens of principals no longer configured", metadata: [
                "tokens": "\(revoked.map(\.id).joined(separator: ","))",
                "principals": "\(Set(revoked.map(\.principal)).sorted().joined(separator: ","))"])
        }
        do {
            try await engine.recordCustodyOpened()
        } catch {
            // Stay up (not ready while the trail cannot be written; a remote force's custody service may be down):
            // the records are written by the jobs when the cause is gone.
            logger.error("cannot record the custody of every force at start; retrying in the background",
                         metadata: ["error": "\(error)"])
        }
    }

    /// The services to run in one `ServiceGroup`, which stops them in reverse order: the API and the jobs first,
    /// the catalog's pool last.
    public func services(metrics: @escaping @Sendable () -> [UInt8], logger: Logger) throws
        -> [ServiceGroupConfiguration.ServiceConfiguration]
    {
        let app = try VaultAPI.makeApplication(configuration: configuration, engine: engine, metrics: metrics,
                                               revocations: revocations, logger: logger)
        logger.notice("vaultd serving", metadata: [
            "address": "\(configuration.host):\(configuration.port)",
            "catalog": "\(configuration.catalog)", "blobs": "\(configuration.blobs)",
            "instance": "\(engine.settings.instance)",
            "forces": "\(engine.forces.map(\.rawValue).joined(separator: ","))",
            "audit_key": "\(engine.signer.publicKey.fingerprint)",
        ])
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: CatalogPool(runner: catalogPool)), .init(service: app),
            .init(service: VaultJobs(engine: engine, configuration: configuration, logger: logger)),
        ]
        if let revocations { services.append(.init(service: RevocationListWatcher(list: revocations, logger: logger))) }
        return services
    }
}

/// Keeps PostgreSQL's connection pool until the service group shuts down, then closes it.
struct CatalogPool: Service {
    let runner: Task<Void, Never>?

    func run() async throws {
        // Returning early would end the group: wait for the shutdown whatever the catalog.
        try? await gracefulShutdown()
        runner?.cancel()
        await runner?.value
    }
}

/// Reads the client CRL again each second when its file changed (off the request path), logging when it becomes
/// unusable (certificate logins are then refused) and when it is usable again.
struct RevocationListWatcher: Service {
    let list: ClientRevocationList
    let logger: Logger

    func run() async throws {
        var failing = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await Task.sleep(for: .seconds(1))
            let error = list.refresh()
            if let error, !failing {
                logger.error("the client CRL is unusable: certificate logins are refused until it is fixed",
                             metadata: ["path": "\(list.path)", "error": "\(error.message)"])
            } else if error == nil, failing {
                logger.notice("the client CRL is usable again", metadata: ["path": "\(list.path)"])
            }
            failing = error != nil
        }
    }
}
