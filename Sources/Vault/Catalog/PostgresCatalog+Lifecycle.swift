import KeyCustody
import PostgresNIO

extension PostgresCatalog {
    static func addLineage(_ db: Session, force: String, extract: String, kek: String, since: UnixTime) async throws {
        try await db.execute("""
            INSERT INTO extract_keks (force, extract, kek, since) VALUES (\(force), \(extract), \(kek), \(since))
            ON CONFLICT DO NOTHING
            """)
    }

    // MARK: Key lifecycle

    public func keyUsage(force: ForceID) async throws -> KeyUsage {
        // One snapshot: the counts, the progress and the failures are of one moment.
        try await snapshot { db in
            var usage = KeyUsage()
            for row in try await db.rows("""
                SELECT e.kek AS kek, COUNT(*) AS n, COUNT(f.extract) AS set_aside,
                    SUM(CASE WHEN e.state = 'archived' THEN 1 ELSE 0 END) AS archived FROM extracts e
                LEFT JOIN rewrap_failures f ON f.force = e.force AND f.extract = e.id AND f.kek = e.kek
                WHERE e.force = \(force.rawValue) AND e.state != 'shredded' GROUP BY e.kek
                """) {
                if let text = try row.value("kek", as: String?.self), let kek = try? KEKID(text) {
                    usage.references[kek] = try row.value("n", as: Int.self)
                    usage.setAside[kek] = try row.value("set_aside", as: Int.self)
                    usage.archived[kek] = try row.value("archived", as: Int.self)
                }
            }
            usage.rotations = try await Self.fetchRotations(db, force: force)
            usage.failures = try await Self.fetchRewrapFailures(db, force: force)
            return usage
        }
    }

    public func references(force: ForceID, kek: KEKID) async throws -> Int {
        try await read { db in
            try await Self.countReferences(db, force: force, kek: kek)
        }
    }

    static func countReferences(_ db: Session, force: ForceID, kek: KEKID) async throws -> Int {
        try await db.row("""
            SELECT COUNT(*) AS n FROM extracts
            WHERE force = \(force.rawValue) AND kek = \(kek.description) AND state != 'shredded'
            """)?.value("n", as: Int.self) ?? 0
    }

    public func rewrapCandidates(force: ForceID, under kek: KEKID, after: ExtractID?, limit: Int) async throws
        -> [RewrapCandidate]
    {
        let cursor = after?.rawValue ?? ""
        return try await read { db in
            let rows = try await db.rows("""
                SELECT dataset, id, wrapped_key FROM extracts e
                WHERE force = \(force.rawValue) AND kek = \(kek.description) AND id > \(cursor)
                AND state IN ('uploading', 'current')
                AND NOT EXISTS (SELECT 1 FROM rewrap_failures f WHERE f.force = e.force AND f.extract = e.id
                                AND f.kek = e.kek)
                ORDER BY id LIMIT \(limit)
                """)
            return try rows.map { row in
                let text = try row.value("wrapped_key", as: String.self)
                let dataset = try DatasetID(dataset: try row.value("dataset", as: String.self))
                let extract = try ExtractID(try row.value("id", as: String.self))
                return RewrapCandidate(identity: ExtractIdentity(force: force, dataset: dataset, extract: extract),
                                       wrapped: try WrappedKey(json: try JSONParser.parse(text)), text: text)
            }
        }
    }

    public func wrappedKeys(force: ForceID, under kek: KEKID, states: Set<ExtractState>, limit: Int) async throws
        -> [ExtractRecord]
    {
        let stateList = states.map(\.rawValue).sorted()
        return try await read { db in
            var query = DynamicQuery()
            query.append("SELECT * FROM extracts e WHERE force = ", bind: force.rawValue)
            query.append(" AND kek = ", bind: kek.description)
            if stateList == ["archived"] {
                // Archived rows are found through their partial index, which needs the literal condition.
                query.append(" AND state = 'archived'")
            } else {
                query.append(" AND state = ANY(", bind: stateList)
                query.append(")")
            }
            query.append(" AND NOT EXISTS (SELECT 1 FROM rewrap_failures f WHERE f.force = e.force")
            query.append(" AND f.extract = e.id AND f.kek = e.kek)")
            query.append(" LIMIT ", bind: limit)
            return try await db.rows(query.query).map(Self.extract(from:))
        }
    }

    public func applyRewraps(force: ForceID, rotation: KEKID?, rewraps: [Rewrap], failures: [RewrapFailure],
                             now: UnixTime, audit: [AuditEntry]) async throws -> Int
    {
        try await write { db in
            var moved = 0
            if Set(rewraps.map(\.identity.extract)).count == rewraps.count {
                moved = try await Self.moveWrappedKeys(db, force: force, rewraps: rewraps, now: now)
            } else {
                // The same extract twice: each compare and set must see the one before, so go one by one.
                for rewrap in rewraps {
                    let extract = rewrap.identity.extract.rawValue
                    let target = rewrap.to.kek.description
                    let changed = try await db.rows("""
                        UPDATE extracts SET wrapped_key = \(rewrap.to.canonicalText), kek = \(target)
                        WHERE force = \(force.rawValue) AND id = \(extract) AND wrapped_key = \(rewrap.fromText)
                        RETURNING id
                        """)
                    guard changed.count == 1 else { continue }
                    try await Self.addLineage(db, force: force.rawValue, extract: extract, kek: target, since: now)
                    moved += 1
                }
            }
            try await Self.setAside(db, force: force, failures: failures)
            if let rotation {
                try await db.execute("""
                    UPDATE rotations SET processed = processed + \(moved)
                    WHERE force = \(force.rawValue) AND to_kek = \(rotation.description)
                    """)
            }
            try await Self.insertAudit(db, audit)
            return moved
        }
    }

    /// Applies rewraps of distinct extracts in one statement: the compare and set on the whole wrapped key, and the
    /// lineage of the rows that moved. Returns how many moved.
    static func moveWrappedKeys(_ db: Session, force: ForceID, rewraps: [Rewrap], now: UnixTime) async throws -> Int {
        guard !rewraps.isEmpty else { return 0 }
        var extracts: [String] = [], froms: [String] = [], tos: [String] = [], keks: [String] = []
        extracts.reserveCapacity(rewraps.count)
        froms.reserveCapacity(rewraps.count)
        tos.reserveCapacity(rewraps.count)
        keks.reserveCapacity(rewraps.count)
        for rewrap in rewraps {
            extracts.append(rewrap.identity.extract.rawValue)
            froms.append(rewrap.fromText)
            tos.append(rewrap.to.canonicalText)
            keks.append(rewrap.to.kek.description)
        }
        let row = try await db.row("""
            WITH moved AS (
                UPDATE extracts AS e SET wrapped_key = r.to_text, kek = r.to_kek
                FROM unnest(\(extracts)::text[], \(froms)::text[], \(tos)::text[], \(keks)::text[])
                    AS r(extract_id, from_text, to_text, to_kek)
                WHERE e.force = \(force.rawValue) AND e.id = r.extract_id AND e.wrapped_key = r.from_text
                RETURNING e.id, e.kek
            ), lineage AS (
                INSERT INTO extract_keks (force, extract, kek, since)
                SELECT \(force.rawValue), moved.id, moved.kek, \(now) FROM moved
                ON CONFLICT DO NOTHING
            )
            SELECT COUNT(*) AS n FROM moved
            """)
        return try row?.value("n", as: Int.self) ?? 0
    }

    /// Records wrapped keys custody could not rewrap; a later failure of the same key replaces the earlier one.
    static func setAside(_ db: Session, force: ForceID, failures: [RewrapFailure]) async throws {
        // One upsert may not touch a row twice, so only the last failure of each key is sent (as it would win).
        var latest: [String: Int] = [:]
        for (index, failure) in failures.enumerated() {
            latest[failure.extract.rawValue + " " + failure.kek.description] = index
        }
        let kept = latest.values.sorted().map { failures[$0] }
        guard !kept.isEmpty else { return }
        let extracts: [String] = kept.map { $0.extract.rawValue }
        let keks: [String] = kept.map { $0.kek.description }
        let codes: [String] = kept.map { $0.code }
        let messages: [String] = kept.map { $0.message }
        let times: [Int64] = kept.map { $0.time }
        try await db.execute("""
            INSERT INTO rewrap_failures (force, extract, kek, code, message, time)
            SELECT \(force.rawValue), f.extract_id, f.kek_id, f.code, f.message, f.failed_at
            FROM unnest(\(extracts)::text[], \(keks)::text[], \(codes)::text[], \(messages)::text[],
                \(times)::bigint[]) AS f(extract_id, kek_id, code, message, failed_at)
            ON CONFLICT (force, extract, kek) DO UPDATE SET code = excluded.code, message = excluded.message,
                time = excluded.time
            """)
    }

    public func rewrapFailures(force: ForceID) async throws -> [RewrapFailure] {
        try await read { db in try await Self.fetchRewrapFailures(db, force: force) }
    }

    static func fetchRewrapFailures(_ db: Session, force: ForceID) async throws -> [RewrapFailure] {
        try await db.rows("SELECT * FROM rewrap_failures WHERE force = \(force.rawValue) ORDER BY time, extract")
            .map { row in
                RewrapFailure(extract: try ExtractID(try row.value("extract", as: String.self)),
                              kek: try KEKID(try row.value("kek", as: String.self)),
                              code: try row.value("code", as: String.self),
                              message: try row.value("message", as: String.self),
                              time: try row.value("time", as: Int64.self))
            }
    }

    public func startRotation(_ rotation: RotationRecord, audit: [AuditEntry]) async throws {
        try await write { db in
            try await db.execute("""
                INSERT INTO rotations (force, to_kek, from_kek, requested_by, started_at)
                VALUES (\(rotation.force.rawValue), \(rotation.to.description), \(rotation.from?.description),
                    \(rotation.requestedBy), \(rotation.startedAt))
                ON CONFLICT DO NOTHING
                """)
            try await Self.insertAudit(db, audit)
        }
    }

    public func finishRotation(force: ForceID, to kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws {
        try await write { db in
            let changed = try await db.rows("""
                UPDATE rotations SET finished_at = \(time)
                WHERE force = \(force.rawValue) AND to_kek = \(kek.description) AND finished_at IS NULL
                RETURNING to_kek
                """)
            guard !changed.isEmpty else { return }
            try await Self.insertAudit(db, audit)
        }
    }

    public func rotations(force: ForceID) async throws -> [RotationRecord] {
        try await read { db in try await Self.fetchRotations(db, force: force) }
    }

    static func fetchRotations(_ db: Session, force: ForceID) async throws -> [RotationRecord] {
        try await db.rows("SELECT * FROM rotations WHERE force = \(force.rawValue) ORDER BY started_at, to_kek")
            .map { row in
                RotationRecord(force: force, to: try KEKID(try row.value("to_kek", as: String.self)),
                               from: try row.value("from_kek", as: String?.self).map { try KEKID($0) },
                               requestedBy: try row.value("requested_by", as: String.self),
                               startedAt: try row.value("started_at", as: Int64.self),
                               finishedAt: try row.value("finished_at", as: Int64?.self),
                               processed: try row.value("processed", as: Int64.self))
            }
    }

    public func reserveDestruction(force: ForceID, kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws {
        try await write { db in
            let count = try await Self.countReferences(db, force: force, kek: kek)
            guard count == 0 else {
                throw VaultError(.keyInUse, "\(kek) still wraps the key of \(count) extract(s); wait for the rewrap "
                                    + "job to move them (vault keys status)")
            }
            try await db.execute("""
                INSERT INTO destroyed_keks (force, kek, time) VALUES (\(force.rawValue), \(kek.description), \(time))
                ON CONFLICT DO NOTHING
                """)
            try await Self.insertAudit(db, audit)
        }
    }

    public func lineage(force: ForceID, extract: ExtractID) async throws -> [LineageEntry] {
        try await read { db in try await Self.fetchLineage(db, force: force, extract: extract) }
    }

    static func fetchLineage(_ db: Session, force: ForceID, extract: ExtractID) async throws -> [LineageEntry] {
        let rows = try await db.rows("""
            SELECT kek, since FROM extract_keks WHERE force = \(force.rawValue) AND extract = \(extract.rawValue)
            ORDER BY position
            """)
        var entries: [LineageEntry] = []
        for row in rows {
            let since = try row.value("since", as: Int64.self)
            if !entries.isEmpty { entries[entries.count - 1].until = since }
            let kek = try KEKID(try row.value("kek", as: String.self))
            entries.append(LineageEntry(kek: kek, since: since, until: nil))
        }
        return entries
    }

    // MARK: Retrieval and hold

    public func addRetrieval(_ retrieval: Retrieval, audit: [AuditEntry]) async throws {
        try await write { db in
            try await Self.storeRetrieval(db, retrieval, insert: true)
            try await Self.insertAudit(db, audit)
        }
    }

    static func storeRetrieval(_ db: Session, _ retrieval: Retrieval, insert: Bool) async throws {
        let approvals = Retrieval.approvalsJSON(retrieval.approvals)
        if insert {
            try await db.execute("""
                INSERT INTO retrievals (extract, dataset, analyst, use_case, reason, requested_at, approvals,
                    granted_at, expires_at, force, id)
                VALUES (\(retrieval.extract.rawValue), \(retrieval.dataset.rawValue), \(retrieval.analyst),
                    \(retrieval.useCase.rawValue), \(retrieval.reason), \(retrieval.requestedAt), \(approvals),
                    \(retrieval.grantedAt), \(retrieval.expiresAt), \(retrieval.force.rawValue),
                    \(retrieval.id.rawValue))
                """)
        } else {
            try await db.execute("""
                UPDATE retrievals SET extract = \(retrieval.extract.rawValue), dataset = \(retrieval.dataset.rawValue),
                    analyst = \(retrieval.analyst), use_case = \(retrieval.useCase.rawValue),
                    reason = \(retrieval.reason), requested_at = \(retrieval.requestedAt), approvals = \(approvals),
                    granted_at = \(retrieval.grantedAt), expires_at = \(retrieval.expiresAt)
                WHERE force = \(retrieval.force.rawValue) AND id = \(retrieval.id.rawValue)
                """)
        }
    }

    static func retrieval(from row: Row) throws -> Retrieval {
        Retrieval(force: try ForceID(force: try row.value("force", as: String.self)),
                  id: try ResourceID(try row.value("id", as: String.self), kind: "retrieval id"),
                  extract: try ExtractID(try row.value("extract", as: String.self)),
                  dataset: try DatasetID(dataset: try row.value("dataset", as: String.self)),
                  analyst: try row.value("analyst", as: String.self),
                  useCase: try ResourceID(try row.value("use_case", as: String.self), kind: "use case id"),
                  reason: try row.value("reason", as: String.self),
                  requestedAt: try row.value("requested_at", as: Int64.self),
                  approvals: Retrieval.approvals(fromJSON: try row.value("approvals", as: String.self)),
                  grantedAt: try row.value("granted_at", as: Int64?.self),
                  expiresAt: try row.value("expires_at", as: Int64?.self))
    }

    public func retrieval(force: ForceID, id: ResourceID) async throws -> Retrieval? {
        try await read { db in
            try await db.row("SELECT * FROM retrievals WHERE force = \(force.rawValue) AND id = \(id.rawValue)")
                .map(Self.retrieval(from:))
        }
    }

    public func retrievals(force: ForceID) async throws -> [Retrieval] {
        try await read { db in
            try await db.rows("SELECT * FROM retrievals WHERE force = \(force.rawValue) ORDER BY requested_at, id")
                .map(Self.retrieval(from:))
        }
    }

    public func updateRetrieval(force: ForceID, id: ResourceID,
                                change: @escaping @Sendable (Retrieval) throws -> (Retrieval, [AuditEntry]))
        async throws -> Retrieval
    {
        try await write { db in
            guard let stored = try await db.row("""
                SELECT * FROM retrievals WHERE force = \(force.rawValue) AND id = \(id.rawValue)
                """).map(Self.retrieval(from:))
            else { throw VaultError(.notFound, "force \(force) has no retrieval \(id)") }
            let (updated, audit) = try change(stored)
            try await Self.storeRetrieval(db, updated, insert: false)
            try await Self.insertAudit(db, audit)
            return updated
        }
    }

    public func setHold(force: ForceID, extract: ExtractID, hold: LegalHold?,
                        audit: @escaping @Sendable (ExtractRecord) throws -> [AuditEntry]) async throws -> ExtractRecord
    {
        try await write { db in
            guard var record = try await Self.fetchExtract(db, force: force, id: extract), record.state != .uploading
            else { throw VaultError(.notFound, "force \(force) has no extract \(extract)") }
            let entries = try audit(record)
            try await db.execute("""
                UPDATE extracts
                SET hold_reason = \(hold?.reason), hold_by = \(hold?.placedBy), hold_at = \(hold?.placedAt)
                WHERE force = \(force.rawValue) AND id = \(extract.rawValue)
                """)
            try await Self.insertAudit(db, entries)
            record.hold = hold
            return record
        }
    }

    // MARK: Shredding

    public func shredCandidates(force: ForceID?, now: UnixTime, limit: Int) async throws -> [ExtractRecord] {
        try await read { db in
            var interrupted = DynamicQuery()
            interrupted.append("SELECT * FROM extracts WHERE state = 'shredding'")
            if let force { interrupted.append(" AND force = ", bind: force.rawValue) }
            interrupted.append(" ORDER BY shred_started_at, id LIMIT ", bind: limit)
            let first = try await db.rows(interrupted.query).map(Self.extract(from:))
            var expired = DynamicQuery()
            expired.append("SELECT * FROM extracts WHERE state = 'archived' AND expires_at <= ", bind: now)
            expired.append(" AND hold_reason IS NULL")
            if let force { expired.append(" AND force = ", bind: force.rawValue) }
            expired.append(" ORDER BY expires_at, id LIMIT ", bind: max(0, limit - first.count))
            let second = try await db.rows(expired.query).map(Self.extract(from:))
            return first + second
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
                guard let row = try await db.row("""
                    SELECT * FROM extracts WHERE force = \(force.rawValue) AND id = \(extract.rawValue)
                    """)
                else { continue }
                let record = try Self.extract(from: row)
                if record.state == .shredding {
                    tickets.append(try Self.ticket(from: row, record: record))
                    continue
                }
                guard record.state == .archived, record.hold == nil else { continue }
                if let expiredBy, (record.expiresAt ?? .max) > expiredBy { continue }
                try await db.execute("""
                    UPDATE extracts SET state = 'shredding', shred_reason = \(reason.rawValue), shred_note = \(note),
                        shred_by = \(requestedBy), shred_started_at = \(now)
                    WHERE force = \(force.rawValue) AND id = \(extract.rawValue) AND state = 'archived'
                    """)
                var marked = record
                marked.state = .shredding
                tickets.append(ShredTicket(record: marked, reason: reason, note: note, requestedBy: requestedBy,
                                           startedAt: now))
                entries.append(audit(record))
            }
            try await Self.insertAudit(db, entries)
            return tickets
        }
    }

    static func ticket(from row: Row, record: ExtractRecord) throws -> ShredTicket {
        ShredTicket(record: record,
                    reason: ShredReason(rawValue: try row.value("shred_reason", as: String?.self) ?? "")
                        ?? .retentionExpired,
                    note: try row.value("shred_note", as: String?.self),
                    requestedBy: try row.value("shred_by", as: String?.self) ?? "vaultd",
                    startedAt: try row.value("shred_started_at", as: Int64?.self) ?? 0)
    }

    public func finishShred(force: ForceID, certificates: [DestructionCertificate], now: UnixTime,
                            audit: [AuditEntry]) async throws
    {
        try await write { db in
            for certificate in certificates {
                let changed = try await db.rows("""
                    UPDATE extracts SET state = 'shredded', shredded_at = \(now), certificate = \(certificate.id)
                    WHERE force = \(force.rawValue) AND id = \(certificate.extract.rawValue) AND state = 'shredding'
                    RETURNING id
                    """)
                guard changed.count == 1 else {
                    throw VaultError(.conflict, "extract \(certificate.extract) is not being shredded")
                }
                try await Self.insertCertificate(db, certificate)
            }
            try await Self.insertAudit(db, audit)
        }
    }

    static func insertCertificate(_ db: Session, _ certificate: DestructionCertificate) async throws {
        try await db.execute("""
            INSERT INTO certificates (force, id, extract, issued_at, verdict, body, signature)
            VALUES (\(certificate.force.rawValue), \(certificate.id), \(certificate.extract.rawValue),
                \(certificate.issuedAt), \(certificate.verdict.rawValue), \(certificate.body.canonicalString),
                \(Base64.encode(certificate.signature)))
            """)
    }

    static func certificate(from row: Row) throws -> DestructionCertificate {
        let id = try row.value("id", as: String.self)
        guard let signature = Base64.decode(try row.value("signature", as: String.self)) else {
            throw VaultError(.catalogUnavailable, "catalog row for certificate \(id) is corrupt")
        }
        return try DestructionCertificate(body: try JSONParser.parse(try row.value("body", as: String.self)),
                                          signature: signature)
    }

    public func certificate(force: ForceID, id: String) async throws -> DestructionCertificate? {
        try await read { db in
            try await db.row("SELECT * FROM certificates WHERE force = \(force.rawValue) AND id = \(id)")
                .map(Self.certificate(from:))
        }
    }

    public func certificates(force: ForceID, extract: ExtractID?) async throws -> [DestructionCertificate] {
        try await read { db in
            var query = DynamicQuery()
            query.append("SELECT * FROM certificates WHERE force = ", bind: force.rawValue)
            if let extract {
                query.append(" AND extract = ", bind: extract.rawValue)
            }
            query.append(" ORDER BY issued_at, position")
            return try await db.rows(query.query).map(Self.certificate(from:))
        }
    }

    public func addCertificates(force: ForceID, _ certificates: [DestructionCertificate], audit: [AuditEntry])
        async throws
    {
        try await write { db in
            for certificate in certificates {
                try await Self.insertCertificate(db, certificate)
                try await db.execute("""
                    UPDATE extracts SET certificate = \(certificate.id)
                    WHERE force = \(force.rawValue) AND id = \(certificate.extract.rawValue)
                    """)
            }
            try await Self.insertAudit(db, audit)
        }
    }
}
