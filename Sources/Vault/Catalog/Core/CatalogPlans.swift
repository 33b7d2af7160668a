import KeyCustody

/// Each catalog operation's rules, written once as plans over the portable SQL; `CatalogOperations` runs them
/// through a driver. The pieces several operations share (the audit append, a row's decoding, lineage) are here too.
public enum CatalogPlans {
    // MARK: Extracts

    public static func extract(force: ForceID, id: ExtractID) -> CatalogPlan<ExtractRecord?> {
        .query(CatalogStatement("SELECT * FROM extracts WHERE force = ? AND id = ?", force.rawValue, id.rawValue)) {
            try $0.first.map(ExtractRecord.init(catalogRow:))
        }
    }

    public static func currentExtract(force: ForceID, dataset: DatasetID) -> CatalogPlan<ExtractRecord?> {
        .query(CatalogStatement("SELECT * FROM extracts WHERE force = ? AND dataset = ? AND state = 'current'",
                                force.rawValue, dataset.rawValue)) { try $0.first.map(ExtractRecord.init(catalogRow:)) }
    }

    static func extracts(_ statement: CatalogStatement) -> CatalogPlan<[ExtractRecord]> {
        .query(statement) { try $0.map(ExtractRecord.init(catalogRow:)) }
    }

    public static func extracts(force: ForceID, dataset: DatasetID?, states: Set<ExtractState>)
        -> CatalogPlan<[ExtractRecord]>
    {
        let stateList = states.map(\.rawValue).sorted()
        var sql = "SELECT * FROM extracts WHERE force = ? AND state IN (\(CatalogStatement.placeholders(stateList.count)))"
        var arguments = [CatalogValue.text(force.rawValue)] + stateList.map(CatalogValue.text)
        if let dataset {
            sql += " AND dataset = ?"
            arguments.append(.text(dataset.rawValue))
        }
        return extracts(CatalogStatement(sql + " ORDER BY created_at, id", arguments: arguments))
    }

    public static func staleUploads(before cutoff: UnixTime) -> CatalogPlan<[ExtractRecord]> {
        extracts(CatalogStatement("SELECT * FROM extracts WHERE state = 'uploading' AND created_at < ?", cutoff))
    }

    /// Fails with `conflict` once `kek` is being destroyed: no upload may commit under it.
    public static func refuseDestroyedKEK(_ kek: KEKID) -> CatalogPlan<Void> {
        .query(CatalogStatement("SELECT 1 AS destroyed FROM destroyed_keks WHERE force = ? AND kek = ?",
                                kek.force.rawValue, kek.description)) { rows in
            if !rows.isEmpty {
                throw VaultError(.conflict, "the extract's key is wrapped under \(kek), which is being destroyed; "
                                    + "upload it again")
            }
        }
    }

    /// The schema change both databases make (SQLite v8, PostgreSQL v5): the indexes over every extract's state and
    /// creation or expiry time become partial indexes over the few rows the queries look for (uploads in flight,
    /// archives being shredded, archives by expiry, each found by its literal state). A current extract, the bulk of
    /// the catalog, is then in none of them, so rewrapping its key after a rotation (a row rewritten with a new `kek`)
    /// writes two index entries fewer.
    public static let partialStateIndexes = [
        "DROP INDEX extracts_by_state",
        "DROP INDEX extracts_by_expiry",
        "CREATE INDEX extracts_uploading ON extracts (created_at) WHERE state = 'uploading'",
        "CREATE INDEX extracts_shredding ON extracts (shred_started_at, id) WHERE state = 'shredding'",
        "CREATE INDEX extracts_archived_by_expiry ON extracts (expires_at) WHERE state = 'archived'",
    ]

    /// Adds `kek` to the KEKs an extract's key was ever wrapped under (once).
    public static func addLineage(_ identity: ExtractIdentity, kek: KEKID, since: UnixTime) -> CatalogPlan<Void> {
        .execute(CatalogStatement("""
            INSERT INTO extract_keks (force, extract, kek, since) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING
            """, identity.force.rawValue, identity.extract.rawValue, kek.description, since))
    }

    /// The upload's row and its lineage: the KEKs its key arrived under (`arrivedUnder`), then the one it has.
    public static func beginUpload(_ extract: ExtractRecord, arrivedUnder: [KEKID] = []) -> CatalogPlan<Void> {
        let identity = extract.identity
        return .query(CatalogStatement("SELECT 1 AS found FROM extracts WHERE force = ? AND id = ?",
                                       identity.force.rawValue, identity.extract.rawValue)) { rows in
            guard rows.isEmpty else {
                throw VaultError(.duplicateExtract,
                                 "extract \(identity.extract) of force \(identity.force) exists already")
            }
        }
        .then(refuseDestroyedKEK(extract.wrappedKey.kek))
        .then(.execute(CatalogStatement("""
            INSERT INTO extracts (force, dataset, id, state, wrapped_key, kek, plaintext_size, ciphertext_size,
                ciphertext_sha256, source, uploaded_by, created_at)
            VALUES (?, ?, ?, 'uploading', ?, ?, ?, ?, ?, ?, ?, ?)
            """, identity.force.rawValue, identity.dataset.rawValue, identity.extract.rawValue,
            extract.wrappedKey.json.canonicalString, extract.wrappedKey.kek.description, Int64(extract.plaintextSize),
            Int64(extract.ciphertextSize), Hex.encode(extract.ciphertextSHA256), extract.source.rawValue,
            extract.uploadedBy, extract.createdAt)))
        .then(.sequence(arrivedUnder.map { addLineage(identity, kek: $0, since: extract.createdAt) }))
        .then(addLineage(identity, kek: extract.wrappedKey.kek, since: extract.createdAt))
    }

    public static func commitUpload(
        force: ForceID, extract: ExtractID, sizes: (plaintext: UInt64, ciphertext: UInt64, sha256: [UInt8]),
        now: UnixTime, archival: ArchivalRewrap?, audit: [AuditEntry],
        archiveAudit: @escaping @Sendable (ExtractRecord) -> AuditEntry
    ) -> CatalogPlan<(current: ExtractRecord, archived: ExtractRecord?)> {
        let (plaintext, ciphertext, sha256) = sizes
        return self.extract(force: force, id: extract).then { uploading in
            guard let uploading, uploading.state == .uploading else {
                throw VaultError(.conflict, "extract \(extract) is not an upload in progress")
            }
            let dataset = uploading.identity.dataset
            return refuseDestroyedKEK(uploading.wrappedKey.kek)
                .then(retentionDays(force: force, dataset: dataset, now: now))
                .then { retention in
                    currentExtract(force: force, dataset: dataset).then { previous in
                        try UploadCommit.checkArchival(current: previous, archival: archival)
                        var archiving = CatalogPlan<ExtractRecord?>.done(nil)
                        if let previous, let archival {
                            let archived = UploadCommit.archived(previous, at: now, retentionDays: retention,
                                                                 archival: archival)
                            archiving = CatalogPlan<Void>.execute(CatalogStatement("""
                                UPDATE extracts SET state = 'archived', archived_at = ?, expires_at = ?, wrapped_key = ?,
                                    kek = ?
                                WHERE force = ? AND id = ? AND state = 'current'
                                """, now, archived.expiresAt, archival.to.json.canonicalString,
                                archival.to.kek.description, force.rawValue, archived.identity.extract.rawValue))
                            .then(addLineage(archived.identity, kek: archival.to.kek, since: now))
                            .map { archived }
                        }
                        return archiving.then { archived in
                            CatalogPlan.execute(CatalogStatement("""
                                UPDATE extracts SET state = 'current', committed_at = ?, plaintext_size = ?,
                                    ciphertext_size = ?, ciphertext_sha256 = ?
                                WHERE force = ? AND id = ? AND state = 'uploading'
                                """, now, Int64(plaintext), Int64(ciphertext), Hex.encode(sha256), force.rawValue,
                                extract.rawValue))
                            .then(appendAudit(audit + (archived.map { [archiveAudit($0)] } ?? [])))
                            .map { (UploadCommit.committed(uploading, at: now, sizes: sizes), archived) }
                        }
                    }
                }
        }
    }

    public static func appendAudit(ifExtract extract: ExtractID, of force: ForceID, isIn expected: ExtractState,
                                   audit: [AuditEntry]) -> CatalogPlan<Bool>
    {
        .run(CatalogStatement("SELECT state FROM extracts WHERE force = ? AND id = ?", force.rawValue,
                              extract.rawValue)) { rows in
            guard try rows.first?.value("state", as: String.self) == expected.rawValue else { return .done(false) }
            return appendAudit(audit).map { true }
        }
    }

    /// Deletes the row only while it is `uploading`; then says whether any row of the extract remains.
    public static func abandonUpload(force: ForceID, extract: ExtractID) -> CatalogPlan<Bool> {
        CatalogPlan<Void>.execute(CatalogStatement(
            "DELETE FROM extracts WHERE force = ? AND id = ? AND state = 'uploading'", force.rawValue, extract.rawValue))
        .then(CatalogPlan.query(CatalogStatement("SELECT state FROM extracts WHERE force = ? AND id = ?",
                                                 force.rawValue, extract.rawValue)) { rows in rows.isEmpty })
    }

    public static func archivesPastExpiry(now: UnixTime) -> CatalogPlan<[ForceID: Int]> {
        .query(CatalogStatement("""
            SELECT force, COUNT(*) AS n FROM extracts WHERE state = 'archived' AND expires_at <= ? GROUP BY force
            """, now)) { rows in
            var counts: [ForceID: Int] = [:]
            for row in rows {
                counts[try ForceID(force: try row.value("force"))] = try row.value("n", as: Int.self)
            }
            return counts
        }
    }

    // MARK: Datasets

    /// A dataset's retention, recording the default for a dataset seen for the first time.
    public static func retentionDays(force: ForceID, dataset: DatasetID, now: UnixTime) -> CatalogPlan<Int> {
        .run(CatalogStatement("SELECT retention_days FROM datasets WHERE force = ? AND id = ?", force.rawValue,
                              dataset.rawValue)) { rows in
            if let row = rows.first { return .done(try row.value("retention_days", as: Int.self)) }
            return CatalogPlan.execute(CatalogStatement("""
                INSERT INTO datasets (force, id, retention_days, created_at) VALUES (?, ?, ?, ?)
                """, force.rawValue, dataset.rawValue, DatasetRecord.defaultRetentionDays, now))
            .map { DatasetRecord.defaultRetentionDays }
        }
    }

    static let datasetColumns = "force, id, retention_days, description, created_at, updated_at"

    public static func dataset(force: ForceID, id: DatasetID) -> CatalogPlan<DatasetRecord?> {
        .query(CatalogStatement("SELECT \(datasetColumns) FROM datasets WHERE force = ? AND id = ?", force.rawValue,
                                id.rawValue)) { rows in try rows.first.map(DatasetRecord.init(catalogRow:)) }
    }

    /// A force's datasets, by id.
    public static func datasets(force: ForceID) -> CatalogPlan<[DatasetRecord]> {
        .query(CatalogStatement("SELECT \(datasetColumns) FROM datasets WHERE force = ? ORDER BY id", force.rawValue)) {
            try $0.map(DatasetRecord.init(catalogRow:))
        }
    }

    /// Sets a dataset's retention and description, and moves the expiry of each of its archives (archived, not yet
    /// shredding) to its archival time plus the new retention: a shorter retention brings expiry forward. A legal
    /// hold is untouched. `audit` makes the records from the dataset as it was (nil if new) and the archives moved.
    public static func putDataset(_ dataset: DatasetRecord, now: UnixTime,
                                  audit: @escaping @Sendable (DatasetRecord?, Int) -> [AuditEntry])
        -> CatalogPlan<DatasetRecord>
    {
        let force = dataset.force.rawValue
        let id = dataset.id.rawValue
        return self.dataset(force: dataset.force, id: dataset.id).then { previous in
            CatalogPlan<Void>.execute(CatalogStatement("""
                INSERT INTO datasets (force, id, retention_days, description, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (force, id) DO UPDATE SET retention_days = excluded.retention_days,
                    description = excluded.description, updated_at = excluded.updated_at
                """, force, id, dataset.retentionDays, dataset.description, now, now))
            .then(CatalogPlan.query(CatalogStatement("""
                UPDATE extracts SET expires_at = archived_at + ?
                WHERE force = ? AND dataset = ? AND state = 'archived' AND archived_at IS NOT NULL
                    AND expires_at <> archived_at + ?
                RETURNING id
                """, Int64(dataset.retentionDays) * 86_400, force, id, Int64(dataset.retentionDays) * 86_400)) {
                $0.count
            })
            .then { moved in
                appendAudit(audit(previous, moved)).map {
                    var stored = dataset
                    stored.createdAt = previous?.createdAt ?? now
                    stored.updatedAt = now
                    return stored
                }
            }
        }
    }

    // MARK: Use cases

    public static func useCase(force: ForceID, id: ResourceID) -> CatalogPlan<UseCase?> {
        .query(CatalogStatement("SELECT * FROM use_cases WHERE force = ? AND id = ?", force.rawValue, id.rawValue)) {
            try $0.first.map(UseCase.init(catalogRow:))
        }
    }

    public static func useCases(force: ForceID) -> CatalogPlan<[UseCase]> {
        .query(CatalogStatement("SELECT * FROM use_cases WHERE force = ? ORDER BY id", force.rawValue)) {
            try $0.map(UseCase.init(catalogRow:))
        }
    }

    /// Creates or replaces a use case row (a revoked one stays revoked); whether it existed.
    public static func upsertUseCase(_ useCase: UseCase) -> CatalogPlan<Bool> {
        .run(CatalogStatement("SELECT 1 AS found FROM use_cases WHERE force = ? AND id = ?", useCase.force.rawValue,
                              useCase.id.rawValue)) { rows in
            CatalogPlan.execute(CatalogStatement("""
                INSERT INTO use_cases (force, id, description, lawful_basis, datasets, principals, valid_from,
                    valid_until, revoked_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (force, id) DO UPDATE SET description = excluded.description,
                    lawful_basis = excluded.lawful_basis, datasets = excluded.datasets,
                    principals = excluded.principals, valid_from = excluded.valid_from,
                    valid_until = excluded.valid_until,
                    revoked_at = COALESCE(use_cases.revoked_at, excluded.revoked_at),
                    updated_at = excluded.updated_at
                """, useCase.force.rawValue, useCase.id.rawValue, useCase.description, useCase.lawfulBasis,
                JSONValue.array(useCase.datasets.map { .string($0.rawValue) }).canonicalString,
                JSONValue.array(useCase.principals.map { .string($0) }).canonicalString,
                useCase.validFrom, useCase.validUntil, useCase.revokedAt, useCase.updatedAt))
            .map { !rows.isEmpty }
        }
    }

    public static func putUseCase(_ useCase: UseCase, audit: @escaping @Sendable (_ existed: Bool) -> [AuditEntry])
        -> CatalogPlan<Void>
    {
        upsertUseCase(useCase).then { existed in appendAudit(audit(existed)) }
    }

    /// Marks a use case revoked (once); the row as it is then, or nil when there is none.
    public static func markRevoked(force: ForceID, id: ResourceID, at time: UnixTime) -> CatalogPlan<UseCase?> {
        .query(CatalogStatement("""
            UPDATE use_cases SET revoked_at = COALESCE(revoked_at, ?), updated_at = ? WHERE force = ? AND id = ?
            RETURNING *
            """, time, time, force.rawValue, id.rawValue)) { try $0.first.map(UseCase.init(catalogRow:)) }
    }

    public static func revokeUseCase(force: ForceID, id: ResourceID, at time: UnixTime, audit: [AuditEntry])
        -> CatalogPlan<UseCase?>
    {
        markRevoked(force: force, id: id, at: time).then { revoked in
            guard let revoked else { return .done(nil) }
            return appendAudit(audit).map { revoked }
        }
    }

    // MARK: Audit chain

    static let auditRecordColumns: [(name: String, type: CatalogColumnType)] = [
        ("force", .text), ("seq", .integer), ("time", .integer), ("principal", .text), ("action", .text),
        ("dataset", .text), ("use_case", .text), ("outcome", .text), ("line", .text), ("hash", .text),
    ]

    /// Appends the records `AuditAppend` computes from each chain's head, and moves the heads. The head moves first:
    /// on PostgreSQL a concurrent writer of the same chain then fails to serialize and is retried, rather than
    /// colliding on a seq.
    public static func appendAudit(_ entries: [AuditEntry]) -> CatalogPlan<Void> {
        .sequence(AuditAppend(entries).chains.map { chain in
            let force = chain.force.rawValue
            return .run(CatalogStatement("SELECT seq, hash, time FROM audit_heads WHERE force = ?", force)) { rows in
                let head = try rows.first.map { row in
                    AuditAppend.Head(seq: try row.value("seq"), hash: try row.value("hash"), time: try row.value("time"))
                }
                let (records, next) = chain.records(after: head)
                let rows: [[CatalogValue]] = zip(records, chain.entries).map { record, entry in
                    [.text(force), .integer(record.seq), .integer(record.time), .text(entry.principal),
                     .text(entry.action), entry.dataset?.rawValue.catalogValue ?? .null, entry.useCase.catalogValue,
                     .text(entry.outcome.rawValue), .text(String(decoding: record.line, as: UTF8.self)),
                     .text(record.hash)]
                }
                return CatalogPlan.execute(CatalogStatement("""
                    INSERT INTO audit_heads (force, seq, hash, time) VALUES (?, ?, ?, ?)
                    ON CONFLICT (force) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time = excluded.time
                    """, force, next.seq, next.hash, next.time))
                .then(.execute(CatalogStatement(insertInto: "audit_records", columns: auditRecordColumns, rows: rows)))
            }
        })
    }

    public static func auditHead(force: ForceID) -> CatalogPlan<(seq: Int64, hash: String)?> {
        .query(CatalogStatement("SELECT seq, hash FROM audit_heads WHERE force = ?", force.rawValue)) { rows in
            try rows.first.map { (try $0.value("seq"), try $0.value("hash")) }
        }
    }

    static func auditLines(_ statement: CatalogStatement) -> CatalogPlan<[AuditLine]> {
        .query(statement) { rows in
            try rows.map { AuditLine(seq: try $0.value("seq"), line: Array(try $0.value("line", as: String.self).utf8)) }
        }
    }

    public static func auditLines(force: ForceID, after: Int64, through: Int64, limit: Int)
        -> CatalogPlan<[AuditLine]>
    {
        auditLines(CatalogStatement("""
            SELECT seq, line FROM audit_records WHERE force = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?
            """, force.rawValue, after, through, limit))
    }

    public static func auditCheckpoints(force: ForceID, from: Int64, through: Int64)
        -> CatalogPlan<[AuditCheckpoint]>
    {
        .query(CatalogStatement("""
            SELECT * FROM audit_checkpoints WHERE force = ? AND seq >= ? AND seq <= ? ORDER BY seq
            """, force.rawValue, from, through)) { try $0.map(AuditCheckpoint.init(catalogRow:)) }
    }

    static func storeCheckpoint(_ checkpoint: AuditCheckpoint) -> CatalogPlan<AuditCheckpoint> {
        CatalogPlan.execute(CatalogStatement("""
            INSERT INTO audit_checkpoints (force, seq, hash, time, signature) VALUES (?, ?, ?, ?, ?)
            """, checkpoint.force.rawValue, checkpoint.seq, checkpoint.hash, checkpoint.time,
            Base64.encode(checkpoint.signature)))
        .map { checkpoint }
    }

    public static func checkpointAudit(force: ForceID, now: UnixTime, signer: AuditSigner)
        -> CatalogPlan<AuditCheckpoint?>
    {
        auditHead(force: force).then { head in
            guard let head else { return .done(nil) }
            return .run(CatalogStatement("""
                SELECT * FROM audit_checkpoints WHERE force = ? ORDER BY seq DESC LIMIT 1
                """, force.rawValue)) { rows in
                if let latest = try rows.first.map(AuditCheckpoint.init(catalogRow:)), latest.seq == head.seq {
                    return .done(latest)
                }
                return storeCheckpoint(try signer.checkpoint(force: force, seq: head.seq, hash: head.hash, time: now))
                    .map { $0 }
            }
        }
    }

    public static func checkpointAudit(force: ForceID, at seq: Int64, now: UnixTime, signer: AuditSigner)
        -> CatalogPlan<AuditCheckpoint>
    {
        .run(CatalogStatement("SELECT * FROM audit_checkpoints WHERE force = ? AND seq = ?", force.rawValue, seq)) {
            existing in
            if let existing = existing.first { return .done(try AuditCheckpoint(catalogRow: existing)) }
            return .run(CatalogStatement("SELECT hash FROM audit_records WHERE force = ? AND seq = ?", force.rawValue,
                                         seq)) { rows in
                guard let hash = try rows.first?.value("hash", as: String.self) else {
                    throw VaultError(.notFound, "the audit chain of \(force) has no record \(seq)")
                }
                return storeCheckpoint(try signer.checkpoint(force: force, seq: seq, hash: hash, time: now))
            }
        }
    }

    public static func addCosignature(_ cosignature: Cosignature) -> CatalogPlan<Void> {
        .execute(CatalogStatement("""
            INSERT INTO audit_cosignatures (force, seq, witness, hash, checkpoint_time, cosigned, signature)
            VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING
            """, cosignature.force.rawValue, cosignature.seq, cosignature.witness, cosignature.hash,
            cosignature.checkpointTime, cosignature.cosigned, Base64.encode(cosignature.signature)))
    }

    public static func cosignatures(force: ForceID, from: Int64, through: Int64) -> CatalogPlan<[Cosignature]> {
        .query(CatalogStatement("""
            SELECT * FROM audit_cosignatures WHERE force = ? AND seq >= ? AND seq <= ? ORDER BY seq, witness
            """, force.rawValue, from, through)) { rows in
            try rows.map { row in
                guard let signature = Base64.decode(try row.value("signature", as: String.self)) else {
                    throw VaultError(.catalogUnavailable, "catalog row for a cosignature is corrupt")
                }
                return Cosignature(force: force, seq: try row.value("seq"), hash: try row.value("hash"),
                                   checkpointTime: try row.value("checkpoint_time"),
                                   cosigned: try row.value("cosigned"), witness: try row.value("witness"),
                                   signature: signature)
            }
        }
    }

    public static func lastCosigned(force: ForceID) -> CatalogPlan<(seq: Int64, hash: String)?> {
        .query(CatalogStatement("""
            SELECT seq, hash FROM audit_cosignatures WHERE force = ? ORDER BY seq DESC LIMIT 1
            """, force.rawValue)) { rows in try rows.first.map { (try $0.value("seq"), try $0.value("hash")) } }
    }

    public static func auditSeq(force: ForceID, notBefore time: UnixTime) -> CatalogPlan<Int64?> {
        .query(CatalogStatement("SELECT MIN(seq) AS seq FROM audit_records WHERE force = ? AND time >= ?",
                                force.rawValue, time)) { rows in try rows.first?.value("seq", as: Int64?.self) ?? nil }
    }

    public static func searchAudit(force: ForceID, query: AuditQuery, dialect: CatalogDialect)
        -> CatalogPlan<[AuditLine]>
    {
        var sql = "SELECT seq, line FROM audit_records WHERE force = ? AND seq > ?"
        var arguments: [CatalogValue] = [.text(force.rawValue), .integer(query.afterSeq)]
        func condition(_ condition: String, _ values: [CatalogValue]) {
            sql += " AND " + condition
            arguments += values
        }
        func equal(_ column: String, _ value: String?) {
            if let value { condition("\(column) = ?", [.text(value)]) }
        }
        equal("principal", query.principal)
        equal("use_case", query.useCase)
        equal("dataset", query.dataset?.rawValue)
        equal("outcome", query.outcome?.rawValue)
        if let action = query.action {
            if action.hasSuffix("*") {
                let prefix = dialect.startsWith("action", String(action.dropLast()))
                condition(prefix.sql, prefix.arguments)
            } else {
                equal("action", action)
            }
        }
        if let from = query.from { condition("time >= ?", [.integer(from)]) }
        if let until = query.until { condition("time < ?", [.integer(until)]) }
        return auditLines(CatalogStatement(sql + " ORDER BY seq LIMIT ?", arguments: arguments + [.integer(Int64(query.limit))]))
    }

    /// Allowed records of `actions` counted per day in the catalog; refusals read (newest first, bounded) for the
    /// reason inside their line. Two statements: run as one snapshot.
    public static func auditActivity(force: ForceID, since: UnixTime, actions: [String])
        -> CatalogPlan<AuditActivity>
    {
        let placeholders = actions.map { _ in "?" }.joined(separator: ", ")
        let counts = CatalogStatement("""
            SELECT time / 86400 AS day, action, COUNT(*) AS n FROM audit_records
            WHERE force = ? AND time >= ? AND outcome = 'allowed' AND action IN (\(placeholders))
            GROUP BY time / 86400, action
            """, arguments: [.text(force.rawValue), .integer(since)] + actions.map { .text($0) })
        let refusals = CatalogStatement("""
            SELECT time, line FROM audit_records WHERE force = ? AND time >= ? AND outcome = 'denied'
            ORDER BY seq DESC LIMIT ?
            """, force.rawValue, since, Int64(AuditActivity.refusalLimit + 1))
        return .run(counts) { rows in
            let allowed = try rows.map {
                AuditActivity.Count(day: try $0.value("day"), name: try $0.value("action"), count: try $0.value("n"))
            }
            return .query(refusals) { rows in
                var byDay: [Int64: [String: Int64]] = [:]
                for row in rows.prefix(AuditActivity.refusalLimit) {
                    let time: Int64 = try row.value("time")
                    let line = Array(try row.value("line", as: String.self).utf8)
                    let reason = (try? JSONParser.parse(line))?["detail"]?["reason"]?.stringValue ?? "unknown"
                    byDay[time / 86400, default: [:]][reason, default: 0] += 1
                }
                var result = AuditActivity()
                result.since = since
                result.allowed = allowed
                result.refusals = byDay.flatMap { day, reasons in
                    reasons.map { AuditActivity.Count(day: day, name: $0.key, count: $0.value) }
                }.sorted { ($0.day, $0.name) < ($1.day, $1.name) }
                result.refusalsTruncated = rows.count > AuditActivity.refusalLimit
                return result
            }
        }
    }

    public static func probeWrite(now: UnixTime) -> CatalogPlan<Void> {
        .execute(CatalogStatement("""
            INSERT INTO write_probe (id, time) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET time = excluded.time
            """, now))
    }

    // MARK: Tokens

    public static func addToken(_ token: TokenRecord, hash: String, audit: [AuditEntry]) -> CatalogPlan<Void> {
        CatalogPlan.execute(CatalogStatement("""
            INSERT INTO tokens (hash, principal, description, created_at, expires_at) VALUES (?, ?, ?, ?, ?)
            """, hash, token.principal, token.description, token.createdAt, token.expiresAt))
        .then(appendAudit(audit))
    }

    /// The principal of a token that is neither revoked nor expired at `now` (a token stored without an expiry, from
    /// before expiry existed and not migrated, counts as expired).
    public static func tokenPrincipal(hash: String, now: UnixTime) -> CatalogPlan<String?> {
        .query(CatalogStatement("""
            SELECT principal FROM tokens WHERE hash = ? AND revoked_at IS NULL AND expires_at > ?
            """, hash, now)) { try $0.first?.value("principal") }
    }

    static let tokenColumns = "hash, principal, description, created_at, expires_at, revoked_at"

    /// Tokens of `principals` (every token when nil), oldest first.
    public static func tokens(principals: Set<String>?) -> CatalogPlan<[TokenRecord]> {
        var sql = "SELECT \(tokenColumns) FROM tokens"
        var arguments: [CatalogValue] = []
        if let principals {
            guard !principals.isEmpty else { return .done([]) }
            sql += " WHERE principal IN (\(CatalogStatement.placeholders(principals.count)))"
            arguments = principals.sorted().map { .text($0) }
        }
        return .query(CatalogStatement(sql + " ORDER BY created_at, hash", arguments: arguments)) {
            try $0.map(TokenRecord.init(catalogRow:))
        }
    }

    /// Revokes the one token whose id (the first 12 hex digits of its hash) is `id`, appending the records `audit`
    /// makes from it as stored; nil when there is none. Revoking a revoked token changes nothing and records nothing.
    public static func revokeToken(id: String, at time: UnixTime, dialect: CatalogDialect,
                                   audit: @escaping @Sendable (TokenRecord) throws -> [AuditEntry])
        -> CatalogPlan<TokenRecord?>
    {
        let prefix = dialect.startsWith("hash", id)
        return .run(CatalogStatement("SELECT \(tokenColumns) FROM tokens WHERE \(prefix.sql)",
                                     arguments: prefix.arguments)) { rows in
            guard let row = rows.first else { return .done(nil) }
            guard rows.count == 1 else {
                throw VaultError(.conflict, "token id \(id) names \(rows.count) tokens; give more of its hash")
            }
            let stored = try TokenRecord(catalogRow: row)
            let records = try audit(stored)
            guard stored.revokedAt == nil else { return .done(stored) }
            var token = stored
            token.revokedAt = time
            let revoked = token
            let hash: String = try row.value("hash")
            return CatalogPlan<Void>.execute(CatalogStatement("""
                UPDATE tokens SET revoked_at = ? WHERE hash = ? AND revoked_at IS NULL
                """, time, hash))
            .then(appendAudit(records)).map { revoked }
        }
    }

    /// Revokes every live token of a principal not in `principals` (one removed from the configuration), so that
    /// adding the principal back later does not revive its old tokens. Returns the tokens revoked.
    public static func revokeTokens(ofPrincipalsNotIn principals: Set<String>, at time: UnixTime)
        -> CatalogPlan<[TokenRecord]>
    {
        var sql = "SELECT \(tokenColumns) FROM tokens WHERE revoked_at IS NULL"
        if !principals.isEmpty { sql += " AND principal NOT IN (\(CatalogStatement.placeholders(principals.count)))" }
        return .run(CatalogStatement(sql, arguments: principals.sorted().map { .text($0) })) { rows in
            let tokens = try rows.map(TokenRecord.init(catalogRow:))
            guard !tokens.isEmpty else { return .done([]) }
            let hashes: [CatalogValue] = try rows.map { .text(try $0.value("hash")) }
            return CatalogPlan<Void>.execute(CatalogStatement("""
                UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL AND hash IN (\(CatalogStatement.placeholders(hashes.count)))
                """, arguments: [.integer(time)] + hashes))
            .map { tokens.map { var token = $0; token.revokedAt = time; return token } }
        }
    }

    // MARK: Leases

    public static func takeLease(_ name: String, holder: String, seconds: Int64, now: UnixTime) -> CatalogPlan<Bool> {
        .query(CatalogStatement("""
            INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
            WHERE leases.holder = excluded.holder OR leases.expires_at <= ?
            RETURNING name
            """, name, holder, now + seconds, now)) { !$0.isEmpty }
    }

    public static func releaseLeases(holderPrefix: String, dialect: CatalogDialect) -> CatalogPlan<Int> {
        let prefix = dialect.startsWith("holder", holderPrefix)
        return .query(CatalogStatement("DELETE FROM leases WHERE \(prefix.sql) RETURNING name",
                                       arguments: prefix.arguments)) { $0.count }
    }

    public static func releaseLease(_ name: String, holder: String) -> CatalogPlan<Void> {
        .execute(CatalogStatement("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder))
    }
}

// MARK: Rows

extension ExtractRecord {
    /// An `extracts` row.
    init(catalogRow row: CatalogRow) throws {
        let id = try row.value("id", as: String.self)
        guard let state = ExtractState(rawValue: try row.value("state")),
            let source = ExtractSource(rawValue: try row.value("source")),
            let sha = Hex.decode(try row.value("ciphertext_sha256")),
            let plaintextSize = UInt64(exactly: try row.value("plaintext_size", as: Int64.self)),
            let ciphertextSize = UInt64(exactly: try row.value("ciphertext_size", as: Int64.self))
        else { throw VaultError(.catalogUnavailable, "catalog row for extract \(id) is corrupt") }
        let identity = ExtractIdentity(force: try ForceID(force: try row.value("force")),
                                       dataset: try DatasetID(dataset: try row.value("dataset")),
                                       extract: try ExtractID(id))
        let holdBy = try row.value("hold_by", as: String?.self)
        let holdAt = try row.value("hold_at", as: Int64?.self)
        self.init(
            identity: identity, state: state,
            wrappedKey: try WrappedKey(json: try JSONParser.parse(try row.value("wrapped_key", as: String.self))),
            plaintextSize: plaintextSize, ciphertextSize: ciphertextSize, ciphertextSHA256: sha, source: source,
            uploadedBy: try row.value("uploaded_by"), createdAt: try row.value("created_at"),
            committedAt: try row.value("committed_at"), archivedAt: try row.value("archived_at"),
            expiresAt: try row.value("expires_at"),
            hold: try row.value("hold_reason", as: String?.self).map {
                LegalHold(reason: $0, placedBy: holdBy ?? "", placedAt: holdAt ?? 0)
            },
            shreddedAt: try row.value("shredded_at"), certificate: try row.value("certificate"))
    }
}

extension UseCase {
    /// A `use_cases` row.
    init(catalogRow row: CatalogRow) throws {
        func strings(_ column: String) throws -> [String] {
            try (JSONParser.parse(try row.value(column, as: String.self)).arrayValue ?? []).compactMap(\.stringValue)
        }
        self.init(
            force: try ForceID(force: try row.value("force")), id: try ResourceID(try row.value("id"), kind: "use case id"),
            description: try row.value("description"), lawfulBasis: try row.value("lawful_basis"),
            datasets: try strings("datasets").map { try DatasetID(dataset: $0) }, principals: try strings("principals"),
            validFrom: try row.value("valid_from"), validUntil: try row.value("valid_until"),
            revokedAt: try row.value("revoked_at"), updatedAt: try row.value("updated_at"))
    }
}

extension AuditCheckpoint {
    /// An `audit_checkpoints` row.
    init(catalogRow row: CatalogRow) throws {
        let seq = try row.value("seq", as: Int64.self)
        guard let signature = Base64.decode(try row.value("signature", as: String.self)) else {
            throw VaultError(.catalogUnavailable, "catalog row for checkpoint \(seq) is corrupt")
        }
        self.init(force: try ForceID(force: try row.value("force")), seq: seq, hash: try row.value("hash"),
                  time: try row.value("time"), signature: signature)
    }
}
