import GRDB
import KeyCustody
import Metrics

/// The force witnessing the platform's audit log (DESIGN 5.7, modelled on C2SP tlog-witness): the platform submits
/// each new checkpoint of the force's chain with the records since the last one cosigned here. The service cosigns
/// only if those records extend what it cosigned before, link by link to the checkpoint, and every unwrap it granted
/// before it cosigned last appears among the records it has witnessed as an allowed access with the same request id
/// and principal. Otherwise it refuses, and (but for a submission that merely starts from another size) raises an
/// alarm in the force's log. The checkpoint cosigned last may be submitted again (nothing new in the log): it is
/// cosigned anew after the same accounting, so an unwrap hidden from a log that stands still is noticed too.
extension CustodyService {
    /// The platform actions that record an access to plaintext: a live read and an archive read.
    static let accessActions: Set<String> = ["read", "archive.read"]

    public func witness(_ caller: CustodyCaller, _ submission: WitnessSubmission, requestID: String) async throws
        -> Cosignature
    {
        let action = "witness.submit"
        try await requirePlatform(caller, action, requestID: requestID)
        let checkpoint = submission.checkpoint
        try checkForce(checkpoint.force)
        let force = force.rawValue
        let state = try await catalog.read { db -> (size: Int64, hash: String, cosigned: Int64)? in
            try Row.fetchOne(db, sql: "SELECT * FROM custody_witness WHERE force = ?", arguments: [force])
                .map { ($0["size"], $0["hash"], $0["cosigned_at"]) }
        }
        let size: Int64 = state?.size ?? 0
        let head: String = state?.hash ?? AuditRecord.genesis
        let lastCosigned: UnixTime? = state?.cosigned
        let target = "\(force)/witness"
        func alarm(_ reason: String, _ message: String) async throws -> Never {
            try await raiseAlarm(reason: reason, message: message, caller: caller, requestID: requestID)
            throw VaultError(.witnessRefused, message, details: ["size": String(size), "reason": reason])
        }
        guard checkpoint.seq >= size else {
            try await alarm("rollback", "the platform presents a checkpoint at \(checkpoint.seq) records, fewer than the "
                            + "\(size) this witness cosigned: its log was rolled back or forked")
        }
        guard submission.oldSize == size else {
            // Not an alarm: the platform starts again from the witness's size.
            throw VaultError(.sizeMismatch, "this witness cosigned \(size) records, not \(submission.oldSize): submit "
                             + "the records after \(size)", details: ["size": String(size)])
        }
        if checkpoint.seq == size {
            guard checkpoint.hash == head else {
                try await alarm("fork", "the platform's checkpoint at \(size) has hash \(checkpoint.hash), but the "
                                + "witness cosigned \(head) at that size: its log was rewritten")
            }
        }
        guard submission.records.count == Int(checkpoint.seq - size) else {
            try await alarm("gap", "the submission carries \(submission.records.count) records for \(checkpoint.seq - size) "
                            + "sequence numbers (\(size + 1) to \(checkpoint.seq)): records are missing")
        }
        // Link by link from the witnessed head to the checkpoint.
        var prev = head
        var accesses: [(requestID: String, principal: String, seq: Int64)] = []
        for (index, line) in submission.records.enumerated() {
            let expectedSeq = size + Int64(index) + 1
            let record: AuditRecord
            do { record = try AuditRecord(line: line) } catch {
                try await alarm("malformed", "record \(expectedSeq) of the submission is not an audit record")
            }
            guard record.seq == expectedSeq, record.force.rawValue == force else {
                try await alarm("gap", "the submission's record \(index + 1) is seq \(record.seq) of \(record.force), "
                                + "not seq \(expectedSeq): records are missing or out of order")
            }
            guard record.prev == prev else {
                try await alarm("fork", "record \(expectedSeq) does not follow the record before it (its prev is not "
                                + "that record's hash): the platform's log was altered or records were removed")
            }
            prev = AuditRecord.hash(of: line)
            if record.outcome == .allowed, Self.accessActions.contains(record.action), let id = record.requestID {
                accesses.append((id, record.principal, record.seq))
            }
        }
        guard prev == checkpoint.hash else {
            try await alarm("fork", "the records end at hash \(prev), not at the checkpoint's \(checkpoint.hash)")
        }
        // Accounting: every read this service unwrapped for before it cosigned last must have been recorded.
        let time = now()
        let witnessed = accesses
        let unaccounted = try await catalog.write { db -> [String] in
            for access in witnessed {
                try db.execute(sql: """
                    INSERT OR IGNORE INTO custody_witnessed (force, request_id, principal, seq) VALUES (?, ?, ?, ?)
                    """, arguments: [force, access.requestID, access.principal, access.seq])
                try db.execute(sql: """
                    UPDATE custody_grants SET matched = 1
                    WHERE force = ? AND request_id = ? AND principal = ? AND matched = 0
                    """, arguments: [force, access.requestID, access.principal])
            }
            guard let lastCosigned else { return [] }
            return try String.fetchAll(db, sql: """
                SELECT request_id FROM custody_grants WHERE force = ? AND matched = 0 AND granted_at < ?
                ORDER BY granted_at LIMIT 20
                """, arguments: [force, lastCosigned])
        }
        if !unaccounted.isEmpty {
            try await alarm("unrecorded_access", "the force's custody unwrapped keys for requests the platform's log "
                            + "does not record as allowed accesses: \(unaccounted.joined(separator: ", "))")
        }
        let cosignature = try Cosignature(checkpoint: checkpoint, cosigned: time, signer: signer)
        let record = entry(caller, "witness.cosign", target: target,
                           detail: ["seq": .integer(checkpoint.seq), "hash": .string(checkpoint.hash),
                                    "from": .integer(size), "accesses": .integer(Int64(accesses.count))],
                           requestID: requestID, time: time)
        try await catalog.write { db in
            try db.execute(sql: """
                INSERT INTO custody_witness (force, size, hash, checkpoint_time, cosigned_at, signature)
                VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (force) DO UPDATE SET size = excluded.size, hash = excluded.hash,
                    checkpoint_time = excluded.checkpoint_time, cosigned_at = excluded.cosigned_at,
                    signature = excluded.signature
                """, arguments: [force, checkpoint.seq, checkpoint.hash, checkpoint.time, time,
                                 Base64.encode(cosignature.signature)])
            try SQLiteCatalog.insertAudit(db, [record])
        }
        Gauge(label: "custody_witness_size", dimensions: [("force", force)]).record(checkpoint.seq)
        return cosignature
    }

    /// What the witness holds now: the size and hash it cosigned last.
    public func witnessState() async throws -> (size: Int64, hash: String) {
        let force = force.rawValue
        return try await catalog.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT size, hash FROM custody_witness WHERE force = ?",
                                             arguments: [force])
            else { return (0, AuditRecord.genesis) }
            return (row["size"], row["hash"])
        }
    }
}
