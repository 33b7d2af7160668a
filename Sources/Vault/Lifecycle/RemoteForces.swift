import KeyCustody
import Metrics

/// What the platform does for forces whose own custody service holds their keys (DESIGN 6.3): it takes their use
/// cases from the custody service, signed, and has the custody service witness its audit log.
extension VaultEngine {
    // MARK: Use cases, signed at the force

    /// Brings the catalog's copy of a remote force's use cases up to the signed versions its custody service holds
    /// (each signature verified with the custody key named in the custody file). A use case the platform holds but
    /// the force does not is revoked: the force decides. Returns how many use cases changed.
    @discardableResult
    public func syncUseCases(force: ForceID) async throws -> Int {
        guard let remote = remotes[force] else { return 0 }
        let signed = try await remote.signedUseCases()
        let held = Dictionary(uniqueKeysWithValues: try await catalog.useCases(force: force).map { ($0.id, $0) })
        var changed = 0
        for document in signed {
            let useCase = document.useCase
            if let current = held[useCase.id], current == useCase { continue }
            let time = now()
            var detail = useCase.json.objectValue ?? [:]
            for key in ["force", "id"] { detail[key] = nil }
            detail["version"] = .integer(document.version)
            detail["signed_by"] = .string(remote.custodyKey.fingerprint)
            let record = detail
            try await recording(force) {
                try await catalog.putUseCase(useCase) { _ in
                    [AuditEntry(force: force, time: time, principal: "custody:\(force)", action: "use-case.sync",
                                target: "\(force)/use-cases/\(useCase.id)", useCase: useCase.id.rawValue,
                                outcome: .allowed, detail: record, requestID: "use-case-sync")]
                }
            }
            changed += 1
        }
        let authored = Set(signed.map(\.useCase.id))
        for (id, useCase) in held where !authored.contains(id) && useCase.revokedAt == nil {
            let time = now()
            _ = try await recording(force) {
                try await catalog.revokeUseCase(force: force, id: id, at: time, audit: [AuditEntry(
                    force: force, time: time, principal: "custody:\(force)", action: "use-case.sync",
                    target: "\(force)/use-cases/\(id)", useCase: id.rawValue, outcome: .allowed,
                    detail: ["revoked": .bool(true), "reason": .string("not authored at the force's custody service")],
                    requestID: "use-case-sync")])
            }
            changed += 1
        }
        if changed > 0 {
            logger.notice("use cases taken from the force's custody service", metadata: [
                "force": "\(force)", "changed": "\(changed)",
            ])
        }
        return changed
    }

    /// The use case `id` of `force` once `rule` accepts it. For a remote force whose copy the rule refuses as
    /// missing, not naming the reader, not covering the dataset or outside its window, the signed use cases are
    /// fetched again first (a custodian may have just authored the change at the force).
    func useCase(force: ForceID, id: ResourceID, passing rule: (UseCase?) throws -> Void) async throws -> UseCase? {
        let found = try await catalog.useCase(force: force, id: id)
        do {
            try rule(found)
            return found
        } catch let error as VaultError where remotes[force] != nil
            && [.noSuchUseCase, .notNamed, .datasetNotCovered, .outsideValidityWindow].contains(error.code)
        {
            guard let changed = try? await syncUseCases(force: force), changed > 0 else { throw error }
            let again = try await catalog.useCase(force: force, id: id)
            try rule(again)
            return again
        }
    }

    // MARK: Witnessing

    /// Submits the newest checkpoint of every remote force's chain, with the records since the one its witness
    /// cosigned last, and stores the cosignature. With nothing new, the last checkpoint is submitted again: the witness
    /// then re-checks that every unwrap it granted is recorded, so a read hidden from the log is noticed even when
    /// the log stands still. A witness that holds another size gets the submission again from
    /// its size; one that refuses the chain is logged and counted (the force sees the alarm in its own log).
    public func witnessAll() async {
        for force in remotes.keys.sorted() {
            do {
                try await witness(force: force)
            } catch {
                logger.warning("the force's witness could not cosign", metadata: ["force": "\(force)",
                                                                                   "error": "\(error)"])
            }
        }
    }

    /// One force's witness round; returns the last cosigned seq afterwards.
    @discardableResult
    public func witness(force: ForceID) async throws -> Int64 {
        guard let remote = remotes[force] else { return 0 }
        var size = try await catalog.lastCosigned(force: force)?.seq ?? 0
        for round in 0..<64 {
            guard let head = try await recording(force, {
                try await catalog.checkpointAudit(force: force, now: now(), signer: signer)
            }) else { return size }
            guard head.seq > size || round == 0 else { return size }
            let target = min(head.seq, size + Int64(CustodyWire.maximumBatch))
            let checkpoint = target == head.seq
                ? head : try await catalog.checkpointAudit(force: force, at: target, now: now(), signer: signer)
            let lines = try await catalog.auditLines(force: force, after: size, through: target,
                                                     limit: CustodyWire.maximumBatch + 1).map(\.line)
            switch try await remote.witness(WitnessSubmission(oldSize: size, checkpoint: checkpoint, records: lines)) {
            case .cosigned(let cosignature):
                try await catalog.addCosignature(cosignature)
                Gauge(label: "vault_witnessed_seq", dimensions: [("force", force.rawValue)]).record(cosignature.seq)
                if cosignature.seq == size { return size }
                size = cosignature.seq
            case .sizeMismatch(let witnessSize):
                guard witnessSize != size, witnessSize <= head.seq else {
                    throw VaultError(.conflict, "the witness of force \(force) holds \(witnessSize) records, more than "
                                     + "this chain's \(head.seq)")
                }
                size = witnessSize
            case .refused(let code, let message):
                Counter(label: "vault_witness_refusals_total", dimensions: [("force", force.rawValue),
                                                                            ("reason", code)]).increment()
                logger.error("the force's witness refused the audit chain", metadata: [
                    "force": "\(force)", "reason": "\(code)", "message": "\(message)",
                ])
                throw VaultError(.witnessRefused, message)
            }
        }
        return size
    }
}
