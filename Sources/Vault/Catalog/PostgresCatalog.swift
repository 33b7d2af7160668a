import KeyCustody
import Logging
import NIOSSL
import PostgresNIO
import ServiceLifecycle

/// The scaled-out catalog: PostgreSQL through a postgres-nio connection pool, shared by several vaultd instances.
///
/// Writes run at `SERIALIZABLE` isolation and are retried when PostgreSQL reports a serialization failure or a
/// deadlock, so they behave as if one writer ran them one after another, as SQLite's single writer does. The pool
/// only works while `run()` runs (in vaultd's `ServiceGroup`; `open(url:logger:)` starts it for the CLI and tests).
public final class PostgresCatalog: Catalog, Service {
    let client: PostgresClient
    let logger: Logger
    /// The catalog's URL with its password replaced by `***`, for messages and logs.
    public let redactedURL: String

    /// Prepares a pool for `postgres://user[:password]@host[:port]/database[?sslmode=disable]` (or
    /// `postgresql://`); the password may instead come from `PGPASSWORD`. Nothing connects until `run()`.
    public init(url: String, logger: Logger = Logger(label: "vault-catalog")) throws {
        let parsed = try ConnectionURL(url)
        // Plaintext only over loopback (or when the URL says sslmode=disable); otherwise TLS with the server's
        // certificate and host name verified.
        var tls = PostgresClient.Configuration.TLS.disable
        if parsed.tls {
            var settings = TLSConfiguration.makeClientConfiguration()
            settings.minimumTLSVersion = .tlsv12
            if let root = parsed.rootCertificate { settings.trustRoots = .file(root) }
            tls = .require(settings)
        }
        let configuration = PostgresClient.Configuration(
            host: parsed.host, port: parsed.port, username: parsed.username, password: parsed.password,
            database: parsed.database, tls: tls)
        client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.logger = logger
        redactedURL = parsed.redacted
    }

    /// Runs the connection pool until the task is cancelled or the service group shuts down.
    public func run() async throws {
        await client.run()
    }

    /// Starts the pool in a task and brings the schema up to date, for callers without a `ServiceGroup` (the CLI,
    /// tests). Cancelling `runner` closes the pool.
    public static func open(url: String, logger: Logger) async throws
        -> (catalog: PostgresCatalog, runner: Task<Void, Never>)
    {
        let catalog = try PostgresCatalog(url: url, logger: logger)
        let runner = Task { await catalog.client.run() }
        // Let the pool start before the first query (which would otherwise wait for it, with a warning).
        for _ in 0..<20 { await Task.yield() }
        do {
            try await catalog.migrate()
        } catch {
            runner.cancel()
            throw error
        }
        return (catalog, runner)
    }

    // MARK: Transactions

    /// A leased connection and the logger its queries report to. Every query's rows are read to the end.
    struct Session: Sendable {
        let connection: PostgresConnection
        let logger: Logger

        /// Runs `query` and returns its rows.
        @discardableResult
        func rows(_ query: PostgresQuery) async throws -> [Row] {
            try await connection.query(query, logger: logger).collect().map(Row.init)
        }

        /// The first row of `query`, if any.
        func row(_ query: PostgresQuery) async throws -> Row? {
            try await rows(query).first
        }

        func execute(_ query: PostgresQuery) async throws {
            try await rows(query)
        }
    }

    /// A row whose columns are read by name; a missing column or an unexpected value fails as a catalog error
    /// instead of trapping.
    struct Row: Sendable {
        private let cells: PostgresRandomAccessRow

        init(_ row: PostgresRow) {
            cells = row.makeRandomAccess()
        }

        func value<T: PostgresDecodable>(_ column: String, as type: T.Type = T.self) throws -> T {
            guard cells.contains(column) else {
                throw VaultError(.catalogUnavailable, "the catalog has no column \(column); is its schema up to date?")
            }
            do {
                return try cells[column].decode(T.self)
            } catch {
                // The decoding error would carry the cell's bytes; name the column only.
                throw VaultError(.catalogUnavailable, "catalog column \(column) holds an unexpected value")
            }
        }
    }

    /// SQL put together at run time, its placeholders numbered as values are bound.
    struct DynamicQuery {
        private(set) var sql = ""
        private var binds = PostgresBindings()

        init() {}

        mutating func append(_ sql: String) {
            self.sql += sql
        }

        /// Appends `sql` followed by the placeholder of `value`.
        mutating func append<Value: PostgresNonThrowingEncodable>(_ sql: String, bind value: Value) {
            binds.append(value)
            self.sql += sql + "$\(binds.count)"
        }

        var query: PostgresQuery { PostgresQuery(unsafeSQL: sql, binds: binds) }
    }

    /// How many times a transaction runs before a serialization failure is reported.
    static let maximumAttempts = 10

    /// Runs a write transaction at `SERIALIZABLE` isolation, retrying it after serialization failures and
    /// deadlocks (so `body` must not act outside the database), and turns database errors into catalog errors. A
    /// transaction that carries audit records and fails because the database cannot be written (unreachable,
    /// read-only, out of space, shutting down) fails with `audit_unavailable`: the change it would have recorded did
    /// not happen.
    func write<T: Sendable>(audited: Bool = true, _ body: @escaping @Sendable (Session) async throws -> T)
        async throws -> T
    {
        var attempt = 1
        while true {
            do {
                return try await client.withConnection { connection in
                    try await Self.transaction(Session(connection: connection, logger: self.logger), body)
                }
            } catch let error where attempt < Self.maximumAttempts && Self.isSerializationFailure(error) {
                attempt += 1
                logger.debug("catalog transaction collided with another; retrying",
                             metadata: ["attempt": "\(attempt)"])
                // A random pause, growing with each attempt, so the colliding transactions do not meet again.
                do {
                    try await Task.sleep(for: .milliseconds(Int.random(in: 1...(10 * attempt))))
                } catch {
                    throw Self.writeError(error, audited: audited)
                }
            } catch {
                throw Self.writeError(error, audited: audited)
            }
        }
    }

    /// Runs `body` between `BEGIN ISOLATION LEVEL SERIALIZABLE` and `COMMIT`, rolling back if anything fails.
    private static func transaction<T>(_ db: Session, _ body: (Session) async throws -> T) async throws -> T {
        try await db.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        let value: T
        do {
            value = try await body(db)
            try await db.execute("COMMIT")
        } catch {
            // After a failed COMMIT the server has already ended the transaction and ROLLBACK only warns.
            _ = try? await db.execute("ROLLBACK")
            throw error
        }
        return value
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (Session) async throws -> T) async throws -> T {
        do {
            return try await client.withConnection { connection in
                try await body(Session(connection: connection, logger: self.logger))
            }
        } catch let error as VaultError {
            throw error
        } catch {
            throw VaultError(.catalogUnavailable, "catalog read failed", underlying: Self.describe(error))
        }
    }

    /// Runs several reads in one `REPEATABLE READ READ ONLY` transaction, so they see one snapshot of the catalog
    /// (as one GRDB read does on SQLite).
    func snapshot<T: Sendable>(_ body: @escaping @Sendable (Session) async throws -> T) async throws -> T {
        try await read { db in
            try await db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            do {
                let value = try await body(db)
                try await db.execute("COMMIT")
                return value
            } catch {
                _ = try? await db.execute("ROLLBACK")
                throw error
            }
        }
    }

    /// The catalog error for a failed write, mirroring `SQLiteCatalog.write`.
    static func writeError(_ error: any Error, audited: Bool) -> VaultError {
        if let error = error as? VaultError { return error }
        // Class 23: integrity constraint violations (unique, foreign key, check, the append-only triggers).
        if let state = sqlState(error), state.hasPrefix("23") {
            return VaultError(.conflict, "the catalog refused a conflicting change", underlying: describe(error))
        }
        if audited && isUnwritable(error) {
            return VaultError(.auditUnavailable, "the audit trail cannot be written, so the action was not "
                                + "performed; try again when the vault is ready", underlying: describe(error))
        }
        return VaultError(.catalogUnavailable, "catalog write failed", underlying: describe(error))
    }

    /// The SQLSTATE of an error the server reported.
    static func sqlState(_ error: any Error) -> String? {
        (error as? PSQLError)?.serverInfo?[.sqlState]
    }

    /// serialization_failure and deadlock_detected: the transaction can simply run again.
    static func isSerializationFailure(_ error: any Error) -> Bool {
        guard let state = sqlState(error) else { return false }
        return state == "40001" || state == "40P01"
    }

    /// Failures that mean the database cannot be written at all (as opposed to a conflict or a bug): no connection,
    /// a read-only or shutting-down server, no space or resources left, an I/O error.
    static func isUnwritable(_ error: any Error) -> Bool {
        if let error = error as? PSQLError {
            if let state = error.serverInfo?[.sqlState] {
                return ["25006", "57P01", "57P02", "57P03"].contains(state) || state.hasPrefix("53")
                    || state.hasPrefix("08") || state.hasPrefix("58")
            }
            let lostConnection: [PSQLError.Code] = [
                .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed,
            ]
            return lostConnection.contains(error.code)
        }
        // A pool that cannot connect fails requests with its own error type, which PostgresNIO does not export.
        return String(reflecting: type(of: error)).contains("ConnectionPoolError")
    }

    /// Describes a database error without the query's text or values: the SQLSTATE and the server's message, or
    /// the client's error code.
    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let info = error.serverInfo {
                return "postgres \(info[.sqlState] ?? "error"): \(info[.message] ?? "")"
            }
            return "postgres client: \(error.code)"
        }
        if error is PostgresDecodingError { return "a catalog value could not be decoded" }
        return String(describing: error)
    }

    /// Runs one statement with text arguments (`$1`, `$2`, ...) in a write transaction, without audit. For tests
    /// that simulate a corrupt or legacy row.
    func rawExecute(_ sql: String, _ arguments: [String]) async throws {
        var binds = PostgresBindings()
        for argument in arguments {
            binds.append(argument)
        }
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        try await write(audited: false) { db in try await db.execute(query) }
    }

    public func probeWrite() async throws {
        try await write { db in
            try await db.execute("""
                INSERT INTO write_probe (id, time) VALUES (1, \(currentUnixTime()))
                ON CONFLICT (id) DO UPDATE SET time = excluded.time
                """)
        }
    }

    // MARK: Extracts

    public func beginUpload(_ extract: ExtractRecord) async throws {
        try await write(audited: false) { db in
            let identity = extract.identity
            let exists = try await db.row("""
                SELECT 1 FROM extracts WHERE force = \(identity.force.rawValue) AND id = \(identity.extract.rawValue)
                """) != nil
            guard !exists else {
                throw VaultError(.duplicateExtract,
                                 "extract \(identity.extract) of force \(identity.force) exists already")
            }
            try await Self.refuseDestroyedKEK(db, extract.wrappedKey.kek)
            try await db.execute("""
                INSERT INTO extracts (force, dataset, id, state, wrapped_key, kek, plaintext_size, ciphertext_size,
                    ciphertext_sha256, source, uploaded_by, created_at)
                VALUES (\(identity.force.rawValue), \(identity.dataset.rawValue), \(identity.extract.rawValue),
                    'uploading', \(extract.wrappedKey.json.canonicalString), \(extract.wrappedKey.kek.description),
                    \(Int64(extract.plaintextSize)), \(Int64(extract.ciphertextSize)),
                    \(Hex.encode(extract.ciphertextSHA256)), \(extract.source.rawValue), \(extract.uploadedBy),
                    \(extract.createdAt))
                """)
            try await Self.addLineage(db, force: identity.force.rawValue, extract: identity.extract.rawValue,
                                      kek: extract.wrappedKey.kek.description, since: extract.createdAt)
        }
    }

    public func commitUpload(
        force: ForceID, extract: ExtractID, sizes: (plaintext: UInt64, ciphertext: UInt64, sha256: [UInt8]),
        now: UnixTime, archival: ArchivalRewrap?, audit: [AuditEntry],
        archiveAudit: @escaping @Sendable (ExtractRecord) -> AuditEntry
    ) async throws -> (current: ExtractRecord, archived: ExtractRecord?) {
        let (plaintext, ciphertext, sha256) = sizes
        return try await write { db in
            guard let uploading = try await Self.fetchExtract(db, force: force, id: extract),
                uploading.state == .uploading
            else { throw VaultError(.conflict, "extract \(extract) is not an upload in progress") }
            try await Self.refuseDestroyedKEK(db, uploading.wrappedKey.kek)
            let dataset = uploading.identity.dataset
            let retention = try await Self.retentionDays(db, force: force, dataset: dataset, now: now)
            var archived: ExtractRecord?
            let previous = try await Self.fetchCurrent(db, force: force, dataset: dataset)
            try UploadCommit.checkArchival(current: previous, archival: archival)
            if let current = previous, let archival {
                let previous = UploadCommit.archived(current, at: now, retentionDays: retention, archival: archival)
                try await db.execute("""
                    UPDATE extracts SET state = 'archived', archived_at = \(now), expires_at = \(previous.expiresAt),
                        wrapped_key = \(archival.to.json.canonicalString), kek = \(archival.to.kek.description)
                    WHERE force = \(force.rawValue) AND id = \(previous.identity.extract.rawValue)
                        AND state = 'current'
                    """)
                try await Self.addLineage(db, force: force.rawValue, extract: previous.identity.extract.rawValue,
                                          kek: archival.to.kek.description, since: now)
                archived = previous
            }
            try await db.execute("""
                UPDATE extracts SET state = 'current', committed_at = \(now), plaintext_size = \(Int64(plaintext)),
                    ciphertext_size = \(Int64(ciphertext)), ciphertext_sha256 = \(Hex.encode(sha256))
                WHERE force = \(force.rawValue) AND id = \(extract.rawValue) AND state = 'uploading'
                """)
            try await Self.insertAudit(db, audit + (archived.map { [archiveAudit($0)] } ?? []))
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
            let state = try await db.row("""
                SELECT state FROM extracts WHERE force = \(force.rawValue) AND id = \(extract.rawValue)
                """)?.value("state", as: String.self)
            guard state == expected.rawValue else { return false }
            try await Self.insertAudit(db, audit)
            return true
        }
    }

    public func abandonUpload(force: ForceID, extract: ExtractID) async throws {
        try await write(audited: false) { db in
            try await db.execute("""
                DELETE FROM extracts
                WHERE force = \(force.rawValue) AND id = \(extract.rawValue) AND state = 'uploading'
                """)
        }
    }

    public func staleUploads(before cutoff: UnixTime) async throws -> [ExtractRecord] {
        try await read { db in
            try await db.rows("SELECT * FROM extracts WHERE state = 'uploading' AND created_at < \(cutoff)")
                .map(Self.extract(from:))
        }
    }

    public func currentExtract(force: ForceID, dataset: DatasetID) async throws -> ExtractRecord? {
        try await read { db in try await Self.fetchCurrent(db, force: force, dataset: dataset) }
    }

    public func extract(force: ForceID, id: ExtractID) async throws -> ExtractRecord? {
        try await read { db in try await Self.fetchExtract(db, force: force, id: id) }
    }

    public func extracts(force: ForceID, dataset: DatasetID?, states: Set<ExtractState>) async throws
        -> [ExtractRecord]
    {
        let stateList = states.map(\.rawValue).sorted()
        return try await read { db in
            var query = DynamicQuery()
            query.append("SELECT * FROM extracts WHERE force = ", bind: force.rawValue)
            query.append(" AND state = ANY(", bind: stateList)
            query.append(")")
            if let dataset {
                query.append(" AND dataset = ", bind: dataset.rawValue)
            }
            query.append(" ORDER BY created_at, id")
            return try await db.rows(query.query).map(Self.extract(from:))
        }
    }

    static func fetchExtract(_ db: Session, force: ForceID, id: ExtractID) async throws -> ExtractRecord? {
        try await db.row("SELECT * FROM extracts WHERE force = \(force.rawValue) AND id = \(id.rawValue)")
            .map(extract(from:))
    }

    static func fetchCurrent(_ db: Session, force: ForceID, dataset: DatasetID) async throws -> ExtractRecord? {
        try await db.row("""
            SELECT * FROM extracts WHERE force = \(force.rawValue) AND dataset = \(dataset.rawValue)
                AND state = 'current'
            """).map(extract(from:))
    }

    static func extract(from row: Row) throws -> ExtractRecord {
        let id = try row.value("id", as: String.self)
        guard let state = ExtractState(rawValue: try row.value("state", as: String.self)),
            let source = ExtractSource(rawValue: try row.value("source", as: String.self)),
            let sha = Hex.decode(try row.value("ciphertext_sha256", as: String.self)),
            let plaintextSize = UInt64(exactly: try row.value("plaintext_size", as: Int64.self)),
            let ciphertextSize = UInt64(exactly: try row.value("ciphertext_size", as: Int64.self))
        else { throw VaultError(.catalogUnavailable, "catalog row for extract \(id) is corrupt") }
        let identity = ExtractIdentity(force: try ForceID(force: try row.value("force", as: String.self)),
                                       dataset: try DatasetID(dataset: try row.value("dataset", as: String.self)),
                                       extract: try ExtractID(id))
        let wrappedKey = try WrappedKey(json: try JSONParser.parse(try row.value("wrapped_key", as: String.self)))
        let holdBy = try row.value("hold_by", as: String?.self)
        let holdAt = try row.value("hold_at", as: Int64?.self)
        return ExtractRecord(
            identity: identity, state: state, wrappedKey: wrappedKey, plaintextSize: plaintextSize,
            ciphertextSize: ciphertextSize, ciphertextSHA256: sha, source: source,
            uploadedBy: try row.value("uploaded_by", as: String.self),
            createdAt: try row.value("created_at", as: Int64.self),
            committedAt: try row.value("committed_at", as: Int64?.self),
            archivedAt: try row.value("archived_at", as: Int64?.self),
            expiresAt: try row.value("expires_at", as: Int64?.self),
            hold: try row.value("hold_reason", as: String?.self).map {
                LegalHold(reason: $0, placedBy: holdBy ?? "", placedAt: holdAt ?? 0)
            },
            shreddedAt: try row.value("shredded_at", as: Int64?.self),
            certificate: try row.value("certificate", as: String?.self))
    }

    // MARK: Datasets

    static func retentionDays(_ db: Session, force: ForceID, dataset: DatasetID, now: UnixTime) async throws -> Int {
        if let row = try await db.row("""
            SELECT retention_days FROM datasets WHERE force = \(force.rawValue) AND id = \(dataset.rawValue)
            """) {
            return try row.value("retention_days", as: Int.self)
        }
        try await db.execute("""
            INSERT INTO datasets (force, id, retention_days, created_at)
            VALUES (\(force.rawValue), \(dataset.rawValue), \(DatasetRecord.defaultRetentionDays), \(now))
            """)
        return DatasetRecord.defaultRetentionDays
    }

    public func dataset(force: ForceID, id: DatasetID) async throws -> DatasetRecord? {
        try await read { db in
            guard let row = try await db.row("""
                SELECT retention_days FROM datasets WHERE force = \(force.rawValue) AND id = \(id.rawValue)
                """)
            else { return nil }
            return DatasetRecord(force: force, id: id, retentionDays: try row.value("retention_days", as: Int.self))
        }
    }

    public func putDataset(_ dataset: DatasetRecord, audit: [AuditEntry]) async throws {
        try await write { db in
            try await db.execute("""
                INSERT INTO datasets (force, id, retention_days, created_at)
                VALUES (\(dataset.force.rawValue), \(dataset.id.rawValue), \(dataset.retentionDays),
                    \(currentUnixTime()))
                ON CONFLICT (force, id) DO UPDATE SET retention_days = excluded.retention_days
                """)
            try await Self.insertAudit(db, audit)
        }
    }

    // MARK: Use cases

    public func useCase(force: ForceID, id: ResourceID) async throws -> UseCase? {
        try await read { db in
            try await db.row("SELECT * FROM use_cases WHERE force = \(force.rawValue) AND id = \(id.rawValue)")
                .map(Self.useCase(from:))
        }
    }

    public func useCases(force: ForceID) async throws -> [UseCase] {
        try await read { db in
            try await db.rows("SELECT * FROM use_cases WHERE force = \(force.rawValue) ORDER BY id")
                .map(Self.useCase(from:))
        }
    }

    public func putUseCase(_ useCase: UseCase, audit: @escaping @Sendable (_ existed: Bool) -> [AuditEntry])
        async throws
    {
        let datasets = JSONValue.array(useCase.datasets.map { JSONValue.string($0.rawValue) }).canonicalString
        let principals = JSONValue.array(useCase.principals.map { JSONValue.string($0) }).canonicalString
        try await write { db in
            let existed = try await db.row("""
                SELECT 1 FROM use_cases WHERE force = \(useCase.force.rawValue) AND id = \(useCase.id.rawValue)
                """) != nil
            try await db.execute("""
                INSERT INTO use_cases (force, id, description, lawful_basis, datasets, principals, valid_from,
                    valid_until, revoked_at, updated_at)
                VALUES (\(useCase.force.rawValue), \(useCase.id.rawValue), \(useCase.description),
                    \(useCase.lawfulBasis), \(datasets), \(principals), \(useCase.validFrom),
                    \(useCase.validUntil), \(useCase.revokedAt), \(useCase.updatedAt))
                ON CONFLICT (force, id) DO UPDATE SET description = excluded.description,
                    lawful_basis = excluded.lawful_basis, datasets = excluded.datasets,
                    principals = excluded.principals, valid_from = excluded.valid_from,
                    valid_until = excluded.valid_until,
                    revoked_at = COALESCE(use_cases.revoked_at, excluded.revoked_at),
                    updated_at = excluded.updated_at
                """)
            try await Self.insertAudit(db, audit(existed))
        }
    }

    public func revokeUseCase(force: ForceID, id: ResourceID, at time: UnixTime, audit: [AuditEntry]) async throws
        -> UseCase?
    {
        try await write { db in
            guard let row = try await db.row("""
                UPDATE use_cases SET revoked_at = COALESCE(revoked_at, \(time)), updated_at = \(time)
                WHERE force = \(force.rawValue) AND id = \(id.rawValue)
                RETURNING *
                """)
            else { return nil }
            try await Self.insertAudit(db, audit)
            return try Self.useCase(from: row)
        }
    }

    static func useCase(from row: Row) throws -> UseCase {
        func strings(_ column: String) throws -> [String] {
            try (JSONParser.parse(try row.value(column, as: String.self)).arrayValue ?? []).compactMap(\.stringValue)
        }
        return UseCase(
            force: try ForceID(force: try row.value("force", as: String.self)),
            id: try ResourceID(try row.value("id", as: String.self), kind: "use case id"),
            description: try row.value("description", as: String.self),
            lawfulBasis: try row.value("lawful_basis", as: String.self),
            datasets: try strings("datasets").map { try DatasetID(dataset: $0) }, principals: try strings("principals"),
            validFrom: try row.value("valid_from", as: Int64?.self),
            validUntil: try row.value("valid_until", as: Int64?.self),
            revokedAt: try row.value("revoked_at", as: Int64?.self),
            updatedAt: try row.value("updated_at", as: Int64.self))
    }

    // MARK: Audit chain

    public func appendAudit(_ entries: [AuditEntry]) async throws {
        try await write { db in try await Self.insertAudit(db, entries) }
    }

    /// Writes the records `AuditAppend` computes from each chain's head, one statement per chain, and the new heads.
    static func insertAudit(_ db: Session, _ entries: [AuditEntry]) async throws {
        for chain in AuditAppend(entries).chains {
            let force = chain.force.rawValue
            let head = try await db.row("SELECT seq, hash, time FROM audit_heads WHERE force = \(force)").map { row in
                AuditAppend.Head(seq: try row.value("seq"), hash: try row.value("hash"), time: try row.value("time"))
            }
            let (records, next) = chain.records(after: head)
            let entries = chain.entries
            // The head moves first: a concurrent writer of the same chain then fails to serialize and is retried,
            // rather than colliding on a seq.
            try await db.execute("""
                INSERT INTO audit_heads (force, seq, hash, time)
                VALUES (\(force), \(next.seq), \(next.hash), \(next.time))
                ON CONFLICT (force) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time = excluded.time
                """)
            try await db.execute("""
                INSERT INTO audit_records (force, seq, time, principal, action, dataset, use_case, outcome, line, hash)
                SELECT \(force), r.seq, r.at, r.principal, r.action,
                    CASE WHEN r.has_dataset THEN r.dataset END, CASE WHEN r.has_use_case THEN r.use_case END,
                    r.outcome, r.line, r.hash
                FROM unnest(\(records.map(\.seq))::bigint[], \(records.map(\.time))::bigint[],
                    \(entries.map(\.principal))::text[], \(entries.map(\.action))::text[],
                    \(entries.map { $0.dataset?.rawValue ?? "" })::text[],
                    \(entries.map { $0.dataset != nil })::boolean[],
                    \(entries.map { $0.useCase ?? "" })::text[], \(entries.map { $0.useCase != nil })::boolean[],
                    \(entries.map(\.outcome.rawValue))::text[],
                    \(records.map { String(decoding: $0.line, as: UTF8.self) })::text[],
                    \(records.map(\.hash))::text[])
                    AS r(seq, at, principal, action, dataset, has_dataset, use_case, has_use_case, outcome, line, hash)
                ORDER BY r.seq
                """)
        }
    }

    public func auditHead(force: ForceID) async throws -> (seq: Int64, hash: String)? {
        try await read { db in
            guard let row = try await db.row("SELECT seq, hash FROM audit_heads WHERE force = \(force.rawValue)")
            else { return nil }
            return (try row.value("seq", as: Int64.self), try row.value("hash", as: String.self))
        }
    }

    public func auditLines(force: ForceID, after: Int64, through: Int64, limit: Int) async throws -> [AuditLine] {
        try await read { db in
            try await db.rows("""
                SELECT seq, line FROM audit_records
                WHERE force = \(force.rawValue) AND seq > \(after) AND seq <= \(through) ORDER BY seq LIMIT \(limit)
                """).map(Self.auditLine(from:))
        }
    }

    static func auditLine(from row: Row) throws -> AuditLine {
        AuditLine(seq: try row.value("seq", as: Int64.self), line: Array(try row.value("line", as: String.self).utf8))
    }

    public func auditCheckpoints(force: ForceID, from: Int64, through: Int64) async throws -> [AuditCheckpoint] {
        try await read { db in
            try await db.rows("""
                SELECT * FROM audit_checkpoints
                WHERE force = \(force.rawValue) AND seq >= \(from) AND seq <= \(through) ORDER BY seq
                """).map(Self.checkpoint(from:))
        }
    }

    public func checkpointAudit(force: ForceID, at seq: Int64, now: UnixTime, signer: AuditSigner) async throws
        -> AuditCheckpoint
    {
        try await write { db in
            if let existing = try await db.row("""
                SELECT * FROM audit_checkpoints WHERE force = \(force.rawValue) AND seq = \(seq)
                """) {
                return try Self.checkpoint(from: existing)
            }
            guard let hash = try await db.row("""
                SELECT hash FROM audit_records WHERE force = \(force.rawValue) AND seq = \(seq)
                """)?.value("hash", as: String.self)
            else { throw VaultError(.notFound, "the audit chain of \(force) has no record \(seq)") }
            let checkpoint = signer.checkpoint(force: force, seq: seq, hash: hash, time: now)
            try await db.execute("""
                INSERT INTO audit_checkpoints (force, seq, hash, time, signature)
                VALUES (\(force.rawValue), \(seq), \(hash), \(now), \(Base64.encode(checkpoint.signature)))
                """)
            return checkpoint
        }
    }

    public func addCosignature(_ cosignature: Cosignature) async throws {
        try await write { db in
            try await db.execute("""
                INSERT INTO audit_cosignatures (force, seq, witness, hash, checkpoint_time, cosigned, signature)
                VALUES (\(cosignature.force.rawValue), \(cosignature.seq), \(cosignature.witness), \(cosignature.hash),
                    \(cosignature.checkpointTime), \(cosignature.cosigned), \(Base64.encode(cosignature.signature)))
                ON CONFLICT DO NOTHING
                """)
        }
    }

    public func cosignatures(force: ForceID, from: Int64, through: Int64) async throws -> [Cosignature] {
        try await read { db in
            try await db.rows("""
                SELECT * FROM audit_cosignatures
                WHERE force = \(force.rawValue) AND seq >= \(from) AND seq <= \(through) ORDER BY seq, witness
                """).map { row in
                guard let signature = Base64.decode(try row.value("signature", as: String.self)) else {
                    throw VaultError(.catalogUnavailable, "catalog row for a cosignature is corrupt")
                }
                return Cosignature(force: force, seq: try row.value("seq", as: Int64.self),
                                   hash: try row.value("hash", as: String.self),
                                   checkpointTime: try row.value("checkpoint_time", as: Int64.self),
                                   cosigned: try row.value("cosigned", as: Int64.self),
                                   witness: try row.value("witness", as: String.self), signature: signature)
            }
        }
    }

    public func lastCosigned(force: ForceID) async throws -> (seq: Int64, hash: String)? {
        try await read { db in
            guard let row = try await db.row("""
                SELECT seq, hash FROM audit_cosignatures WHERE force = \(force.rawValue) ORDER BY seq DESC LIMIT 1
                """) else { return nil }
            return (try row.value("seq", as: Int64.self), try row.value("hash", as: String.self))
        }
    }

    public func checkpointAudit(force: ForceID, now: UnixTime, signer: AuditSigner) async throws -> AuditCheckpoint? {
        try await write { db in
            guard let head = try await db.row("SELECT seq, hash FROM audit_heads WHERE force = \(force.rawValue)")
            else { return nil }
            let seq = try head.value("seq", as: Int64.self)
            let latestRow = try await db.row("""
                SELECT * FROM audit_checkpoints WHERE force = \(force.rawValue) ORDER BY seq DESC LIMIT 1
                """)
            if let latest = try latestRow.map(Self.checkpoint(from:)), latest.seq == seq {
                return latest
            }
            let checkpoint = signer.checkpoint(force: force, seq: seq, hash: try head.value("hash", as: String.self),
                                               time: now)
            try await db.execute("""
                INSERT INTO audit_checkpoints (force, seq, hash, time, signature)
                VALUES (\(force.rawValue), \(checkpoint.seq), \(checkpoint.hash), \(checkpoint.time),
                    \(Base64.encode(checkpoint.signature)))
                """)
            return checkpoint
        }
    }

    static func checkpoint(from row: Row) throws -> AuditCheckpoint {
        let seq = try row.value("seq", as: Int64.self)
        guard let signature = Base64.decode(try row.value("signature", as: String.self)) else {
            throw VaultError(.catalogUnavailable, "catalog row for checkpoint \(seq) is corrupt")
        }
        return AuditCheckpoint(force: try ForceID(force: try row.value("force", as: String.self)), seq: seq,
                               hash: try row.value("hash", as: String.self),
                               time: try row.value("time", as: Int64.self), signature: signature)
    }

    public func auditSeq(force: ForceID, notBefore time: UnixTime) async throws -> Int64? {
        try await read { db in
            try await db.row("""
                SELECT MIN(seq) AS seq FROM audit_records WHERE force = \(force.rawValue) AND time >= \(time)
                """)?.value("seq", as: Int64?.self)
        }
    }

    public func searchAudit(force: ForceID, query: AuditQuery) async throws -> [AuditLine] {
        try await read { db in
            var sql = DynamicQuery()
            sql.append("SELECT seq, line FROM audit_records WHERE force = ", bind: force.rawValue)
            sql.append(" AND seq > ", bind: query.afterSeq)
            func equal(_ column: String, _ value: String?) {
                guard let value else { return }
                sql.append(" AND \(column) = ", bind: value)
            }
            equal("principal", query.principal)
            equal("use_case", query.useCase)
            equal("dataset", query.dataset?.rawValue)
            equal("outcome", query.outcome?.rawValue)
            if let action = query.action {
                if action.hasSuffix("*") {
                    sql.append(" AND starts_with(action, ", bind: String(action.dropLast()))
                    sql.append(")")
                } else {
                    equal("action", action)
                }
            }
            if let from = query.from {
                sql.append(" AND time >= ", bind: from)
            }
            if let until = query.until {
                sql.append(" AND time < ", bind: until)
            }
            sql.append(" ORDER BY seq LIMIT ", bind: query.limit)
            return try await db.rows(sql.query).map(Self.auditLine(from:))
        }
    }

    public func archivesPastExpiry(now: UnixTime) async throws -> [ForceID: Int] {
        try await read { db in
            var counts: [ForceID: Int] = [:]
            for row in try await db.rows("""
                SELECT force, COUNT(*) AS n FROM extracts WHERE state = 'archived' AND expires_at <= \(now)
                GROUP BY force
                """) {
                counts[try ForceID(force: try row.value("force", as: String.self))] = try row.value("n", as: Int.self)
            }
            return counts
        }
    }

    // MARK: Tokens

    public func addToken(hash: String, principal: String, description: String, createdAt: UnixTime,
                         audit: [AuditEntry]) async throws
    {
        try await write { db in
            try await db.execute("""
                INSERT INTO tokens (hash, principal, description, created_at)
                VALUES (\(hash), \(principal), \(description), \(createdAt))
                """)
            try await Self.insertAudit(db, audit)
        }
    }

    public func tokenPrincipal(hash: String) async throws -> String? {
        try await read { db in
            let row = try await db.row("SELECT principal FROM tokens WHERE hash = \(hash) AND revoked_at IS NULL")
            return try row?.value("principal", as: String.self)
        }
    }
}
