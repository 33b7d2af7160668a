import GRDB
import KeyCustody

extension SQLiteCatalog {
    static func registerLifecycleMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v4: key lifecycle, retrieval, hold, shredding") { db in
            try db.execute(sql: """
                ALTER TABLE extracts ADD COLUMN kek TEXT;
                UPDATE extracts SET kek = json_extract(wrapped_key, '$.kek');
                CREATE INDEX extracts_by_kek ON extracts (force, kek, id);
                CREATE INDEX extracts_archived_by_kek ON extracts (force, kek) WHERE state = 'archived';
                ALTER TABLE extracts ADD COLUMN hold_reason TEXT;
                ALTER TABLE extracts ADD COLUMN hold_by TEXT;
                ALTER TABLE extracts ADD COLUMN hold_at INTEGER;
                ALTER TABLE extracts ADD COLUMN shred_reason TEXT;
                ALTER TABLE extracts ADD COLUMN shred_note TEXT;
                ALTER TABLE extracts ADD COLUMN shred_by TEXT;
                ALTER TABLE extracts ADD COLUMN shred_started_at INTEGER;
                ALTER TABLE extracts ADD COLUMN shredded_at INTEGER;
                ALTER TABLE extracts ADD COLUMN certificate TEXT;
                CREATE INDEX extracts_by_expiry ON extracts (state, expires_at);
                -- Every KEK an extract's key was ever wrapped under, in order (rowid), with when it started.
                CREATE TABLE extract_keks (
                    force TEXT NOT NULL, extract TEXT NOT NULL, kek TEXT NOT NULL, since INTEGER NOT NULL,
                    PRIMARY KEY (force, extract, kek));
                INSERT INTO extract_keks (force, extract, kek, since)
                    SELECT force, id, kek, created_at FROM extracts ORDER BY created_at, id;
                CREATE TABLE rotations (
                    force TEXT NOT NULL, to_kek TEXT NOT NULL, from_kek TEXT, requested_by TEXT NOT NULL,
                    started_at INTEGER NOT NULL, finished_at INTEGER, processed INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (force, to_kek));
                CREATE TABLE rewrap_failures (
                    force TEXT NOT NULL, extract TEXT NOT NULL, kek TEXT NOT NULL, code TEXT NOT NULL,
                    message TEXT NOT NULL, time INTEGER NOT NULL, PRIMARY KEY (force, extract, kek));
                -- Master keys being or already destroyed: nothing may be committed under them again.
                CREATE TABLE destroyed_keks (
                    force TEXT NOT NULL, kek TEXT NOT NULL, time INTEGER NOT NULL, PRIMARY KEY (force, kek));
                CREATE TABLE retrievals (
                    force TEXT NOT NULL, id TEXT NOT NULL, extract TEXT NOT NULL, dataset TEXT NOT NULL,
                    analyst TEXT NOT NULL, use_case TEXT NOT NULL, reason TEXT NOT NULL,
                    requested_at INTEGER NOT NULL, approvals TEXT NOT NULL, granted_at INTEGER, expires_at INTEGER,
                    PRIMARY KEY (force, id));
                CREATE TABLE certificates (
                    force TEXT NOT NULL, id TEXT NOT NULL, extract TEXT NOT NULL, issued_at INTEGER NOT NULL,
                    verdict TEXT NOT NULL, body TEXT NOT NULL, signature TEXT NOT NULL, PRIMARY KEY (force, id));
                CREATE INDEX certificates_by_extract ON certificates (force, extract, issued_at);
                CREATE TRIGGER certificates_no_update BEFORE UPDATE ON certificates
                    BEGIN SELECT RAISE(ABORT, 'destruction certificates are append-only'); END;
                CREATE TRIGGER certificates_no_delete BEFORE DELETE ON certificates
                    BEGIN SELECT RAISE(ABORT, 'destruction certificates are append-only'); END;
                """)
        }
    }

    // MARK: Key lifecycle

    public func keyUsage(force: ForceID) async throws -> KeyUsage {
        // One read transaction: the counts, the progress and the failures are of one moment.
        try await read { db in
            var usage = KeyUsage()
            for row in try Row.fetchAll(db, sql: """
                SELECT e.kek AS kek, COUNT(*) AS n, COUNT(f.extract) AS set_aside,
                    SUM(CASE WHEN e.state = 'archived' THEN 1 ELSE 0 END) AS archived FROM extracts e
                LEFT JOIN rewrap_failures f ON f.force = e.force AND f.extract = e.id AND f.kek = e.kek
                WHERE e.force = ? AND e.state != 'shredded' GROUP BY e.kek
                """, arguments: [force.rawValue]) {
                if let text = row["kek"] as String?, let kek = try? KEKID(text) {
                    usage.references[kek] = row["n"]
                    usage.setAside[kek] = row["set_aside"]
                    usage.archived[kek] = row["archived"]
                }
            }
            usage.rotations = try Self.fetchRotations(db, force: force)
            usage.failures = try Self.fetchRewrapFailures(db, force: force)
            return usage
        }
    }

    public func references(force: ForceID, kek: KEKID) async throws -> Int {
        try await read { db in
            try Int.fetchOne(db, sql: """
                SELECT COUNT(*) FROM extracts WHERE force = ? AND kek = ? AND state != 'shredded'
                """, arguments: [force.rawValue, kek.description]) ?? 0
        }
    }

    public func rewrapCandidates(force: ForceID, under kek: KEKID, after: ExtractID?, limit: Int) async throws
        -> [RewrapCandidate]
    {
        try await read { db in
            let rows = try Row.fetchAll(db.cachedStatement(sql: """
                SELECT dataset, id, wrapped_key FROM extracts e
                WHERE force = ? AND kek = ? AND id > ? AND state IN ('uploading', 'current')
                AND NOT EXISTS (SELECT 1 FROM rewrap_failures f WHERE f.force = e.force AND f.extract = e.id
                                AND f.kek = e.kek)
                ORDER BY id LIMIT ?
                """), arguments: [force.rawValue, kek.description, after?.rawValue ?? "", limit])
            return try rows.map { row in
                let text: String = row[2]
                return RewrapCandidate(
                    identity: ExtractIdentity(force: force, dataset: try DatasetID(dataset: row[0]),
                                              extract: try ExtractID(row[1])),
                    wrapped: try WrappedKey(json: try JSONParser.parse(text)), text: text)
            }
        }
    }

    public func wrappedKeys(force: ForceID, under kek: KEKID, states: Set<ExtractState>, limit: Int) async throws
        -> [ExtractRecord]
    {
        let stateList = states.map(\.rawValue).sorted()
        return try await read { db in
            let placeholders = stateList.map { _ in "?" }.joined(separator: ", ")
            var arguments: [any DatabaseValueConvertible] = [force.rawValue, kek.description]
            arguments.append(contentsOf: stateList)
            arguments.append(limit)
            // Archived rows are found through their partial index, which needs the literal condition.
            let stateCondition = stateList == ["archived"] ? "state = 'archived' AND ? = 'archived'"
                : "state IN (\(placeholders))"
            return try Row.fetchAll(db, sql: """
                SELECT * FROM extracts e WHERE force = ? AND kek = ? AND \(stateCondition)
                AND NOT EXISTS (SELECT 1 FROM rewrap_failures f WHERE f.force = e.force AND f.extract = e.id
                                AND f.kek = e.kek)
                LIMIT ?
                """, arguments: StatementArguments(arguments)).map(Self.extract(from:))
        }
    }

    public func applyRewraps(force: ForceID, rotation: KEKID?, rewraps: [Rewrap], failures: [RewrapFailure],
                             now: UnixTime, audit: [AuditEntry]) async throws -> Int
    {
        try await write { db in
            let update = try db.cachedStatement(sql: """
                UPDATE extracts SET wrapped_key = ?, kek = ? WHERE force = ? AND id = ? AND wrapped_key = ?
                """)
            let lineage = try db.cachedStatement(sql: """
                INSERT OR IGNORE INTO extract_keks (force, extract, kek, since) VALUES (?, ?, ?, ?)
                """)
            var moved = 0
            let kek = rewraps.first?.to.kek.description
            for rewrap in rewraps {
                let extract = rewrap.identity.extract.rawValue
                let target = rewrap.to.kek.description == kek ? kek! : rewrap.to.kek.description
                try update.execute(arguments: [rewrap.to.canonicalText, target, force.rawValue, extract,
                                               rewrap.fromText])
                guard db.changesCount == 1 else { continue }
                try lineage.execute(arguments: [force.rawValue, extract, target, now])
                moved += 1
            }
            for failure in failures {
                try db.execute(sql: """
                    INSERT OR REPLACE INTO rewrap_failures (force, extract, kek, code, message, time)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [force.rawValue, failure.extract.rawValue, failure.kek.description, failure.code,
                                     failure.message, failure.time])
            }
            if let rotation {
                try db.execute(sql: "UPDATE rotations SET processed = processed + ? WHERE force = ? AND to_kek = ?",
                               arguments: [moved, force.rawValue, rotation.description])
            }
            try Self.insertAudit(db, audit)
            return moved
        }
    }

    public func rewrapFailures(force: ForceID) async throws -> [RewrapFailure] {
        try await read { db in try Self.fetchRewrapFailures(db, force: force) }
    }

    static func fetchRewrapFailures(_ db: Database, force: ForceID) throws -> [RewrapFailure] {
        try Row.fetchAll(db, sql: "SELECT * FROM rewrap_failures WHERE force = ? ORDER BY time, extract",
                         arguments: [force.rawValue]).map { row in
            RewrapFailure(extract: try ExtractID(row["extract"]), kek: try KEKID(row["kek"]), code: row["code"],
                          message: row["message"], time: row["time"])
        }
    }

    public func startRotation(_ rotation: RotationRecord, audit: [AuditEntry]) async throws {
        try await write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO rotations (force, to_kek, from_kek, requested_by, started_at)
                VALUES (?, ?, ?, ?, ?)
                """, arguments: [rotation.force.rawValue, rotation.to.description, rotation.from?.description,
                                 rotation.requestedBy, rotation.startedAt])
            try Self.insertAudit(db, audit)
        }
    }

    public func finishRotation(force: ForceID, to kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws {
        try await write { db in
            try db.execute(sql: """
                UPDATE rotations SET finished_at = ? WHERE force = ? AND to_kek = ? AND finished_at IS NULL
                """, arguments: [time, force.rawValue, kek.description])
            guard db.changesCount > 0 else { return }
            try Self.insertAudit(db, audit)
        }
    }

    public func rotations(force: ForceID) async throws -> [RotationRecord] {
        try await read { db in try Self.fetchRotations(db, force: force) }
    }

    static func fetchRotations(_ db: Database, force: ForceID) throws -> [RotationRecord] {
        try Row.fetchAll(db, sql: "SELECT * FROM rotations WHERE force = ? ORDER BY started_at, to_kek",
                         arguments: [force.rawValue]).map { row in
            RotationRecord(force: force, to: try KEKID(row["to_kek"]),
                           from: try (row["from_kek"] as String?).map { try KEKID($0) },
                           requestedBy: row["requested_by"], startedAt: row["started_at"],
                           finishedAt: row["finished_at"], processed: row["processed"])
        }
    }

    public func reserveDestruction(force: ForceID, kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws {
        try await write { db in
            let count = try Int.fetchOne(db, sql: """
                SELECT COUNT(*) FROM extracts WHERE force = ? AND kek = ? AND state != 'shredded'
                """, arguments: [force.rawValue, kek.description]) ?? 0
            guard count == 0 else {
                throw VaultError(.keyInUse, "\(kek) still wraps the key of \(count) extract(s); wait for the rewrap "
                                    + "job to move them (vault keys status)")
            }
            try db.execute(sql: "INSERT OR IGNORE INTO destroyed_keks (force, kek, time) VALUES (?, ?, ?)",
                           arguments: [force.rawValue, kek.description, time])
            try Self.insertAudit(db, audit)
        }
    }

    public func lineage(force: ForceID, extract: ExtractID) async throws -> [LineageEntry] {
        try await read { db in try Self.fetchLineage(db, force: force, extract: extract) }
    }

    static func fetchLineage(_ db: Database, force: ForceID, extract: ExtractID) throws -> [LineageEntry] {
        let rows = try Row.fetchAll(db, sql: """
            SELECT kek, since FROM extract_keks WHERE force = ? AND extract = ? ORDER BY rowid
            """, arguments: [force.rawValue, extract.rawValue])
        var entries: [LineageEntry] = []
        for row in rows {
            if !entries.isEmpty { entries[entries.count - 1].until = row["since"] }
            entries.append(LineageEntry(kek: try KEKID(row["kek"]), since: row["since"], until: nil))
        }
        return entries
    }

    // MARK: Retrieval and hold

    public func addRetrieval(_ retrieval: Retrieval, audit: [AuditEntry]) async throws {
        try await write { db in
            try Self.storeRetrieval(db, retrieval, insert: true)
            try Self.insertAudit(db, audit)
        }
    }

    static func storeRetrieval(_ db: Database, _ retrieval: Retrieval, insert: Bool) throws {
        let arguments: StatementArguments = [
            retrieval.extract.rawValue, retrieval.dataset.rawValue, retrieval.analyst, retrieval.useCase.rawValue,
            retrieval.reason, retrieval.requestedAt, Retrieval.approvalsJSON(retrieval.approvals), retrieval.grantedAt,
            retrieval.expiresAt, retrieval.force.rawValue, retrieval.id.rawValue,
        ]
        if insert {
            try db.execute(sql: """
                INSERT INTO retrievals (extract, dataset, analyst, use_case, reason, requested_at, approvals,
                    granted_at, expires_at, force, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: arguments)
        } else {
            try db.execute(sql: """
                UPDATE retrievals SET extract = ?, dataset = ?, analyst = ?, use_case = ?, reason = ?,
                    requested_at = ?, approvals = ?, granted_at = ?, expires_at = ? WHERE force = ? AND id = ?
                """, arguments: arguments)
        }
    }

    static func retrieval(from row: Row) throws -> Retrieval {
        Retrieval(force: try ForceID(force: row["force"]), id: try ResourceID(row["id"], kind: "retrieval id"),
                  extract: try ExtractID(row["extract"]), dataset: try DatasetID(dataset: row["dataset"]),
                  analyst: row["analyst"], useCase: try ResourceID(row["use_case"], kind: "use case id"),
                  reason: row["reason"], requestedAt: row["requested_at"],
                  approvals: Retrieval.approvals(fromJSON: row["approvals"]), grantedAt: row["granted_at"],
                  expiresAt: row["expires_at"])
    }

    public func retrieval(force: ForceID, id: ResourceID) async throws -> Retrieval? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM retrievals WHERE force = ? AND id = ?",
                             arguments: [force.rawValue, id.rawValue]).map(Self.retrieval(from:))
        }
    }

    public func retrievals(force: ForceID) async throws -> [Retrieval] {
        try await read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM retrievals WHERE force = ? ORDER BY requested_at, id",
                             arguments: [force.rawValue]).map(Self.retrieval(from:))
        }
    }

    public func updateRetrieval(force: ForceID, id: ResourceID,
                                change: @escaping @Sendable (Retrieval) throws -> (Retrieval, [AuditEntry]))
        async throws -> Retrieval
    {
        try await write { db in
            guard let stored = try Row.fetchOne(db, sql: "SELECT * FROM retrievals WHERE force = ? AND id = ?",
                                                arguments: [force.rawValue, id.rawValue]).map(Self.retrieval(from:))
            else { throw VaultError(.notFound, "force \(force) has no retrieval \(id)") }
            let (updated, audit) = try change(stored)
            try Self.storeRetrieval(db, updated, insert: false)
            try Self.insertAudit(db, audit)
            return updated
        }
    }

    public func setHold(force: ForceID, extract: ExtractID, hold: LegalHold?,
                        audit: @escaping @Sendable (ExtractRecord) throws -> [AuditEntry]) async throws -> ExtractRecord
    {
        try await write { db in
            guard var record = try Self.fetchExtract(db, force: force, id: extract), record.state != .uploading else {
                throw VaultError(.notFound, "force \(force) has no extract \(extract)")
            }
            let entries = try audit(record)
            try db.execute(sql: "UPDATE extracts SET hold_reason = ?, hold_by = ?, hold_at = ? WHERE force = ? AND id = ?",
                           arguments: [hold?.reason, hold?.placedBy, hold?.placedAt, force.rawValue, extract.rawValue])
            try Self.insertAudit(db, entries)
            record.hold = hold
            return record
        }
    }

    // MARK: Shredding

    public func shredCandidates(force: ForceID?, now: UnixTime, limit: Int) async throws -> [ExtractRecord] {
        try await read { db in
            var forceFilter = ""
            var arguments: [any DatabaseValueConvertible] = []
            if let force {
                forceFilter = " AND force = ?"
                arguments.append(force.rawValue)
            }
            let interrupted = try Row.fetchAll(db, sql: """
                SELECT * FROM extracts WHERE state = 'shredding'\(forceFilter) ORDER BY shred_started_at, id LIMIT ?
                """, arguments: StatementArguments(arguments + [limit])).map(Self.extract(from:))
            let expired = try Row.fetchAll(db, sql: """
                SELECT * FROM extracts WHERE state = 'archived' AND expires_at <= ? AND hold_reason IS NULL\(forceFilter)
                ORDER BY expires_at, id LIMIT ?
                """, arguments: StatementArguments([now] + arguments + [limit - interrupted.count]))
                .map(Self.extract(from:))
            return interrupted + expired
        }
    }

    public func beginShred(force: ForceID, extracts: [ExtractID], reason: ShredReason, note: String?,
                           requestedBy: String, expiredBy: UnixTime?, now: UnixTime,
                           audit: @escaping @Sendable (ExtractRecord) -> AuditEntry) async throws -> [ShredTicket]
    {
        try await write { db in
            var tickets: [ShredTicket] = []
            var entries: [AuditEntry] = []
            for extract in extracts {
                guard let row = try Row.fetchOne(db, sql: "SELECT * FROM extracts WHERE force = ? AND id = ?",
                                                 arguments: [force.rawValue, extract.rawValue])
                else { continue }
                let record = try Self.extract(from: row)
                if record.state == .shredding {
                    tickets.append(try Self.ticket(from: row, record: record))
                    continue
                }
                guard record.state == .archived, record.hold == nil else { continue }
                if let expiredBy, (record.expiresAt ?? .max) > expiredBy { continue }
                try db.execute(sql: """
                    UPDATE extracts SET state = 'shredding', shred_reason = ?, shred_note = ?, shred_by = ?,
                        shred_started_at = ? WHERE force = ? AND id = ? AND state = 'archived'
                    """, arguments: [reason.rawValue, note, requestedBy, now, force.rawValue, extract.rawValue])
                var marked = record
                marked.state = .shredding
                tickets.append(ShredTicket(record: marked, reason: reason, note: note, requestedBy: requestedBy,
                                           startedAt: now))
                entries.append(audit(record))
            }
            try Self.insertAudit(db, entries)
            return tickets
        }
    }

    static func ticket(from row: Row, record: ExtractRecord) throws -> ShredTicket {
        ShredTicket(record: record, reason: ShredReason(rawValue: row["shred_reason"] ?? "") ?? .retentionExpired,
                    note: row["shred_note"], requestedBy: row["shred_by"] ?? "vaultd",
                    startedAt: row["shred_started_at"] ?? 0)
    }

    public func finishShred(force: ForceID, certificates: [DestructionCertificate], now: UnixTime,
                            audit: [AuditEntry]) async throws
    {
        try await write { db in
            for certificate in certificates {
                try db.execute(sql: """
                    UPDATE extracts SET state = 'shredded', shredded_at = ?, certificate = ?
                    WHERE force = ? AND id = ? AND state = 'shredding'
                    """, arguments: [now, certificate.id, force.rawValue, certificate.extract.rawValue])
                guard db.changesCount == 1 else {
                    throw VaultError(.conflict, "extract \(certificate.extract) is not being shredded")
                }
                try Self.insertCertificate(db, certificate)
            }
            try Self.insertAudit(db, audit)
        }
    }

    static func insertCertificate(_ db: Database, _ certificate: DestructionCertificate) throws {
        try db.execute(sql: """
            INSERT INTO certificates (force, id, extract, issued_at, verdict, body, signature)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            """, arguments: [certificate.force.rawValue, certificate.id, certificate.extract.rawValue,
                             certificate.issuedAt, certificate.verdict.rawValue, certificate.body.canonicalString,
                             Base64.encode(certificate.signature)])
    }

    static func certificate(from row: Row) throws -> DestructionCertificate {
        guard let signature = Base64.decode(row["signature"]) else {
            throw VaultError(.catalogUnavailable, "catalog row for certificate \(row["id"] as String) is corrupt")
        }
        return try DestructionCertificate(body: try JSONParser.parse(row["body"] as String), signature: signature)
    }

    public func certificate(force: ForceID, id: String) async throws -> DestructionCertificate? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM certificates WHERE force = ? AND id = ?",
                             arguments: [force.rawValue, id]).map(Self.certificate(from:))
        }
    }

    public func certificates(force: ForceID, extract: ExtractID?) async throws -> [DestructionCertificate] {
        try await read { db in
            var sql = "SELECT * FROM certificates WHERE force = ?"
            var arguments: [any DatabaseValueConvertible] = [force.rawValue]
            if let extract {
                sql += " AND extract = ?"
                arguments.append(extract.rawValue)
            }
            sql += " ORDER BY issued_at, rowid"
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments)).map(Self.certificate(from:))
        }
    }

    public func addCertificates(force: ForceID, _ certificates: [DestructionCertificate], audit: [AuditEntry])
        async throws
    {
        try await write { db in
            for certificate in certificates {
                try Self.insertCertificate(db, certificate)
                try db.execute(sql: "UPDATE extracts SET certificate = ? WHERE force = ? AND id = ?",
                               arguments: [certificate.id, force.rawValue, certificate.extract.rawValue])
            }
            try Self.insertAudit(db, audit)
        }
    }
}

