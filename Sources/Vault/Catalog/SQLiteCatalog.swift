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
        migrator.registerMigration("v7: token expiry, dataset descriptions") { db in
            // Tokens issued before expiry existed get the default lifetime from the upgrade on.
            try db.execute(sql: """
                ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
                UPDATE tokens SET expires_at = CAST(strftime('%s', 'now') AS INTEGER) + \(BearerToken.defaultLifetime);
                CREATE INDEX tokens_by_principal ON tokens (principal);
                ALTER TABLE datasets ADD COLUMN description TEXT NOT NULL DEFAULT '';
                ALTER TABLE datasets ADD COLUMN updated_at INTEGER;
                """)
        }
        migrator.registerMigration("v8: partial indexes for rows in flight and archives by expiry") { db in
            try db.execute(sql: CatalogPlans.partialStateIndexes.joined(separator: ";\n"))
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

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.read(body)
        } catch let error as VaultError {
            throw error
        } catch {
            throw VaultError(.catalogUnavailable, "catalog read failed", underlying: String(describing: error))
        }
    }

    // MARK: Driver

    /// Runs `plan`'s statements on `db`, inside the caller's transaction.
    static func run<T>(_ plan: CatalogPlan<T>, in db: Database) throws -> T {
        try plan.run { statement in try perform(statement, in: db) }
    }

    /// Runs one statement, prepared once per connection.
    static func perform(_ statement: CatalogStatement, in db: Database) throws -> [CatalogRow] {
        switch statement.form {
        case .sql(let sql, let arguments):
            let prepared = try db.cachedStatement(sql: sql)
            let bound = StatementArguments(arguments.map(\.databaseValue))
            guard prepared.columnCount > 0 else {
                try prepared.execute(arguments: bound)
                return []
            }
            let columns = prepared.columnNames
            var rows: [CatalogRow] = []
            let cursor = try Row.fetchCursor(prepared, arguments: bound)
            while let row = try cursor.next() {
                rows.append(CatalogRow(columns: columns, values: row.databaseValues.map(CatalogValue.init)))
            }
            return rows
        case .insert(let table, let columns, let rows, let onConflict):
            // One prepared statement, run once per row: as fast as SQLite inserts go.
            let prepared = try db.cachedStatement(sql: """
                INSERT INTO \(table) (\(columns.map(\.name).joined(separator: ", ")))
                VALUES (\(CatalogStatement.placeholders(columns.count))) \(onConflict ?? "")
                """)
            for row in rows {
                try prepared.execute(arguments: StatementArguments(row.map(\.databaseValue)))
            }
            return []
        }
    }

    // Shared plans run inside a transaction of the custody service or of a schema migration.

    static func insertAudit(_ db: Database, _ entries: [AuditEntry]) throws {
        try run(CatalogPlans.appendAudit(entries), in: db)
    }

    static func upsertUseCase(_ db: Database, _ useCase: UseCase) throws -> Bool {
        try run(CatalogPlans.upsertUseCase(useCase), in: db)
    }

    static func markRevoked(_ db: Database, force: ForceID, id: ResourceID, at time: UnixTime) throws -> UseCase? {
        try run(CatalogPlans.markRevoked(force: force, id: id, at: time), in: db)
    }

    static func useCase(_ db: Database, force: ForceID, id: ResourceID) throws -> UseCase? {
        try run(CatalogPlans.useCase(force: force, id: id), in: db)
    }

    static func useCase(from row: Row) throws -> UseCase {
        try UseCase(catalogRow: CatalogRow(row))
    }
}

extension SQLiteCatalog: CatalogDriver {
    public var dialect: CatalogDialect { .sqlite }

    public func runWrite<T: Sendable>(audited: Bool, _ make: @escaping @Sendable () throws -> CatalogPlan<T>)
        async throws -> T
    {
        try await write(audited: audited) { db in try Self.run(try make(), in: db) }
    }

    /// A GRDB read is one snapshot, whatever the number of statements.
    public func runRead<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        try await read { db in try Self.run(try make(), in: db) }
    }

    public func runSnapshot<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        try await runRead(make)
    }
}

extension CatalogValue {
    var databaseValue: DatabaseValue {
        switch self {
        case .null: .null
        case .integer(let value): value.databaseValue
        case .text(let value): value.databaseValue
        }
    }

    init(_ value: DatabaseValue) {
        switch value.storage {
        case .null: self = .null
        case .int64(let integer): self = .integer(integer)
        case .double(let double): self = Int64(exactly: double).map(CatalogValue.integer) ?? .text("\(double)")
        case .string(let text): self = .text(text)
        case .blob(let bytes): self = .text(String(decoding: bytes, as: UTF8.self))
        }
    }
}

extension CatalogRow {
    /// A GRDB row (read by a statement outside the plans).
    init(_ row: Row) {
        self.init(columns: Array(row.columnNames), values: row.databaseValues.map(CatalogValue.init))
    }
}
