import GRDB
import KeyCustody
import Logging
import Metrics
import Synchronization

/// Who calls the force's custody service.
public enum CustodyCaller: Sendable, CustomStringConvertible {
    /// A platform vaultd instance: a client certificate from the platform CA; its subject CN.
    case platform(String)
    /// One of the force's own people (a custodian or auditor, by bearer token).
    case person(Principal)

    public var id: String {
        switch self {
        case .platform(let name): "platform:\(name)"
        case .person(let principal): principal.id
        }
    }

    public var description: String { id }
}

/// The force's custody service (DESIGN 6.3): fronts the force's keyring or token for the platform, keeps the force's
/// own copy of its use cases (signed), its analysts' signing keys, the custodians' archive approvals, the witness
/// state of the platform's audit log, and its own hash-chained log of every request it answered or refused. All of it
/// in one SQLite file in its data directory; every state change commits in one transaction with its log record.
public final class CustodyService: Sendable {
    public let configuration: CustodyServiceConfiguration
    public var force: ForceID { configuration.force }
    let custody: any KeyCustodian
    public let catalog: SQLiteCatalog
    /// The custody key: signs the service's own log checkpoints, the use cases and the witness cosignatures.
    public let signer: AuditSigner
    let logger: Logger
    let now: @Sendable () -> UnixTime
    /// Mirrors "an alarm is raised and not cleared" (the alarms table is the truth; this spares a read per unwrap).
    private let alarmRaised = Mutex(false)

    /// How long one custodian's archive approval counts.
    static let approvalSeconds: Int64 = 86_400
    /// How far a signed request's `issued` may be ahead of this clock.
    static let allowedSkew: Int64 = 60
    /// After its first verification, a sealed upload may be verified again (a retried upload) for this long.
    static let sealedRetrySeconds: Int64 = 3600

    public init(configuration: CustodyServiceConfiguration, custody: any KeyCustodian, catalog: SQLiteCatalog,
                signer: AuditSigner, logger: Logger, now: @escaping @Sendable () -> UnixTime = currentUnixTime)
        async throws
    {
        self.configuration = configuration
        // The keyring's lock and fsync, a token's calls: on the blocking-work threads, timed like vaultd's.
        self.custody = MeasuredCustodian(base: custody)
        self.catalog = catalog
        self.signer = signer
        self.logger = logger
        self.now = now
        let force = configuration.force
        let raised = try await catalog.read { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM custody_alarms WHERE force = ? AND cleared_at IS NULL LIMIT 1",
                              arguments: [force.rawValue]) ?? false
        }
        alarmRaised.withLock { $0 = raised }
        Gauge(label: "custody_witness_alarm", dimensions: [("force", force.rawValue)]).record(raised ? 1 : 0)
    }

    /// Opens the service's data directory (creating it), its custody key and the force's keyring or token.
    public static func open(configuration: CustodyServiceConfiguration, logger: Logger) async throws -> CustodyService {
        let keys = try CustodyConfiguration.load(path: configuration.custodyFile)
        guard keys.force(configuration.force) != nil else {
            throw CustodyError(.invalidConfiguration, "the custody file \(configuration.custodyFile) has no table for "
                                + "force \(configuration.force)")
        }
        // The service is the keyring's (or token's) only writer while it serves it.
        let custody = try keys.open(configuration.force, mode: .readWrite, logger: logger)
        for force in keys.forces {
            for name in force.backend.secretVariables { SecretSource.scrubEnvironment(name) }
        }
        try FileBlobStore.makeDirectory(configuration.dataDirectory)
        let catalog = try SQLiteCatalog(path: configuration.catalogPath, extraMigrations: [Self.migration],
                                        syncEveryCommit: configuration.syncEveryRequest)
        let signer = try AuditSigner.loadOrCreate(in: configuration.dataDirectory)
        // A custodian or auditor removed from the configuration loses its tokens now: adding it back later does not
        // revive them.
        let revoked = try await TokenAdministration(catalog: catalog, principals: configuration.principals)
            .revokeRemovedPrincipals()
        if !revoked.isEmpty {
            logger.notice("revoked the tokens of principals no longer configured", metadata: [
                "tokens": "\(revoked.map(\.id).joined(separator: ","))"])
        }
        return try await CustodyService(configuration: configuration, custody: custody, catalog: catalog,
                                        signer: signer, logger: logger)
    }

    public static let migration: (name: String, migrate: @Sendable (Database) throws -> Void) = (
        "custody v1: signed use cases, principal keys, nonces, approvals, grants, witness, alarms", { db in
            try db.execute(sql: """
                CREATE TABLE custody_use_cases (
                    force TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, document TEXT NOT NULL,
                    signature TEXT NOT NULL, PRIMARY KEY (force, id, version));
                CREATE TABLE custody_principal_keys (
                    force TEXT NOT NULL, principal TEXT NOT NULL, public_key TEXT NOT NULL,
                    registered_by TEXT NOT NULL, registered_at INTEGER NOT NULL, PRIMARY KEY (force, principal));
                CREATE TABLE custody_nonces (nonce TEXT PRIMARY KEY, expires INTEGER NOT NULL);
                CREATE INDEX custody_nonces_by_expiry ON custody_nonces (expires);
                CREATE TABLE custody_approvals (
                    force TEXT NOT NULL, extract TEXT NOT NULL, analyst TEXT NOT NULL, use_case TEXT NOT NULL,
                    custodian TEXT NOT NULL, approved_at INTEGER NOT NULL,
                    PRIMARY KEY (force, extract, analyst, use_case, custodian));
                CREATE TABLE custody_grants (
                    force TEXT NOT NULL, request_id TEXT NOT NULL, principal TEXT NOT NULL, purpose TEXT NOT NULL,
                    extract TEXT NOT NULL, granted_at INTEGER NOT NULL, matched INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (force, request_id, extract));
                CREATE INDEX custody_grants_unmatched ON custody_grants (force, matched, granted_at);
                CREATE TABLE custody_witnessed (
                    force TEXT NOT NULL, request_id TEXT NOT NULL, principal TEXT NOT NULL, seq INTEGER NOT NULL,
                    PRIMARY KEY (force, request_id, principal));
                CREATE TABLE custody_witness (
                    force TEXT PRIMARY KEY, size INTEGER NOT NULL, hash TEXT NOT NULL, checkpoint_time INTEGER NOT NULL,
                    cosigned_at INTEGER NOT NULL, signature TEXT NOT NULL);
                CREATE TABLE custody_alarms (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, force TEXT NOT NULL, raised_at INTEGER NOT NULL,
                    reason TEXT NOT NULL, message TEXT NOT NULL, cleared_at INTEGER, cleared_by TEXT,
                    clear_reason TEXT);
                CREATE TABLE custody_extracts (
                    force TEXT NOT NULL, extract TEXT NOT NULL, origin TEXT NOT NULL, first_at INTEGER NOT NULL,
                    shredded_at INTEGER, PRIMARY KEY (force, extract));
                """)
        })

    // MARK: Log records and refusals

    func entry(_ caller: CustodyCaller, _ action: String, target: String, dataset: DatasetID? = nil,
               useCase: String? = nil, outcome: AuditOutcome = .allowed, detail: [String: JSONValue] = [:],
               requestID: String, time: UnixTime? = nil) -> AuditEntry
    {
        AuditEntry(force: force, time: time ?? now(), principal: caller.id, action: action, target: target,
                   dataset: dataset, useCase: useCase, outcome: outcome, detail: detail, requestID: requestID)
    }

    /// Records a refusal in the force's log, then throws it (or the log failure, when the record cannot be written).
    func refuse(_ error: VaultError, _ caller: CustodyCaller, _ action: String, target: String,
                dataset: DatasetID? = nil, useCase: String? = nil, detail: [String: JSONValue] = [:],
                requestID: String) async throws -> Never
    {
        var detail = detail
        detail["reason"] = .string(error.code.rawValue)
        let record = entry(caller, action, target: target, dataset: dataset, useCase: useCase, outcome: .denied,
                           detail: detail, requestID: requestID)
        try await catalog.appendAudit([record])
        Counter(label: "custody_refusals_total", dimensions: [("force", force.rawValue), ("action", action),
                                                             ("reason", error.code.rawValue)]).increment()
        logger.notice("custody refused", metadata: ["action": "\(action)", "caller": "\(caller)",
                                                    "reason": "\(error.code)", "request": "\(requestID)"])
        throw error
    }

    /// Only the platform's vaultd instances use keys.
    func requirePlatform(_ caller: CustodyCaller, _ action: String, requestID: String) async throws {
        guard case .platform = caller else {
            try await refuse(VaultError(.roleRequired, "only the platform's vaultd instances (client certificates of "
                                        + "the platform CA) may \(action)"), caller, action,
                             target: "\(force)/keys", requestID: requestID)
        }
    }

    /// People of the force holding one of `roles`.
    @discardableResult
    func requirePerson(_ caller: CustodyCaller, _ roles: [Role], _ action: String, target: String,
                       requestID: String) async throws -> Principal
    {
        guard case .person(let principal) = caller else {
            try await refuse(VaultError(.roleRequired, "\(action) is for the force's \(roles.map(\.rawValue).joined(separator: " or ")) "
                                        + "at its custody service, not for the platform"),
                             caller, action, target: target, requestID: requestID)
        }
        do { try Policy.require(anyOf: roles, of: principal, for: force) } catch let error as VaultError {
            try await refuse(error, caller, action, target: target, requestID: requestID)
        }
        return principal
    }

    func checkForce(_ requested: ForceID) throws {
        guard requested == force else { throw VaultError(.notFound, "this custody service holds force \(force) only") }
    }

    // MARK: Keys for the platform

    /// The force's keys: ids, kinds, states, dates (never key bytes).
    public func status(_ caller: CustodyCaller, requestID: String) async throws -> [KeyInfo] {
        try await requirePlatform(caller, "custody.status", requestID: requestID)
        let keys = try await custody.status()
        try await catalog.appendAudit([entry(caller, "custody.status", target: "\(force)/keys", requestID: requestID)])
        return keys
    }

    /// A new extract key for an upload (purpose `upload`), wrapped under the active master key.
    public func generate(_ caller: CustodyCaller, context: WrapContext, justification: Justification) async throws
        -> DataKey
    {
        let action = "custody.generate"
        let target = "\(force)/\(context.dataset)/\(context.extract)"
        try await requirePlatform(caller, action, requestID: justification.requestID)
        guard justification.purpose == .upload else {
            try await refuse(VaultError(.purposeNotServed, "a new extract key needs purpose upload"), caller, action,
                             target: target, dataset: context.dataset, requestID: justification.requestID)
        }
        try checkForce(context.force)
        let key = try await custody.generateDataKey(for: context)
        let time = now()
        let force = force.rawValue, extract = context.extract.rawValue
        try await catalog.write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO custody_extracts (force, extract, origin, first_at) VALUES (?, ?, 'generated', ?)
                """, arguments: [force, extract, time])
            try SQLiteCatalog.insertAudit(db, [self.entry(caller, action, target: target, dataset: context.dataset,
                                                          detail: self.justificationDetail(justification)
                                                              .merging(["kek": .string(key.wrapped.kek.description)]) { $1 },
                                                          requestID: justification.requestID, time: time)])
        }
        return key
    }

    func justificationDetail(_ justification: Justification) -> [String: JSONValue] {
        var detail: [String: JSONValue] = ["purpose": .string(justification.purpose.rawValue),
                                           "for": .string(justification.principal)]
        if let useCase = justification.useCase { detail["use_case"] = .string(useCase) }
        if let signed = justification.signedRequest { detail["signed_request"] = .string(signed.hash) }
        return detail
    }

    /// Unwraps an extract key for the platform, only when the force's own rules allow it now (see the README's
    /// remote custody protocol): a read or retrieval needs the principal's fresh, never-used signed request that
    /// the force's use case (and for archives, two custodians' approvals) covers; a sealed upload is verified only
    /// while fresh; nothing unwraps while a witness alarm stands.
    public func unwrap(_ caller: CustodyCaller, wrapped: WrappedKey, context: WrapContext,
                       justification: Justification) async throws -> SecureBytes
    {
        let action = "custody.unwrap"
        let target = "\(force)/\(context.dataset)/\(context.extract)"
        let requestID = justification.requestID
        try await requirePlatform(caller, action, requestID: requestID)
        try checkForce(context.force)
        var detail = justificationDetail(justification)
        detail["kek"] = .string(wrapped.kek.description)
        func refuse(_ error: VaultError) async throws -> Never {
            try await self.refuse(error, caller, action, target: target, dataset: context.dataset,
                                  useCase: justification.useCase, detail: detail, requestID: requestID)
        }
        do { try justification.check(unwrapUnder: wrapped.kek) } catch let error as CustodyError {
            try await refuse(VaultError(.purposeNotServed, error.message, cause: error))
        }
        if configuration.stopUnwrapsOnAlarm, alarmRaised.withLock({ $0 }) {
            try await refuse(VaultError(.witnessAlarm, "a witness alarm is raised at the force's custody service: no "
                                        + "key is unwrapped until a custodian clears it"))
        }
        let time = now()
        var origin: String?
        let signedRead = justification.purpose == .useCaseRead || justification.purpose == .archiveRetrieval
        switch justification.purpose {
        case .useCaseRead, .archiveRetrieval:
            // Checked below, in the transaction that records the unwrap.
            guard justification.signedRequest != nil else {
                try await refuse(VaultError(.signedRequestRequired, "the force's custody unwraps for a read only with "
                                            + "the principal's signed read request (vault read signs one with the key "
                                            + "from vault keys principal-init)"))
            }
        case .ingestVerification:
            do {
                if try await isShredded(context.extract) { throw shreddedError(context.extract) }
                try await checkSealedUpload(context, now: time)
            } catch let error as VaultError {
                try await refuse(error)
            }
            origin = "sealed"
        case .export, .rewrap, .upload:
            try await refuse(VaultError(.purposeNotServed, "purpose \(justification.purpose.rawValue) is not served "
                                        + "by unwrap here: an export opens at the force with its keyring"))
        }
        // The key first (it is released only after the transaction below recorded it): the rules, the nonce, the
        // grant the witness will look for and the log record are then one transaction, one trip to the catalog.
        let key: SecureBytes
        do {
            key = try await custody.unwrap(wrapped, context: context, justification: justification)
        } catch let error as CustodyError where !error.isTransient {
            // A shredded extract's archive key is gone: say so rather than that the key does not open.
            if try await isShredded(context.extract) { try await refuse(shreddedError(context.extract)) }
            try await refuse(VaultError(.integrityFailure, "the wrapped key does not open: \(error.message)",
                                        cause: error))
        }
        let force = force.rawValue
        let record = entry(caller, action, target: target, dataset: context.dataset, useCase: justification.useCase,
                           detail: detail, requestID: requestID, time: time)
        let firstOrigin = origin
        let outcome = try await catalog.write { db -> VaultError? in
            if signedRead {
                let signed: SignedReadRequest
                do { signed = try self.checkSignedRequest(db, justification, context: context, now: time) } catch let
                    error as VaultError
                {
                    return error
                }
                try db.cachedStatement(sql: "INSERT OR IGNORE INTO custody_nonces (nonce, expires) VALUES (?, ?)")
                    .execute(arguments: [Base64.encode(signed.request.nonce), signed.request.expires])
                guard db.changesCount == 1 else {
                    return VaultError(.signedRequestReplayed, "this signed request was used before; sign a new one")
                }
                try db.cachedStatement(sql: """
                    INSERT OR IGNORE INTO custody_grants (force, request_id, principal, purpose, extract, granted_at,
                        matched)
                    VALUES (?, ?, ?, ?, ?, ?, EXISTS (SELECT 1 FROM custody_witnessed w WHERE w.force = ?
                        AND w.request_id = ? AND w.principal = ?))
                    """).execute(arguments: [force, requestID, justification.principal, justification.purpose.rawValue,
                                             context.extract.rawValue, time, force, requestID, justification.principal])
            }
            if let origin = firstOrigin {
                try db.execute(sql: """
                    INSERT OR IGNORE INTO custody_extracts (force, extract, origin, first_at) VALUES (?, ?, ?, ?)
                    """, arguments: [force, context.extract.rawValue, origin, time])
            }
            try SQLiteCatalog.insertAudit(db, [record])
            return nil
        }
        if let outcome { try await refuse(outcome) }
        Counter(label: "custody_unwraps_total", dimensions: [("force", self.force.rawValue),
                                                            ("purpose", justification.purpose.rawValue)]).increment()
        return key
    }

    /// The DESIGN 5.6 checks of a read's signed request against this unwrap and the force's rules now, in `db` (the
    /// transaction that records the unwrap).
    func checkSignedRequest(_ db: Database, _ justification: Justification, context: WrapContext, now time: UnixTime)
        throws -> SignedReadRequest
    {
        guard let signed = justification.signedRequest else {
            throw VaultError(.signedRequestRequired, "the force's custody unwraps for a read only with the principal's "
                             + "signed read request (vault read signs one with the key from vault keys principal-init)")
        }
        let request = signed.request
        let force = force.rawValue
        let archive = justification.purpose == .archiveRetrieval
        if try Self.isShredded(db, force: force, extract: context.extract) { throw shreddedError(context.extract) }
        let registered = try String.fetchOne(db.cachedStatement(sql: """
            SELECT public_key FROM custody_principal_keys WHERE force = ? AND principal = ?
            """), arguments: [force, request.principal])
        guard let pem = registered, let key = try? Ed25519.PublicKey(pem: pem) else {
            throw VaultError(.signedRequestInvalid, "principal \(request.principal) has no signing key registered with "
                             + "the force's custody service")
        }
        guard signed.isSigned(by: key) else {
            throw VaultError(.signedRequestInvalid, "the read request's signature does not verify with the key "
                             + "registered for \(request.principal)")
        }
        let expectedExtract = justification.purpose == .archiveRetrieval
            ? [context.extract.rawValue] : [ReadRequest.currentExtract, context.extract.rawValue]
        guard request.force == self.force, request.dataset == context.dataset,
            request.purpose == justification.purpose, request.principal == justification.principal,
            request.useCase == justification.useCase, expectedExtract.contains(request.extract)
        else {
            throw VaultError(.signedRequestMismatch, "the signed request is for \(request.purpose.rawValue) of "
                             + "\(request.force)/\(request.dataset)/\(request.extract) by \(request.principal) under "
                             + "\(request.useCase), not for this unwrap")
        }
        guard request.expires > request.issued, request.expires - request.issued <= ReadRequest.maximumLifetime else {
            throw VaultError(.signedRequestExpired, "a signed request may live at most \(ReadRequest.maximumLifetime) s")
        }
        guard request.issued <= time + Self.allowedSkew else {
            throw VaultError(.signedRequestExpired, "the signed request is issued in the future (check the signer's "
                             + "clock)")
        }
        guard time < request.expires else { throw VaultError(.signedRequestExpired, "the signed request has expired") }
        // The force's own copy of the use case, as it stands now.
        let useCaseID: ResourceID
        do { useCaseID = try ResourceID(request.useCase, kind: "use case id") } catch {
            throw VaultError(.noSuchUseCase, "the signed request names no valid use case id")
        }
        let useCase = try SQLiteCatalog.useCase(db, force: self.force, id: useCaseID)
        try Policy.checkRead(useCase: useCase, useCaseID: request.useCase,
                             principal: Principal(id: request.principal, grants: [:]), force: self.force,
                             dataset: context.dataset, now: time)
        if archive {
            let approvers = try Int.fetchOne(db.cachedStatement(sql: """
                SELECT COUNT(DISTINCT custodian) FROM custody_approvals
                WHERE force = ? AND extract = ? AND analyst = ? AND use_case = ? AND approved_at > ?
                """), arguments: [force, context.extract.rawValue, request.principal, request.useCase,
                                  time - Self.approvalSeconds]) ?? 0
            guard approvers >= 2 else {
                throw VaultError(approvers == 0 ? .noGrant : .approvalPending,
                                 "the force's custody has \(approvers) of the 2 custodian approvals this retrieval "
                                 + "needs (vault custody approve, within 24 h)")
            }
        }
        return signed
    }

    /// A sealed upload is verified by the platform with its extract key: allowed only for a file sealed recently (its
    /// extract id's time), that this service did not make the key for, and again only shortly after the first time.
    func checkSealedUpload(_ context: WrapContext, now time: UnixTime) async throws {
        let sealedAt = Int64(context.extract.millisecondsSinceEpoch / 1000)
        let window = Int64(configuration.sealedUploadWindowHours) * 3600
        guard time - sealedAt <= window else {
            throw VaultError(.purposeNotServed, "the sealed file was made more than \(configuration.sealedUploadWindowHours) h "
                             + "ago: a sealed upload is verified only while fresh")
        }
        guard sealedAt <= time + Self.allowedSkew else {
            throw VaultError(.purposeNotServed, "the sealed file's extract id is dated \(sealedAt - time) s ahead of the "
                             + "custody service's clock (more than \(Self.allowedSkew) s): check the sealing machine's clock")
        }
        let force = force.rawValue
        let seen = try await catalog.read { db -> (origin: String, firstAt: Int64)? in
            try Row.fetchOne(db, sql: "SELECT origin, first_at FROM custody_extracts WHERE force = ? AND extract = ?",
                             arguments: [force, context.extract.rawValue]).map { ($0["origin"], $0["first_at"]) }
        }
        if let seen {
            guard seen.origin == "sealed", time - seen.firstAt <= Self.sealedRetrySeconds
            else {
                throw VaultError(.purposeNotServed, "extract \(context.extract) was verified or keyed here before: "
                                 + "it is not a fresh sealed upload")
            }
        }
    }

    /// Rewraps a batch (rotation, archival): no key leaves custody.
    public func rewrap(_ caller: CustodyCaller, items: [RewrapItem], to kek: KEKID, justification: Justification)
        async throws -> [Result<WrappedKey, CustodyError>]
    {
        let action = "custody.rewrap"
        try await requirePlatform(caller, action, requestID: justification.requestID)
        guard justification.purpose == .rewrap else {
            try await refuse(VaultError(.purposeNotServed, "a rewrap needs purpose rewrap"), caller, action,
                             target: "\(force)/keys", requestID: justification.requestID)
        }
        for item in items { try checkForce(item.context.force) }
        let results = try await custody.rewrap(items, to: kek, justification: justification)
        let failed = results.filter { if case .failure = $0 { true } else { false } }.count
        try await catalog.appendAudit([entry(caller, action, target: "\(force)/keys",
                                             outcome: failed == 0 ? .allowed : .error,
                                             detail: ["to": .string(kek.description), "count": .integer(Int64(items.count)),
                                                      "failed": .integer(Int64(failed))],
                                             requestID: justification.requestID)])
        return results
    }

    public func createArchiveKey(_ caller: CustodyCaller, extract: ExtractID, requestID: String) async throws -> KEKID {
        try await requirePlatform(caller, "custody.archive-key", requestID: requestID)
        let kek = try await custody.createArchiveKey(for: extract)
        try await catalog.appendAudit([entry(caller, "custody.archive-key", target: "\(force)/archives/\(extract)",
                                             detail: ["kek": .string(kek.description)], requestID: requestID)])
        return kek
    }

    public func rotate(_ caller: CustodyCaller, requestID: String) async throws -> KEKID {
        try await requirePlatform(caller, "custody.rotate", requestID: requestID)
        let next = try await custody.rotate()
        try await catalog.appendAudit([entry(caller, "custody.rotate", target: "\(force)/keys",
                                             detail: ["to": .string(next.description)], requestID: requestID)])
        return next
    }

    public func retire(_ caller: CustodyCaller, kek: KEKID, requestID: String) async throws {
        try await requirePlatform(caller, "custody.retire", requestID: requestID)
        try await custody.retire(kek)
        try await catalog.appendAudit([entry(caller, "custody.retire", target: "\(force)/keys",
                                             detail: ["kek": .string(kek.description)], requestID: requestID)])
    }

    /// Destroys keys (a shred batch, a retired master key). Already destroyed keys are skipped.
    public func destroy(_ caller: CustodyCaller, keks: [KEKID], requestID: String) async throws {
        try await requirePlatform(caller, "custody.destroy", requestID: requestID)
        for kek in keks where kek.force != force {
            throw VaultError(.invalidParameter, "\(kek) is not a key of force \(force)")
        }
        try await custody.destroy(keks)
        // An extract whose archive key is destroyed is shredded: no key of it is unwrapped here again, whatever
        // wrapping of its key the platform may still hold (an earlier one under a master key, say).
        let shredded = keks.compactMap { kek -> String? in
            if case .archive(_, let extract) = kek { return extract.rawValue }
            return nil
        }
        let record = entry(caller, "custody.destroy", target: "\(force)/keys",
                           detail: ["keks": .array(keks.map { .string($0.description) })], requestID: requestID)
        let force = force.rawValue, time = record.time
        try await catalog.write { db in
            for extract in shredded {
                try db.execute(sql: """
                    INSERT INTO custody_extracts (force, extract, origin, first_at, shredded_at)
                    VALUES (?, ?, 'archived', ?, ?)
                    ON CONFLICT (force, extract) DO UPDATE SET shredded_at = COALESCE(shredded_at, excluded.shredded_at)
                    """, arguments: [force, extract, time, time])
            }
            try SQLiteCatalog.insertAudit(db, [record])
        }
    }

    /// Whether `extract`'s archive key was destroyed here (it is shredded).
    func isShredded(_ extract: ExtractID) async throws -> Bool {
        let force = force.rawValue
        return try await catalog.read { db in try Self.isShredded(db, force: force, extract: extract) }
    }

    static func isShredded(_ db: Database, force: String, extract: ExtractID) throws -> Bool {
        try Bool.fetchOne(db.cachedStatement(sql: """
            SELECT shredded_at IS NOT NULL FROM custody_extracts WHERE force = ? AND extract = ?
            """), arguments: [force, extract.rawValue]) ?? false
    }

    func shreddedError(_ extract: ExtractID) -> VaultError {
        VaultError(.shredded, "extract \(extract) was shredded: its archive key was destroyed here, and no key of it is "
                   + "unwrapped again")
    }

    // MARK: Use cases, authored here

    /// Creates or replaces a use case (a custodian of the force, here) and signs the new version.
    public func putUseCase(_ caller: CustodyCaller, _ useCase: UseCase, requestID: String) async throws
        -> SignedUseCase
    {
        let target = "\(force)/use-cases/\(useCase.id)"
        try await requirePerson(caller, [.custodian], "use-case.put", target: target, requestID: requestID)
        try checkForce(useCase.force)
        try useCase.validate()
        var changed = useCase
        changed.updatedAt = now()
        let stored = changed
        var detail = useCase.json.objectValue ?? [:]
        for key in ["force", "id", "updated_at", "revoked"] { detail[key] = nil }
        let record = detail
        let time = stored.updatedAt
        let signed = try await catalog.write { db -> SignedUseCase in
            let existed = try SQLiteCatalog.upsertUseCase(db, stored)
            let signed = try self.signNewVersion(db, stored.id)
            var detail = record
            detail["version"] = .integer(signed.version)
            try SQLiteCatalog.insertAudit(db, [self.entry(
                caller, existed ? "use-case.update" : "use-case.create", target: target,
                useCase: useCase.id.rawValue, detail: detail, requestID: requestID, time: time)])
            return signed
        }
        return signed
    }

    /// Revokes a use case here: reads under it stop at the next unwrap, whatever the platform holds.
    public func revokeUseCase(_ caller: CustodyCaller, id: ResourceID, requestID: String) async throws -> SignedUseCase {
        let target = "\(force)/use-cases/\(id)"
        try await requirePerson(caller, [.custodian], "use-case.revoke", target: target, requestID: requestID)
        let time = now()
        let force = force
        let signed = try await catalog.write { db -> SignedUseCase? in
            guard try SQLiteCatalog.markRevoked(db, force: force, id: id, at: time) != nil else { return nil }
            let signed = try self.signNewVersion(db, id)
            try SQLiteCatalog.insertAudit(db, [self.entry(caller, "use-case.revoke", target: target,
                                                          useCase: id.rawValue,
                                                          detail: ["version": .integer(signed.version)],
                                                          requestID: requestID, time: time)])
            return signed
        }
        guard let signed else { throw VaultError(.notFound, "force \(force) has no use case \(id)") }
        return signed
    }

    /// Signs the use case's row as it stands now as its next version.
    func signNewVersion(_ db: Database, _ id: ResourceID) throws -> SignedUseCase {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM use_cases WHERE force = ? AND id = ?",
                                         arguments: [force.rawValue, id.rawValue])
        else { throw VaultError(.notFound, "force \(force) has no use case \(id)") }
        let useCase = try SQLiteCatalog.useCase(from: row)
        let version = (try Int64.fetchOne(db, sql: """
            SELECT MAX(version) FROM custody_use_cases WHERE force = ? AND id = ?
            """, arguments: [force.rawValue, id.rawValue]) ?? 0) + 1
        let signed = try SignedUseCase(useCase: useCase, version: version, signer: signer)
        try db.execute(sql: """
            INSERT INTO custody_use_cases (force, id, version, document, signature) VALUES (?, ?, ?, ?, ?)
            """, arguments: [force.rawValue, id.rawValue, version, signed.document.canonicalString,
                             Base64.encode(signed.signature)])
        return signed
    }

    /// The latest signed version of every use case (the platform, custodians and auditors of the force).
    public func useCases(_ caller: CustodyCaller, requestID: String) async throws -> [SignedUseCase] {
        if case .person = caller {
            try await requirePerson(caller, [.custodian, .auditor], "use-case.list", target: "\(force)/use-cases",
                                    requestID: requestID)
        }
        let force = force.rawValue
        let rows = try await catalog.read { db -> [(document: String, signature: String)] in
            try Row.fetchAll(db, sql: """
                SELECT document, signature FROM custody_use_cases c WHERE force = ? AND version = (
                    SELECT MAX(version) FROM custody_use_cases d WHERE d.force = c.force AND d.id = c.id)
                ORDER BY id
                """, arguments: [force]).map { ($0["document"], $0["signature"]) }
        }
        let signed = try rows.map { row in
            try SignedUseCase(json: .object(["document": try JSONParser.parse(row.document),
                                             "signature": .string(row.signature)]),
                              verifyingWith: signer.publicKey)
        }
        try await catalog.appendAudit([entry(caller, "use-case.list", target: "\(self.force)/use-cases",
                                             detail: ["count": .integer(Int64(signed.count))], requestID: requestID)])
        return signed
    }

    // MARK: Principals' signing keys and archive approvals

    /// Registers (or replaces) the Ed25519 public key a principal signs read requests with (a custodian).
    public func registerPrincipal(_ caller: CustodyCaller, principal: String, publicKey: Ed25519.PublicKey,
                                  requestID: String) async throws
    {
        let target = "\(force)/principals/\(principal)"
        let custodian = try await requirePerson(caller, [.custodian], "principal.register", target: target,
                                                requestID: requestID)
        guard Principal.isValidID(principal) else {
            throw VaultError(.invalidParameter, "a principal id is 1-128 characters of a-z, A-Z, 0-9, '.', '_', '-'")
        }
        let time = now(), force = force.rawValue, pem = publicKey.pem
        try await catalog.write { db in
            try db.execute(sql: """
                INSERT INTO custody_principal_keys (force, principal, public_key, registered_by, registered_at)
                VALUES (?, ?, ?, ?, ?) ON CONFLICT (force, principal) DO UPDATE SET public_key = excluded.public_key,
                    registered_by = excluded.registered_by, registered_at = excluded.registered_at
                """, arguments: [force, principal, pem, custodian.id, time])
            try SQLiteCatalog.insertAudit(db, [self.entry(caller, "principal.register", target: target,
                                                          detail: ["principal": .string(principal),
                                                                   "key": .string(publicKey.fingerprint)],
                                                          requestID: requestID, time: time)])
        }
    }

    /// The registered principals and their key fingerprints (custodians, auditors).
    public func principals(_ caller: CustodyCaller, requestID: String) async throws -> [PrincipalKeyDocument] {
        try await requirePerson(caller, [.custodian, .auditor], "principal.list", target: "\(force)/principals",
                                requestID: requestID)
        let force = force.rawValue
        return try await catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM custody_principal_keys WHERE force = ? ORDER BY principal",
                             arguments: [force]).map { row in
                PrincipalKeyDocument(principal: row["principal"],
                                     key: try Ed25519.PublicKey(pem: row["public_key"]).fingerprint,
                                     registeredBy: row["registered_by"], registeredAt: row["registered_at"])
            }
        }
    }

    /// One custodian's approval that `analyst` may retrieve archive `extract` under `useCase` (dual control: the
    /// custody unwraps for the retrieval once two different custodians approved within 24 h).
    public func approve(_ caller: CustodyCaller, extract: ExtractID, analyst: String, useCase: String,
                        requestID: String) async throws -> Int
    {
        let target = "\(force)/archives/\(extract)"
        let custodian = try await requirePerson(caller, [.custodian], "archive.approve", target: target,
                                                requestID: requestID)
        guard custodian.id != analyst else {
            try await refuse(VaultError(.selfApproval, "a custodian cannot approve a retrieval for themselves"),
                             caller, "archive.approve", target: target, requestID: requestID)
        }
        let time = now(), force = force.rawValue
        return try await catalog.write { db -> Int in
            try db.execute(sql: """
                INSERT INTO custody_approvals (force, extract, analyst, use_case, custodian, approved_at)
                VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET approved_at = excluded.approved_at
                """, arguments: [force, extract.rawValue, analyst, useCase, custodian.id, time])
            let count = try Int.fetchOne(db, sql: """
                SELECT COUNT(DISTINCT custodian) FROM custody_approvals
                WHERE force = ? AND extract = ? AND analyst = ? AND use_case = ? AND approved_at > ?
                """, arguments: [force, extract.rawValue, analyst, useCase, time - Self.approvalSeconds]) ?? 0
            try SQLiteCatalog.insertAudit(db, [self.entry(caller, "archive.approve", target: target, useCase: useCase,
                                                          detail: ["analyst": .string(analyst),
                                                                   "approvals": .integer(Int64(count))],
                                                          requestID: requestID, time: time)])
            return count
        }
    }

    // MARK: Alarms

    /// Raises an alarm in the force's log (and, unless configured off, stops unwraps).
    func raiseAlarm(reason: String, message: String, caller: CustodyCaller, requestID: String) async throws {
        let time = now(), force = force.rawValue
        try await catalog.write { db in
            try db.execute(sql: """
                INSERT INTO custody_alarms (force, raised_at, reason, message) VALUES (?, ?, ?, ?)
                """, arguments: [force, time, reason, message])
            try SQLiteCatalog.insertAudit(db, [self.entry(caller, "witness.alarm", target: "\(force)/witness",
                                                          outcome: .error,
                                                          detail: ["reason": .string(reason), "message": .string(message)],
                                                          requestID: requestID, time: time)])
        }
        alarmRaised.withLock { $0 = true }
        Gauge(label: "custody_witness_alarm", dimensions: [("force", force)]).record(1)
        Counter(label: "custody_witness_alarms_total", dimensions: [("force", force), ("reason", reason)]).increment()
        logger.critical("witness alarm: the platform's audit log does not account for the force's keys", metadata: [
            "reason": "\(reason)", "message": "\(message)",
            "unwraps": "\(configuration.stopUnwrapsOnAlarm ? "stopped until a custodian clears the alarm" : "go on")",
        ])
    }

    public func alarms(_ caller: CustodyCaller, requestID: String) async throws -> [WitnessAlarmDocument] {
        try await requirePerson(caller, [.custodian, .auditor], "alarm.list", target: "\(force)/alarms",
                                requestID: requestID)
        let force = force.rawValue
        return try await catalog.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM custody_alarms WHERE force = ? ORDER BY id", arguments: [force])
                .map { row in
                    WitnessAlarmDocument(id: row["id"], reason: row["reason"], message: row["message"],
                                         raisedAt: row["raised_at"], clearedAt: row["cleared_at"],
                                         clearedBy: row["cleared_by"])
                }
        }
    }

    /// A custodian clears every standing alarm, with a reason: unwraps resume, and unwraps the witness could not
    /// account for until now are acknowledged (a chain that still does not verify raises a new alarm at the next
    /// submission).
    public func clearAlarms(_ caller: CustodyCaller, reason: String, requestID: String) async throws -> Int {
        let custodian = try await requirePerson(caller, [.custodian], "alarm.clear", target: "\(force)/alarms",
                                                requestID: requestID)
        let trimmed = reason.trimmingSpaces
        guard !trimmed.isEmpty, trimmed.utf8.count <= 1000 else {
            throw VaultError(.invalidParameter, "clearing an alarm needs a reason (1 to 1000 bytes)")
        }
        let time = now(), force = force.rawValue
        let cleared = try await catalog.write { db -> Int in
            try db.execute(sql: """
                UPDATE custody_alarms SET cleared_at = ?, cleared_by = ?, clear_reason = ?
                WHERE force = ? AND cleared_at IS NULL
                """, arguments: [time, custodian.id, trimmed, force])
            let count = db.changesCount
            try db.execute(sql: "UPDATE custody_grants SET matched = 2 WHERE force = ? AND matched = 0 AND granted_at < ?",
                           arguments: [force, time])
            try SQLiteCatalog.insertAudit(db, [self.entry(caller, "alarm.clear", target: "\(force)/alarms",
                                                          detail: ["cleared": .integer(Int64(count)),
                                                                   "reason": .string(trimmed)],
                                                          requestID: requestID, time: time)])
            return count
        }
        alarmRaised.withLock { $0 = false }
        Gauge(label: "custody_witness_alarm", dimensions: [("force", force)]).record(0)
        logger.notice("witness alarms cleared", metadata: ["by": "\(custodian.id)", "count": "\(cleared)"])
        return cleared
    }

    public var alarmStanding: Bool { alarmRaised.withLock { $0 } }

    // MARK: Housekeeping

    /// Drops nonces of expired requests (they can no longer be replayed: expired requests are refused anyway).
    public func pruneNonces() async throws {
        let time = now()
        try await catalog.write(audited: false) { db in
            try db.execute(sql: "DELETE FROM custody_nonces WHERE expires < ?", arguments: [time - Self.allowedSkew])
        }
    }

    /// Signs a checkpoint of the service's own log.
    public func checkpoint() async throws {
        _ = try await catalog.checkpointAudit(force: force, now: now(), signer: signer)
    }

    /// The service's own log as a verifiable export (auditors and custodians of the force).
    public func exportAudit(_ caller: CustodyCaller, since: AuditSince, requestID: String) async throws -> AuditExport {
        try await requirePerson(caller, [.auditor, .custodian], "audit.export", target: "\(force)/audit",
                                requestID: requestID)
        try await catalog.appendAudit([entry(caller, "audit.export", target: "\(force)/audit", requestID: requestID)])
        return try await AuditExport.prepare(catalog: catalog, signer: signer, force: force, since: since, now: now())
    }

    /// Whether the service can answer: its log can be written and the force's keys can be listed.
    public func readiness() async -> String? {
        do { try await catalog.probeWrite() } catch { return "the custody log cannot be written" }
        do { _ = try await custody.status() } catch { return "the force's keys cannot be read" }
        return nil
    }
}
