import KeyCustody

/// What a shredding run did, or (dry run) would do.
public struct ShredReport: Sendable {
    /// Certificates issued, in order.
    public var certificates: [DestructionCertificate] = []
    /// Dry run: the archives that would be shredded.
    public var candidates: [ExtractRecord] = []
    /// Expired archives kept because of a legal hold.
    public var held: [ExtractRecord] = []
    /// Per-archive durations (from the start of its batch to its certificate), in seconds.
    public var durations: [Double] = []
    /// Forces this pass did not sweep because another sweep of them was running (on this instance or another).
    public var busy: [ForceID] = []

    public init() {}

    public func json(dryRun: Bool) -> JSONValue { ShredReportDocument(self, dryRun: dryRun).json }
}

extension VaultEngine {
    // MARK: Crypto-shredding (DESIGN sections 4 and 7)

    /// Shreds every expired, unheld archive of the forces `principal` is ops for (or only `force`), or with
    /// `dryRun` lists them. Archives a crashed run left half-shredded are finished first.
    public func shredExpired(principal: Principal, force: ForceID?, dryRun: Bool, requestID: String) async throws
        -> ShredReport
    {
        let forces: [ForceID]
        if let force {
            try await check([.ops], principal: principal, force: force, action: "shred", target: "\(force)/archives",
                            requestID: requestID)
            forces = [force]
        } else {
            forces = try Policy.forces(self.forces, where: principal, holds: .ops)
        }
        var report = ShredReport()
        for force in forces {
            if dryRun {
                let time = now()
                report.candidates += try await catalog.shredCandidates(force: force, now: time, limit: 100_000)
                report.held += try await heldExpired(force: force, now: time)
            } else {
                let part = try await shredPass(force: force, requestedBy: principal.id, requestID: requestID)
                report.certificates += part.certificates
                report.durations += part.durations
                report.held += part.held
                report.busy += part.busy
            }
        }
        // An empty answer would say nothing was due: say instead that another sweep has it.
        if !report.busy.isEmpty {
            let names = report.busy.map(\.rawValue).joined(separator: ", ")
            throw VaultError(.conflict, "another shred sweep of force \(names) is running now (on this instance or "
                             + "another); its certificates are listed when it ends"
                             + (forces.count > report.busy.count ? "; the other forces were swept" : ""))
        }
        return report
    }

    private func heldExpired(force: ForceID, now time: UnixTime) async throws -> [ExtractRecord] {
        try await catalog.extracts(force: force, dataset: nil, states: [.archived]).filter {
            $0.hold != nil && $0.isPastRetention(at: time)
        }
    }

    /// One scheduler pass: shreds every expired, unheld archive of `force` in batches, finishing interrupted ones.
    public func shredPass(force: ForceID, requestedBy: String = "vaultd", requestID: String = "shred-job")
        async throws -> ShredReport
    {
        var busy = ShredReport()
        busy.busy = [force]
        guard shredRunning.withLock({ $0.insert(force).inserted }) else { return busy }
        defer { shredRunning.withLock { _ = $0.remove(force) } }
        // With several instances on one catalog, one sweeps a force at a time: archives it left `shredding` are
        // finished by whoever holds the lease next, never by two at once.
        let lease = JobLease(name: "shred:\(force)", engine: self)
        guard try await lease.take() else { return busy }
        do {
            let report = try await sweep(force: force, requestedBy: requestedBy, requestID: requestID, lease: lease)
            await lease.release()
            return report
        } catch {
            await lease.release()
            throw error
        }
    }

    private func sweep(force: ForceID, requestedBy: String, requestID: String, lease: JobLease) async throws
        -> ShredReport
    {
        var report = ShredReport()
        // Each batch removes the tombstones of the batch before in its own custody write; the last batch's go after
        // the loop.
        var tombstones: [KEKID] = []
        do {
        while true {
            try await lease.renew()
            let time = now()
            let candidates = try await catalog.shredCandidates(force: force, now: time, limit: settings.shredBatchSize)
            if candidates.isEmpty { break }
            let clock = ContinuousClock()
            let start = clock.now
            let tickets = try await recording(force) {
                try await catalog.beginShred(
                    force: force, extracts: candidates.map(\.identity.extract), reason: .retentionExpired, note: nil,
                    requestedBy: requestedBy, expiredBy: time, now: time,
                    audit: { record in self.shredAudit(record, action: "shred.begin", principal: requestedBy,
                                                       detail: ["reason": .string(ShredReason.retentionExpired.rawValue)],
                                                       requestID: requestID) })
            }
            if tickets.isEmpty { break }
            // Each archive's time runs from this batch taking it to its certificate being stored (not to custody
            // forgetting the destroyed keys' tombstones, which follows).
            var stored = start
            let certificates = try await finishShredding(force: force, tickets: tickets, requestID: requestID,
                                                         forgetting: tombstones, forgetNow: false) {
                stored = clock.now
            }
            tombstones = self.tombstones(of: certificates, force: force)
            let seconds = start.duration(to: stored).inSeconds
            report.certificates += certificates
            report.durations += Array(repeating: seconds, count: certificates.count)
        }
        } catch {
            await forgetTombstones(tombstones, force: force)
            throw error
        }
        await forgetTombstones(tombstones, force: force)
        report.held = try await heldExpired(force: force, now: now())
        return report
    }

    /// A custodian shreds one archive before its expiry, with a reason. Refused for held archives.
    public func shredArchive(principal: Principal, force: ForceID, extract: ExtractID, reason: String,
                             requestID: String) async throws -> DestructionCertificate
    {
        let target = "\(force)/archives/\(extract)"
        try await check([.custodian], principal: principal, force: force, action: "shred", target: target,
                        requestID: requestID)
        let trimmed = reason.trimmingSpaces
        guard !trimmed.isEmpty, trimmed.utf8.count <= 1000 else {
            throw VaultError(.invalidParameter, "an early shred needs a reason (1 to 1000 bytes)")
        }
        let record = try await archive(force: force, extract: extract)
        if let hold = record.hold {
            throw VaultError(.onHold, "archive \(extract) is on legal hold (\(hold.reason)); release the hold first")
        }
        // A sweep (here or on another instance) finishes archives left `shredding`: never at the same time as this.
        let lease = JobLease(name: "shred:\(force)", engine: self)
        try await lease.take(waiting: 20)
        do {
            let certificate = try await shredMarked(force: force, extract: extract, principal: principal,
                                                    note: trimmed, requestID: requestID)
            await lease.release()
            return certificate
        } catch {
            await lease.release()
            throw error
        }
    }

    private func shredMarked(force: ForceID, extract: ExtractID, principal: Principal, note trimmed: String,
                             requestID: String) async throws -> DestructionCertificate
    {
        let time = now()
        let tickets = try await recording(force) {
            try await catalog.beginShred(
                force: force, extracts: [extract], reason: .early, note: trimmed, requestedBy: principal.id,
                expiredBy: nil, now: time,
                audit: { record in self.shredAudit(record, action: "shred.begin", principal: principal.id,
                                                   detail: ["reason": .string(ShredReason.early.rawValue),
                                                            "note": .string(trimmed)],
                                                   requestID: requestID) })
        }
        guard !tickets.isEmpty else {
            // A hold placed in between, or another shred: report what the archive is now.
            let now = try await archive(force: force, extract: extract)
            if let hold = now.hold { throw VaultError(.onHold, "archive \(extract) is on legal hold (\(hold.reason))") }
            throw VaultError(.conflict, "archive \(extract) could not be marked for shredding")
        }
        guard let certificate = try await finishShredding(force: force, tickets: tickets, requestID: requestID).first
        else { throw VaultError(.conflict, "archive \(extract) was not shredded") }
        return certificate
    }

    /// The idempotent steps after an archive is marked `shredding`: destroy its archive key in custody, delete its
    /// blob, then mark it shredded with a signed certificate. Each step can be repeated after a crash.
    /// `forgetting`: tombstones of an earlier batch whose certificates are complete, removed in the same custody write
    /// as this batch's destruction. `forgetNow`: this batch's own tombstones are removed once its certificates are
    /// stored (false: the caller passes them on to its next batch). `stored` is called once the certificates are
    /// stored.
    func finishShredding(force: ForceID, tickets: [ShredTicket], requestID: String, forgetting: [KEKID] = [],
                         forgetNow: Bool = true, stored: () -> Void = {}) async throws -> [DestructionCertificate]
    {
        let custody = try custody(force)
        let lineages = try await catalog.lineages(force: force, extracts: tickets.map(\.record.identity.extract))
        let ownKeys = tickets.map { KEKID.archive(force: force, extract: $0.record.identity.extract) }
        // Only the keys the certificates name: a force's custody holds a key per archive.
        let known = try await custody.states(of: Set(ownKeys + lineages.values.flatMap { $0.map(\.kek) }))
        var destroyed: [ExtractID: [KEKID]] = [:]
        var archiveKeys: [KEKID] = []
        for (ticket, archiveKey) in zip(tickets, ownKeys) {
            if known[archiveKey] != nil {
                archiveKeys.append(archiveKey)
                destroyed[ticket.record.identity.extract] = [archiveKey]
            } else {
                destroyed[ticket.record.identity.extract] = []
            }
        }
        try await custody.destroy(archiveKeys, forgetting: forgetting)
        CrashPoint.reach("shred.keys-destroyed")
        try await blobs.delete(tickets.map(\.record.identity))
        CrashPoint.reach("shred.blobs-deleted")
        // The archive keys just destroyed; everything else as custody listed it before.
        var states = known
        for key in archiveKeys { states[key] = .destroyed }
        let time = now()
        var certificates: [DestructionCertificate] = []
        var audit: [AuditEntry] = []
        for ticket in tickets {
            let extract = ticket.record.identity.extract
            let certificate = try DestructionCertificate.issue(
                ticket: ticket, shreddedAt: time, keksDestroyed: destroyed[extract] ?? [], lineage: lineages[extract] ?? [],
                keyStates: states, signer: signer, now: time)
            certificates.append(certificate)
            audit.append(shredAudit(ticket.record, action: "shred", principal: ticket.requestedBy, detail: [
                "certificate": .string(certificate.id), "verdict": .string(certificate.verdict.rawValue),
                "keks_destroyed": .array((destroyed[extract] ?? []).map { .string($0.description) }),
                "pending_keks": .array(certificate.pendingKEKs.map { .string($0.description) }),
                "ciphertext_sha256": .string(Hex.encode(ticket.record.ciphertextSHA256)),
                "reason": .string(ticket.reason.rawValue),
            ], requestID: requestID))
        }
        try await recording(force) {
            try await catalog.finishShred(force: force, certificates: certificates, now: time, audit: audit)
        }
        stored()
        CrashPoint.reach("shred.finished")
        logger.notice("archives crypto-shredded", metadata: [
            "force": "\(force)", "count": "\(certificates.count)", "request": "\(requestID)",
        ])
        if forgetNow { await forgetTombstones(of: certificates, force: force) }
        return certificates
    }

    /// Removes from custody the tombstones of the archive keys of `certificates` that are complete: nothing will ever
    /// judge them again (a certificate is re-issued only while pending), so custody need not keep them. Best effort
    /// (a failure, or a crash before it, only leaves tombstones, as before); a pending certificate's tombstone stays
    /// until its re-issue is complete.
    func forgetTombstones(of certificates: [DestructionCertificate], force: ForceID) async {
        await forgetTombstones(tombstones(of: certificates, force: force), force: force)
    }

    /// The archive keys of `certificates` that are complete: their tombstones may go.
    func tombstones(of certificates: [DestructionCertificate], force: ForceID) -> [KEKID] {
        certificates.filter { $0.verdict == .complete }.map { KEKID.archive(force: force, extract: $0.extract) }
    }

    func forgetTombstones(_ keks: [KEKID], force: ForceID) async {
        guard !keks.isEmpty else { return }
        do {
            try await custody(force).forgetDestroyed(keks)
        } catch {
            logger.warning("cannot remove destroyed archive keys' tombstones; they stay", metadata: [
                "force": "\(force)", "count": "\(keks.count)", "error": "\(error)"])
        }
    }

    func shredAudit(_ record: ExtractRecord, action: String, principal: String, detail: [String: JSONValue],
                    requestID: String) -> AuditEntry
    {
        var detail = detail
        detail["extract"] = .string(record.identity.extract.rawValue)
        return AuditEntry(force: record.identity.force, time: now(), principal: principal, action: action,
                          target: "\(record.identity.force)/archives/\(record.identity.extract)",
                          dataset: record.identity.dataset, outcome: .allowed, detail: detail, requestID: requestID)
    }

    /// Issues new certificates for shredded extracts whose latest certificate was pending on KEKs custody now reports
    /// destroyed (a KEK custody does not list stays pending).
    func reissuePendingCertificates(force: ForceID, requestID: String) async throws -> [DestructionCertificate] {
        let states = Dictionary(try await custody(force).status().map { ($0.id, $0.state) },
                                uniquingKeysWith: { first, _ in first })
        var latest: [ExtractID: DestructionCertificate] = [:]
        for certificate in try await catalog.certificates(force: force, extract: nil) {
            latest[certificate.extract] = certificate
        }
        let time = now()
        let reissued = try latest.values.sorted { $0.id < $1.id }.filter { certificate in
            certificate.verdict == .pending
                && certificate.pendingKEKs.contains { DestructionCertificate.isDestroyed($0, states) }
        }.map { try $0.reissued(keyStates: states, signer: signer, now: time) }
        guard !reissued.isEmpty else { return [] }
        let audit = reissued.map { certificate in
            AuditEntry(force: force, time: time, principal: "vaultd", action: "certificate.reissue",
                       target: "\(force)/certificates/\(certificate.id)", outcome: .allowed,
                       detail: ["extract": .string(certificate.extract.rawValue),
                                "verdict": .string(certificate.verdict.rawValue),
                                "supersedes": certificate.body["supersedes"] ?? .null],
                       requestID: requestID)
        }
        try await recording(force) { try await catalog.addCertificates(force: force, reissued, audit: audit) }
        await forgetTombstones(of: reissued, force: force)
        return reissued
    }

    // MARK: Certificates

    /// One certificate (custodians, auditors and ops of the force).
    public func certificate(principal: Principal, force: ForceID, id: String, requestID: String) async throws
        -> DestructionCertificate
    {
        // Certificate ids are ULIDs: anything else is refused before it can reach the trail.
        let id = try ExtractID(id).rawValue
        try await authoriseMetadataRead(Policy.Readers.certificates, principal: principal, force: force,
                                        action: "certificate.read", target: "\(force)/certificates/\(id)",
                                        requestID: requestID)
        guard let certificate = try await catalog.certificate(force: force, id: id) else {
            throw VaultError(.notFound, "force \(force) has no destruction certificate \(id)")
        }
        return certificate
    }

    /// A force's certificates, optionally one extract's.
    public func certificates(principal: Principal, force: ForceID, extract: ExtractID?, requestID: String)
        async throws -> [DestructionCertificate]
    {
        try await authoriseMetadataRead(Policy.Readers.certificates, principal: principal, force: force,
                                        action: "certificate.list", target: "\(force)/certificates",
                                        requestID: requestID)
        return try await catalog.certificates(force: force, extract: extract)
    }
}
