import GRDB
import KeyCustody
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `vault bench rotate` and `vault bench shred`: the key lifecycle on the embedded default (keyring custody, SQLite
/// catalog, file blobs) in a temporary directory, against DESIGN section 10's targets and a baseline measured in the
/// same run.
public struct LifecycleBenchmark: Sendable {
    public struct RotateResult: Sendable {
        /// `keyring` (in process) or `remote` (a local custody service over loopback mTLS).
        public var backend: String
        /// `sqlite` or `postgres`.
        public var catalog: String = "sqlite"
        public var keys: Int
        public var batch: Int
        public var seconds: Double
        /// Custody alone rewrapping the same keys in memory (no catalog): the ceiling for the job.
        public var custodyOnlyKeysPerSecond: Double
        public var keysPerSecond: Double { Double(keys) / seconds }

        /// DESIGN section 10: 50,000 keys a second on SQLite, 20,000 on PostgreSQL.
        public var targetKeysPerSecond: Double { catalog == "postgres" ? 20_000 : 50_000 }

        public var figure: BenchFigure {
            BenchFigure(key: "rotation_\(backend)_\(catalog)",
                        title: "rotation job, \(backend) custody + \(catalog == "postgres" ? "PostgreSQL" : "SQLite") "
                            + "(\(keys) keys)", unit: "keys/s",
                        measured: keysPerSecond, baselineTitle: "custody alone", baseline: custodyOnlyKeysPerSecond,
                        target: .atLeast(targetKeysPerSecond))
        }

        public var json: BenchJSON {
            .object([
                "backend": .string(backend), "catalog": .string(catalog), "figure": figure.json,
                "keys": .integer(Int64(keys)), "batch": .integer(Int64(batch)),
                "seconds": .figure(seconds),
                "keys_per_second": .figure(keysPerSecond, 0),
                "custody_only_keys_per_second": .figure(custodyOnlyKeysPerSecond, 0),
                "ratio_to_custody_only": .figure(keysPerSecond / custodyOnlyKeysPerSecond),
                "ratio_to_target": .figure(keysPerSecond / targetKeysPerSecond),
                "target_keys_per_second": .figure(targetKeysPerSecond, 0),
            ])
        }
    }

    public struct ShredResult: Sendable {
        public var archives: Int
        public var batch: Int
        public var seconds: Double
        public var p50Milliseconds: Double
        public var p99Milliseconds: Double
        /// Deleting the same number of plain files, each batch's directory fsynced once: the filesystem's share.
        public var plainDeleteSeconds: Double
        public var archivesPerSecond: Double { Double(archives) / seconds }

        /// DESIGN section 10: 10,000 archives in at most 60 s, each within 50 ms of being taken (p99).
        public var figures: [BenchFigure] {
            [
                BenchFigure(key: "shred_seconds", title: "shred \(archives) expired archives (scaled to 10000)",
                            unit: "s", measured: seconds * 10_000 / Double(archives),
                            baselineTitle: "plain file deletes", baseline: plainDeleteSeconds * 10_000 / Double(archives),
                            target: .atMost(60)),
                BenchFigure(key: "shred_p99", title: "shred, per archive p99 (taken to certificate stored)",
                            unit: "ms", measured: p99Milliseconds, target: .atMost(50)),
            ]
        }

        public var json: BenchJSON {
            func f(_ value: Double, _ digits: Int = 3) -> BenchJSON { .figure(value, digits) }
            return .object([
                "figures": .array(figures.map(\.json)),
                "archives": .integer(Int64(archives)), "batch": .integer(Int64(batch)), "seconds": f(seconds),
                "archives_per_second": f(archivesPerSecond, 0), "p50_ms": f(p50Milliseconds), "p99_ms": f(p99Milliseconds),
                "plain_delete_seconds": f(plainDeleteSeconds),
                "ratio_to_plain_delete": f(seconds / plainDeleteSeconds),
                "target_p99_ms": .integer(50), "target_seconds_per_10000": .integer(60),
                "ratio_p99_to_target": f(p99Milliseconds / 50),
                "ratio_rate_to_target": f(archivesPerSecond / (10_000.0 / 60)),
            ])
        }
    }

    public var workDirectory: String

    public init(workDirectory: String) {
        self.workDirectory = workDirectory
    }

    /// A scratch vault: one force, a keyring with fast KDF limits, a catalog and a blob store.
    struct Scratch {
        let path: String
        let force: ForceID
        let custody: KeyringCustody
        let catalog: any CatalogDriver
        let blobs: FileBlobStore
        let engine: VaultEngine
        let settings: LifecycleSettings
        let logger: Logger

        var keyringPath: String { "\(path)/bench.keyring" }
        static let passphrase = "bench passphrase, not a secret"

        /// The same vault with its force's keyring handed to a local custody service, reached as a remote force.
        func handingCustodyOver(vaultdPath: String) async throws -> (Scratch, LocalCustodyService, RemoteCustody) {
            let service = try await LocalCustodyService.launch(
                force: force, directory: "\(path)/custody", vaultdPath: vaultdPath,
                keyring: (keyringPath, Self.passphrase), logger: logger)
            let remote = try service.remoteCustody()
            let engine = VaultEngine(catalog: catalog, blobs: blobs, custodians: [force: remote],
                                     signer: AuditSigner(key: Ed25519.PrivateKey()), logger: logger,
                                     settings: settings)
            return (Scratch(path: path, force: force, custody: custody, catalog: catalog, blobs: blobs, engine: engine,
                            settings: settings, logger: logger), service, remote)
        }
    }

    /// `readOnly`: the keyring is created, then kept open read-only (no writer lock), so that a custody service can
    /// take it over.
    /// `postgres`: the catalog is that (scratch) database, and the force a fresh one (`bench-` and random hex), so
    /// an earlier run's rows are never this run's.
    func scratch(_ name: String, logger: Logger, settings: LifecycleSettings, readOnly: Bool = false,
                 postgres: String? = nil) async throws -> Scratch {
        let path = DurableFile.absolutePath("\(workDirectory)/vault-bench-\(name)-\(getpid())")
        try FileBlobStore.makeDirectory(path)
        let force = try ForceID(force: postgres == nil ? "bench" : "bench-\(Hex.encode(SecureRandom.bytes(count: 6)))")
        var passphrase = Array(Scratch.passphrase.utf8)
        var custody = try KeyringCustody.create(at: "\(path)/bench.keyring", force: force,
                                                passphrase: SecureBytes(consuming: &passphrase),
                                                parameters: .interactive, logger: logger)
        if readOnly {
            passphrase = Array(Scratch.passphrase.utf8)
            custody = try KeyringCustody.open(at: "\(path)/bench.keyring", passphrase: SecureBytes(consuming: &passphrase),
                                              expectedForce: force, mode: .readOnly, logger: logger)
        }
        let catalog: any CatalogDriver
        if let postgres {
            let opened = try await Storage.openCatalog(.postgres(url: postgres), logger: logger)
            guard let driver = opened.catalog as? any CatalogDriver else {
                throw VaultError(.invalidParameter, "the PostgreSQL catalog cannot seed a benchmark")
            }
            catalog = driver
        } else {
            catalog = try SQLiteCatalog(path: "\(path)/catalog.sqlite")
        }
        let blobs = try FileBlobStore(root: "\(path)/blobs")
        let engine = VaultEngine(catalog: catalog, blobs: blobs, custodians: [force: custody],
                                 signer: AuditSigner(key: Ed25519.PrivateKey()), logger: logger, settings: settings)
        return Scratch(path: path, force: force, custody: custody, catalog: catalog, blobs: blobs, engine: engine,
                       settings: settings, logger: logger)
    }

    /// Rewraps `keys` current extracts' keys after a rotation, through the same job vaultd runs. With `remote`, the
    /// force's keys are held by a local custody service (`vaultdPath custody serve`, loopback mTLS): the keys are
    /// seeded through the keyring, which is then handed to the service, and the rotation, the baseline and the job
    /// all go through it.
    public func rotate(keys: Int, batch: Int, remote vaultdPath: String? = nil, postgres: String? = nil,
                       logger: Logger, progress: (String) -> Void) async throws -> RotateResult {
        var settings = LifecycleSettings()
        settings.rewrapBatchSize = batch
        let seeding = try await scratch(vaultdPath == nil ? "rotate" : "rotate-remote", logger: logger,
                                        settings: settings, readOnly: vaultdPath != nil, postgres: postgres)
        defer { _ = try? Subprocess.run("/bin/rm", ["-rf", seeding.path]) }
        progress("seeding \(keys) current extracts with keys under fmk:bench:1...")
        let now = currentUnixTime()
        var records: [ExtractRecord] = []
        records.reserveCapacity(keys)
        for index in 0..<keys {
            let identity = ExtractIdentity(force: seeding.force, dataset: try DatasetID(dataset: "ds-\(index)"),
                                           extract: .generate())
            let key = try await seeding.custody.generateDataKey(for: identity.wrapContext)
            records.append(ExtractRecord(
                identity: identity, state: .current, wrappedKey: key.wrapped, plaintextSize: 1, ciphertextSize: 57,
                ciphertextSHA256: [UInt8](repeating: 0, count: 32), source: .plaintext, uploadedBy: "bench",
                createdAt: now, committedAt: now))
        }
        try await seeding.catalog.insertForBenchmark(records, lineageSince: now)
        try await BlockingWork.run { sync() }
        let scratch: Scratch
        let custody: any KeyCustodian
        var service: LocalCustodyService?
        if let vaultdPath {
            progress("handing the keyring to a local custody service...")
            let handed = try await seeding.handingCustodyOver(vaultdPath: vaultdPath)
            (scratch, service, custody) = (handed.0, handed.1, handed.2)
        } else {
            (scratch, custody) = (seeding, seeding.custody)
        }
        defer { service?.kill() }
        progress("baseline: custody alone rewraps the same keys" + (service == nil ? " in memory..." : "..."))
        let target = try await custody.rotate()
        let justification = Justification(principal: "bench", purpose: .rewrap, requestID: "bench")
        let clock = ContinuousClock()
        var start = clock.now
        for slice in stride(from: 0, to: records.count, by: batch) {
            let items = records[slice..<min(slice + batch, records.count)].map {
                RewrapItem(wrapped: $0.wrappedKey, context: $0.identity.wrapContext)
            }
            _ = try await custody.rewrap(items, to: target, justification: justification)
        }
        let custodySeconds = start.duration(to: clock.now).inSeconds
        // The rotation the job follows is recorded as vaultd would (custody already has v2 active).
        try await scratch.catalog.startRotation(
            RotationRecord(force: scratch.force, to: target, from: .master(force: scratch.force, version: 1),
                           requestedBy: "bench", startedAt: now), audit: [])
        progress("rotation job: moving \(keys) wrapped keys to \(target) in batches of \(batch)...")
        start = clock.now
        let report = try await scratch.engine.runKeyJobsToCompletion(force: scratch.force)
        let seconds = start.duration(to: clock.now).inSeconds
        let status = try await scratch.engine.keyStatus(force: scratch.force)
        if postgres != nil { try await scratch.catalog.removeForBenchmark(force: scratch.force) }
        guard report.rewrapped == keys, status.remaining == 0, report.failed == 0 else {
            throw VaultError(.integrityFailure, "the rotation job moved \(report.rewrapped) of \(keys) keys "
                                + "(\(report.failed) failed)")
        }
        return RotateResult(backend: service == nil ? "keyring" : "remote", catalog: postgres == nil ? "sqlite" : "postgres",
                            keys: keys, batch: batch, seconds: seconds,
                            custodyOnlyKeysPerSecond: Double(keys) / custodySeconds)
    }

    /// Shreds `archives` expired archives (each with its own archive key and blob) through vaultd's shredding pass.
    public func shred(archives: Int, batch: Int, logger: Logger, progress: (String) -> Void) async throws
        -> ShredResult
    {
        var settings = LifecycleSettings()
        settings.shredBatchSize = batch
        let scratch = try await scratch("shred", logger: logger, settings: settings)
        defer { _ = try? Subprocess.run("/bin/rm", ["-rf", scratch.path]) }
        progress("seeding \(archives) expired archives, each with an archive key and a blob...")
        let now = currentUnixTime()
        let dataset = try DatasetID(dataset: "bench")
        let identities = (0..<archives).map { _ in
            ExtractIdentity(force: scratch.force, dataset: dataset, extract: .generate())
        }
        let archiveKeys = try scratch.custody.createArchiveKeys(for: identities.map(\.extract))
        let justification = Justification(principal: "bench", purpose: .rewrap, requestID: "bench")
        var records: [ExtractRecord] = []
        records.reserveCapacity(archives)
        try FileBlobStore.makeDirectory("\(scratch.blobs.root)/\(scratch.force)/\(dataset)")
        let blob = [UInt8](repeating: 0x5A, count: 4096)
        for (identity, archiveKey) in zip(identities, archiveKeys) {
            let key = try await scratch.custody.generateDataKey(for: identity.wrapContext)
            let wrapped = try await scratch.custody.rewrap(key.wrapped, context: identity.wrapContext, to: archiveKey,
                                                           justification: justification)
            records.append(ExtractRecord(
                identity: identity, state: .archived, wrappedKey: wrapped, plaintextSize: 1, ciphertextSize: 4096,
                ciphertextSHA256: [UInt8](repeating: 0, count: 32), source: .plaintext, uploadedBy: "bench",
                createdAt: now - 100, committedAt: now - 100, archivedAt: now - 50, expiresAt: now - 1))
            try Self.writePlain(scratch.blobs.path(identity), blob)
        }
        try await scratch.catalog.insertForBenchmark(records, lineageSince: now - 100)
        // The archives were written long before they expire: the seeding's dirty pages are on disk before the clock
        // starts, so the shred's fsyncs do not pay for writing them back.
        try await BlockingWork.run { sync() }
        progress("shredding \(archives) archives in batches of \(batch)...")
        let clock = ContinuousClock()
        let start = clock.now
        let report = try await scratch.engine.shredPass(force: scratch.force, requestedBy: "bench")
        let seconds = start.duration(to: clock.now).inSeconds
        guard report.certificates.count == archives else {
            throw VaultError(.integrityFailure, "shredded \(report.certificates.count) of \(archives) archives")
        }
        progress("baseline: deleting \(archives) plain files, one directory fsync per batch...")
        let plainDirectory = "\(scratch.path)/plain"
        try FileBlobStore.makeDirectory(plainDirectory)
        for index in 0..<archives { try Self.writePlain("\(plainDirectory)/\(index)", blob) }
        let plainStart = clock.now
        for index in 0..<archives {
            unlink("\(plainDirectory)/\(index)")
            if index % batch == batch - 1 || index == archives - 1 { try DurableFile.syncDirectory(plainDirectory) }
        }
        let plainSeconds = plainStart.duration(to: clock.now).inSeconds
        var latencies = LatencyRecorder()
        for duration in report.durations { latencies.record(seconds: duration) }
        return ShredResult(archives: archives, batch: batch, seconds: seconds, p50Milliseconds: latencies.p50 * 1000,
                           p99Milliseconds: latencies.p99 * 1000, plainDeleteSeconds: plainSeconds)
    }

    static func writePlain(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw VaultError(.io, "cannot create \(path)") }
        defer { close(fd) }
        try bytes.withUnsafeBytes { try DurableFile.writeAll(fd: fd, $0, path: path) }
    }
}

extension CatalogDriver {
    /// Removes a benchmark force's extracts, lineage and rotations from a scratch PostgreSQL database, so runs do not
    /// pile up in it (its audit records stay: the chain is append-only).
    func removeForBenchmark(force: ForceID) async throws {
        try await runWrite(audited: false) {
            CatalogPlan.execute(CatalogStatement("DELETE FROM extract_keks WHERE force = ?", force.rawValue))
                .then(.execute(CatalogStatement("DELETE FROM extracts WHERE force = ?", force.rawValue)))
                .then(.execute(CatalogStatement("DELETE FROM rewrap_failures WHERE force = ?", force.rawValue)))
                .then(.execute(CatalogStatement("DELETE FROM rotations WHERE force = ?", force.rawValue)))
        }
    }

    /// Inserts committed extracts in bulk, with their first lineage entry (benchmark seeding only: no audit), a
    /// thousand rows a statement.
    func insertForBenchmark(_ records: [ExtractRecord], lineageSince: UnixTime) async throws {
        for slice in stride(from: 0, to: records.count, by: 1000) {
            let part = Array(records[slice..<min(slice + 1000, records.count)])
            let extracts = part.map { record -> [CatalogValue] in
                [.text(record.identity.force.rawValue), .text(record.identity.dataset.rawValue),
                 .text(record.identity.extract.rawValue), .text(record.state.rawValue),
                 .text(record.wrappedKey.json.canonicalString), .text(record.wrappedKey.kek.description),
                 .integer(Int64(record.plaintextSize)), .integer(Int64(record.ciphertextSize)),
                 .text(Hex.encode(record.ciphertextSHA256)), .text(record.source.rawValue), .text(record.uploadedBy),
                 .integer(record.createdAt), record.committedAt.map(CatalogValue.integer) ?? .null,
                 record.archivedAt.map(CatalogValue.integer) ?? .null,
                 record.expiresAt.map(CatalogValue.integer) ?? .null]
            }
            let lineage = part.map { record -> [CatalogValue] in
                [.text(record.identity.force.rawValue), .text(record.identity.extract.rawValue),
                 .text(record.wrappedKey.kek.description), .integer(lineageSince)]
            }
            try await runWrite(audited: false) {
                CatalogPlan.execute(CatalogStatement(
                    insertInto: "extracts",
                    columns: [("force", .text), ("dataset", .text), ("id", .text), ("state", .text),
                              ("wrapped_key", .text), ("kek", .text), ("plaintext_size", .integer),
                              ("ciphertext_size", .integer), ("ciphertext_sha256", .text), ("source", .text),
                              ("uploaded_by", .text), ("created_at", .integer), ("committed_at", .integer),
                              ("archived_at", .integer), ("expires_at", .integer)],
                    rows: extracts))
                .then(.execute(CatalogStatement(
                    insertInto: "extract_keks",
                    columns: [("force", .text), ("extract", .text), ("kek", .text), ("since", .integer)],
                    rows: lineage, onConflict: "ON CONFLICT DO NOTHING")))
            }
        }
        // PostgreSQL's autovacuum analyzes a table within a minute of a bulk insert; the benchmark does it at once, so
        // the job is planned on the statistics a catalog of this size has, not on those of an empty table.
        if dialect == .postgres {
            try await runWrite(audited: false) {
                CatalogPlan.execute(CatalogStatement("ANALYZE extracts"))
                    .then(.execute(CatalogStatement("ANALYZE extract_keks")))
            }
        }
    }
}
