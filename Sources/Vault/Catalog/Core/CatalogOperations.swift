import KeyCustody

/// The `Catalog` operations every driver gets from the plans of `CatalogPlans`: one definition for SQLite and
/// PostgreSQL alike.
extension CatalogDriver {
    // MARK: Extracts

    public func beginUpload(_ extract: ExtractRecord, arrivedUnder: [KEKID]) async throws {
        try await runWrite(audited: false) { CatalogPlans.beginUpload(extract, arrivedUnder: arrivedUnder) }
    }

    public func commitUpload(
        force: ForceID, extract: ExtractID, sizes: (plaintext: UInt64, ciphertext: UInt64, sha256: [UInt8]),
        now: UnixTime, archival: ArchivalRewrap?, audit: [AuditEntry],
        archiveAudit: @escaping @Sendable (ExtractRecord) -> AuditEntry
    ) async throws -> (current: ExtractRecord, archived: ExtractRecord?) {
        let (plaintext, ciphertext, sha256) = sizes
        return try await runWrite(audited: true) {
            CatalogPlans.commitUpload(force: force, extract: extract, sizes: (plaintext, ciphertext, sha256), now: now,
                                      archival: archival, audit: audit, archiveAudit: archiveAudit)
        }
    }

    public func appendAuditIfCurrent(force: ForceID, extract: ExtractID, audit: [AuditEntry]) async throws -> Bool {
        try await appendAudit(ifExtract: extract, of: force, isIn: .current, audit: audit)
    }

    public func appendAudit(ifExtract extract: ExtractID, of force: ForceID, isIn expected: ExtractState,
                            audit: [AuditEntry]) async throws -> Bool
    {
        try await runWrite(audited: true) {
            CatalogPlans.appendAudit(ifExtract: extract, of: force, isIn: expected, audit: audit)
        }
    }

    @discardableResult
    public func abandonUpload(force: ForceID, extract: ExtractID) async throws -> Bool {
        try await runWrite(audited: false) { CatalogPlans.abandonUpload(force: force, extract: extract) }
    }

    public func staleUploads(before cutoff: UnixTime) async throws -> [ExtractRecord] {
        try await runRead { CatalogPlans.staleUploads(before: cutoff) }
    }

    public func currentExtract(force: ForceID, dataset: DatasetID) async throws -> ExtractRecord? {
        try await runRead { CatalogPlans.currentExtract(force: force, dataset: dataset) }
    }

    public func extract(force: ForceID, id: ExtractID) async throws -> ExtractRecord? {
        try await runRead { CatalogPlans.extract(force: force, id: id) }
    }

    public func extracts(force: ForceID, dataset: DatasetID?, states: Set<ExtractState>) async throws
        -> [ExtractRecord]
    {
        try await runRead { CatalogPlans.extracts(force: force, dataset: dataset, states: states) }
    }

    public func archivesPastExpiry(now: UnixTime) async throws -> [ForceID: Int] {
        try await runRead { CatalogPlans.archivesPastExpiry(now: now) }
    }

    // MARK: Datasets

    public func dataset(force: ForceID, id: DatasetID) async throws -> DatasetRecord? {
        try await runRead { CatalogPlans.dataset(force: force, id: id) }
    }

    public func datasets(force: ForceID) async throws -> [DatasetRecord] {
        try await runRead { CatalogPlans.datasets(force: force) }
    }

    public func putDataset(_ dataset: DatasetRecord, now: UnixTime,
                           audit: @escaping @Sendable (DatasetRecord?, Int) -> [AuditEntry]) async throws
        -> DatasetRecord
    {
        try await runWrite(audited: true) { CatalogPlans.putDataset(dataset, now: now, audit: audit) }
    }

    // MARK: Use cases

    public func useCase(force: ForceID, id: ResourceID) async throws -> UseCase? {
        try await runRead { CatalogPlans.useCase(force: force, id: id) }
    }

    public func useCases(force: ForceID) async throws -> [UseCase] {
        try await runRead { CatalogPlans.useCases(force: force) }
    }

    public func putUseCase(_ useCase: UseCase, audit: @escaping @Sendable (_ existed: Bool) -> [AuditEntry])
        async throws
    {
        try await runWrite(audited: true) { CatalogPlans.putUseCase(useCase, audit: audit) }
    }

    public func revokeUseCase(force: ForceID, id: ResourceID, at time: UnixTime, audit: [AuditEntry]) async throws
        -> UseCase?
    {
        try await runWrite(audited: true) { CatalogPlans.revokeUseCase(force: force, id: id, at: time, audit: audit) }
    }

    // MARK: Audit chain

    public func appendAudit(_ entries: [AuditEntry]) async throws {
        try await runWrite(audited: true) { CatalogPlans.appendAudit(entries) }
    }

    public func auditHead(force: ForceID) async throws -> (seq: Int64, hash: String)? {
        try await runRead { CatalogPlans.auditHead(force: force) }
    }

    public func auditLines(force: ForceID, after: Int64, through: Int64, limit: Int) async throws -> [AuditLine] {
        try await runRead { CatalogPlans.auditLines(force: force, after: after, through: through, limit: limit) }
    }

    public func auditCheckpoints(force: ForceID, from: Int64, through: Int64) async throws -> [AuditCheckpoint] {
        try await runRead { CatalogPlans.auditCheckpoints(force: force, from: from, through: through) }
    }

    public func checkpointAudit(force: ForceID, now: UnixTime, signer: AuditSigner) async throws -> AuditCheckpoint? {
        try await runWrite(audited: true) { CatalogPlans.checkpointAudit(force: force, now: now, signer: signer) }
    }

    public func checkpointAudit(force: ForceID, at seq: Int64, now: UnixTime, signer: AuditSigner) async throws
        -> AuditCheckpoint
    {
        try await runWrite(audited: true) {
            CatalogPlans.checkpointAudit(force: force, at: seq, now: now, signer: signer)
        }
    }

    public func addCosignature(_ cosignature: Cosignature) async throws {
        try await runWrite(audited: true) { CatalogPlans.addCosignature(cosignature) }
    }

    public func cosignatures(force: ForceID, from: Int64, through: Int64) async throws -> [Cosignature] {
        try await runRead { CatalogPlans.cosignatures(force: force, from: from, through: through) }
    }

    public func lastCosigned(force: ForceID) async throws -> (seq: Int64, hash: String)? {
        try await runRead { CatalogPlans.lastCosigned(force: force) }
    }

    public func auditSeq(force: ForceID, notBefore time: UnixTime) async throws -> Int64? {
        try await runRead { CatalogPlans.auditSeq(force: force, notBefore: time) }
    }

    public func searchAudit(force: ForceID, query: AuditQuery) async throws -> [AuditLine] {
        let dialect = dialect
        return try await runRead { CatalogPlans.searchAudit(force: force, query: query, dialect: dialect) }
    }

    public func auditActivity(force: ForceID, since: UnixTime, actions: [String]) async throws -> AuditActivity {
        try await runSnapshot { CatalogPlans.auditActivity(force: force, since: since, actions: actions) }
    }

    public func probeWrite() async throws {
        let now = currentUnixTime()
        try await runWrite(audited: true) { CatalogPlans.probeWrite(now: now) }
    }

    // MARK: Tokens

    public func addToken(_ token: TokenRecord, hash: String, audit: [AuditEntry]) async throws {
        try await runWrite(audited: true) { CatalogPlans.addToken(token, hash: hash, audit: audit) }
    }

    public func tokenPrincipal(hash: String, now: UnixTime) async throws -> String? {
        try await runRead { CatalogPlans.tokenPrincipal(hash: hash, now: now) }
    }

    public func tokens(principals: Set<String>?) async throws -> [TokenRecord] {
        try await runRead { CatalogPlans.tokens(principals: principals) }
    }

    public func revokeToken(id: String, at time: UnixTime,
                            audit: @escaping @Sendable (TokenRecord) throws -> [AuditEntry]) async throws -> TokenRecord?
    {
        let dialect = dialect
        return try await runWrite(audited: true) {
            CatalogPlans.revokeToken(id: id, at: time, dialect: dialect, audit: audit)
        }
    }

    public func revokeTokens(ofPrincipalsNotIn principals: Set<String>, at time: UnixTime) async throws
        -> [TokenRecord]
    {
        try await runWrite(audited: false) { CatalogPlans.revokeTokens(ofPrincipalsNotIn: principals, at: time) }
    }

    // MARK: Leases

    public func takeLease(_ name: String, holder: String, seconds: Int64, now: UnixTime) async throws -> Bool {
        try await runWrite(audited: false) {
            CatalogPlans.takeLease(name, holder: holder, seconds: seconds, now: now)
        }
    }

    public func releaseLeases(holderPrefix: String) async throws -> Int {
        let dialect = dialect
        return try await runWrite(audited: false) {
            CatalogPlans.releaseLeases(holderPrefix: holderPrefix, dialect: dialect)
        }
    }

    public func releaseLease(_ name: String, holder: String) async throws {
        try await runWrite(audited: false) { CatalogPlans.releaseLease(name, holder: holder) }
    }

    // MARK: Key lifecycle

    public func keyUsage(force: ForceID) async throws -> KeyUsage {
        try await runSnapshot { CatalogPlans.keyUsage(force: force) }
    }

    public func references(force: ForceID, kek: KEKID) async throws -> Int {
        try await runRead { CatalogPlans.references(force: force, kek: kek) }
    }

    public func rewrapCandidates(force: ForceID, under kek: KEKID, after: ExtractID?, limit: Int) async throws
        -> [RewrapCandidate]
    {
        try await runRead { CatalogPlans.rewrapCandidates(force: force, under: kek, after: after, limit: limit) }
    }

    public func wrappedKeys(force: ForceID, under kek: KEKID, states: Set<ExtractState>, limit: Int) async throws
        -> [ExtractRecord]
    {
        try await runRead { CatalogPlans.wrappedKeys(force: force, under: kek, states: states, limit: limit) }
    }

    public func applyRewraps(force: ForceID, rotation: KEKID?, rewraps: [Rewrap], failures: [RewrapFailure],
                             now: UnixTime, audit: [AuditEntry]) async throws -> Int
    {
        let dialect = dialect
        return try await runWrite(audited: true) {
            CatalogPlans.applyRewraps(force: force, rotation: rotation, rewraps: rewraps, failures: failures, now: now,
                                      dialect: dialect, audit: audit)
        }
    }

    public func rewrapFailures(force: ForceID) async throws -> [RewrapFailure] {
        try await runRead { CatalogPlans.rewrapFailures(force: force) }
    }

    public func startRotation(_ rotation: RotationRecord, audit: [AuditEntry]) async throws {
        try await runWrite(audited: true) { CatalogPlans.startRotation(rotation, audit: audit) }
    }

    public func finishRotation(force: ForceID, to kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws {
        try await runWrite(audited: true) { CatalogPlans.finishRotation(force: force, to: kek, at: time, audit: audit) }
    }

    public func rotations(force: ForceID) async throws -> [RotationRecord] {
        try await runRead { CatalogPlans.rotations(force: force) }
    }

    public func reserveDestruction(force: ForceID, kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws {
        try await runWrite(audited: true) {
            CatalogPlans.reserveDestruction(force: force, kek: kek, at: time, audit: audit)
        }
    }

    public func lineage(force: ForceID, extract: ExtractID) async throws -> [LineageEntry] {
        let dialect = dialect
        return try await runRead { CatalogPlans.lineage(force: force, extract: extract, dialect: dialect) }
    }

    public func lineages(force: ForceID, extracts: [ExtractID]) async throws -> [ExtractID: [LineageEntry]] {
        let dialect = dialect
        var all: [ExtractID: [LineageEntry]] = [:]
        // A thousand extracts a query, well inside both databases' limits on bound values.
        for start in stride(from: 0, to: extracts.count, by: 1000) {
            let part = Array(extracts[start..<min(start + 1000, extracts.count)])
            all.merge(try await runRead { CatalogPlans.lineages(force: force, extracts: part, dialect: dialect) }) {
                first, _ in first
            }
        }
        return all
    }

    // MARK: Archive retrieval and legal hold

    public func addRetrieval(_ retrieval: Retrieval, audit: [AuditEntry]) async throws {
        try await runWrite(audited: true) { CatalogPlans.addRetrieval(retrieval, audit: audit) }
    }

    public func retrieval(force: ForceID, id: ResourceID) async throws -> Retrieval? {
        try await runRead { CatalogPlans.retrieval(force: force, id: id) }
    }

    public func retrievals(force: ForceID) async throws -> [Retrieval] {
        try await runRead { CatalogPlans.retrievals(force: force) }
    }

    public func updateRetrieval(force: ForceID, id: ResourceID,
                                change: @escaping @Sendable (Retrieval) throws -> (Retrieval, [AuditEntry]))
        async throws -> Retrieval
    {
        try await runWrite(audited: true) { CatalogPlans.updateRetrieval(force: force, id: id, change: change) }
    }

    public func setHold(force: ForceID, extract: ExtractID, hold: LegalHold?,
                        audit: @escaping @Sendable (ExtractRecord) throws -> [AuditEntry]) async throws -> ExtractRecord
    {
        try await runWrite(audited: true) { CatalogPlans.setHold(force: force, extract: extract, hold: hold, audit: audit) }
    }

    // MARK: Crypto-shredding

    public func shredCandidates(force: ForceID?, now: UnixTime, limit: Int) async throws -> [ExtractRecord] {
        try await runSnapshot { CatalogPlans.shredCandidates(force: force, now: now, limit: limit) }
    }

    public func beginShred(force: ForceID, extracts: [ExtractID], reason: ShredReason, note: String?,
                           requestedBy: String, expiredBy: UnixTime?, now: UnixTime,
                           audit: @escaping @Sendable (ExtractRecord) -> AuditEntry) async throws -> [ShredTicket]
    {
        try await runWrite(audited: true) {
            CatalogPlans.beginShred(force: force, extracts: extracts, reason: reason, note: note,
                                    requestedBy: requestedBy, expiredBy: expiredBy, now: now, audit: audit)
        }
    }

    public func finishShred(force: ForceID, certificates: [DestructionCertificate], now: UnixTime,
                            audit: [AuditEntry]) async throws
    {
        try await runWrite(audited: true) {
            CatalogPlans.finishShred(force: force, certificates: certificates, now: now, audit: audit)
        }
    }

    public func certificate(force: ForceID, id: String) async throws -> DestructionCertificate? {
        try await runRead { CatalogPlans.certificate(force: force, id: id) }
    }

    public func certificates(force: ForceID, extract: ExtractID?) async throws -> [DestructionCertificate] {
        let dialect = dialect
        return try await runRead { CatalogPlans.certificates(force: force, extract: extract, dialect: dialect) }
    }

    public func addCertificates(force: ForceID, _ certificates: [DestructionCertificate], audit: [AuditEntry])
        async throws
    {
        try await runWrite(audited: true) { CatalogPlans.addCertificates(force: force, certificates, audit: audit) }
    }
}
