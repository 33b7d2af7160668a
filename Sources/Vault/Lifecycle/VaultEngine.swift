import KeyCustody
import NIOCore
import Logging
import Synchronization

/// The vault's main job (DESIGN sections 3 and 7) independent of transport: uploads that become current in one
/// transaction and archive their predecessor, reads only under a valid use case and always audited first, use-case
/// management. vaultd's HTTP layer is a thin adapter over this.
public final class VaultEngine: Sendable {
    public let catalog: any Catalog
    public let blobs: any BlobStore
    /// The vault's audit key, which signs checkpoints of every force's chain.
    public let signer: AuditSigner
    private let custodians: [ForceID: any KeyCustodian]
    /// The forces whose own custody service holds their keys (backend `remote`).
    let remotes: [ForceID: RemoteCustody]
    /// When each remote force's key jobs last asked its custody service for the key states (they ask only when the
    /// catalog shows work, and at least once a minute).
    let keyJobsChecked = Mutex<[ForceID: UnixTime]>([:])
    let logger: Logger
    /// The clock, replaceable so validity windows can be tested without waiting.
    let now: @Sendable () -> UnixTime
    /// Set while audit records cannot be written (and every action that needs one is refused).
    private let auditFailing = Mutex(false)
    /// Forces whose `custody.open` record could not be written at start; written as soon as the trail recovers.
    private let custodyOpenPending = Mutex<Set<ForceID>>([])
    /// Forces whose key jobs (rewrap, archive keys, retirement) are running, so two never overlap.
    let keyJobsRunning = Mutex<Set<ForceID>>([])
    /// Set while a shredding pass runs.
    /// The forces a shred sweep of this instance is running for.
    let shredRunning = Mutex(Set<ForceID>())
    public let settings: LifecycleSettings

    public init(
        catalog: any Catalog, blobs: any BlobStore, custodians: [ForceID: any KeyCustodian], signer: AuditSigner,
        logger: Logger, settings: LifecycleSettings = LifecycleSettings(),
        now: @escaping @Sendable () -> UnixTime = currentUnixTime
    ) {
        self.settings = settings
        self.catalog = catalog
        self.blobs = blobs
        self.custodians = custodians.mapValues { MeasuredCustodian(base: $0) }
        remotes = custodians.compactMapValues { $0 as? RemoteCustody }
        self.signer = signer
        self.logger = logger
        self.now = now
    }

    /// Runs a catalog change that carries audit records. If the records cannot be written, the change did not
    /// happen: the failure is counted, the vault reports itself not ready, and the caller gets `audit_unavailable`.
    func recording<T: Sendable>(_ force: ForceID, _ change: () async throws -> T) async throws -> T {
        do {
            let result = try await change()
            auditFailing.withLock { $0 = false }
            return result
        } catch let error as VaultError where error.code == .auditUnavailable {
            let first = auditFailing.withLock { failing in
                defer { failing = true }
                return !failing
            }
            VaultMetrics.auditWriteFailed()
            if first {
                logger.error("audit records cannot be written; refusing every audited action until they can",
                             metadata: ["error": "\(error)"])
            }
            throw error
        }
    }

    /// Nil when the vault can serve; otherwise why not. While audit writes have been failing, this tries a write
    /// so the vault becomes ready again by itself once the cause is gone.
    public func readiness() async -> String? {
        guard auditFailing.withLock({ $0 }) else { return nil }
        do {
            try await catalog.probeWrite()
            auditFailing.withLock { $0 = false }
            logger.notice("audit records can be written again")
            return nil
        } catch {
            return "audit trail not writable"
        }
    }

    /// The engine's clock reading now.
    public var currentTime: UnixTime { now() }

    /// The forces this vault serves.
    public var forces: [ForceID] { custodians.keys.sorted() }

    /// The remote custody of `force`, when its own custody service holds its keys.
    public func remoteCustody(_ force: ForceID) -> RemoteCustody? { remotes[force] }

    /// Remote forces whose custody service cannot be reached right now, with why (named by `/readyz`).
    public var unavailableCustody: [ForceID: String] {
        remotes.compactMapValues { $0.unavailableReason }
    }

    func custody(_ force: ForceID) throws -> any KeyCustodian {
        guard let custody = custodians[force] else {
            throw VaultError(.notFound, "force \(force) is not served by this vault")
        }
        return custody
    }

    /// Audits a refusal, then rethrows it. If the refusal cannot be audited, the caller gets the audit failure.
    ///
    /// A refusal of a principal with a role in the force goes into the force's own chain. One of a principal with no
    /// role there (another force's people, ops of other forces), or for a force this vault does not serve, goes into
    /// the platform's chain (`ForceID.platform`, with the force named in its detail): nobody outside a force writes
    /// into its chain, and the answer is the same whether or not the force is served. A use case that is not a
    /// well-formed id is recorded as null, with `use_case_malformed`, never as the string sent.
    func refuse(
        _ error: VaultError, principal: Principal, force: ForceID, action: String, target: String,
        dataset: DatasetID? = nil, useCase: String?, requestID: String
    ) async throws -> Never {
        var detail: [String: JSONValue] = ["reason": .string(error.code.rawValue)]
        let chain: ForceID
        if custodians[force] != nil, principal.hasAny(of: Role.allCases, for: force) {
            chain = force
        } else {
            chain = .platform
            detail["force"] = .string(force.rawValue)
        }
        let recordedUseCase = useCase.flatMap { try? ResourceID($0, kind: "use case id") }?.rawValue
        if useCase != nil, recordedUseCase == nil { detail["use_case_malformed"] = .bool(true) }
        try await recording(chain) {
            try await catalog.appendAudit([AuditEntry(
                force: chain, time: now(), principal: principal.id, action: action, target: target,
                dataset: dataset, useCase: recordedUseCase, outcome: .denied, detail: detail, requestID: requestID)])
        }
        // Counted for served forces only (a label per unserved force named in a URL would grow without bound).
        if action == "read", custodians[force] != nil {
            VaultMetrics.refusedRead(force: force, reason: error.code.rawValue)
        }
        throw error
    }

    // MARK: Uploads

    /// Starts an upload to `force`/`dataset`. `sealed` uploads carry a `vault encrypt` file; others carry plaintext
    /// that is encrypted as it arrives. Feed the body with `append`, then `commit` (or `abort`).
    public func beginUpload(
        principal: Principal, force: ForceID, dataset: DatasetID, sealed: Bool, requestID: String
    ) async throws -> ExtractUpload {
        let target = "\(force)/\(dataset)"
        do {
            try Policy.require(.uploader, of: principal, for: force)
        } catch let error as VaultError {
            try await refuse(error, principal: principal, force: force, action: "upload", target: target,
                             dataset: dataset, useCase: nil, requestID: requestID)
        }
        let custody = try custody(force)
        // Fail closed before the body is read: the commit would not be recorded.
        if auditFailing.withLock({ $0 }), await readiness() != nil {
            throw VaultError(.auditUnavailable, "the audit trail cannot be written, so no upload is accepted; try "
                                + "again when the vault is ready")
        }
        if sealed {
            return ExtractUpload(engine: self, custody: custody, principal: principal, force: force, dataset: dataset,
                                 mode: .sealed(SealedIntake()), requestID: requestID)
        }
        let identity = ExtractIdentity(force: force, dataset: dataset, extract: .generate())
        let dataKey = try await custody.generateDataKey(for: identity.wrapContext, justification: Justification(
            principal: principal.id, purpose: .upload, requestID: requestID))
        let upload = ExtractUpload(engine: self, custody: custody, principal: principal, force: force, dataset: dataset,
                                   mode: .plaintext, requestID: requestID)
        try await upload.start(identity: identity, wrappedKey: dataKey.wrapped,
                         cipher: try CobblestoneEncryptor(key: dataKey.key, context: identity.payloadContext))
        return upload
    }

    func commit(_ record: ExtractRecord, blob: any BlobUpload, requestID: String) async throws -> ExtractRecord {
        var record = record
        let custody = try custody(record.identity.force)
        // A key wrapped before a rotation (a long upload, or a file sealed at source under an older version) moves
        // to the active master key first, so the rewrap job does not chase new rows under old versions.
        // The key it arrived under stays in its lineage: the sealed file's copy of the key still opens under it.
        let active = try await custody.activeMasterKey()
        let arrival = record.wrappedKey.kek
        if record.wrappedKey.kek.isMaster, record.wrappedKey.kek != active {
            record.wrappedKey = try await custody.rewrap(
                record.wrappedKey, context: record.identity.wrapContext, to: active,
                justification: Justification(principal: record.uploadedBy, purpose: .rewrap, requestID: requestID))
        }
        // The row first (an intent garbage collection can find), then the durable blob, then the switch to current.
        let arrivedUnder = arrival == record.wrappedKey.kek ? [] : [arrival]
        try await catalog.beginUpload(record, arrivedUnder: arrivedUnder)
        do {
            try await blob.commit()
        } catch {
            // The link may have happened before the failure: remove the blob with the row.
            await blob.abort()
            await discardUpload(record.identity)
            throw error
        }
        let time = now()
        let identity = record.identity
        let audit = [AuditEntry(
            force: identity.force, time: time, principal: record.uploadedBy, action: "upload",
            target: "\(identity.force)/\(identity.dataset)/\(identity.extract)", dataset: identity.dataset,
            outcome: .allowed,
            detail: ["source": .string(record.source.rawValue), "extract": .string(identity.extract.rawValue),
                     "plaintext_size": .integer(Int64(record.plaintextSize)),
                     "ciphertext_size": .integer(Int64(record.ciphertextSize)),
                     "ciphertext_sha256": .string(Hex.encode(record.ciphertextSHA256)),
                     "kek": .string(record.wrappedKey.kek.description),
                     "arrived_under": .string(arrival.description),
                     // A sealed file's key was unwrapped by custody to verify every chunk.
                     "key_unwrapped": .bool(record.source == .sealed)],
            requestID: requestID)]
        let uploadedBy = record.uploadedBy
        let sizes = (record.plaintextSize, record.ciphertextSize, record.ciphertextSHA256)
        var result: (current: ExtractRecord, archived: ExtractRecord?)?
        do {
            // The previous current extract gets its own archive key before the commit; if it changes under the
            // commit (another upload, the rewrap job), prepare again.
            for attempt in 1... {
                let archival = try await prepareArchival(force: identity.force, dataset: identity.dataset,
                                                         principal: uploadedBy, requestID: requestID)
                do {
                    result = try await recording(identity.force) {
                        try await catalog.commitUpload(
                            force: identity.force, extract: identity.extract, sizes: sizes, now: time,
                            archival: archival, audit: audit,
                            archiveAudit: { previous in
                                AuditEntry(force: identity.force, time: time, principal: uploadedBy, action: "archive",
                                           target: "\(identity.force)/\(identity.dataset)/\(previous.identity.extract)",
                                           dataset: identity.dataset, outcome: .allowed,
                                           detail: ["extract": .string(previous.identity.extract.rawValue),
                                                    "replaced_by": .string(identity.extract.rawValue),
                                                    "kek": .string(previous.wrappedKey.kek.description),
                                                    "expires_at": .string(Timestamp.format(
                                                        secondsSinceEpoch: Int(previous.expiresAt ?? time)))],
                                           requestID: requestID)
                            })
                    }
                    break
                } catch let error as VaultError where error.code == .staleArchival && attempt < 8 {
                    continue
                }
            }
        } catch {
            // The outcome may be unknown (PostgreSQL's connection lost during COMMIT): what the catalog holds now
            // decides. Committed after all: the upload succeeded. Not committed: the row and blob go now rather than
            // at the next collection. No answer: both stay for the collection, which asks again.
            if let committed = try? await catalog.extract(force: identity.force, id: identity.extract),
               committed.state != .uploading
            {
                logger.notice("the upload's commit failed but the catalog holds it committed", metadata: [
                    "force": "\(identity.force)", "extract": "\(identity.extract)", "request": "\(requestID)",
                    "error": "\(error)",
                ])
                return committed
            }
            await discardUpload(identity)
            throw error
        }
        guard let result else { throw VaultError(.conflict, "the upload could not be committed") }
        logger.info("extract committed", metadata: [
            "force": "\(identity.force)", "dataset": "\(identity.dataset)", "extract": "\(identity.extract)",
            "archived": "\(result.archived?.identity.extract.rawValue ?? "-")", "request": "\(requestID)",
        ])
        return result.current
    }

    /// Creates the archive key of the dataset's current extract and rewraps its key under it (DESIGN section 4);
    /// the commit then swaps the wrapped key, so the master-key-wrapped copy is gone with the same transaction.
    func prepareArchival(force: ForceID, dataset: DatasetID, principal: String, requestID: String) async throws
        -> ArchivalRewrap?
    {
        guard let previous = try await catalog.currentExtract(force: force, dataset: dataset) else { return nil }
        let custody = try custody(force)
        let archiveKey = try await custody.createArchiveKey(for: previous.identity.extract)
        let wrapped = try await custody.rewrap(
            previous.wrappedKey, context: previous.identity.wrapContext, to: archiveKey,
            justification: Justification(principal: principal, purpose: .rewrap, requestID: requestID))
        return ArchivalRewrap(extract: previous.identity.extract, from: previous.wrappedKey, to: wrapped)
    }

    /// Removes an upload that will not become current: its row while still `uploading`, then its blob, but only once
    /// the catalog has said that no row of it remains (a committed extract's blob is never deleted). When the
    /// catalog cannot answer, both stay for `collectStaleUploads`.
    func discardUpload(_ identity: ExtractIdentity) async {
        do {
            if try await catalog.abandonUpload(force: identity.force, extract: identity.extract) {
                try await blobs.delete(identity)
            }
        } catch {
            logger.warning("an abandoned upload is left for collection", metadata: [
                "force": "\(identity.force)", "extract": "\(identity.extract)", "error": "\(error)",
            ])
        }
    }

    /// Removes traces of uploads interrupted by a crash: rows left `uploading` before `cutoff`, and their blobs. A row
    /// goes first, and only while still `uploading`; its blob goes only when no row of it remains.
    public func collectStaleUploads(olderThan seconds: Int64 = 3600) async throws -> Int {
        let stale = try await catalog.staleUploads(before: now() - seconds)
        var collected = 0
        for record in stale
        where try await catalog.abandonUpload(force: record.identity.force, extract: record.identity.extract) {
            try await blobs.delete(record.identity)
            collected += 1
        }
        // Multipart uploads a killed process left in S3 (their parts are invisible but stored).
        if let s3 = blobs as? S3BlobStore {
            let aborted = try await s3.removeIncompleteUploads(before: currentUnixTime() - seconds)
            if aborted > 0 { logger.notice("aborted incomplete S3 uploads", metadata: ["count": "\(aborted)"]) }
        }
        return collected
    }

    // MARK: Reads

    /// Opens the current extract of `force`/`dataset` for `principal` under `useCaseID`. The allowed or refused
    /// read is audited before this returns, so before any byte is sent.
    public func openCurrent(
        principal: Principal, force: ForceID, dataset: DatasetID, useCaseID: String?, requestID: String,
        expected: ExtractID? = nil, signedRequest: SignedReadRequest? = nil
    ) async throws -> ExtractReader {
        let target = "\(force)/\(dataset)"
        let record: ExtractRecord
        let useCase: UseCase
        do {
            try Policy.require(.analyst, of: principal, for: force)
            // After the role: a force not served answers like a served one to those with no role in it.
            _ = try custody(force)
            guard let useCaseID, !useCaseID.isEmpty else {
                throw VaultError(.useCaseRequired, "a read must name the use case it is for (use_case=...)")
            }
            let id = try ResourceID(useCaseID, kind: "use case id")
            let found = try await self.useCase(force: force, id: id) { found in
                try Policy.checkRead(useCase: found, useCaseID: useCaseID, principal: principal, force: force,
                                     dataset: dataset, now: self.now())
            }
            useCase = found!
            guard let current = try await catalog.currentExtract(force: force, dataset: dataset) else {
                throw VaultError(.notFound, "dataset \(dataset) of force \(force) has no current extract")
            }
            if let expected, current.identity.extract != expected {
                throw VaultError(.archivedExtract, "extract \(expected) is no longer current")
            }
            record = current
        } catch let error as VaultError where VaultError.Code.denials.contains(error.code) {
            try await refuse(error, principal: principal, force: force, action: "read", target: target,
                             dataset: dataset, useCase: useCaseID, requestID: requestID)
        } catch let error as CustodyError where error.code == .invalidIdentifier {
            let refusal = VaultError(.noSuchUseCase, error.message, cause: error)
            try await refuse(refusal, principal: principal, force: force,
                             action: "read", target: target, dataset: dataset, useCase: nil, requestID: requestID)
        }
        return try await open(record, principal: principal, useCase: useCase, requestID: requestID,
                              signedRequest: signedRequest)
    }

    /// Opens one extract by id on the live path: only if it is the current extract. Archives are refused.
    public func openExtract(
        principal: Principal, force: ForceID, extract: ExtractID, useCaseID: String?, requestID: String,
        signedRequest: SignedReadRequest? = nil
    ) async throws -> ExtractReader {
        guard let record = try await catalog.extract(force: force, id: extract), record.state != .uploading else {
            try Policy.require(.analyst, of: principal, for: force)
            throw VaultError(.notFound, "force \(force) has no extract \(extract)")
        }
        if record.state == .shredded || record.state == .shredding {
            try Policy.require(.analyst, of: principal, for: force)
            throw shreddedError(record)
        }
        guard record.state == .current else {
            let target = "\(force)/\(record.identity.dataset)/\(extract)"
            let dataset = record.identity.dataset
            do { try Policy.require(.analyst, of: principal, for: force) } catch let error as VaultError {
                try await refuse(error, principal: principal, force: force, action: "read", target: target,
                                 dataset: dataset, useCase: useCaseID, requestID: requestID)
            }
            try await refuse(VaultError(.archivedExtract, "extract \(extract) is archived; archives are never "
                                            + "readable on the live path"),
                             principal: principal, force: force, action: "read", target: target, dataset: dataset,
                             useCase: useCaseID, requestID: requestID)
        }
        return try await openCurrent(principal: principal, force: force, dataset: record.identity.dataset,
                                     useCaseID: useCaseID, requestID: requestID, expected: extract,
                                     signedRequest: signedRequest)
    }

    private func open(_ record: ExtractRecord, principal: Principal, useCase: UseCase, requestID: String,
                      signedRequest: SignedReadRequest?) async throws -> ExtractReader
    {
        let identity = record.identity
        // Audit first, in the same transaction that confirms the extract is still current: if the record cannot be
        // written, or an upload archived the extract meanwhile, nothing is decrypted or sent.
        let recorded = try await recording(identity.force) {
            try await catalog.appendAuditIfCurrent(force: identity.force, extract: identity.extract, audit: [
                AuditEntry(
                    force: identity.force, time: now(), principal: principal.id, action: "read",
                    target: "\(identity.force)/\(identity.dataset)/\(identity.extract)", dataset: identity.dataset,
                    useCase: useCase.id.rawValue, outcome: .allowed,
                    detail: ["extract": .string(identity.extract.rawValue),
                             "plaintext_size": .integer(Int64(record.plaintextSize))],
                    requestID: requestID),
            ])
        }
        guard recorded else {
            try await refuse(VaultError(.archivedExtract, "extract \(identity.extract) was archived while it was "
                                            + "being opened; read the new current extract"),
                             principal: principal, force: identity.force, action: "read",
                             target: "\(identity.force)/\(identity.dataset)/\(identity.extract)",
                             dataset: identity.dataset, useCase: useCase.id.rawValue, requestID: requestID)
        }
        let justification = Justification(principal: principal.id, useCase: useCase.id.rawValue,
                                          purpose: .useCaseRead, requestID: requestID, signedRequest: signedRequest)
        let key = try await unwrapForRead(record, justification: justification, action: "read",
                                          target: "\(identity.force)/\(identity.dataset)/\(identity.extract)")
        // While it streams: the use case still allows it and the extract is still the current one.
        let target = "\(identity.force)/\(identity.dataset)/\(identity.extract)"
        return try await ExtractReader.open(record, key: key, blobs: blobs, settings: settings) { [self] in
            do {
                _ = try await self.useCase(force: identity.force, id: useCase.id) { found in
                    try Policy.checkRead(useCase: found, useCaseID: useCase.id.rawValue, principal: principal,
                                         force: identity.force, dataset: identity.dataset, now: self.now())
                }
                let now = try await catalog.extract(force: identity.force, id: identity.extract)
                guard now?.state == .current else {
                    throw VaultError(.archivedExtract, "extract \(identity.extract) was archived while it was being "
                                         + "read; the read ends here")
                }
            } catch let error as VaultError where VaultError.Code.denials.contains(error.code) {
                try await refuse(error, principal: principal, force: identity.force, action: "read", target: target,
                                 dataset: identity.dataset, useCase: useCase.id.rawValue, requestID: requestID)
            }
        }
    }

    /// Unwraps an extract's key for a read already recorded as allowed. When the force's own custody service refuses
    /// (its use case, the signed request, its approvals, a witness alarm), the refusal is recorded too and the read
    /// is refused with custody's reason.
    func unwrapForRead(_ record: ExtractRecord, justification: Justification, action: String, target: String)
        async throws -> SecureBytes
    {
        let identity = record.identity
        do {
            return try await custody(identity.force).unwrap(record.wrappedKey, context: identity.wrapContext,
                                                            justification: justification)
        } catch let error as CustodyError where error.code == .custodyRefused {
            let reason = error.underlying.map { " (\($0))" } ?? ""
            try await refuse(VaultError(.custodyRefused, error.message + reason, cause: error), principal: Principal(
                id: justification.principal, grants: [:]), force: identity.force, action: action, target: target,
                dataset: identity.dataset, useCase: justification.useCase, requestID: justification.requestID)
        }
    }

    // MARK: Listings

    /// Extracts of a force (metadata only). Archives are listed to ops and custodians, never to analysts.
    public func listExtracts(
        principal: Principal, force: ForceID, dataset: DatasetID?, archived: Bool, requestID: String
    ) async throws -> [ExtractRecord] {
        let roles = archived ? Policy.Readers.archives : Policy.Readers.currentExtracts
        try await authoriseMetadataRead(roles, principal: principal, force: force,
                                        action: archived ? "list.archives" : "list.extracts",
                                        target: "\(force)/\(dataset?.rawValue ?? "*")", dataset: dataset,
                                        requestID: requestID)
        return try await catalog.extracts(force: force, dataset: dataset, states: archived ? [.archived] : [.current])
    }

    // MARK: Use cases

    /// Creates or replaces a use case (custodian of its force). Audited. Returns the use case as stored: a revoked
    /// use case stays revoked.
    @discardableResult
    public func putUseCase(principal: Principal, _ useCase: UseCase, requestID: String) async throws -> UseCase {
        let target = "\(useCase.force)/use-cases/\(useCase.id)"
        do { try Policy.require(.custodian, of: principal, for: useCase.force) } catch let error as VaultError {
            try await refuse(error, principal: principal, force: useCase.force, action: "use-case.put",
                             target: target, useCase: useCase.id.rawValue, requestID: requestID)
        }
        _ = try custody(useCase.force)
        if remotes[useCase.force] != nil {
            try await refuse(Self.managedByForce(useCase.force), principal: principal, force: useCase.force,
                             action: "use-case.put", target: target, useCase: useCase.id.rawValue, requestID: requestID)
        }
        try useCase.validate()
        var stored = useCase
        stored.updatedAt = now()
        var detail = useCase.json.objectValue ?? [:]
        for key in ["force", "id", "updated_at", "revoked"] { detail[key] = nil }
        let record = detail
        let time = stored.updatedAt
        try await recording(useCase.force) {
            try await catalog.putUseCase(stored) { existed in
                [AuditEntry(force: useCase.force, time: time, principal: principal.id,
                            action: existed ? "use-case.update" : "use-case.create", target: target,
                            useCase: useCase.id.rawValue, outcome: .allowed, detail: record, requestID: requestID)]
            }
        }
        return try await catalog.useCase(force: useCase.force, id: useCase.id) ?? stored
    }

    /// Revokes a use case (custodian). Reads under it are refused from then on. Audited.
    public func revokeUseCase(principal: Principal, force: ForceID, id: ResourceID, requestID: String) async throws
        -> UseCase
    {
        let target = "\(force)/use-cases/\(id)"
        do { try Policy.require(.custodian, of: principal, for: force) } catch let error as VaultError {
            try await refuse(error, principal: principal, force: force, action: "use-case.revoke", target: target,
                             useCase: id.rawValue, requestID: requestID)
        }
        if remotes[force] != nil {
            try await refuse(Self.managedByForce(force), principal: principal, force: force, action: "use-case.revoke",
                             target: target, useCase: id.rawValue, requestID: requestID)
        }
        let time = now()
        guard let revoked = try await recording(force, { try await catalog.revokeUseCase(
            force: force, id: id, at: time, audit: [AuditEntry(
                force: force, time: time, principal: principal.id, action: "use-case.revoke", target: target,
                useCase: id.rawValue, outcome: .allowed, requestID: requestID)]) })
        else { throw VaultError(.notFound, "force \(force) has no use case \(id)") }
        return revoked
    }

    static func managedByForce(_ force: ForceID) -> VaultError {
        VaultError(.managedByForceCustody, "force \(force)'s use cases are authored at its own custody service (vault "
                   + "use-case put --server <its custody service>); the platform receives them signed")
    }

    /// The use cases of a force (custodians, auditors and analysts of that force).
    public func listUseCases(principal: Principal, force: ForceID, requestID: String) async throws -> [UseCase] {
        try await authoriseMetadataRead(Policy.Readers.useCases, principal: principal, force: force,
                                        action: "use-case.list", target: "\(force)/use-cases", requestID: requestID)
        return try await catalog.useCases(force: force)
    }

    /// Requires one of `roles` for `force`; a refusal is audited.
    func check(_ roles: [Role], principal: Principal, force: ForceID, action: String, target: String,
               dataset: DatasetID? = nil, requestID: String) async throws
    {
        do { try Policy.require(anyOf: roles, of: principal, for: force) } catch let error as VaultError {
            try await refuse(error, principal: principal, force: force, action: action, target: target,
                             dataset: dataset, useCase: nil, requestID: requestID)
        }
    }

    /// A metadata read (listings, key status, use cases, retrievals, certificates): requires one of `roles` (a refusal
    /// is audited) and records the allowed read in the force's chain before anything is returned: every access is in
    /// the trail, not only decryptions.
    func authoriseMetadataRead(_ roles: [Role], principal: Principal, force: ForceID, action: String, target: String,
                               dataset: DatasetID? = nil, requestID: String) async throws
    {
        try await check(roles, principal: principal, force: force, action: action, target: target, dataset: dataset,
                        requestID: requestID)
        try await record(AuditEntry(force: force, time: now(), principal: principal.id, action: action, target: target,
                                    dataset: dataset, outcome: .allowed, requestID: requestID))
    }

    /// Appends an allowed record of `action` to `force`'s chain (fail closed: throws `audit_unavailable` when it
    /// cannot be written).
    func record(_ entry: AuditEntry) async throws {
        try await recording(entry.force) { try await catalog.appendAudit([entry]) }
    }

    // MARK: Background duties

    /// Records, in each force's chain, that vaultd opened the force's custody (at start), with the state of every
    /// key, so a key operation done offline between two starts shows in the trail. Ids and states only.
    /// Throws the first failure after trying every force; forces not recorded are retried by
    /// `recordPendingCustodyOpened`.
    public func recordCustodyOpened() async throws {
        custodyOpenPending.withLock { $0 = Set(forces) }
        try await recordPendingCustodyOpened()
    }

    /// Writes the `custody.open` records that could not be written yet.
    public func recordPendingCustodyOpened() async throws {
        var failure: (any Error)?
        for force in custodyOpenPending.withLock({ $0 }).sorted() {
            do {
                try await recordCustodyOpened(force)
                _ = custodyOpenPending.withLock { $0.remove(force) }
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
    }

    private func recordCustodyOpened(_ force: ForceID) async throws {
        let custody = try custody(force)
        let active = try await custody.activeMasterKey()
        let keys = try await custody.status().map { key -> JSONValue in
            .object(["id": .string(key.id.description), "state": .string(key.state.rawValue)])
        }
        try await record(AuditEntry(
            force: force, time: now(), principal: "vaultd", action: "custody.open", target: "\(force)/keys",
            outcome: .allowed,
            detail: ["active_kek": .string(active.description), "keys": .array(keys),
                     "audit_key": .string(signer.publicKey.fingerprint)],
            requestID: "startup"))
    }

    /// Signs a checkpoint of every force's chain head that is not yet covered by one. A checkpoint that cannot be
    /// written marks the audit trail failing, like any other audit write.
    public func checkpointAll() async {
        for force in forces + [.platform] {
            do {
                _ = try await recording(force) {
                    try await catalog.checkpointAudit(force: force, now: now(), signer: signer)
                }
            } catch {
                logger.warning("cannot checkpoint the audit chain", metadata: ["force": "\(force)", "error": "\(error)"])
            }
        }
    }

    /// Updates the gauge of archives whose retention has ended.
    public func measureExpiredArchives() async {
        guard let counts = try? await catalog.archivesPastExpiry(now: now()) else { return }
        for force in forces { VaultMetrics.archivesPastExpiry(counts[force] ?? 0, force: force) }
    }
}

/// A decrypting reader of one extract, opened after the policy check and the audit record. One reader serves one
/// response; it is handed to the task that streams it, never used concurrently.
public final class ExtractReader: @unchecked Sendable {
    public let record: ExtractRecord
    private let reader: AsyncCobblestoneReader
    /// Throws when the read is no longer allowed (its use case revoked or out of its window, the extract archived or
    /// the grant expired); called while the read streams, every `recheckBytes` or `recheckInterval`.
    private let recheck: @Sendable () async throws -> Void
    private let recheckBytes: Int
    private let recheckInterval: Duration

    private init(record: ExtractRecord, reader: AsyncCobblestoneReader, recheck: @escaping @Sendable () async throws -> Void,
                 settings: LifecycleSettings)
    {
        self.record = record
        self.reader = reader
        self.recheck = recheck
        recheckBytes = settings.streamRecheckBytes
        recheckInterval = settings.streamRecheckInterval
    }

    /// Opens the extract's blob under its unwrapped key: the blob must have the catalog's size and the key must
    /// match the ciphertext's commitment.
    static func open(_ record: ExtractRecord, key: SecureBytes, blobs: any BlobStore, settings: LifecycleSettings,
                     recheck: @escaping @Sendable () async throws -> Void) async throws -> ExtractReader
    {
        let identity = record.identity
        // Once more after the read's record is written, before the first byte: a revocation (or archival, or
        // expiry) that landed between the first check and the record ends the read here, not 64 MiB later.
        try await recheck()
        let source = try await blobs.open(identity)
        guard source.size == record.ciphertextSize else {
            throw VaultError(.integrityFailure, "the stored blob of \(identity) has the wrong size")
        }
        return ExtractReader(record: record, reader: try await AsyncCobblestoneReader.open(
            key: key, context: identity.payloadContext, source: source), recheck: recheck, settings: settings)
    }

    public var plaintextSize: UInt64 { reader.plaintextSize }

    /// Decrypts `range` in buffers of up to a mebibyte; each chunk is authenticated before its bytes reach `sink`.
    /// Every `recheckBytes` or `recheckInterval`, the read's authorisation is checked again before the next buffer;
    /// a read no longer allowed ends with the refusal's error.
    public func read(_ range: Range<UInt64>, sink: (ByteBuffer) async throws -> Void) async throws {
        let clock = ContinuousClock()
        var sent = 0
        var checked = clock.now
        try await reader.read(range) { buffer in
            if sent >= recheckBytes || clock.now - checked >= recheckInterval {
                try await recheck()
                sent = 0
                checked = clock.now
            }
            try await sink(buffer)
            sent += buffer.readableBytes
            VaultMetrics.decrypted(buffer.readableBytes, force: record.identity.force)
        }
    }
}
