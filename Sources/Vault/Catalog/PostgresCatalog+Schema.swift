import KeyCustody
import PostgresNIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension PostgresCatalog {
    /// A named schema change; applied once, in order, and recorded in `schema_migrations`.
    struct Migration: Sendable {
        let name: String
        let statements: [String]
    }

    /// Serializes migrations of vaultd processes starting at once ("vault_mg" in ASCII).
    static let migrationLock: Int64 = 0x7661_756C_745F_6D67

    /// Creates or updates the schema. Safe to run from several processes at once: the first takes an advisory lock
    /// and the others wait, then find the migrations applied.
    public func migrate() async throws {
        do {
            try await client.withConnection { connection in
                let db = Session(connection: connection, logger: self.logger)
                // READ COMMITTED so that a process that waited for the lock sees the migrations applied meanwhile.
                try await db.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                do {
                    try await db.execute("SELECT pg_advisory_xact_lock(\(Self.migrationLock))")
                    try await db.execute("""
                        CREATE TABLE IF NOT EXISTS schema_migrations (
                            name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)
                        """)
                    var applied: Set<String> = []
                    for row in try await db.rows("SELECT name FROM schema_migrations") {
                        applied.insert(try row.value("name", as: String.self))
                    }
                    for migration in Self.migrations where !applied.contains(migration.name) {
                        for statement in migration.statements {
                            try await db.execute(PostgresQuery(unsafeSQL: statement))
                        }
                        try await db.execute("""
                            INSERT INTO schema_migrations (name, applied_at)
                            VALUES (\(migration.name), \(currentUnixTime()))
                            """)
                    }
                    try await db.execute("COMMIT")
                } catch {
                    _ = try? await db.execute("ROLLBACK")
                    throw error
                }
            }
        } catch let error as VaultError {
            throw error
        } catch {
            throw VaultError(.catalogUnavailable, "cannot bring the catalog at \(redactedURL) up to date",
                             underlying: Self.describe(error))
        }
    }

    /// The schema: SQLite's after its v1 to v4 migrations, plus leases. Identifiers that are compared or ordered
    /// use the "C" collation, so they sort byte by byte as in SQLite.
    static var migrations: [Migration] {
        let key = "TEXT COLLATE \"C\""
        var catalog: [String] = [
            """
            CREATE TABLE datasets (
                force \(key) NOT NULL, id \(key) NOT NULL, retention_days BIGINT NOT NULL,
                created_at BIGINT NOT NULL, PRIMARY KEY (force, id))
            """,
            """
            CREATE TABLE extracts (
                force \(key) NOT NULL, dataset \(key) NOT NULL, id \(key) NOT NULL, state TEXT NOT NULL,
                wrapped_key TEXT NOT NULL, kek \(key) NOT NULL, plaintext_size BIGINT NOT NULL,
                ciphertext_size BIGINT NOT NULL, ciphertext_sha256 TEXT NOT NULL, source TEXT NOT NULL,
                uploaded_by TEXT NOT NULL, created_at BIGINT NOT NULL, committed_at BIGINT, archived_at BIGINT,
                expires_at BIGINT, hold_reason TEXT, hold_by TEXT, hold_at BIGINT, shred_reason TEXT, shred_note TEXT,
                shred_by TEXT, shred_started_at BIGINT, shredded_at BIGINT, certificate TEXT,
                PRIMARY KEY (force, id))
            """,
            // A dataset never has two current extracts.
            "CREATE UNIQUE INDEX extracts_one_current ON extracts (force, dataset) WHERE state = 'current'",
            "CREATE INDEX extracts_by_dataset ON extracts (force, dataset, state)",
            "CREATE INDEX extracts_by_state ON extracts (state, created_at)",
            "CREATE INDEX extracts_by_kek ON extracts (force, kek, id)",
            "CREATE INDEX extracts_archived_by_kek ON extracts (force, kek) WHERE state = 'archived'",
            "CREATE INDEX extracts_by_expiry ON extracts (state, expires_at)",
            """
            CREATE TABLE use_cases (
                force \(key) NOT NULL, id \(key) NOT NULL, description TEXT NOT NULL, lawful_basis TEXT NOT NULL,
                datasets TEXT NOT NULL, principals TEXT NOT NULL, valid_from BIGINT, valid_until BIGINT,
                revoked_at BIGINT, updated_at BIGINT NOT NULL, PRIMARY KEY (force, id))
            """,
            """
            CREATE TABLE tokens (
                hash TEXT PRIMARY KEY, principal TEXT NOT NULL, description TEXT NOT NULL,
                created_at BIGINT NOT NULL, revoked_at BIGINT)
            """,
            """
            CREATE TABLE audit_records (
                force \(key) NOT NULL, seq BIGINT NOT NULL, time BIGINT NOT NULL, principal TEXT NOT NULL,
                action TEXT NOT NULL, dataset TEXT, use_case TEXT, outcome TEXT NOT NULL, line TEXT NOT NULL,
                hash TEXT NOT NULL, PRIMARY KEY (force, seq))
            """,
            "CREATE INDEX audit_records_by_time ON audit_records (force, time)",
            "CREATE INDEX audit_records_by_principal ON audit_records (force, principal, seq)",
            "CREATE INDEX audit_records_by_dataset ON audit_records (force, dataset, seq)",
            "CREATE INDEX audit_records_by_use_case ON audit_records (force, use_case, seq)",
            """
            CREATE TABLE audit_heads (
                force \(key) PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL, time BIGINT NOT NULL)
            """,
            "CREATE TABLE write_probe (id BIGINT PRIMARY KEY, time BIGINT NOT NULL)",
            """
            CREATE TABLE audit_checkpoints (
                force \(key) NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, time BIGINT NOT NULL,
                signature TEXT NOT NULL, PRIMARY KEY (force, seq))
            """,
            // Every KEK an extract's key was ever wrapped under, in order (`position`), with when it started.
            """
            CREATE TABLE extract_keks (
                position BIGSERIAL NOT NULL, force \(key) NOT NULL, extract \(key) NOT NULL, kek \(key) NOT NULL,
                since BIGINT NOT NULL, PRIMARY KEY (force, extract, kek))
            """,
            "CREATE INDEX extract_keks_in_order ON extract_keks (force, extract, position)",
            """
            CREATE TABLE rotations (
                force \(key) NOT NULL, to_kek \(key) NOT NULL, from_kek TEXT, requested_by TEXT NOT NULL,
                started_at BIGINT NOT NULL, finished_at BIGINT, processed BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (force, to_kek))
            """,
            """
            CREATE TABLE rewrap_failures (
                force \(key) NOT NULL, extract \(key) NOT NULL, kek \(key) NOT NULL, code TEXT NOT NULL,
                message TEXT NOT NULL, time BIGINT NOT NULL, PRIMARY KEY (force, extract, kek))
            """,
            // Master keys being or already destroyed: nothing may be committed under them again.
            """
            CREATE TABLE destroyed_keks (
                force \(key) NOT NULL, kek \(key) NOT NULL, time BIGINT NOT NULL, PRIMARY KEY (force, kek))
            """,
            """
            CREATE TABLE retrievals (
                force \(key) NOT NULL, id \(key) NOT NULL, extract \(key) NOT NULL, dataset \(key) NOT NULL,
                analyst TEXT NOT NULL, use_case TEXT NOT NULL, reason TEXT NOT NULL, requested_at BIGINT NOT NULL,
                approvals TEXT NOT NULL, granted_at BIGINT, expires_at BIGINT, PRIMARY KEY (force, id))
            """,
            """
            CREATE TABLE certificates (
                position BIGSERIAL NOT NULL, force \(key) NOT NULL, id \(key) NOT NULL, extract \(key) NOT NULL,
                issued_at BIGINT NOT NULL, verdict TEXT NOT NULL, body TEXT NOT NULL, signature TEXT NOT NULL,
                PRIMARY KEY (force, id))
            """,
            "CREATE INDEX certificates_by_extract ON certificates (force, extract, issued_at)",
            // The audit chain, its checkpoints and destruction certificates are append-only.
            """
            CREATE FUNCTION vault_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION USING MESSAGE = TG_ARGV[0], ERRCODE = 'restrict_violation';
            END
            $$
            """,
        ]
        let appendOnly: [(table: String, message: String)] = [
            ("audit_records", "the audit chain is append-only"),
            ("audit_checkpoints", "audit checkpoints are append-only"),
            ("certificates", "destruction certificates are append-only"),
        ]
        for (table, message) in appendOnly {
            catalog.append("""
                CREATE TRIGGER \(table)_append_only BEFORE UPDATE OR DELETE ON \(table)
                    FOR EACH ROW EXECUTE FUNCTION vault_refuse_change('\(message)')
                """)
            catalog.append("""
                CREATE TRIGGER \(table)_no_truncate BEFORE TRUNCATE ON \(table)
                    FOR EACH STATEMENT EXECUTE FUNCTION vault_refuse_change('\(message)')
                """)
        }
        let leases = ["CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at BIGINT NOT NULL)"]
        let cosignatures = [
            """
            CREATE TABLE audit_cosignatures (
                force \(key) NOT NULL, seq BIGINT NOT NULL, witness \(key) NOT NULL, hash TEXT NOT NULL,
                checkpoint_time BIGINT NOT NULL, cosigned BIGINT NOT NULL, signature TEXT NOT NULL,
                PRIMARY KEY (force, seq, witness))
            """,
            """
            CREATE TRIGGER audit_cosignatures_append_only BEFORE UPDATE OR DELETE ON audit_cosignatures
                FOR EACH ROW EXECUTE FUNCTION vault_refuse_change('cosignatures are append-only')
            """,
        ]
        return [
            Migration(name: "v1: extracts, datasets, use cases, tokens, audit chain, key lifecycle",
                      statements: catalog),
            Migration(name: "v2: leases for background jobs", statements: leases),
            Migration(name: "v3: witness cosignatures", statements: cosignatures),
            Migration(name: "v4: token expiry, dataset descriptions", statements: [
                "ALTER TABLE tokens ADD COLUMN expires_at BIGINT",
                // Tokens issued before expiry existed get the default lifetime from the upgrade on.
                "UPDATE tokens SET expires_at = extract(epoch FROM now())::bigint + \(BearerToken.defaultLifetime)",
                "CREATE INDEX tokens_by_principal ON tokens (principal)",
                "ALTER TABLE datasets ADD COLUMN description TEXT NOT NULL DEFAULT ''",
                "ALTER TABLE datasets ADD COLUMN updated_at BIGINT",
            ]),
            Migration(name: "v5: partial indexes for rows in flight and archives by expiry",
                      statements: CatalogPlans.partialStateIndexes),
        ]
    }
}

extension PostgresCatalog {
    /// The parts of a `postgres://` URL, and the URL with its password hidden.
    struct ConnectionURL: CustomStringConvertible, CustomDebugStringConvertible {
        /// Printed or reflected, the URL shows no password.
        var description: String { redacted }
        var debugDescription: String { redacted }
        var username: String
        var password: String?
        var host: String
        var port: Int
        var database: String
        var redacted: String
        /// TLS to the server: off only on loopback unless `sslmode=disable` says so; `verify-full` (certificate and
        /// host name checked, against `sslrootcert` or the system's roots) elsewhere by default.
        var tls: Bool
        var rootCertificate: String?

        init(_ text: String) throws {
            func invalid(_ reason: String) -> CustodyError {
                CustodyError(.invalidConfiguration, "invalid catalog URL: \(reason) (expected "
                                + "postgres://user@host[:port]/database[?sslmode=verify-full&sslrootcert=PATH])")
            }
            let scheme: String
            if text.hasPrefix("postgres://") {
                scheme = "postgres"
            } else if text.hasPrefix("postgresql://") {
                scheme = "postgresql"
            } else {
                throw invalid("it must start with postgres:// or postgresql://")
            }
            var rest = text.dropFirst(scheme.count + 3)
            var options: Substring = ""
            if let question = rest.firstIndex(of: "?") {
                options = rest[rest.index(after: question)...]
                rest = rest[..<question]
            }
            // The password may contain '@' if it was not percent-encoded; the host never does.
            guard let at = rest.lastIndex(of: "@") else { throw invalid("it names no user") }
            let userInfo = rest[..<at]
            let location = rest[rest.index(after: at)...]
            var userText = userInfo
            var passwordText: Substring?
            if let colon = userInfo.firstIndex(of: ":") {
                userText = userInfo[..<colon]
                passwordText = userInfo[userInfo.index(after: colon)...]
            }
            guard let username = Self.percentDecoded(userText), !username.isEmpty else {
                throw invalid("the user name is missing or badly encoded")
            }
            if let passwordText {
                guard let password = Self.percentDecoded(passwordText) else {
                    throw invalid("the password is badly encoded")
                }
                self.password = password
            } else if let value = getenv("PGPASSWORD"), value.pointee != 0 {
                self.password = String(cString: value)
            } else {
                self.password = nil
            }
            guard let slash = location.firstIndex(of: "/") else { throw invalid("it names no database") }
            let hostPort = location[..<slash]
            let databaseText = location[location.index(after: slash)...]
            guard let database = Self.percentDecoded(databaseText), !database.isEmpty else {
                throw invalid("the database name is missing or badly encoded")
            }
            var hostText = hostPort
            var portText: Substring?
            if hostPort.hasPrefix("[") {
                // An IPv6 address: [::1]:5432.
                guard let close = hostPort.firstIndex(of: "]") else { throw invalid("an IPv6 address lacks its ']'") }
                hostText = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
                let after = hostPort[hostPort.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":") else { throw invalid("the port must follow the host after ':'") }
                    portText = after.dropFirst()
                }
            } else if let colon = hostPort.lastIndex(of: ":") {
                hostText = hostPort[..<colon]
                portText = hostPort[hostPort.index(after: colon)...]
            }
            guard !hostText.isEmpty else { throw invalid("it names no host") }
            var port = 5432
            if let portText {
                guard let number = Int(portText), (1...65_535).contains(number) else {
                    throw invalid("the port must be a number from 1 to 65535")
                }
                port = number
            }
            let loopback = hostText == "localhost" || hostText == "::1" || hostText.hasPrefix("127.")
            var sslMode: Substring?
            var rootCertificate: String?
            for option in options.split(separator: "&") {
                let parts = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2, parts[0] == "sslmode" || parts[0] == "sslrootcert" else {
                    throw invalid("the options understood are sslmode (disable or verify-full) and sslrootcert")
                }
                if parts[0] == "sslrootcert" {
                    guard let path = Self.percentDecoded(parts[1]), !path.isEmpty else {
                        throw invalid("sslrootcert must name a CA certificate file")
                    }
                    rootCertificate = path
                } else {
                    guard parts[1] == "disable" || parts[1] == "verify-full" else {
                        throw invalid("sslmode must be disable or verify-full")
                    }
                    sslMode = parts[1]
                }
            }
            self.tls = sslMode.map { $0 == "verify-full" } ?? !loopback
            self.rootCertificate = rootCertificate
            self.username = username
            self.host = String(hostText)
            self.port = port
            self.database = database
            let shownUser = passwordText == nil ? String(userText) : "\(userText):***"
            redacted = "\(scheme)://\(shownUser)@\(location)" + (options.isEmpty ? "" : "?\(options)")
        }

        /// Decodes `%XX` escapes; nil for a malformed escape.
        static func percentDecoded(_ text: Substring) -> String? {
            let utf8 = Array(text.utf8)
            var bytes: [UInt8] = []
            bytes.reserveCapacity(utf8.count)
            var index = 0
            while index < utf8.count {
                if utf8[index] == UInt8(ascii: "%") {
                    guard index + 2 < utf8.count,
                        let byte = Hex.decode(String(decoding: utf8[(index + 1)...(index + 2)], as: UTF8.self))?.first
                    else { return nil }
                    bytes.append(byte)
                    index += 3
                } else {
                    bytes.append(utf8[index])
                    index += 1
                }
            }
            return String(decoding: bytes, as: UTF8.self)
        }
    }
}
