import KeyCustody

/// Where an audit export starts.
public enum AuditSince: Sendable, Equatable {
    /// Records after this sequence number (0: the whole chain).
    case sequence(Int64)
    /// Records at or after this time.
    case time(UnixTime)

    /// `SEQ` (a sequence number) or an RFC 3339 UTC time.
    public init(parsing text: String) throws {
        if let seq = Int64(text), seq >= 0 {
            self = .sequence(seq)
        } else if let seconds = Timestamp.parse(text) {
            self = .time(UnixTime(seconds))
        } else {
            throw VaultError(.invalidParameter, "since must be a sequence number or an RFC 3339 UTC time like "
                                + "2026-01-31T00:00:00Z")
        }
    }
}

/// A force's audit chain from one point to a signed checkpoint, ready to stream as NDJSON: the header, then every
/// record, each checkpoint right after the record it signs. It ends at a checkpoint of the chain's head taken when
/// the export began, so everything in it can be verified offline.
public struct AuditExport: Sendable {
    public let header: AuditExportHeader
    /// The signed last line.
    public let seal: AuditExportSeal
    let catalog: any Catalog

    /// Writes the export line by line (each followed by `\n`), a page of records at a time.
    public func write(pageSize: Int = 2000, to sink: ([UInt8]) async throws -> Void) async throws {
        try await sink(header.json.canonicalBytes() + [0x0A])
        try await writeRecords(pageSize: pageSize, to: sink)
        try await sink(seal.json.canonicalBytes() + [0x0A])
    }

    private func writeRecords(pageSize: Int, to sink: ([UInt8]) async throws -> Void) async throws {
        guard header.lastSeq >= header.firstSeq else { return }
        let force = header.force
        var after = header.firstSeq - 1
        // A checkpoint of the record just before the export anchors its first record.
        if after >= 1, let anchor = try await catalog.auditCheckpoints(force: force, from: after, through: after).first {
            try await sink(anchor.json.canonicalBytes() + [0x0A])
        }
        while after < header.lastSeq {
            let lines = try await catalog.auditLines(force: force, after: after, through: header.lastSeq,
                                                     limit: pageSize)
            guard let last = lines.last else {
                throw VaultError(.catalogUnavailable, "the audit chain of \(force) ends before seq \(header.lastSeq)")
            }
            let checkpoints = try await catalog.auditCheckpoints(force: force, from: after + 1, through: last.seq)
            // The force's witness cosignatures follow the checkpoint they cosign (DESIGN 5.7).
            let cosignatures = Dictionary(grouping: try await catalog.cosignatures(force: force, from: after + 1,
                                                                                  through: last.seq), by: \.seq)
            var next = checkpoints.makeIterator()
            var checkpoint = next.next()
            var page: [UInt8] = []
            for line in lines {
                page += line.line
                page.append(0x0A)
                while let current = checkpoint, current.seq <= line.seq {
                    if current.seq == line.seq {
                        page += current.json.canonicalBytes() + [0x0A]
                        for cosignature in cosignatures[current.seq] ?? [] where cosignature.hash == current.hash {
                            page += cosignature.json.canonicalBytes() + [0x0A]
                        }
                    }
                    checkpoint = next.next()
                }
            }
            try await sink(page)
            after = last.seq
        }
    }
}

extension AuditExport {
    /// An export of `force`'s chain from `since` to a checkpoint of its head signed now.
    static func prepare(catalog: any Catalog, signer: AuditSigner, force: ForceID, since: AuditSince, now time: UnixTime)
        async throws -> AuditExport
    {
        var after: Int64
        switch since {
        case .sequence(let seq): after = seq
        case .time(let time):
            after = (try await catalog.auditSeq(force: force, notBefore: time)).map { $0 - 1 } ?? Int64.max
        }
        let checkpoint = try await catalog.checkpointAudit(force: force, now: time, signer: signer)
        let last = checkpoint?.seq ?? 0
        let lastHash = checkpoint?.hash ?? AuditRecord.genesis
        after = min(after, last)
        // The hash the first record's prev must equal: the record before it, or the chain's start.
        let firstPrev: String
        if after == 0 {
            firstPrev = AuditRecord.genesis
        } else if after == last {
            firstPrev = lastHash
        } else {
            guard let line = try await catalog.auditLines(force: force, after: after - 1, through: after, limit: 1).first
            else { throw VaultError(.catalogUnavailable, "the audit chain of \(force) has no record \(after)") }
            firstPrev = AuditRecord.hash(of: line.line)
        }
        return AuditExport(
            header: AuditExportHeader(force: force, firstSeq: after + 1, lastSeq: last, exportedAt: time,
                                      keyFingerprint: signer.publicKey.fingerprint),
            seal: try signer.seal(force: force, firstSeq: after + 1, lastSeq: last, firstPrev: firstPrev,
                              lastHash: lastHash, time: time),
            catalog: catalog)
    }
}

extension VaultEngine {
    /// Exports `force`'s audit chain (auditor of that force). The export is itself audited, and ends at a
    /// checkpoint signed now, so it covers every record up to and including its own `audit.export` record.
    public func exportAudit(principal: Principal, force: ForceID, since: AuditSince, requestID: String) async throws
        -> AuditExport
    {
        try await checkAuditAccess(principal: principal, force: force, action: "audit.export", requestID: requestID)
        var detail: [String: JSONValue] = [:]
        switch since {
        case .sequence(let seq): detail["since_seq"] = .integer(seq)
        case .time(let time): detail["since_time"] = .string(Timestamp.format(secondsSinceEpoch: Int(time)))
        }
        try await record(AuditEntry(force: force, time: now(), principal: principal.id, action: "audit.export",
                                    target: "\(force)/audit", outcome: .allowed, detail: detail, requestID: requestID))
        return try await recording(force) {
            try await AuditExport.prepare(catalog: catalog, signer: signer, force: force, since: since, now: now())
        }
    }

    /// Verifies `force`'s chain as it stands now (auditor of that force), as `vault audit verify` would verify an
    /// export of it: from the start, or from `head` verified before, to a checkpoint signed now; with the force's
    /// witness key when its custody service witnesses the chain. Audited as `audit.verify`: nothing leaves vaultd.
    /// Throws the `AuditBreak` found.
    public func verifyAudit(principal: Principal, force: ForceID, from head: AuditHead?, requestID: String)
        async throws -> AuditVerificationReport
    {
        try await checkAuditAccess(principal: principal, force: force, action: "audit.verify", requestID: requestID)
        try await record(AuditEntry(force: force, time: now(), principal: principal.id, action: "audit.verify",
                                    target: "\(force)/audit", outcome: .allowed,
                                    detail: ["since_seq": .integer(head?.seq ?? 0)], requestID: requestID))
        let export = try await recording(force) {
            try await AuditExport.prepare(catalog: catalog, signer: signer, force: force,
                                          since: .sequence(head?.seq ?? 0), now: now())
        }
        var verifier = AuditVerifier(publicKey: signer.publicKey, witnessKey: remotes[force]?.custodyKey,
                                     sinceHead: head)
        var partial: [UInt8] = []
        try await export.write { chunk in
            var start = chunk.startIndex
            for index in chunk.indices where chunk[index] == 0x0A {
                verifier.consume(partial + chunk[start..<index])
                partial = []
                start = index + 1
            }
            partial += chunk[start...]
        }
        if !partial.isEmpty { verifier.consume(partial) }
        return try verifier.finish()
    }

    /// A force's chain is its auditors'; the platform's chain is for ops (of any force). A refusal is audited.
    private func checkAuditAccess(principal: Principal, force: ForceID, action: String, requestID: String)
        async throws
    {
        if force == .platform {
            do { try Policy.requireAnyForce(.ops, of: principal, for: "the platform's audit chain") }
            catch let error as VaultError {
                try await refuse(error, principal: principal, force: force, action: action,
                                 target: "\(force)/audit", useCase: nil, requestID: requestID)
            }
            return
        }
        try await check(Policy.Readers.audit, principal: principal, force: force, action: action, target: "\(force)/audit",
                        requestID: requestID)
        _ = try custody(force)
    }

    /// Searches `force`'s audit chain (auditor of that force): who did what, when, under which use case. Audited.
    public func searchAudit(principal: Principal, force: ForceID, query: AuditQuery, requestID: String) async throws
        -> [AuditLine]
    {
        try await checkAuditAccess(principal: principal, force: force, action: "audit.search", requestID: requestID)
        guard (1...10_000).contains(query.limit) else {
            throw VaultError(.invalidParameter, "limit must be between 1 and 10000")
        }
        var detail: [String: JSONValue] = ["limit": .integer(Int64(query.limit))]
        if let principal = query.principal { detail["principal"] = .string(principal) }
        if let useCase = query.useCase { detail["use_case"] = .string(useCase) }
        if let dataset = query.dataset { detail["dataset"] = .string(dataset.rawValue) }
        if let action = query.action { detail["action"] = .string(action) }
        if let outcome = query.outcome { detail["outcome"] = .string(outcome.rawValue) }
        if let from = query.from { detail["from"] = .string(Timestamp.format(secondsSinceEpoch: Int(from))) }
        if let until = query.until { detail["until"] = .string(Timestamp.format(secondsSinceEpoch: Int(until))) }
        try await record(AuditEntry(force: force, time: now(), principal: principal.id, action: "audit.search",
                                    target: "\(force)/audit", outcome: .allowed, detail: detail, requestID: requestID))
        return try await catalog.searchAudit(force: force, query: query)
    }

    /// The audit public key, as PEM.
    public var auditPublicKeyPEM: String { signer.publicKey.pem }
}

extension AuditQuery {
    /// A query from URL query parameters: `principal`, `use_case`, `dataset`, `action`, `outcome`, `from`,
    /// `until` (RFC 3339 UTC), `after` (seq) and `limit`. Unknown parameters are refused.
    public init(parameters: [(String, String)]) throws {
        self.init()
        let invalid = { (reason: String) in VaultError(.invalidParameter, "invalid audit search: \(reason)") }
        func time(_ text: String, _ name: String) throws -> UnixTime {
            guard let seconds = Timestamp.parse(text) else {
                throw invalid("\(name) must be an RFC 3339 UTC time like 2026-01-31T00:00:00Z")
            }
            return UnixTime(seconds)
        }
        for (name, value) in parameters {
            switch name {
            case "principal": principal = value
            case "use_case": useCase = value
            case "dataset":
                do { dataset = try DatasetID(dataset: value) } catch let error as CustodyError {
                    throw invalid(error.message)
                }
            case "action": action = value
            case "outcome":
                guard let parsed = AuditOutcome(rawValue: value) else {
                    throw invalid("outcome must be allowed, denied or error")
                }
                outcome = parsed
            case "from": from = try time(value, "from")
            case "until": until = try time(value, "until")
            case "after":
                guard let seq = Int64(value), seq >= 0 else { throw invalid("after must be a sequence number") }
                afterSeq = seq
            case "limit":
                guard let count = Int(value), (1...10_000).contains(count) else {
                    throw invalid("limit must be between 1 and 10000")
                }
                limit = count
            default:
                throw invalid("unknown parameter \"\(name)\" (known: action, after, dataset, from, limit, outcome, "
                                + "principal, until, use_case)")
            }
        }
    }
}

extension AuditActivity {
    /// The `Activity` document of `GET /v1/forces/{force}/activity`.
    public func json(force: ForceID, days: Int) -> JSONValue {
        func day(_ number: Int64) -> JSONValue {
            .string(String(Timestamp.format(secondsSinceEpoch: Int(number * 86_400)).prefix(10)))
        }
        func counts(_ list: [Count]) -> JSONValue {
            .array(list.sorted { ($0.day, $0.name) < ($1.day, $1.name) }.map {
                .object(["day": day($0.day), "name": .string($0.name), "count": .integer($0.count)])
            })
        }
        return .object([
            "force": .string(force.rawValue), "from": day(since / 86_400), "days": .integer(Int64(days)),
            "allowed": counts(allowed), "refusals": counts(refusals), "refusals_truncated": .bool(refusalsTruncated),
        ])
    }
}

extension VaultEngine {
    /// The actions the activity charts count: uploads, reads (live and archive) and shreds.
    public static let activityActions = ["upload", "read", "archive.read", "shred"]

    /// `force`'s activity over the last `days` UTC days (today included): uploads, reads and shreds per day, and
    /// refusals by reason (ops or auditor of the force: counts, never content). Audited.
    public func activity(principal: Principal, force: ForceID, days: Int, requestID: String) async throws
        -> AuditActivity
    {
        guard (1...366).contains(days) else { throw VaultError(.invalidParameter, "days must be between 1 and 366") }
        try await authoriseMetadataRead(Policy.Readers.activity, principal: principal, force: force, action: "audit.activity",
                                        target: "\(force)/audit", requestID: requestID)
        let since = (now() / 86_400 - Int64(days - 1)) * 86_400
        return try await catalog.auditActivity(force: force, since: since, actions: Self.activityActions)
    }
}
