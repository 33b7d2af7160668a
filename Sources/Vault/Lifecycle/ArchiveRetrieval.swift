import KeyCustody

extension VaultEngine {
    // MARK: Dual-control retrieval (DESIGN section 7)

    /// An analyst asks to read an archive, with a reason and the use case it is for. The use case must name the
    /// analyst and cover the archive's dataset now.
    public func requestRetrieval(
        principal: Principal, force: ForceID, extract: ExtractID, useCaseID: String, reason: String, requestID: String
    ) async throws -> Retrieval {
        let target = "\(force)/archives/\(extract)"
        try await check([.analyst], principal: principal, force: force, action: "archive.request", target: target,
                        requestID: requestID)
        let trimmed = reason.trimmingSpaces
        guard !trimmed.isEmpty, trimmed.utf8.count <= 1000 else {
            throw VaultError(.invalidParameter, "a retrieval needs a reason (1 to 1000 bytes)")
        }
        let record = try await archive(force: force, extract: extract)
        let useCase: ResourceID
        do {
            useCase = try ResourceID(useCaseID, kind: "use case id")
            _ = try await self.useCase(force: force, id: useCase) { found in
                try Policy.checkRead(useCase: found, useCaseID: useCaseID, principal: principal, force: force,
                                     dataset: record.identity.dataset, now: self.now())
            }
        } catch let error as VaultError where VaultError.Code.denials.contains(error.code) {
            try await refuse(error, principal: principal, force: force, action: "archive.request", target: target,
                             dataset: record.identity.dataset, useCase: useCaseID, requestID: requestID)
        } catch let error as CustodyError where error.code == .invalidIdentifier {
            let refusal = VaultError(.noSuchUseCase, error.message, cause: error)
            try await refuse(refusal, principal: principal, force: force,
                             action: "archive.request", target: target, dataset: record.identity.dataset,
                             useCase: nil, requestID: requestID)
        }
        let time = now()
        let retrieval = Retrieval(
            force: force, id: try ResourceID("ret-" + ExtractID.generate().rawValue.lowercased(), kind: "retrieval id"),
            extract: extract, dataset: record.identity.dataset, analyst: principal.id, useCase: useCase,
            reason: trimmed, requestedAt: time)
        try await recording(force) {
            try await catalog.addRetrieval(retrieval, audit: [AuditEntry(
                force: force, time: time, principal: principal.id, action: "archive.request", target: target,
                dataset: record.identity.dataset, useCase: useCase.rawValue, outcome: .allowed,
                detail: ["retrieval": .string(retrieval.id.rawValue), "extract": .string(extract.rawValue),
                         "reason": .string(trimmed)],
                requestID: requestID)])
        }
        return retrieval
    }

    /// A custodian approves a retrieval. The second approval, by a different custodian who is not the requester,
    /// grants it for `settings.retrievalGrantSeconds`. Self-approval and a second approval by the same custodian are
    /// refused and audited.
    public func approveRetrieval(principal: Principal, force: ForceID, id: ResourceID, requestID: String) async throws
        -> Retrieval
    {
        let target = "\(force)/retrievals/\(id)"
        try await check([.custodian], principal: principal, force: force, action: "archive.approve", target: target,
                        requestID: requestID)
        guard let stored = try await catalog.retrieval(force: force, id: id) else {
            throw VaultError(.notFound, "force \(force) has no retrieval \(id)")
        }
        let time = now()
        let grantSeconds = settings.retrievalGrantSeconds
        let approver = principal.id
        do {
            return try await recording(force) {
                try await catalog.updateRetrieval(force: force, id: id) { current in
                    if let refusal = current.approvalRefusal(by: approver) { throw refusal }
                    var updated = current
                    updated.approvals.append(.init(custodian: approver, at: time))
                    var entries = [AuditEntry(
                        force: force, time: time, principal: approver, action: "archive.approve", target: target,
                        dataset: current.dataset, useCase: current.useCase.rawValue, outcome: .allowed,
                        detail: ["retrieval": .string(id.rawValue), "extract": .string(current.extract.rawValue),
                                 "approval": .integer(Int64(updated.approvals.count))],
                        requestID: requestID)]
                    if updated.approvals.count >= 2 {
                        updated.grantedAt = time
                        updated.expiresAt = time + grantSeconds
                        entries.append(AuditEntry(
                            force: force, time: time, principal: approver, action: "archive.grant", target: target,
                            dataset: current.dataset, useCase: current.useCase.rawValue, outcome: .allowed,
                            detail: ["retrieval": .string(id.rawValue), "extract": .string(current.extract.rawValue),
                                     "analyst": .string(current.analyst),
                                     "approvers": .array(updated.approvals.map { .string($0.custodian) }),
                                     "expires_at": .string(Timestamp.format(secondsSinceEpoch: Int(time + grantSeconds)))],
                            requestID: requestID))
                    }
                    return (updated, entries)
                }
            }
        } catch let error as VaultError where VaultError.Code.denials.contains(error.code) {
            try await refuse(error, principal: principal, force: force, action: "archive.approve", target: target,
                             dataset: stored.dataset, useCase: stored.useCase.rawValue, requestID: requestID)
        }
    }

    /// Retrievals of a force: all of them for custodians and auditors, an analyst's own for analysts.
    public func listRetrievals(principal: Principal, force: ForceID, requestID: String) async throws -> [Retrieval] {
        try await authoriseMetadataRead(Policy.Readers.retrievals, principal: principal, force: force,
                                        action: "archive.retrievals", target: "\(force)/retrievals",
                                        requestID: requestID)
        let all = try await catalog.retrievals(force: force)
        if principal.hasAny(of: [.custodian, .auditor], for: force) { return all }
        return all.filter { $0.analyst == principal.id }
    }

    /// Opens an archive for the analyst named in a granted, unexpired retrieval under the same use case, which must
    /// still be valid. Audited before anything is decrypted; every refusal is audited.
    public func openArchive(
        principal: Principal, force: ForceID, extract: ExtractID, useCaseID: String?, requestID: String,
        signedRequest: SignedReadRequest? = nil
    ) async throws -> ExtractReader {
        let target = "\(force)/archives/\(extract)"
        try await check([.analyst], principal: principal, force: force, action: "archive.read", target: target,
                        requestID: requestID)
        let record = try await archive(force: force, extract: extract)
        let dataset = record.identity.dataset
        let time = now()
        let grant: Retrieval
        do {
            guard let useCaseID, !useCaseID.isEmpty else {
                throw VaultError(.useCaseRequired, "an archive read must name the use case of its retrieval (use_case=...)")
            }
            let useCase = try ResourceID(useCaseID, kind: "use case id")
            let mine = try await catalog.retrievals(force: force).filter {
                $0.extract == extract && $0.analyst == principal.id && $0.useCase == useCase
            }
            guard let usable = mine.last(where: { $0.isUsable(at: time) }) else {
                if mine.contains(where: { $0.grantedAt != nil }) {
                    throw VaultError(.grantExpired, "the retrieval grant for archive \(extract) has expired; request "
                                        + "it again")
                }
                if !mine.isEmpty {
                    throw VaultError(.approvalPending, "the retrieval of archive \(extract) waits for two custodians' "
                                        + "approval")
                }
                throw VaultError(.noGrant, "\(principal) holds no granted retrieval of archive \(extract) under use "
                                    + "case \(useCase)")
            }
            _ = try await self.useCase(force: force, id: useCase) { found in
                try Policy.checkRead(useCase: found, useCaseID: useCaseID, principal: principal, force: force,
                                     dataset: dataset, now: time)
            }
            grant = usable
        } catch let error as VaultError where VaultError.Code.denials.contains(error.code) {
            try await refuse(error, principal: principal, force: force, action: "archive.read", target: target,
                             dataset: dataset, useCase: useCaseID, requestID: requestID)
        } catch let error as CustodyError where error.code == .invalidIdentifier {
            let refusal = VaultError(.noSuchUseCase, error.message, cause: error)
            try await refuse(refusal, principal: principal, force: force,
                             action: "archive.read", target: target, dataset: dataset, useCase: nil,
                             requestID: requestID)
        }
        let recorded = try await recording(force) {
            try await catalog.appendAudit(ifExtract: extract, of: force, isIn: .archived, audit: [AuditEntry(
                force: force, time: time, principal: principal.id, action: "archive.read", target: target,
                dataset: dataset, useCase: grant.useCase.rawValue, outcome: .allowed,
                detail: ["retrieval": .string(grant.id.rawValue), "extract": .string(extract.rawValue),
                         "approvers": .array(grant.approvals.map { .string($0.custodian) }),
                         "plaintext_size": .integer(Int64(record.plaintextSize))],
                requestID: requestID)])
        }
        guard recorded else { throw VaultError(.notFound, "archive \(extract) is being shredded") }
        let key = try await unwrapForRead(record, justification: Justification(
            principal: principal.id, useCase: grant.useCase.rawValue, purpose: .archiveRetrieval, requestID: requestID,
            signedRequest: signedRequest), action: "archive.read", target: target)
        // While it streams: the grant is still usable, its use case still allows it, and the archive is still there.
        return try await ExtractReader.open(record, key: key, blobs: blobs, settings: settings) { [self] in
            do {
                let time = self.now()
                guard let current = try await catalog.retrievals(force: force).first(where: { $0.id == grant.id }),
                      current.isUsable(at: time) else {
                    throw VaultError(.grantExpired, "the retrieval grant for archive \(extract) expired while it was "
                                         + "being read; the read ends here")
                }
                _ = try await self.useCase(force: force, id: grant.useCase) { found in
                    try Policy.checkRead(useCase: found, useCaseID: grant.useCase.rawValue, principal: principal,
                                         force: force, dataset: dataset, now: time)
                }
                guard try await catalog.extract(force: force, id: extract)?.state == .archived else {
                    throw VaultError(.archivedExtract, "archive \(extract) is being shredded; the read ends here")
                }
            } catch let error as VaultError where VaultError.Code.denials.contains(error.code) {
                try await refuse(error, principal: principal, force: force, action: "archive.read", target: target,
                                 dataset: dataset, useCase: grant.useCase.rawValue, requestID: requestID)
            }
        }
    }

    /// The archived extract `extract`; 410 with its certificate if it was shredded, 404 if it is not an archive.
    func archive(force: ForceID, extract: ExtractID) async throws -> ExtractRecord {
        guard let record = try await catalog.extract(force: force, id: extract), record.state != .uploading else {
            throw VaultError(.notFound, "force \(force) has no extract \(extract)")
        }
        switch record.state {
        case .archived: return record
        case .shredded, .shredding: throw shreddedError(record)
        case .current:
            throw VaultError(.conflict, "extract \(extract) is current; read it on the live path with a use case")
        case .uploading:
            throw VaultError(.notFound, "force \(force) has no extract \(extract)")
        }
    }

    func shreddedError(_ record: ExtractRecord) -> VaultError {
        let identity = record.identity
        if record.state == .shredding {
            return VaultError(.shredded, "extract \(identity.extract) is being crypto-shredded")
        }
        let when = record.shreddedAt.map { " on " + Timestamp.format(secondsSinceEpoch: Int($0)) } ?? ""
        return VaultError(.shredded, "extract \(identity.extract) was crypto-shredded\(when); destruction "
                            + "certificate \(record.certificate ?? "-")",
                          details: ["certificate": record.certificate ?? ""])
    }

    // MARK: Legal hold

    /// Places a legal hold (custodian): the extract is never shredded while it holds.
    public func placeHold(principal: Principal, force: ForceID, extract: ExtractID, reason: String, requestID: String)
        async throws -> ExtractRecord
    {
        try await changeHold(principal: principal, force: force, extract: extract, reason: reason, place: true,
                             requestID: requestID)
    }

    /// Lifts a legal hold (custodian), with the reason it ends.
    public func releaseHold(principal: Principal, force: ForceID, extract: ExtractID, reason: String,
                            requestID: String) async throws -> ExtractRecord
    {
        try await changeHold(principal: principal, force: force, extract: extract, reason: reason, place: false,
                             requestID: requestID)
    }

    private func changeHold(principal: Principal, force: ForceID, extract: ExtractID, reason: String, place: Bool,
                            requestID: String) async throws -> ExtractRecord
    {
        let action = place ? "hold.place" : "hold.release"
        let target = "\(force)/archives/\(extract)"
        try await check([.custodian], principal: principal, force: force, action: action, target: target,
                        requestID: requestID)
        let trimmed = reason.trimmingSpaces
        guard !trimmed.isEmpty, trimmed.utf8.count <= 1000 else {
            throw VaultError(.invalidParameter, "a legal hold needs a reason (1 to 1000 bytes)")
        }
        let time = now()
        let hold = place ? LegalHold(reason: trimmed, placedBy: principal.id, placedAt: time) : nil
        let by = principal.id
        return try await recording(force) {
            try await catalog.setHold(force: force, extract: extract, hold: hold) { record in
                switch record.state {
                case .shredded, .shredding: throw self.shreddedError(record)
                case .uploading: throw VaultError(.notFound, "force \(force) has no extract \(extract)")
                case .current, .archived: break
                }
                if place, let existing = record.hold {
                    throw VaultError(.conflict, "extract \(extract) is already on hold (\(existing.reason))")
                }
                if !place, record.hold == nil {
                    throw VaultError(.conflict, "extract \(extract) is not on hold")
                }
                var detail: [String: JSONValue] = ["extract": .string(extract.rawValue), "reason": .string(trimmed)]
                if !place, let previous = record.hold { detail["placed_by"] = .string(previous.placedBy) }
                return [AuditEntry(force: force, time: time, principal: by, action: action, target: target,
                                   dataset: record.identity.dataset, outcome: .allowed, detail: detail,
                                   requestID: requestID)]
            }
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
