import KeyCustody

/// The key lifecycle, archive retrieval, legal hold and crypto-shredding operations, as plans (see `CatalogPlans`).
extension CatalogPlans {
    // MARK: Key lifecycle

    static func rotations(force: ForceID) -> CatalogPlan<[RotationRecord]> {
        .query(CatalogStatement("SELECT * FROM rotations WHERE force = ? ORDER BY started_at, to_kek", force.rawValue)) {
            rows in
            try rows.map { row in
                RotationRecord(force: force, to: try KEKID(try row.value("to_kek")),
                               from: try row.value("from_kek", as: String?.self).map { try KEKID($0) },
                               requestedBy: try row.value("requested_by"), startedAt: try row.value("started_at"),
                               finishedAt: try row.value("finished_at"), processed: try row.value("processed"))
            }
        }
    }

    static func rewrapFailures(force: ForceID) -> CatalogPlan<[RewrapFailure]> {
        .query(CatalogStatement("SELECT * FROM rewrap_failures WHERE force = ? ORDER BY time, extract",
                                force.rawValue)) { rows in
            try rows.map { row in
                RewrapFailure(extract: try ExtractID(try row.value("extract")), kek: try KEKID(try row.value("kek")),
                              code: try row.value("code"), message: try row.value("message"),
                              time: try row.value("time"))
            }
        }
    }

    /// Three statements: run as one snapshot, so the counts, progress and failures are of one moment.
    static func keyUsage(force: ForceID) -> CatalogPlan<KeyUsage> {
        CatalogPlan<KeyUsage>.query(CatalogStatement("""
            SELECT e.kek AS kek, COUNT(*) AS n, COUNT(f.extract) AS set_aside,
                SUM(CASE WHEN e.state = 'archived' THEN 1 ELSE 0 END) AS archived FROM extracts e
            LEFT JOIN rewrap_failures f ON f.force = e.force AND f.extract = e.id AND f.kek = e.kek
            WHERE e.force = ? AND e.state != 'shredded' GROUP BY e.kek
            """, force.rawValue)) { rows in
            var usage = KeyUsage()
            for row in rows {
                if let text = try row.value("kek", as: String?.self), let kek = try? KEKID(text) {
                    usage.references[kek] = try row.value("n", as: Int.self)
                    usage.setAside[kek] = try row.value("set_aside", as: Int.self)
                    usage.archived[kek] = try row.value("archived", as: Int.self)
                }
            }
            return usage
        }
        .then { usage in rotations(force: force).map { var usage = usage; usage.rotations = $0; return usage } }
        .then { usage in rewrapFailures(force: force).map { var usage = usage; usage.failures = $0; return usage } }
    }

    static func references(force: ForceID, kek: KEKID) -> CatalogPlan<Int> {
        .query(CatalogStatement("SELECT COUNT(*) AS n FROM extracts WHERE force = ? AND kek = ? AND state != 'shredded'",
                                force.rawValue, kek.description)) { try $0.first?.value("n", as: Int.self) ?? 0 }
    }

    static func rewrapCandidates(force: ForceID, under kek: KEKID, after: ExtractID?, limit: Int)
        -> CatalogPlan<[RewrapCandidate]>
    {
        .query(CatalogStatement("""
            SELECT dataset, id, wrapped_key FROM extracts e
            WHERE force = ? AND kek = ? AND id > ? AND state IN ('uploading', 'current')
            AND NOT EXISTS (SELECT 1 FROM rewrap_failures f WHERE f.force = e.force AND f.extract = e.id
                            AND f.kek = e.kek)
            ORDER BY id LIMIT ?
            """, force.rawValue, kek.description, after?.rawValue ?? "", limit)) { rows in
            try rows.map { row in
                let text = try row.value("wrapped_key", as: String.self)
                return RewrapCandidate(
                    identity: ExtractIdentity(force: force, dataset: try DatasetID(dataset: try row.value("dataset")),
                                              extract: try ExtractID(try row.value("id"))),
                    wrapped: try WrappedKey(json: try JSONParser.parse(text)), text: text)
            }
        }
    }

    static func wrappedKeys(force: ForceID, under kek: KEKID, states: Set<ExtractState>, limit: Int)
        -> CatalogPlan<[ExtractRecord]>
    {
        let stateList = states.map(\.rawValue).sorted()
        // Archived rows are found through their partial index, which needs the literal condition.
        let stateCondition = stateList == ["archived"] ? "state = 'archived'"
            : "state IN (\(CatalogStatement.placeholders(stateList.count)))"
        let stateArguments = stateList == ["archived"] ? [] : stateList.map(CatalogValue.text)
        return extracts(CatalogStatement("""
            SELECT * FROM extracts e WHERE force = ? AND kek = ? AND \(stateCondition)
            AND NOT EXISTS (SELECT 1 FROM rewrap_failures f WHERE f.force = e.force AND f.extract = e.id
                            AND f.kek = e.kek)
            LIMIT ?
            """, arguments: [.text(force.rawValue), .text(kek.description)] + stateArguments
                + [.integer(Int64(limit))]))
    }

    /// How many rewraps go in one statement (four values each, well inside both databases' limits).
    static let rewrapsPerStatement = 1000

    /// Compare and set on whole wrapped keys, and the lineage of the rows that moved; how many moved. Distinct
    /// extracts move a thousand at a time (`UPDATE ... FROM (VALUES ...)`); when one extract comes twice, each
    /// compare and set must see the one before, so they go one by one.
    /// On PostgreSQL each chunk is one statement: the compare and set and the lineage of what moved in one
    /// data-modifying `WITH`, so the moved rows never travel back to be sent again (SQLite has no such `WITH`).
    static func moveWrappedKeys(force: ForceID, rewraps: [Rewrap], now: UnixTime, dialect: CatalogDialect)
        -> CatalogPlan<Int>
    {
        let distinct = Set(rewraps.map(\.identity.extract)).count == rewraps.count
        let size = distinct ? rewrapsPerStatement : 1
        let chunks = stride(from: 0, to: rewraps.count, by: size).map {
            Array(rewraps[$0..<min($0 + size, rewraps.count)])
        }
        // One chunk after another, each step made when the one before has run (a chain built up front would cost
        // time quadratic in the number of chunks to run).
        @Sendable func move(from index: Int, movedSoFar: Int) -> CatalogPlan<Int> {
            guard index < chunks.count else { return .done(movedSoFar) }
            let chunk = chunks[index]
            let values = Array(repeating: "(?, ?, ?, ?)", count: chunk.count).joined(separator: ", ")
            let arguments = chunk.flatMap { rewrap -> [CatalogValue] in
                [.text(rewrap.identity.extract.rawValue), .text(rewrap.fromText), .text(rewrap.to.canonicalText),
                 .text(rewrap.to.kek.description)]
            }
            if dialect == .postgres {
                return .query(CatalogStatement("""
                    WITH moved AS (
                        UPDATE extracts SET wrapped_key = r.column3, kek = r.column4 FROM (VALUES \(values)) AS r
                        WHERE extracts.force = ? AND extracts.id = r.column1 AND extracts.wrapped_key = r.column2
                        RETURNING extracts.id, extracts.kek),
                    lineage AS (
                        INSERT INTO extract_keks (force, extract, kek, since)
                        SELECT ?, id, kek, ? FROM moved ON CONFLICT DO NOTHING)
                    SELECT COUNT(*) AS n FROM moved
                    """, arguments: arguments + [.text(force.rawValue), .text(force.rawValue), .integer(now)])) { rows in
                    try rows.first?.value("n", as: Int.self) ?? 0
                }.then { moved in move(from: index + 1, movedSoFar: movedSoFar + moved) }
            }
            return .run(CatalogStatement("""
                UPDATE extracts SET wrapped_key = r.column3, kek = r.column4 FROM (VALUES \(values)) AS r
                WHERE extracts.force = ? AND extracts.id = r.column1 AND extracts.wrapped_key = r.column2
                RETURNING id, kek
                """, arguments: arguments + [.text(force.rawValue)])) { moved in
                let lineage = try moved.map { row -> [CatalogValue] in
                    [.text(force.rawValue), .text(try row.value("id")), .text(try row.value("kek")), .integer(now)]
                }
                let next: @Sendable () -> CatalogPlan<Int> = {
                    move(from: index + 1, movedSoFar: movedSoFar + moved.count)
                }
                guard !lineage.isEmpty else { return next() }
                return CatalogPlan.execute(CatalogStatement(
                    insertInto: "extract_keks",
                    columns: [("force", .text), ("extract", .text), ("kek", .text), ("since", .integer)],
                    rows: lineage, onConflict: "ON CONFLICT DO NOTHING"))
                .then { next() }
            }
        }
        return move(from: 0, movedSoFar: 0)
    }

    /// Records wrapped keys custody could not rewrap; a later failure of the same key replaces the earlier one (one
    /// upsert may not touch a row twice, so only the last failure of each key is sent, as it would win).
    static func setAside(force: ForceID, failures: [RewrapFailure]) -> CatalogPlan<Void> {
        var latest: [String: Int] = [:]
        for (index, failure) in failures.enumerated() {
            latest[failure.extract.rawValue + " " + failure.kek.description] = index
        }
        let kept = latest.values.sorted().map { failures[$0] }
        guard !kept.isEmpty else { return .done(()) }
        return .execute(CatalogStatement(
            insertInto: "rewrap_failures",
            columns: [("force", .text), ("extract", .text), ("kek", .text), ("code", .text), ("message", .text),
                      ("time", .integer)],
            rows: kept.map { [.text(force.rawValue), .text($0.extract.rawValue), .text($0.kek.description),
                              .text($0.code), .text($0.message), .integer($0.time)] },
            onConflict: """
                ON CONFLICT (force, extract, kek) DO UPDATE SET code = excluded.code, message = excluded.message,
                    time = excluded.time
                """))
    }

    static func applyRewraps(force: ForceID, rotation: KEKID?, rewraps: [Rewrap], failures: [RewrapFailure],
                             now: UnixTime, dialect: CatalogDialect, audit: [AuditEntry]) -> CatalogPlan<Int>
    {
        moveWrappedKeys(force: force, rewraps: rewraps, now: now, dialect: dialect).then { moved in
            var plan = setAside(force: force, failures: failures)
            if let rotation {
                plan = plan.then(.execute(CatalogStatement("""
                    UPDATE rotations SET processed = processed + ? WHERE force = ? AND to_kek = ?
                    """, moved, force.rawValue, rotation.description)))
            }
            return plan.then(appendAudit(audit)).map { moved }
        }
    }

    static func startRotation(_ rotation: RotationRecord, audit: [AuditEntry]) -> CatalogPlan<Void> {
        CatalogPlan.execute(CatalogStatement("""
            INSERT INTO rotations (force, to_kek, from_kek, requested_by, started_at) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT DO NOTHING
            """, rotation.force.rawValue, rotation.to.description, rotation.from?.description, rotation.requestedBy,
            rotation.startedAt))
        .then(appendAudit(audit))
    }

    static func finishRotation(force: ForceID, to kek: KEKID, at time: UnixTime, audit: [AuditEntry])
        -> CatalogPlan<Void>
    {
        .run(CatalogStatement("""
            UPDATE rotations SET finished_at = ? WHERE force = ? AND to_kek = ? AND finished_at IS NULL RETURNING to_kek
            """, time, force.rawValue, kek.description)) { changed in
            changed.isEmpty ? .done(()) : appendAudit(audit)
        }
    }

    static func reserveDestruction(force: ForceID, kek: KEKID, at time: UnixTime, audit: [AuditEntry])
        -> CatalogPlan<Void>
    {
        references(force: force, kek: kek).then { count in
            guard count == 0 else {
                throw VaultError(.keyInUse, "\(kek) still wraps the key of \(count) extract(s); wait for the rewrap "
                                    + "job to move them (vault keys status)")
            }
            return CatalogPlan.execute(CatalogStatement("""
                INSERT INTO destroyed_keks (force, kek, time) VALUES (?, ?, ?) ON CONFLICT DO NOTHING
                """, force.rawValue, kek.description, time))
            .then(appendAudit(audit))
        }
    }

    static func lineage(force: ForceID, extract: ExtractID, dialect: CatalogDialect) -> CatalogPlan<[LineageEntry]> {
        lineages(force: force, extracts: [extract], dialect: dialect).map { $0[extract] ?? [] }
    }

    /// Each extract's KEKs oldest first: an entry lasts until the next one begins.
    static func lineages(force: ForceID, extracts: [ExtractID], dialect: CatalogDialect)
        -> CatalogPlan<[ExtractID: [LineageEntry]]>
    {
        guard !extracts.isEmpty else { return .done([:]) }
        return .query(CatalogStatement("""
            SELECT extract, kek, since FROM extract_keks
            WHERE force = ? AND extract IN (\(CatalogStatement.placeholders(extracts.count)))
            ORDER BY extract, \(dialect.insertionOrder)
            """, arguments: [.text(force.rawValue)] + extracts.map { .text($0.rawValue) })) { rows in
            var all: [ExtractID: [LineageEntry]] = [:]
            for row in rows {
                let extract = try ExtractID(try row.value("extract"))
                let since = try row.value("since", as: Int64.self)
                var entries = all[extract] ?? []
                if !entries.isEmpty { entries[entries.count - 1].until = since }
                entries.append(LineageEntry(kek: try KEKID(try row.value("kek")), since: since, until: nil))
                all[extract] = entries
            }
            return all
        }
    }

    // MARK: Retrieval and hold

    static func storeRetrieval(_ retrieval: Retrieval, insert: Bool) -> CatalogPlan<Void> {
        let arguments: [any CatalogValueConvertible] = [
            retrieval.extract.rawValue, retrieval.dataset.rawValue, retrieval.analyst, retrieval.useCase.rawValue,
            retrieval.reason, retrieval.requestedAt, Retrieval.approvalsJSON(retrieval.approvals), retrieval.grantedAt,
            retrieval.expiresAt, retrieval.force.rawValue, retrieval.id.rawValue,
        ]
        let sql = insert ? """
            INSERT INTO retrievals (extract, dataset, analyst, use_case, reason, requested_at, approvals, granted_at,
                expires_at, force, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """ : """
            UPDATE retrievals SET extract = ?, dataset = ?, analyst = ?, use_case = ?, reason = ?, requested_at = ?,
                approvals = ?, granted_at = ?, expires_at = ? WHERE force = ? AND id = ?
            """
        return .execute(CatalogStatement(sql, arguments: arguments.map(\.catalogValue)))
    }

    static func addRetrieval(_ retrieval: Retrieval, audit: [AuditEntry]) -> CatalogPlan<Void> {
        storeRetrieval(retrieval, insert: true).then(appendAudit(audit))
    }

    static func retrieval(force: ForceID, id: ResourceID) -> CatalogPlan<Retrieval?> {
        .query(CatalogStatement("SELECT * FROM retrievals WHERE force = ? AND id = ?", force.rawValue, id.rawValue)) {
            try $0.first.map(Retrieval.init(catalogRow:))
        }
    }

    static func retrievals(force: ForceID) -> CatalogPlan<[Retrieval]> {
        .query(CatalogStatement("SELECT * FROM retrievals WHERE force = ? ORDER BY requested_at, id", force.rawValue)) {
            try $0.map(Retrieval.init(catalogRow:))
        }
    }

    static func updateRetrieval(force: ForceID, id: ResourceID,
                                change: @escaping @Sendable (Retrieval) throws -> (Retrieval, [AuditEntry]))
        -> CatalogPlan<Retrieval>
    {
        retrieval(force: force, id: id).then { stored in
            guard let stored else { throw VaultError(.notFound, "force \(force) has no retrieval \(id)") }
            let (updated, audit) = try change(stored)
            return storeRetrieval(updated, insert: false).then(appendAudit(audit)).map { updated }
        }
    }

    static func setHold(force: ForceID, extract: ExtractID, hold: LegalHold?,
                        audit: @escaping @Sendable (ExtractRecord) throws -> [AuditEntry]) -> CatalogPlan<ExtractRecord>
    {
        self.extract(force: force, id: extract).then { record in
            guard var record, record.state != .uploading else {
                throw VaultError(.notFound, "force \(force) has no extract \(extract)")
            }
            let entries = try audit(record)
            record.hold = hold
            return CatalogPlan.execute(CatalogStatement("""
                UPDATE extracts SET hold_reason = ?, hold_by = ?, hold_at = ? WHERE force = ? AND id = ?
                """, hold?.reason, hold?.placedBy, hold?.placedAt, force.rawValue, extract.rawValue))
            .then(appendAudit(entries))
            .map { [record] in record }
        }
    }

    // MARK: Shredding

    /// Two statements: run as one snapshot.
    static func shredCandidates(force: ForceID?, now: UnixTime, limit: Int) -> CatalogPlan<[ExtractRecord]> {
        let forceFilter = force == nil ? "" : " AND force = ?"
        let forceArgument = force.map { [CatalogValue.text($0.rawValue)] } ?? []
        return extracts(CatalogStatement("""
            SELECT * FROM extracts WHERE state = 'shredding'\(forceFilter) ORDER BY shred_started_at, id LIMIT ?
            """, arguments: forceArgument + [.integer(Int64(limit))]))
        .then { interrupted in
            extracts(CatalogStatement("""
                SELECT * FROM extracts WHERE state = 'archived' AND expires_at <= ? AND hold_reason IS NULL\(forceFilter)
                ORDER BY expires_at, id LIMIT ?
                """, arguments: [.integer(now)] + forceArgument + [.integer(Int64(max(0, limit - interrupted.count)))]))
            .map { interrupted + $0 }
        }
    }

    static func beginShred(force: ForceID, extracts ids: [ExtractID], reason: ShredReason, note: String?,
                           requestedBy: String, expiredBy: UnixTime?, now: UnixTime,
                           audit: @escaping @Sendable (ExtractRecord) -> AuditEntry) -> CatalogPlan<[ShredTicket]>
    {
        guard !ids.isEmpty else { return .done([]) }
        return .run(CatalogStatement("""
            SELECT * FROM extracts WHERE force = ? AND id IN (\(CatalogStatement.placeholders(ids.count)))
            """, arguments: [.text(force.rawValue)] + ids.map { .text($0.rawValue) })) { rows in
            var found: [ExtractID: (record: ExtractRecord, row: CatalogRow)] = [:]
            for row in rows {
                let record = try ExtractRecord(catalogRow: row)
                found[record.identity.extract] = (record, row)
            }
            var tickets: [ShredTicket] = []
            var entries: [AuditEntry] = []
            var marking: [ExtractID] = []
            for id in ids {
                guard let (record, row) = found[id] else { continue }
                if record.state == .shredding {
                    tickets.append(try ShredTicket(catalogRow: row, record: record))
                    continue
                }
                guard record.state == .archived, record.hold == nil, !marking.contains(id) else { continue }
                if let expiredBy, (record.expiresAt ?? .max) > expiredBy { continue }
                var marked = record
                marked.state = .shredding
                tickets.append(ShredTicket(record: marked, reason: reason, note: note, requestedBy: requestedBy,
                                           startedAt: now))
                entries.append(audit(record))
                marking.append(id)
            }
            guard !marking.isEmpty else { return .done(tickets) }
            return CatalogPlan.execute(CatalogStatement("""
                UPDATE extracts SET state = 'shredding', shred_reason = ?, shred_note = ?, shred_by = ?,
                    shred_started_at = ?
                WHERE force = ? AND state = 'archived' AND id IN (\(CatalogStatement.placeholders(marking.count)))
                """, arguments: [.text(reason.rawValue), note.catalogValue, .text(requestedBy), .integer(now),
                                 .text(force.rawValue)] + marking.map { .text($0.rawValue) }))
            .then(appendAudit(entries))
            .map { [tickets] in tickets }
        }
    }

    static let certificateColumns: [(name: String, type: CatalogColumnType)] = [
        ("force", .text), ("id", .text), ("extract", .text), ("issued_at", .integer), ("verdict", .text),
        ("body", .text), ("signature", .text),
    ]

    static func insertCertificates(_ certificates: [DestructionCertificate]) -> CatalogPlan<Void> {
        guard !certificates.isEmpty else { return .done(()) }
        return .execute(CatalogStatement(insertInto: "certificates", columns: certificateColumns, rows: certificates.map {
            [.text($0.force.rawValue), .text($0.id), .text($0.extract.rawValue), .integer($0.issuedAt),
             .text($0.verdict.rawValue), .text($0.body.canonicalString), .text(Base64.encode($0.signature))]
        }))
    }

    static func finishShred(force: ForceID, certificates: [DestructionCertificate], now: UnixTime,
                            audit: [AuditEntry]) -> CatalogPlan<Void>
    {
        CatalogPlan.sequence(certificates.map { certificate in
            .run(CatalogStatement("""
                UPDATE extracts SET state = 'shredded', shredded_at = ?, certificate = ?
                WHERE force = ? AND id = ? AND state = 'shredding' RETURNING id
                """, now, certificate.id, force.rawValue, certificate.extract.rawValue)) { changed in
                guard changed.count == 1 else {
                    throw VaultError(.conflict, "extract \(certificate.extract) is not being shredded")
                }
                return .done(())
            }
        })
        .then(insertCertificates(certificates))
        .then(appendAudit(audit))
    }

    static func certificate(force: ForceID, id: String) -> CatalogPlan<DestructionCertificate?> {
        .query(CatalogStatement("SELECT * FROM certificates WHERE force = ? AND id = ?", force.rawValue, id)) {
            try $0.first.map(DestructionCertificate.init(catalogRow:))
        }
    }

    static func certificates(force: ForceID, extract: ExtractID?, dialect: CatalogDialect)
        -> CatalogPlan<[DestructionCertificate]>
    {
        var sql = "SELECT * FROM certificates WHERE force = ?"
        var arguments = [CatalogValue.text(force.rawValue)]
        if let extract {
            sql += " AND extract = ?"
            arguments.append(.text(extract.rawValue))
        }
        return .query(CatalogStatement(sql + " ORDER BY issued_at, \(dialect.insertionOrder)", arguments: arguments)) {
            try $0.map(DestructionCertificate.init(catalogRow:))
        }
    }

    static func addCertificates(force: ForceID, _ certificates: [DestructionCertificate], audit: [AuditEntry])
        -> CatalogPlan<Void>
    {
        insertCertificates(certificates)
            .then(CatalogPlan.sequence(certificates.map { certificate in
                .execute(CatalogStatement("UPDATE extracts SET certificate = ? WHERE force = ? AND id = ?",
                                          certificate.id, force.rawValue, certificate.extract.rawValue))
            }))
            .then(appendAudit(audit))
    }
}

// MARK: Rows

extension Retrieval {
    /// A `retrievals` row.
    init(catalogRow row: CatalogRow) throws {
        self.init(force: try ForceID(force: try row.value("force")),
                  id: try ResourceID(try row.value("id"), kind: "retrieval id"),
                  extract: try ExtractID(try row.value("extract")), dataset: try DatasetID(dataset: try row.value("dataset")),
                  analyst: try row.value("analyst"), useCase: try ResourceID(try row.value("use_case"), kind: "use case id"),
                  reason: try row.value("reason"), requestedAt: try row.value("requested_at"),
                  approvals: Retrieval.approvals(fromJSON: try row.value("approvals")),
                  grantedAt: try row.value("granted_at"), expiresAt: try row.value("expires_at"))
    }
}

extension ShredTicket {
    /// The ticket of an extract left `shredding`, from its row.
    init(catalogRow row: CatalogRow, record: ExtractRecord) throws {
        self.init(record: record,
                  reason: ShredReason(rawValue: try row.value("shred_reason", as: String?.self) ?? "") ?? .retentionExpired,
                  note: try row.value("shred_note"), requestedBy: try row.value("shred_by", as: String?.self) ?? "vaultd",
                  startedAt: try row.value("shred_started_at", as: Int64?.self) ?? 0)
    }
}

extension DestructionCertificate {
    /// A `certificates` row.
    init(catalogRow row: CatalogRow) throws {
        let id = try row.value("id", as: String.self)
        guard let signature = Base64.decode(try row.value("signature", as: String.self)) else {
            throw VaultError(.catalogUnavailable, "catalog row for certificate \(id) is corrupt")
        }
        try self.init(body: try JSONParser.parse(try row.value("body", as: String.self)), signature: signature)
    }
}
