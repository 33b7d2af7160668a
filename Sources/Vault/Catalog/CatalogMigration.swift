import GRDB
import KeyCustody
import NIOCore
import PostgresNIO

#if canImport(Glibc)
import Glibc
#endif

/// Moves an embedded vault onto PostgreSQL without re-uploading anything: every catalog table row is copied from
/// SQLite (in the order it was written) and every extract's blob from the files store to S3, each verified.
///
/// Both copies are resumable: rows already in the target are kept (`ON CONFLICT DO NOTHING`), and a blob already in
/// S3 with the right SHA-256 is not sent again. vaultd must be stopped while they run: the result is checked row
/// count by row count, and chain head by chain head.
public enum CatalogMigration {
    /// Tables in dependency-free copy order, with the columns both schemas share. Leases and the write probe are
    /// not copied: they describe running processes, not data.
    /// The tables a migration copies, by name (each gets one line in its report).
    public static var tableNames: [String] { tables.map(\.name) }

    static let tables: [(name: String, columns: [String])] = [
        ("datasets", ["force", "id", "retention_days", "created_at", "description", "updated_at"]),
        ("extracts", ["force", "dataset", "id", "state", "wrapped_key", "kek", "plaintext_size", "ciphertext_size",
                      "ciphertext_sha256", "source", "uploaded_by", "created_at", "committed_at", "archived_at",
                      "expires_at", "hold_reason", "hold_by", "hold_at", "shred_reason", "shred_note", "shred_by",
                      "shred_started_at", "shredded_at", "certificate"]),
        ("use_cases", ["force", "id", "description", "lawful_basis", "datasets", "principals", "valid_from",
                       "valid_until", "revoked_at", "updated_at"]),
        ("tokens", ["hash", "principal", "description", "created_at", "expires_at", "revoked_at"]),
        ("audit_records", ["force", "seq", "time", "principal", "action", "dataset", "use_case", "outcome", "line",
                           "hash"]),
        ("audit_heads", ["force", "seq", "hash", "time"]),
        ("audit_checkpoints", ["force", "seq", "hash", "time", "signature"]),
        ("audit_cosignatures", ["force", "seq", "witness", "hash", "checkpoint_time", "cosigned", "signature"]),
        ("extract_keks", ["force", "extract", "kek", "since"]),
        ("rotations", ["force", "to_kek", "from_kek", "requested_by", "started_at", "finished_at", "processed"]),
        ("rewrap_failures", ["force", "extract", "kek", "code", "message", "time"]),
        ("destroyed_keks", ["force", "kek", "time"]),
        ("retrievals", ["force", "id", "extract", "dataset", "analyst", "use_case", "reason", "requested_at",
                        "approvals", "granted_at", "expires_at"]),
        ("certificates", ["force", "id", "extract", "issued_at", "verdict", "body", "signature"]),
    ]

    /// What one table's copy did.
    public struct TableReport: Sendable, Equatable {
        public var table: String
        public var source: Int
        public var copied: Int
        public var target: Int
    }

    /// Rows per INSERT.
    static let batchSize = 500

    /// Copies every table of `source` into `target` (schema created if needed), then checks that each table holds
    /// as many rows on both sides and that every force's audit chain ends at the same record.
    public static func copyCatalog(from source: SQLiteCatalog, to target: PostgresCatalog,
                                   progress: @Sendable (TableReport) -> Void = { _ in }) async throws -> [TableReport]
    {
        // Only into an empty catalog or an earlier, interrupted copy of this one: every audit chain the target holds
        // must end on a record the source has.
        let targetHeads = try await target.read { db in
            try await db.rows("SELECT force, seq, hash FROM audit_heads").map {
                (try $0.value("force", as: String.self), try $0.value("seq", as: Int64.self),
                 try $0.value("hash", as: String.self))
            }
        }
        for (force, seq, hash) in targetHeads {
            let known = try await source.read { db in
                try String.fetchOne(db, sql: "SELECT hash FROM audit_records WHERE force = ? AND seq = ?",
                                    arguments: [force, seq]) == hash
            }
            guard known else {
                throw VaultError(.conflict, "the PostgreSQL catalog already holds another vault's audit chain for "
                                    + "force \(force); migrate into an empty database")
            }
        }
        var reports: [TableReport] = []
        for (table, columns) in tables {
            let sourceCount = try await source.read { db in
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0
            }
            var copied = 0
            var after: Int64 = 0
            while true {
                let cursor = after
                let rows = try await source.read { db in
                    try Row.fetchAll(db, sql: """
                        SELECT rowid AS vault_rowid, \(columns.joined(separator: ", ")) FROM \(table)
                        WHERE rowid > ? ORDER BY rowid LIMIT ?
                        """, arguments: [cursor, batchSize]).map { row in
                        (row["vault_rowid"] as Int64, columns.map { Value(row[$0] as DatabaseValue) })
                    }
                }
                guard let last = rows.last else { break }
                after = last.0
                copied += try await insert(rows.map(\.1), into: table, columns: columns, target: target)
            }
            let targetCount = try await target.read { db in
                try await db.row(PostgresQuery(unsafeSQL: "SELECT COUNT(*) AS n FROM \(table)"))?.value("n", as: Int64.self)
                    ?? 0
            }
            let report = TableReport(table: table, source: sourceCount, copied: copied, target: Int(targetCount))
            progress(report)
            reports.append(report)
            guard report.target == report.source else {
                throw VaultError(.conflict, "table \(table) holds \(report.target) rows in PostgreSQL but "
                                    + "\(report.source) in SQLite: the target was in use by another vault; migrate "
                                    + "into an empty database")
            }
        }
        // The chains end where they ended: same last seq and hash for every force.
        let sourceHeads = try await source.read { db in
            try Row.fetchAll(db, sql: "SELECT force, seq, hash FROM audit_heads ORDER BY force")
                .map { "\($0["force"] as String):\($0["seq"] as Int64):\($0["hash"] as String)" }
        }
        let copiedHeads = try await target.read { db in
            try await db.rows("SELECT force, seq, hash FROM audit_heads ORDER BY force").map {
                "\(try $0.value("force", as: String.self)):\(try $0.value("seq", as: Int64.self)):"
                    + "\(try $0.value("hash", as: String.self))"
            }
        }
        guard sourceHeads == copiedHeads else {
            throw VaultError(.conflict, "the audit chains in PostgreSQL do not end where SQLite's do")
        }
        return reports
    }

    /// The ciphertext SHA-256 recorded at upload for every extract whose blob should exist.
    public static func recordedDigests(_ source: SQLiteCatalog) async throws -> [ExtractIdentity: [UInt8]] {
        try await source.read { db in
            var digests: [ExtractIdentity: [UInt8]] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT force, dataset, id, ciphertext_sha256 FROM extracts WHERE state IN ('current', 'archived')
                """) {
                guard let force = try? ForceID(force: row["force"]), let dataset = try? DatasetID(dataset: row["dataset"]),
                    let extract = try? ExtractID(row["id"] as String), let digest = Hex.decode(row["ciphertext_sha256"])
                else { continue }
                digests[ExtractIdentity(force: force, dataset: dataset, extract: extract)] = digest
            }
            return digests
        }
    }

    /// A SQLite cell, as PostgreSQL gets it.
    enum Value: Sendable {
        case null
        case integer(Int64)
        case text(String)

        init(_ value: DatabaseValue) {
            switch value.storage {
            case .int64(let number): self = .integer(number)
            case .string(let text): self = .text(text)
            case .double(let number): self = .integer(Int64(number))
            case .blob(let data): self = .text(String(decoding: data, as: UTF8.self))
            case .null: self = .null
            }
        }
    }

    /// Inserts rows, keeping those already present; returns how many were new.
    static func insert(_ rows: [[Value]], into table: String, columns: [String], target: PostgresCatalog)
        async throws -> Int
    {
        var binds = PostgresBindings()
        var tuples: [String] = []
        for row in rows {
            var placeholders: [String] = []
            for value in row {
                switch value {
                case .null: binds.appendNull()
                case .integer(let number): binds.append(number)
                case .text(let text): binds.append(text)
                }
                placeholders.append("$\(binds.count)")
            }
            tuples.append("(\(placeholders.joined(separator: ", ")))")
        }
        let query = PostgresQuery(unsafeSQL: """
            INSERT INTO \(table) (\(columns.joined(separator: ", "))) VALUES \(tuples.joined(separator: ", "))
            ON CONFLICT DO NOTHING RETURNING 1 AS inserted
            """, binds: binds)
        return try await target.write(audited: false) { db in try await db.rows(query).count }
    }
}

/// The blob half of a migration: every file of a files store copied to S3 and checked.
public enum BlobMigration {
    public struct Report: Sendable, Equatable {
        /// Blobs sent to S3 by this run.
        public var copied = 0
        /// Blobs S3 already held with the right SHA-256 (an earlier, interrupted run sent them).
        public var present = 0
        /// Blobs whose SHA-256 in S3 matched the file's after the copy: all of them, or the run failed.
        public var verified = 0
        public var bytes: UInt64 = 0
    }

    /// Copies `<root>/<force>/<dataset>/<extract>.cob` to the same names in `target`, reading each file once to
    /// send it and computing its SHA-256 on the way, then reading the object back from S3 and comparing. A file the
    /// catalog knows is also checked against the ciphertext SHA-256 recorded at upload (`expected`).
    public static func copy(from files: FileBlobStore, to target: S3BlobStore,
                            expected: [ExtractIdentity: [UInt8]] = [:],
                            progress: @Sendable (ExtractIdentity, Bool) -> Void = { _, _ in }) async throws -> Report
    {
        var report = Report()
        for identity in try list(files) {
            let local = try await files.open(identity)
            let localDigest = try await sha256(local)
            if let recorded = expected[identity], recorded != localDigest {
                throw VaultError(.integrityFailure, "the blob of extract \(identity.extract) does not match the "
                                    + "SHA-256 recorded when it was uploaded: not copying a damaged file")
            }
            var present = false
            if let remote = try? await target.open(identity), remote.size == local.size {
                present = try await sha256(remote) == localDigest
            }
            if !present {
                let upload = try await target.create(identity)
                do {
                    try await stream(local) { try await upload.write($0) }
                    try await upload.commit()
                } catch {
                    await upload.abort()
                    throw error
                }
                let remote = try await target.open(identity)
                guard remote.size == local.size, try await sha256(remote) == localDigest else {
                    throw VaultError(.integrityFailure, "the copy of extract \(identity.extract) in S3 does not "
                                        + "match the file (SHA-256); run the migration again")
                }
                report.copied += 1
            } else {
                report.present += 1
            }
            report.verified += 1
            report.bytes += local.size
            progress(identity, present)
        }
        return report
    }

    /// Every blob file under the store's root, in name order.
    static func list(_ files: FileBlobStore) throws -> [ExtractIdentity] {
        var found: [ExtractIdentity] = []
        for force in try Directory.entries(files.root) {
            guard let forceID = try? ForceID(force: force) else { continue }
            for dataset in try Directory.entries("\(files.root)/\(force)") {
                guard let datasetID = try? DatasetID(dataset: dataset) else { continue }
                for name in try Directory.entries("\(files.root)/\(force)/\(dataset)") where name.hasSuffix(".cob") {
                    guard let extract = try? ExtractID(String(name.dropLast(4))) else { continue }
                    found.append(ExtractIdentity(force: forceID, dataset: datasetID, extract: extract))
                }
            }
        }
        return found
    }

    /// Hands `body` the blob's bytes in order, a mebibyte at a time.
    static func stream(_ source: any CiphertextSource, _ body: (ByteBuffer) async throws -> Void) async throws {
        let chunk = 1 << 20
        var offset: UInt64 = 0
        while offset < source.size {
            let count = Int(min(UInt64(chunk), source.size - offset))
            try await body(try await source.read(at: offset, count: count))
            offset += UInt64(count)
        }
    }

    static func sha256(_ source: any CiphertextSource) async throws -> [UInt8] {
        let digest = Digest(.sha256)
        try await stream(source) { buffer in buffer.withUnsafeReadableBytes { digest.update($0) } }
        return digest.finalize()
    }
}

/// Directory listing for the blob copy.
enum Directory {
    /// Names in `path` (not `.` and `..`), sorted; empty when it does not exist.
    static func entries(_ path: String) throws -> [String] {
        guard let handle = opendir(path) else {
            if errno == ENOENT { return [] }
            throw VaultError(.io, "cannot list \(path)")
        }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}
