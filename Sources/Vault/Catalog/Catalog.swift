import KeyCustody

/// The catalog: extracts, datasets, use cases and audit records (DESIGN section 9). One interface with one
/// implementation (`CatalogOperations`: every operation a plan of `CatalogPlans`), run by a small driver per database
/// (SQLite for the embedded default, PostgreSQL to scale out): every method that changes state is one transaction,
/// and its audit records commit with it.
extension Catalog {
    /// Records a new extract whose key arrived under the KEK it has.
    public func beginUpload(_ extract: ExtractRecord) async throws { try await beginUpload(extract, arrivedUnder: []) }
}

public protocol Catalog: Sendable {
    /// Records a new extract in state `uploading`: invisible to readers until `commitUpload`.
    /// `arrivedUnder`: KEKs the key was wrapped under before (a file sealed under an older master key version,
    /// rewrapped to the active one on arrival), recorded first in its lineage, since the sealed file's copy of the
    /// key still opens under them.
    func beginUpload(_ extract: ExtractRecord, arrivedUnder: [KEKID]) async throws

    /// Makes an uploaded extract `current` and archives the dataset's previous current extract (`expires_at` =
    /// now + the dataset's retention), appending `audit`, in one transaction. Returns the new current extract and
    /// the one it replaced.
    /// `archival` moves the previous current extract's key to its archive key (compare and set): if the dataset's
    /// current extract is not `archival.extract` with key `archival.from` (or there is one and `archival` is nil),
    /// nothing changes and the call fails with `stale_archival`, for the caller to prepare again.
    func commitUpload(
        force: ForceID, extract: ExtractID, sizes: (plaintext: UInt64, ciphertext: UInt64, sha256: [UInt8]),
        now: UnixTime, archival: ArchivalRewrap?, audit: [AuditEntry],
        archiveAudit: @escaping @Sendable (ExtractRecord) -> AuditEntry
    ) async throws -> (current: ExtractRecord, archived: ExtractRecord?)

    /// Appends `audit` only if `extract` is still the current extract, in one transaction; false otherwise. An
    /// allowed read is recorded this way, so an upload that archives the extract in between cannot slip an archive
    /// through the live path.
    func appendAuditIfCurrent(force: ForceID, extract: ExtractID, audit: [AuditEntry]) async throws -> Bool
    /// Appends `audit` only if `extract` is in state `expected` (an archive read: still archived, not shredding).
    func appendAudit(ifExtract extract: ExtractID, of force: ForceID, isIn expected: ExtractState,
                     audit: [AuditEntry]) async throws -> Bool

    /// Forgets an upload that did not complete: removes its row if it is still `uploading`, never a committed one.
    /// True when no row of the extract remains afterwards (its blob may then be deleted); false when the row was
    /// committed after all (its blob must stay).
    @discardableResult
    func abandonUpload(force: ForceID, extract: ExtractID) async throws -> Bool

    /// Uploads left `uploading` since before `cutoff` (a crashed process's), for garbage collection.
    func staleUploads(before cutoff: UnixTime) async throws -> [ExtractRecord]

    func currentExtract(force: ForceID, dataset: DatasetID) async throws -> ExtractRecord?
    func extract(force: ForceID, id: ExtractID) async throws -> ExtractRecord?
    /// Extracts of a force (optionally one dataset) in the given states, oldest first.
    func extracts(force: ForceID, dataset: DatasetID?, states: Set<ExtractState>) async throws -> [ExtractRecord]

    func dataset(force: ForceID, id: DatasetID) async throws -> DatasetRecord?
    /// A force's datasets, by id.
    func datasets(force: ForceID) async throws -> [DatasetRecord]
    /// Creates or updates a dataset's retention and description, moving each of its archives' expiry to its archival
    /// time plus the new retention (a held archive stays held), with the records `audit` makes from the dataset as it
    /// was (nil if new) and how many archives moved. Returns the dataset as stored.
    func putDataset(_ dataset: DatasetRecord, now: UnixTime,
                    audit: @escaping @Sendable (DatasetRecord?, Int) -> [AuditEntry]) async throws -> DatasetRecord

    func useCase(force: ForceID, id: ResourceID) async throws -> UseCase?
    func useCases(force: ForceID) async throws -> [UseCase]
    /// Creates or replaces a use case. A revocation is kept: a revoked use case stays revoked. `audit` makes the
    /// records from whether the use case existed, as seen inside the transaction.
    func putUseCase(_ useCase: UseCase, audit: @escaping @Sendable (_ existed: Bool) -> [AuditEntry]) async throws
    /// Marks a use case revoked; nil if it does not exist.
    func revokeUseCase(force: ForceID, id: ResourceID, at time: UnixTime, audit: [AuditEntry]) async throws
        -> UseCase?

    /// Appends records to their forces' audit chains (DESIGN 5.5), in one transaction.
    func appendAudit(_ entries: [AuditEntry]) async throws
    /// The seq and hash of the last record of a force's chain; nil while it is empty.
    func auditHead(force: ForceID) async throws -> (seq: Int64, hash: String)?
    /// Chain lines with `after < seq <= through`, in order, at most `limit`.
    func auditLines(force: ForceID, after: Int64, through: Int64, limit: Int) async throws -> [AuditLine]
    /// Checkpoints with `from <= seq <= through`, in order.
    func auditCheckpoints(force: ForceID, from: Int64, through: Int64) async throws -> [AuditCheckpoint]
    /// Signs a checkpoint of the chain's head unless the latest checkpoint already covers it; returns the latest
    /// checkpoint (nil for an empty chain).
    func checkpointAudit(force: ForceID, now: UnixTime, signer: AuditSigner) async throws -> AuditCheckpoint?
    /// The checkpoint of record `seq` (signed now unless one exists): a witness submission covers at most
    /// `CustodyWire.maximumBatch` records, so a long gap is witnessed in steps.
    func checkpointAudit(force: ForceID, at seq: Int64, now: UnixTime, signer: AuditSigner) async throws
        -> AuditCheckpoint
    /// Stores the force's witness cosignature of a checkpoint (once per witness and checkpoint).
    func addCosignature(_ cosignature: Cosignature) async throws
    /// Cosignatures of checkpoints `from...through`, by seq.
    func cosignatures(force: ForceID, from: Int64, through: Int64) async throws -> [Cosignature]
    /// The highest checkpoint the force's witness cosigned, with its hash.
    func lastCosigned(force: ForceID) async throws -> (seq: Int64, hash: String)?
    /// The first seq recorded at or after `time`.
    func auditSeq(force: ForceID, notBefore time: UnixTime) async throws -> Int64?
    /// Records matching `query`, in chain order.
    func searchAudit(force: ForceID, query: AuditQuery) async throws -> [AuditLine]
    /// A force's activity per UTC day from `since`: allowed records of `actions`, and refusals by their reason.
    func auditActivity(force: ForceID, since: UnixTime, actions: [String]) async throws -> AuditActivity
    /// Writes to the catalog without changing anything a user sees, to tell whether writes work again.
    func probeWrite() async throws

    /// Archived extracts whose retention has ended, by force.
    func archivesPastExpiry(now: UnixTime) async throws -> [ForceID: Int]

    /// Stores a bearer token's hash with its record, and its audit records.
    func addToken(_ token: TokenRecord, hash: String, audit: [AuditEntry]) async throws
    /// The principal a token hash belongs to, if the token exists and is neither revoked nor expired at `now`.
    func tokenPrincipal(hash: String, now: UnixTime) async throws -> String?
    /// Tokens of `principals` (every token when nil), oldest first.
    func tokens(principals: Set<String>?) async throws -> [TokenRecord]
    /// Revokes the token with id `id` (the first hex digits of its hash; `conflict` when they name several), with the
    /// audit records `audit` makes from it as stored (it may throw to change nothing); nil when there is none.
    func revokeToken(id: String, at time: UnixTime, audit: @escaping @Sendable (TokenRecord) throws -> [AuditEntry])
        async throws -> TokenRecord?
    /// Revokes every live token of principals not in `principals` (removed from the configuration).
    func revokeTokens(ofPrincipalsNotIn principals: Set<String>, at time: UnixTime) async throws -> [TokenRecord]

    // MARK: Key lifecycle (DESIGN sections 4 and 7)

    /// Which KEKs a force's extracts not yet shredded hold their keys under, with the rewrap progress and failures,
    /// all read in one snapshot of the catalog.
    func keyUsage(force: ForceID) async throws -> KeyUsage
    /// How many extracts not yet shredded hold their key under `kek`.
    func references(force: ForceID, kek: KEKID) async throws -> Int
    /// Uploading or current extracts under master key `kek`, not set aside as failed, in id order after `after`, at
    /// most `limit`: the rewrap job's cursor.
    func rewrapCandidates(force: ForceID, under kek: KEKID, after: ExtractID?, limit: Int) async throws
        -> [RewrapCandidate]
    /// Extracts in `states` whose key is under `kek`, not set aside as failed, at most `limit`.
    func wrappedKeys(force: ForceID, under kek: KEKID, states: Set<ExtractState>, limit: Int) async throws
        -> [ExtractRecord]
    /// Applies rewraps (compare and set on the whole wrapped key; a row changed meanwhile is skipped), extends each
    /// moved extract's lineage, sets failures aside, counts the moves in `rotation`'s progress and appends `audit`,
    /// in one transaction. Returns how many rows moved.
    func applyRewraps(force: ForceID, rotation: KEKID?, rewraps: [Rewrap], failures: [RewrapFailure], now: UnixTime,
                      audit: [AuditEntry]) async throws -> Int
    /// Wrapped keys custody could not rewrap.
    func rewrapFailures(force: ForceID) async throws -> [RewrapFailure]
    /// Records a rotation (the new version is already active in custody).
    func startRotation(_ rotation: RotationRecord, audit: [AuditEntry]) async throws
    /// Marks a rotation's job finished, with `audit`.
    func finishRotation(force: ForceID, to kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws
    func rotations(force: ForceID) async throws -> [RotationRecord]
    /// Before custody destroys master key `kek`: refuses (`conflict`) while any extract not yet shredded references
    /// it; otherwise records that it is being destroyed, so no upload can commit under it from then on.
    func reserveDestruction(force: ForceID, kek: KEKID, at time: UnixTime, audit: [AuditEntry]) async throws
    /// The KEKs that ever wrapped an extract's key, oldest first.
    func lineage(force: ForceID, extract: ExtractID) async throws -> [LineageEntry]
    /// The lineages of several extracts in one query (a shredding batch's certificates); an extract without any is
    /// absent.
    func lineages(force: ForceID, extracts: [ExtractID]) async throws -> [ExtractID: [LineageEntry]]

    // MARK: Archive retrieval and legal hold

    func addRetrieval(_ retrieval: Retrieval, audit: [AuditEntry]) async throws
    func retrieval(force: ForceID, id: ResourceID) async throws -> Retrieval?
    func retrievals(force: ForceID) async throws -> [Retrieval]
    /// Changes a retrieval inside a transaction: `change` sees the stored retrieval and returns the new one and
    /// its audit records, or throws to change nothing.
    func updateRetrieval(force: ForceID, id: ResourceID,
                         change: @escaping @Sendable (Retrieval) throws -> (Retrieval, [AuditEntry])) async throws
        -> Retrieval
    /// Places (`hold` non-nil) or lifts a legal hold inside a transaction; `audit` sees the extract as stored and
    /// may throw to change nothing.
    func setHold(force: ForceID, extract: ExtractID, hold: LegalHold?,
                 audit: @escaping @Sendable (ExtractRecord) throws -> [AuditEntry]) async throws -> ExtractRecord

    // MARK: Crypto-shredding

    /// Archives to shred: those left `shredding` by an interrupted run first, then archived, unheld ones whose
    /// retention ended by `now`; one force or all; at most `limit`.
    func shredCandidates(force: ForceID?, now: UnixTime, limit: Int) async throws -> [ExtractRecord]
    /// Marks archives `shredding` (only archived, unheld ones; with `expiredBy`, only expired ones), with the
    /// reason and one audit record each. Returns the tickets of those marked, plus those already `shredding`.
    func beginShred(force: ForceID, extracts: [ExtractID], reason: ShredReason, note: String?, requestedBy: String,
                    expiredBy: UnixTime?, now: UnixTime, audit: @escaping @Sendable (ExtractRecord) -> AuditEntry)
        async throws -> [ShredTicket]
    /// Marks `shredding` extracts `shredded` with their certificates and audit records, in one transaction.
    func finishShred(force: ForceID, certificates: [DestructionCertificate], now: UnixTime, audit: [AuditEntry])
        async throws
    /// A certificate by id.
    func certificate(force: ForceID, id: String) async throws -> DestructionCertificate?
    /// A force's certificates (optionally one extract's), oldest first.
    func certificates(force: ForceID, extract: ExtractID?) async throws -> [DestructionCertificate]
    /// Adds certificates that supersede earlier ones (the same shredding, re-judged after more keys were
    /// destroyed), updating each extract's latest certificate.
    func addCertificates(force: ForceID, _ certificates: [DestructionCertificate], audit: [AuditEntry]) async throws

    // MARK: Leases for background jobs

    /// Takes or renews the lease `name` for `holder` until `now + seconds`: succeeds when the lease is free, expired,
    /// or already held by `holder`. Background jobs (a force's rewrap, its shred sweep) hold one so that, with several
    /// vaultd instances sharing the catalog, no work is done twice; a killed holder's lease expires and is taken over.
    func takeLease(_ name: String, holder: String, seconds: Int64, now: UnixTime) async throws -> Bool
    /// Gives up every lease whose holder starts with `holderPrefix` (an instance restarting after a crash frees the
    /// leases of its previous life at once instead of waiting for them to expire). Returns how many.
    func releaseLeases(holderPrefix: String) async throws -> Int
    /// Gives a lease up (only if `holder` holds it).
    func releaseLease(_ name: String, holder: String) async throws
}

/// One stored line of an audit chain.
/// Records per UTC day (days since 1970-01-01): allowed ones by action, refusals by reason (`detail.reason`).
public struct AuditActivity: Sendable, Equatable {
    public struct Count: Sendable, Equatable {
        public let day: Int64
        /// The action, or for a refusal its reason.
        public let name: String
        public let count: Int64
    }

    /// The start of the first day counted.
    public var since: UnixTime = 0
    public var allowed: [Count] = []
    public var refusals: [Count] = []
    /// Refusals are counted from the newest `refusalLimit` records only; true when there were more.
    public var refusalsTruncated = false
    public static let refusalLimit = 10_000

    public init() {}
}

public struct AuditLine: Sendable, Equatable {
    public let seq: Int64
    public let line: [UInt8]

    public init(seq: Int64, line: [UInt8]) {
        self.seq = seq
        self.line = line
    }
}

/// A search of a force's audit chain, for subject-access and breach investigations. Every filter is optional;
/// `action` may end in `*` to match a prefix (`use-case.*`).
public struct AuditQuery: Sendable, Equatable {
    public var principal: String?
    public var useCase: String?
    public var dataset: DatasetID?
    public var action: String?
    public var outcome: AuditOutcome?
    /// Records at or after `from` and before `until`.
    public var from: UnixTime?
    public var until: UnixTime?
    /// Only records with a larger seq (for paging).
    public var afterSeq: Int64 = 0
    public var limit: Int = 1000

    public init() {}
}
