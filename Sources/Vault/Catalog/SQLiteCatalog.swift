import GRDB
import KeyCustody
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The embedded catalog: SQLite in WAL mode with `synchronous=FULL`, schema migrations, one writer connection.
public final class SQLiteCatalog: Catalog {
    private let pool: DatabasePool
    public let path: String

    /// Opens (creating if needed) the catalog at `path` and brings its schema up to date. `extraMigrations` add
    /// tables of a component that keeps its own state beside the audit chain (the custody service). With
    /// `syncEveryCommit` false, commits survive a crash of the process but reach the disk only at the next
    /// `syncToDisk()` (SQLite's WAL with `synchronous=NORMAL`): the custody service's choice, which syncs every second.
    public init(path: String, extraMigrations: [(name: String, migrate: @Sendable (Database) throws -> Void)] = [],
                syncEveryCommit: Bool = true) throws {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            // Every commit reaches the disk before it is acknowledged (unless the owner syncs in batches).
            try db.execute(sql: syncEveryCommit ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL")
        }
        configuration.busyMode = .timeout(10)
        configuration.label = "vault-catalog"
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            var migrator = Self.migrator
            for extra in extraMigrations { migrator.registerMigration(extra.name, migrate: extra.migrate) }
            try migrator.migrate(pool)
        } catch {
            throw VaultError(.catalogUnavailable, "cannot open the catalog at \(path)",
                             underlying: String(describing: error))
        }
        self.path = path
    }

    /// Makes every commit so far durable: fsync of the write-ahead log (where `synchronous=NORMAL` commits sit,
    /// written but not yet synced) and of the database file, on a thread of NIO's blocking pool. Writers go on
    /// meanwhile: unlike a checkpoint, this takes no lock of SQLite's.
    public func syncToDisk() async throws {
        let files = [path + "-wal", path]
        try await NIOThreadPool.singleton.runIfActive {
            for file in files {
                let fd = open(file, O_RDONLY | O_CLOEXEC)
                if fd < 0, errno == ENOENT { continue }
                guard fd >= 0 else { throw VaultError(.catalogUnavailable, "cannot open \(file) to sync it") }
                defer { close(fd) }
                guard fsync(fd) == 0 else { throw VaultError(.catalogUnavailable, "cannot sync \(file) to disk") }
            }
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: extracts, datasets, use cases, audit") { db in
            try db.execute(sql: """
                CREATE TABLE datasets (
                    force TEXT NOT NULL, id TEXT NOT NULL, retention_days INTEGER NOT NULL,
                    created_at INTEGER NOT NULL, PRIMARY KEY (force, id));
                CREATE TABLE extracts (
                    force TEXT NOT NULL, dataset TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL,
                    wrapped_key TEXT NOT NULL, plaintext_size INTEGER NOT NULL, ciphertext_size INTEGER NOT NULL,
                    ciphertext_sha256 TEXT NOT NULL, source TEXT NOT NULL, uploaded_by TEXT NOT NULL,
                    created_at INTEGER NOT NULL, committed_at INTEGER, archived_at INTEGER, expires_at INTEGER,
                    PRIMARY KEY (force, id));
                -- A dataset never has two current extracts.
                CREATE UNIQUE INDEX extracts_one_current ON extracts (force, dataset) WHERE state = 'current';
                CREATE INDEX extracts_by_dataset ON extracts (force, dataset, state);
                CREATE INDEX extracts_by_state ON extracts (state, created_at);
                CREATE TABLE use_cases (
                    force TEXT NOT NULL, id TEXT NOT NULL, description TEXT NOT NULL, lawful_basis TEXT NOT NULL,
                    datasets TEXT NOT NULL, principals TEXT NOT NULL, valid_from INTEGER, valid_until INTEGER,
                    revoked_at INTEGER, updated_at INTEGER NOT NULL, PRIMARY KEY (force, id));
                CREATE TABLE audit (
                    force TEXT NOT NULL, seq INTEGER NOT NULL, time INTEGER NOT NULL, principal TEXT NOT NULL,
                    action TEXT NOT NULL, target TEXT NOT NULL, use_case TEXT, outcome TEXT NOT NULL,
                    detail TEXT NOT NULL, request_id TEXT NOT NULL, PRIMARY KEY (force, seq));
                -- The audit table is append-only.
                CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                    BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
                CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
                    BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
                """)
        }
        migrator.registerMigration("v2: bearer tokens") { db in
            try db.execute(sql: """
                CREATE TABLE tokens (
                    hash TEXT PRIMARY KEY, principal TEXT NOT NULL, description TEXT NOT NULL,
                    created_at INTEGER NOT NULL, revoked_at INTEGER);
                """)
        }
        migrator.registerMigration("v3: the audit chain") { db in
            try db.execute(sql: """
                CREATE TABLE audit_records (
                    force TEXT NOT NULL, seq INTEGER NOT NULL, time INTEGER NOT NULL, principal TEXT NOT NULL,
                    action TEXT NOT NULL, dataset TEXT, use_case TEXT, outcome TEXT NOT NULL, line TEXT NOT NULL,
                    hash TEXT NOT NULL, PRIMARY KEY (force, seq));
                CREATE INDEX audit_records_by_time ON audit_records (force, time);
                CREATE INDEX audit_records_by_principal ON audit_records (force, principal, seq);
                CREATE INDEX audit_records_by_dataset ON audit_records (force, dataset, seq);
                CREATE INDEX audit_records_by_use_case ON audit_records (force, use_case, seq);
                CREATE TABLE audit_heads (
                    force TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL, time INTEGER NOT NULL);
                CREATE TABLE write_probe (id INTEGER PRIMARY KEY, time INTEGER NOT NULL);
                CREATE TABLE audit_checkpoints (
                    force TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, time INTEGER NOT NULL,
                    signature TEXT NOT NULL, PRIMARY KEY (force, seq));
                CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
                    BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;
                CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
                    BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;
                CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
                    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
                CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
                    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
                """)
            // Records of the simple audit table join the chain in their order.
            let rows = try Row.fetchAll(db, sql: "SELECT * FROM audit ORDER BY force, seq")
            for row in rows {
                var detail = (try? JSONParser.parse(row["detail"] as String))?.objectValue ?? [:]
                detail["migrated"] = .bool(true)
                let target: String = row["target"]
                let parts = target.split(separator: "/").map(String.init)
                let dataset = parts.count >= 2 && parts[1] != "use-cases" ? try? DatasetID(dataset: parts[1]) : nil
                try insertAudit(db, [AuditEntry(
                    force: try ForceID(force: row["force"]), time: row["time"], principal: row["principal"],
                    action: row["action"], target: target, dataset: dataset, useCase: row["use_case"],
                    outcome: AuditOutcome(rawValue: row["outcome"]) ?? .error, detail: detail,
                    requestID: row["request_id"])])
            }
            try db.execute(sql: "DROP TABLE audit")
        }
        registerLifecycleMigration(&migrator)
        migrator.registerMigration("v5: job leases") { db in
            try db.execute(sql: """
                CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL);
                """)
        }
        migrator.registerMigration("v6: witness cosignatures") { db in
            try db.execute(sql: """
                CREATE TABLE audit_cosignatures (
                    force TEXT NOT NULL, seq INTEGER NOT NULL, witness TEXT NOT NULL, hash TEXT NOT NULL,
                    checkpoint_time INTEGER NOT NULL, cosigned INTEGER NOT NULL, signature TEXT NOT NULL,
                    PRIMARY KEY (force, seq, witness));
                CREATE TRIGGER audit_cosignatures_no_update BEFORE UPDATE ON audit_cosignatures
                    BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
                CREATE TRIGGER audit_cosignatures_no_delete BEFORE DELETE ON audit_cosignatures
                    BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
                """)
        }
        return migrator
    }

    /// Runs a write transaction, turning database errors into catalog errors. A transaction that carries audit
    /// records and fails because the database cannot be written (I/O error, full disk, read-only or unopenable
    /// files) fails with `audit_unavailable`: the change it would have recorded did not happen.
    func write<T: Sendable>(audited: Bool = true, _ body: @escaping @Sendable (Database) throws -> T)
        async throws -> T
    {
        do {
            return try await pool.write(body)
        } catch let error as VaultError {
            throw error
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw VaultError(.conflict, "the catalog refused a conflicting change", underlying: error.message)
        } catch let error as DatabaseError
            where audited && Self.unwritable.contains(error.resultCode)
        {
            throw VaultError(.auditUnavailable, "the audit trail cannot be written, so the action was not "
                                + "performed; try again when the vault is ready", underlying: String(describing: error))
        } catch {
            throw VaultError(.catalogUnavailable, "catalog write failed", underlying: String(describing: error))
        }
    }

    /// Writes a consistent copy of the whole catalog to `path` (`VACUUM INTO`), as a backup job would.
    public func backup(to path: String) async throws {
        do {
            try await pool.writeWithoutTransaction { db in try db.execute(sql: "VACUUM INTO ?", arguments: [path]) }
        } catch {
            throw VaultError(.catalogUnavailable, "cannot back up the catalog to \(path)",
                             underlying: String(describing: error))
        }
    }

    /// Result codes that mean the database files cannot be written at all (as opposed to a busy lock or a bug).
    static let unwritable: [ResultCode] = [.SQLITE_IOERR, .SQLITE_FULL, .SQLITE_READONLY, .SQLITE_CANTOPEN]

    public func probeWrite() async throws {
        try await write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO write_probe (id, time) VALUES (1, ?)",
                           arguments: [currentUnixTime()])
        }
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.read(body)
        } catch let error as VaultError {
            throw error
        } catch {
            throw VaultError(.catalogUnavailable, "catalog read failed", underlying: String(describing: error))
        }
    }

    // MARK: Extracts

    public func beginUpload(_ extract: ExtractRecord) async throws {
        try await write(audited: false) { db in
            let exists = try Bool.fetchOne(db, sql: "SELECT 1 FROM extracts WHERE force = ? AND id = ?",
                                           arguments: [extract.identity.force.rawValue,
                                                       extract.identity.extract.rawValue]) ?? false
            guard !exists else {
                throw VaultError(.duplicateExtract,
                                 "extract \(extract.identity.extract) of force \(extract.identity.force) exists already")
            }
            try Self.refuseDestroyedKEK(db, extract.wrappedKey.kek)
            try db.execute(sql: """
                INSERT INTO extracts (force, dataset, id, state, wrapped_key, kek, plaintext_size, ciphertext_size,
                    ciphertext_sha256, source, uploaded_by, created_at)
                VALUES (?, ?, ?, 'uploading', ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [
                    extract.identity.force.rawValue, extract.identity.dataset.rawValue, extract.identity.extract.rawValue,
                    extract.wrappedKey.json.canonicalString, extract.wrappedKey.kek.description,
                    Int64(extract.plaintextSize), Int64(extract.ciphertextSize),
                    Hex.encode(extract.ciphertextSHA256), extract.source.rawValue, extract.uploadedBy, extract.createdAt,
                ])
            try Self.addLineage(db, extract.identity, kek: extract.wrappedKey.kek, since: extract.createdAt)
        }
    }

    public func commitUpload(
        force: ForceID, extract: ExtractID, sizes: (plaintext: UInt64, ciphertext: UInt64, sha256: [UInt8]),
        now: UnixTime, archival: ArchivalRewrap?, audit: [AuditEntry],
        archiveAudit: @escaping @Sendable (ExtractRecord) -> AuditEntry
    ) async throws -> (current: ExtractRecord, archived: ExtractRecord?) {
        let (plaintext, ciphertext, sha256) = sizes
        return try await write { db in
            guard let uploading = try Self.fetchExtract(db, force: force, id: extract), uploading.state == .uploading
            else { throw VaultError(.conflict, "extract \(extract) is not an upload in progress") }
            try Self.refuseDestroyedKEK(db, uploading.wrappedKey.kek)
            let dataset = uploading.identity.dataset
            let retention = try Self.retentionDays(db, force: force, dataset: dataset, now: now)
            var archived: ExtractRecord?
            let previous = try Self.fetchCurrent(db, force: force, dataset: dataset)
            try UploadCommit.checkArchival(current: previous, archival: archival)
            if let current = previous, let archival {
                let previous = UploadCommit.archived(current, at: now, retentionDays: retention, archival: archival)
                try db.execute(sql: """
                    UPDATE extracts SET state = 'archived', archived_at = ?, expires_at = ?, wrapped_key = ?, kek = ?
                    WHERE force = ? AND id = ? AND state = 'current'
                    """, arguments: [now, previous.expiresAt, archival.to.json.canonicalString,
                                     archival.to.kek.description, force.rawValue, previous.identity.extract.rawValue])
                try Self.addLineage(db, previous.identity, kek: archival.to.kek, since: now)
                archived = previous
            }
            try db.execute(sql: """
                UPDATE extracts SET state = 'current', committed_at = ?, plaintext_size = ?, ciphertext_size = ?,
                    ciphertext_sha256 = ?
                WHERE force = ? AND id = ? AND state = 'uploading'
                """, arguments: [now, Int64(plaintext), Int64(ciphertext), Hex.encode(sha256), force.rawValue,
                                 extract.rawValue])
            try Self.insertAudit(db, audit + (archived.map { [archiveAudit($0)] } ?? []))
            return (UploadCommit.committed(uploading, at: now, sizes: sizes), archived)
        }
    }

    public func appendAuditIfCurrent(force: ForceID, extract: ExtractID, audit: [AuditEntry]) async throws -> Bool {
        try await appendAudit(ifExtract: extract, of: force, isIn: .current, audit: audit)
    }

    public func appendAudit(ifExtract extract: ExtractID, of force: ForceID, isIn expected: ExtractState,
                            audit: [AuditEntry]) async throws -> Bool
    {
        try await write { db in
            let state = try String.fetchOne(db, sql: "SELECT state FROM extracts WHERE force = ? AND id = ?",
                                            arguments: [force.rawValue, extract.rawValue])
            guard state == expected.rawValue else { return false }
            try Self.insertAudit(db, audit)
            return true
        }
    }

    public func abandonUpload(force: ForceID, extract: ExtractID) async throws {
        try await write(audited: false) { db in
            try db.execute(sql: "DELETE FROM extracts WHERE force = ? AND id = ? AND state = 'uploading'",
                           arguments: [force.rawValue, extract.rawValue])
        }
    }

    public func staleUploads(before cutoff: UnixTime) async throws -> [ExtractRecord] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM extracts WHERE state = 'uploading' AND created_at < ?",
                             arguments: [cutoff]).map(Self.extract(from:))
        }
    }

    public func currentExtract(force: ForceID, dataset: DatasetID) async throws -> ExtractRecord? {
        try await read { db in try Self.fetchCurrent(db, force: force, dataset: dataset) }
    }

    public func extract(force: ForceID, id: ExtractID) async throws -> ExtractRecord? {
        try await read { db in try Self.fetchExtract(db, force: force, id: id) }
    }

    public func extracts(force: ForceID, dataset: DatasetID?, states: Set<ExtractState>) async throws -> [ExtractRecord] {
        let stateList = states.map(\.rawValue).sorted()
        return try await read { db in
            let placeholders = stateList.map { _ in "?" }.joined(separator: ", ")
            var arguments: [any DatabaseValueConvertible] = [force.rawValue]
            var sql = "SELECT * FROM extracts WHERE force = ? AND state IN (\(placeholders))"
            arguments.append(contentsOf: stateList)
            if let dataset {
                sql += " AND dataset = ?"
                arguments.append(dataset.rawValue)
            }
            sql += " ORDER BY created_at, id"
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map(Self.extract(from:))
        }
    }

    static func fetchExtract(_ db: Database, force: ForceID, id: ExtractID) throws -> ExtractRecord? {
        try Row.fetchOne(db, sql: "SELECT * FROM extracts WHERE force = ? AND id = ?",
                         arguments: [force.rawValue, id.rawValue]).map(extract(from:))
    }

    static func fetchCurrent(_ db: Database, force: ForceID, dataset: DatasetID) throws -> ExtractRecord? {
        try Row.fetchOne(db, sql: "SELECT * FROM extracts WHERE force = ? AND dataset = ? AND state = 'current'",
                         arguments: [force.rawValue, dataset.rawValue]).map(extract(from:))
    }

    static func extract(from row: Row) throws -> ExtractRecord {
        guard let state = ExtractState(rawValue: row["state"]), let source = ExtractSource(rawValue: row["source"]),
            let sha = Hex.decode(row["ciphertext_sha256"])
        else { throw VaultError(.catalogUnavailable, "catalog row for extract \(row["id"] as String) is corrupt") }
        let identity = ExtractIdentity(force: try ForceID(force: row["force"]),
                                       dataset: try DatasetID(dataset: row["dataset"]),
                                       extract: try ExtractID(row["id"]))
        return ExtractRecord(
            identity: identity, state: state, wrappedKey: try WrappedKey(json: try JSONParser.parse(row["wrapped_key"] as String)),
            plaintextSize: UInt64(row["plaintext_size"] as Int64), ciphertextSize: UInt64(row["ciphertext_size"] as Int64),
            ciphertextSHA256: sha, source: source, uploadedBy: row["uploaded_by"], createdAt: row["created_at"],
            committedAt: row["committed_at"], archivedAt: row["archived_at"], expiresAt: row["expires_at"],
            hold: (row["hold_reason"] as String?).map {
                LegalHold(reason: $0, placedBy: row["hold_by"] ?? "", placedAt: row["hold_at"] ?? 0)
            },
            shreddedAt: row["shredded_at"], certificate: row["certificate"])
    }

    // MARK: Datasets

    static func retentionDays(_ db: Database, force: ForceID, dataset: DatasetID, now: UnixTime) throws -> Int {
        if let days = try Int.fetchOne(db, sql: "SELECT retention_days FROM datasets WHERE force = ? AND id = ?",
                                       arguments: [force.rawValue, dataset.rawValue]) {
            return days
        }
        try db.execute(sql: "INSERT INTO datasets (force, id, retention_days, created_at) VALUES (?, ?, ?, ?)",
                       arguments: [force.rawValue, dataset.rawValue, DatasetRecord.defaultRetentionDays, now])
        return DatasetRecord.defaultRetentionDays
    }

    public func dataset(force: ForceID, id: DatasetID) async throws -> DatasetRecord? {
        try await read { db in
            try Int.fetchOne(db, sql: "SELECT retention_days FROM datasets WHERE force = ? AND id = ?",
                             arguments: [force.rawValue, id.rawValue])
                .map { DatasetRecord(force: force, id: id, retentionDays: $0) }
        }
    }

    public func putDataset(_ dataset: DatasetRecord, audit: [AuditEntry]) async throws {
        try await write { db in
            try db.execute(sql: """
                INSERT INTO datasets (force, id, retention_days, created_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (force, id) DO UPDATE SET retention_days = excluded.retention_days
                """, arguments: [dataset.force.rawValue, dataset.id.rawValue, dataset.retentionDays, currentUnixTime()])
            try Self.insertAudit(db, audit)
        }
    }

    // MARK: Use cases

    public func useCase(force: ForceID, id: ResourceID) async throws -> UseCase? {
        try await read { db in try Self.useCase(db, force: force, id: id) }
    }

    static func useCase(_ db: Database, force: ForceID, id: ResourceID) throws -> UseCase? {
        try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM use_cases WHERE force = ? AND id = ?"),
                         arguments: [force.rawValue, id.rawValue]).map(Self.useCase(from:))
    }

    public func useCases(force: ForceID) async throws -> [UseCase] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM use_cases WHERE force = ? ORDER BY id",
                             arguments: [force.rawValue]).map(Self.useCase(from:))
        }
    }

    public func putUseCase(_ useCase: UseCase, audit: @escaping @Sendable (_ existed: Bool) -> [AuditEntry])
        async throws
    {
        try await write { db in
            let existed = try Self.upsertUseCase(db, useCase)
            try Self.insertAudit(db, audit(existed))
        }
    }

    /// Creates or replaces a use case row (a revoked one stays revoked); whether it existed.
    static func upsertUseCase(_ db: Database, _ useCase: UseCase) throws -> Bool {
        let existed = try Bool.fetchOne(db, sql: "SELECT 1 FROM use_cases WHERE force = ? AND id = ?",
                                        arguments: [useCase.force.rawValue, useCase.id.rawValue]) ?? false
        try db.execute(sql: """
            INSERT INTO use_cases (force, id, description, lawful_basis, datasets, principals, valid_from,
                valid_until, revoked_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (force, id) DO UPDATE SET description = excluded.description,
                lawful_basis = excluded.lawful_basis, datasets = excluded.datasets,
                principals = excluded.principals, valid_from = excluded.valid_from,
                valid_until = excluded.valid_until, revoked_at = COALESCE(use_cases.revoked_at, excluded.revoked_at),
                updated_at = excluded.updated_at
            """, arguments: [
                useCase.force.rawValue, useCase.id.rawValue, useCase.description, useCase.lawfulBasis,
                JSONValue.array(useCase.datasets.map { .string($0.rawValue) }).canonicalString,
                JSONValue.array(useCase.principals.map { .string($0) }).canonicalString,
                useCase.validFrom, useCase.validUntil, useCase.revokedAt, useCase.updatedAt,
            ])
        return existed
    }

    public func revokeUseCase(force: ForceID, id: ResourceID, at time: UnixTime, audit: [AuditEntry]) async throws
        -> UseCase?
    {
        try await write { db in
            guard let revoked = try Self.markRevoked(db, force: force, id: id, at: time) else { return nil }
            try Self.insertAudit(db, audit)
            return revoked
        }
    }

    /// Marks a use case revoked (once); the row as it is then, or nil when there is none.
    static func markRevoked(_ db: Database, force: ForceID, id: ResourceID, at time: UnixTime) throws -> UseCase? {
        try db.execute(sql: """
            UPDATE use_cases SET revoked_at = COALESCE(revoked_at, ?), updated_at = ? WHERE force = ? AND id = ?
            """, arguments: [time, time, force.rawValue, id.rawValue])
        guard db.changesCount > 0 else { return nil }
        return try Row.fetchOne(db, sql: "SELECT * FROM use_cases WHERE force = ? AND id = ?",
                                arguments: [force.rawValue, id.rawValue]).map(Self.useCase(from:))
    }

    static func useCase(from row: Row) throws -> UseCase {
        func strings(_ column: String) throws -> [String] {
            try (JSONParser.parse(row[column] as String).arrayValue ?? []).compactMap(\.stringValue)
        }
        return UseCase(
            force: try ForceID(force: row["force"]), id: try ResourceID(row["id"], kind: "use case id"),
            description: row["description"], lawfulBasis: row["lawful_basis"],
            datasets: try strings("datasets").map { try DatasetID(dataset: $0) }, principals: try strings("principals"),
            validFrom: row["valid_from"], validUntil: row["valid_until"], revokedAt: row["revoked_at"],
            updatedAt: row["updated_at"])
    }

    // MARK: Audit chain

    public func appendAudit(_ entries: [AuditEntry]) async throws {
        try await write { db in try Self.insertAudit(db, entries) }
    }

    /// Writes the records `AuditAppend` computes from each chain's head, and the new heads.
    static func insertAudit(_ db: Database, _ entries: [AuditEntry]) throws {
        // Prepared once per connection: every state change and every access comes through here.
        let selectHead = try db.cachedStatement(sql: "SELECT seq, hash, time FROM audit_heads WHERE force = ?")
        let insertRecord = try db.cachedStatement(sql: """
            INSERT INTO audit_records (force, seq, time, principal, action, dataset, use_case, outcome, line, hash)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        let upsertHead = try db.cachedStatement(sql: """
            INSERT INTO audit_heads (force, seq, hash, time) VALUES (?, ?, ?, ?)
            ON CONFLICT (force) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time = excluded.time
            """)
        for chain in AuditAppend(entries).chains {
            let head = try Row.fetchOne(selectHead, arguments: [chain.force.rawValue]).map { row in
                AuditAppend.Head(seq: row["seq"], hash: row["hash"], time: row["time"])
            }
            let (records, next) = chain.records(after: head)
            for (record, entry) in zip(records, chain.entries) {
                try insertRecord.execute(arguments: [
                    chain.force.rawValue, record.seq, record.time, entry.principal, entry.action,
                    entry.dataset?.rawValue, entry.useCase, entry.outcome.rawValue,
                    String(decoding: record.line, as: UTF8.self), record.hash,
                ])
            }
            try upsertHead.execute(arguments: [chain.force.rawValue, next.seq, next.hash, next.time])
        }
    }

    public func auditHead(force: ForceID) async throws -> (seq: Int64, hash: String)? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit_heads WHERE force = ?", arguments: [force.rawValue])
                .map { ($0["seq"], $0["hash"]) }
        }
    }

    public func auditLines(force: ForceID, after: Int64, through: Int64, limit: Int) async throws -> [AuditLine] {
        try await read { db in
            try Row.fetchAll(db, sql: """
                SELECT seq, line FROM audit_records WHERE force = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?
                """, arguments: [force.rawValue, after, through, limit])
                .map { AuditLine(seq: $0["seq"], line: Array(($0["line"] as String).utf8)) }
        }
    }

    public func auditCheckpoints(force: ForceID, from: Int64, through: Int64) async throws -> [AuditCheckpoint] {
        try await read { db in
            try Row.fetchAll(db, sql: """
                SELECT * FROM audit_checkpoints WHERE force = ? AND seq >= ? AND seq <= ? ORDER BY seq
                """, arguments: [force.rawValue, from, through]).map(Self.checkpoint(from:))
        }
    }

    public func checkpointAudit(force: ForceID, now: UnixTime, signer: AuditSigner) async throws -> AuditCheckpoint? {
        try await write { db in
            guard let head = try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit_heads WHERE force = ?",
                                              arguments: [force.rawValue])
            else { return nil }
            if let latest = try Row.fetchOne(db, sql: """
                SELECT * FROM audit_checkpoints WHERE force = ? ORDER BY seq DESC LIMIT 1
                """, arguments: [force.rawValue]).map(Self.checkpoint(from:)), latest.seq == head["seq"] as Int64 {
                return latest
            }
            let checkpoint = signer.checkpoint(force: force, seq: head["seq"], hash: head["hash"], time: now)
            try db.execute(sql: """
                INSERT INTO audit_checkpoints (force, seq, hash, time, signature) VALUES (?, ?, ?, ?, ?)
                """, arguments: [force.rawValue, checkpoint.seq, checkpoint.hash, checkpoint.time,
                                 Base64.encode(checkpoint.signature)])
            return checkpoint
        }
    }

    public func checkpointAudit(force: ForceID, at seq: Int64, now: UnixTime, signer: AuditSigner) async throws
        -> AuditCheckpoint
    {
        try await write { db in
            if let existing = try Row.fetchOne(db, sql: "SELECT * FROM audit_checkpoints WHERE force = ? AND seq = ?",
                                               arguments: [force.rawValue, seq]) {
                return try Self.checkpoint(from: existing)
            }
            guard let hash = try String.fetchOne(db, sql: "SELECT hash FROM audit_records WHERE force = ? AND seq = ?",
                                                 arguments: [force.rawValue, seq])
            else { throw VaultError(.notFound, "the audit chain of \(force) has no record \(seq)") }
            let checkpoint = signer.checkpoint(force: force, seq: seq, hash: hash, time: now)
            try db.execute(sql: """
                INSERT INTO audit_checkpoints (force, seq, hash, time, signature) VALUES (?, ?, ?, ?, ?)
                """, arguments: [force.rawValue, seq, hash, now, Base64.encode(checkpoint.signature)])
            return checkpoint
        }
    }

    public func addCosignature(_ cosignature: Cosignature) async throws {
        try await write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO audit_cosignatures (force, seq, witness, hash, checkpoint_time, cosigned, signature)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [cosignature.force.rawValue, cosignature.seq, cosignature.witness, cosignature.hash,
                                 cosignature.checkpointTime, cosignature.cosigned, Base64.encode(cosignature.signature)])
        }
    }

    public func cosignatures(force: ForceID, from: Int64, through: Int64) async throws -> [Cosignature] {
        try await read { db in
            try Row.fetchAll(db, sql: """
                SELECT * FROM audit_cosignatures WHERE force = ? AND seq >= ? AND seq <= ? ORDER BY seq, witness
                """, arguments: [force.rawValue, from, through]).map { row in
                guard let signature = Base64.decode(row["signature"]) else {
                    throw VaultError(.catalogUnavailable, "catalog row for a cosignature is corrupt")
                }
                return Cosignature(force: force, seq: row["seq"], hash: row["hash"],
                                   checkpointTime: row["checkpoint_time"], cosigned: row["cosigned"],
                                   witness: row["witness"], signature: signature)
            }
        }
    }

    public func lastCosigned(force: ForceID) async throws -> (seq: Int64, hash: String)? {
        try await read { db in
            try Row.fetchOne(db, sql: """
                SELECT seq, hash FROM audit_cosignatures WHERE force = ? ORDER BY seq DESC LIMIT 1
                """, arguments: [force.rawValue]).map { ($0["seq"], $0["hash"]) }
        }
    }

    static func checkpoint(from row: Row) throws -> AuditCheckpoint {
        guard let signature = Base64.decode(row["signature"]) else {
            throw VaultError(.catalogUnavailable, "catalog row for checkpoint \(row["seq"] as Int64) is corrupt")
        }
        return AuditCheckpoint(force: try ForceID(force: row["force"]), seq: row["seq"], hash: row["hash"],
                               time: row["time"], signature: signature)
    }

    public func auditSeq(force: ForceID, notBefore time: UnixTime) async throws -> Int64? {
        try await read { db in
            try Int64.fetchOne(db, sql: "SELECT MIN(seq) FROM audit_records WHERE force = ? AND time >= ?",
                               arguments: [force.rawValue, time])
        }
    }

    public func searchAudit(force: ForceID, query: AuditQuery) async throws -> [AuditLine] {
        try await read { db in
            var sql = "SELECT seq, line FROM audit_records WHERE force = ? AND seq > ?"
            var arguments: [(any DatabaseValueConvertible)?] = [force.rawValue, query.afterSeq]
            func equal(_ column: String, _ value: String?) {
                guard let value else { return }
                sql += " AND \(column) = ?"
                arguments.append(value)
            }
            equal("principal", query.principal)
            equal("use_case", query.useCase)
            equal("dataset", query.dataset?.rawValue)
            equal("outcome", query.outcome?.rawValue)
            if let action = query.action {
                if action.hasSuffix("*") {
                    sql += " AND substr(action, 1, ?) = ?"
                    let prefix = String(action.dropLast())
                    arguments.append(prefix.utf8.count)
                    arguments.append(prefix)
                } else {
                    equal("action", action)
                }
            }
            if let from = query.from {
                sql += " AND time >= ?"
                arguments.append(from)
            }
            if let until = query.until {
                sql += " AND time < ?"
                arguments.append(until)
            }
            sql += " ORDER BY seq LIMIT ?"
            arguments.append(query.limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments))
                .map { AuditLine(seq: $0["seq"], line: Array(($0["line"] as String).utf8)) }
        }
    }

    public func archivesPastExpiry(now: UnixTime) async throws -> [ForceID: Int] {
        try await read { db in
            var counts: [ForceID: Int] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT force, COUNT(*) AS n FROM extracts WHERE state = 'archived' AND expires_at <= ? GROUP BY force
                """, arguments: [now]) {
                counts[try ForceID(force: row["force"])] = row["n"]
            }
            return counts
        }
    }

    // MARK: Tokens

    public func addToken(hash: String, principal: String, description: String, createdAt: UnixTime,
                         audit: [AuditEntry]) async throws
    {
        try await write { db in
            try db.execute(sql: "INSERT INTO tokens (hash, principal, description, created_at) VALUES (?, ?, ?, ?)",
                           arguments: [hash, principal, description, createdAt])
            try Self.insertAudit(db, audit)
        }
    }

    // MARK: Leases

    public func takeLease(_ name: String, holder: String, seconds: Int64, now: UnixTime) async throws -> Bool {
        try await write(audited: false) { db in
            try db.execute(sql: """
                INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
                """, arguments: [name, holder, now + seconds, now])
            return db.changesCount > 0
        }
    }

    public func releaseLeases(holderPrefix: String) async throws -> Int {
        try await write(audited: false) { db in
            try db.execute(sql: "DELETE FROM leases WHERE substr(holder, 1, ?) = ?",
                           arguments: [holderPrefix.utf8.count, holderPrefix])
            return db.changesCount
        }
    }

    public func releaseLease(_ name: String, holder: String) async throws {
        try await write(audited: false) { db in
            try db.execute(sql: "DELETE FROM leases WHERE name = ? AND holder = ?", arguments: [name, holder])
        }
    }

    public func tokenPrincipal(hash: String) async throws -> String? {
        try await read { db in
            try String.fetchOne(db, sql: "SELECT principal FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                                arguments: [hash])
        }
    }
}
