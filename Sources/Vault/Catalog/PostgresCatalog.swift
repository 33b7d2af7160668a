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

    // MARK: Driver

    /// Runs `plan`'s statements in `db`, inside the caller's transaction.
    static func run<T>(_ plan: CatalogPlan<T>, in db: Session) async throws -> T {
        try await plan.run { statement in try await db.perform(statement) }
    }
}

extension PostgresCatalog: CatalogDriver {
    public var dialect: CatalogDialect { .postgres }

    public func runWrite<T: Sendable>(audited: Bool, _ make: @escaping @Sendable () throws -> CatalogPlan<T>)
        async throws -> T
    {
        try await write(audited: audited) { db in try await Self.run(try make(), in: db) }
    }

    public func runRead<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        // Outside a transaction (no BEGIN and COMMIT round trips), so one statement only.
        try await read { db in
            var statements = 0
            return try await make().run { statement in
                statements += 1
                guard statements == 1 else {
                    throw VaultError(.catalogUnavailable, "a catalog read of several statements must be a snapshot")
                }
                return try await db.perform(statement)
            }
        }
    }

    public func runSnapshot<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        try await snapshot { db in try await Self.run(try make(), in: db) }
    }
}

extension PostgresCatalog.Session {
    /// Runs one statement of a plan: the portable SQL with numbered placeholders, or a batch insert as one
    /// statement over arrays (`unnest`).
    func perform(_ statement: CatalogStatement) async throws -> [CatalogRow] {
        var binds = PostgresBindings()
        let sql: String
        switch statement.form {
        case .sql(let text, let arguments):
            for argument in arguments {
                binds.append(argument)
            }
            sql = CatalogDialect.numbered(text)
        case .insert(let table, let columns, let rows, let onConflict):
            guard !rows.isEmpty else { return [] }
            // One array per column; a column with nulls also gets an array of flags, as arrays of text or bigint
            // cannot hold nulls here.
            var arrays: [String] = []
            var names: [String] = []
            var values: [String] = []
            for (index, column) in columns.enumerated() {
                let cells = rows.map { $0[index] }
                let nullable = cells.contains(.null)
                switch column.type {
                case .text: binds.append(cells.map { String(catalogValue: $0) ?? "" })
                case .integer: binds.append(cells.map { Int64(catalogValue: $0) ?? 0 })
                }
                arrays.append("$\(binds.count)::\(column.type == .text ? "text" : "bigint")[]")
                names.append("c\(index)")
                if nullable {
                    binds.append(cells.map { $0 != .null })
                    arrays.append("$\(binds.count)::boolean[]")
                    names.append("f\(index)")
                    values.append("CASE WHEN r.f\(index) THEN r.c\(index) END")
                } else {
                    values.append("r.c\(index)")
                }
            }
            sql = """
                INSERT INTO \(table) (\(columns.map(\.name).joined(separator: ", ")))
                SELECT \(values.joined(separator: ", "))
                FROM unnest(\(arrays.joined(separator: ", "))) AS r(\(names.joined(separator: ", ")))
                \(onConflict ?? "")
                """
        }
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        return try await connection.query(query, logger: logger).collect().map { try $0.catalogRow() }
    }
}

extension PostgresBindings {
    mutating func append(_ value: CatalogValue) {
        switch value {
        case .null: appendNull()
        case .integer(let integer): append(integer)
        case .text(let text): append(text)
        }
    }
}

extension PostgresRow {
    /// The row in the catalog core's terms: integers and text (a boolean as 0 or 1), naming a column it cannot read.
    func catalogRow() throws -> CatalogRow {
        var columns: [String] = []
        var values: [CatalogValue] = []
        columns.reserveCapacity(count)
        values.reserveCapacity(count)
        for cell in self {
            columns.append(cell.columnName)
            guard cell.bytes != nil else {
                values.append(.null)
                continue
            }
            do {
                switch cell.dataType {
                case .int2, .int4, .int8: values.append(.integer(try cell.decode(Int64.self)))
                case .bool: values.append(.integer(try cell.decode(Bool.self) ? 1 : 0))
                default: values.append(.text(try cell.decode(String.self)))
                }
            } catch {
                // The decoding error would carry the cell's bytes; name the column only.
                throw VaultError(.catalogUnavailable, "catalog column \(cell.columnName) holds an unexpected value")
            }
        }
        return CatalogRow(columns: columns, values: values)
    }
}
