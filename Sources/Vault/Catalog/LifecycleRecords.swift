import KeyCustody

/// A legal hold on an extract: while it is held, the extract is never shredded (DESIGN section 7).
public struct LegalHold: Sendable, Equatable {
    public var reason: String
    public var placedBy: String
    public var placedAt: UnixTime

    public init(reason: String, placedBy: String, placedAt: UnixTime) {
        self.reason = reason
        self.placedBy = placedBy
        self.placedAt = placedAt
    }

    public var json: JSONValue { HoldDocument(self).json }
}

/// One KEK that wrapped an extract's key, and when (DESIGN section 4, lineage). `until` is nil while it still does.
public struct LineageEntry: Sendable, Equatable {
    public var kek: KEKID
    public var since: UnixTime
    public var until: UnixTime?

    public init(kek: KEKID, since: UnixTime, until: UnixTime?) {
        self.kek = kek
        self.since = since
        self.until = until
    }
}

/// A wrapped key moved by a rewrap: applied only if the row still holds `from` (compare and set).
public struct Rewrap: Sendable {
    public let identity: ExtractIdentity
    public let from: WrappedKey
    public let to: WrappedKey
    /// The stored text of `from`, compared as is.
    public let fromText: String

    public init(identity: ExtractIdentity, from: WrappedKey, to: WrappedKey, fromText: String? = nil) {
        self.identity = identity
        self.from = from
        self.to = to
        self.fromText = fromText ?? from.canonicalText
    }
}

/// A row the rewrap job may move: just what it needs, read without the rest of the extract's metadata.
public struct RewrapCandidate: Sendable {
    public let identity: ExtractIdentity
    public let wrapped: WrappedKey
    /// The wrapped key exactly as stored (for the compare and set).
    public let text: String
}

/// A wrapped key custody could not rewrap (altered, or under a key that is gone): set aside, counted as failed.
public struct RewrapFailure: Sendable, Equatable {
    public let extract: ExtractID
    public let kek: KEKID
    public let code: String
    public let message: String
    public let time: UnixTime

    public init(extract: ExtractID, kek: KEKID, code: String, message: String, time: UnixTime) {
        self.extract = extract
        self.kek = kek
        self.code = code
        self.message = message
        self.time = time
    }

    public var json: JSONValue { RewrapFailureDocument(self).json }
}

/// What a force's wrapped keys are under, read in one snapshot of the catalog, so the counts, the rewrap progress and
/// the failures are of one moment (a key status never says nothing remains while a moved batch is uncounted).
public struct KeyUsage: Sendable, Equatable {
    /// Extracts not yet shredded, per KEK their key is wrapped under.
    public var references: [KEKID: Int] = [:]
    /// Of those, the ones set aside because custody could not rewrap them, per KEK they are still under.
    public var setAside: [KEKID: Int] = [:]
    /// Of those, the archived ones, per KEK.
    public var archived: [KEKID: Int] = [:]
    public var rotations: [RotationRecord] = []
    public var failures: [RewrapFailure] = []

    public init() {}

    /// Whether the key jobs may have work: an unfinished rotation, keys under more than one master key version, or
    /// archives still under a master key. (False says nothing needs custody; true means look.)
    public var suggestsKeyWork: Bool {
        rotations.contains { $0.finishedAt == nil }
            || references.keys.filter(\.isMaster).count > 1
            || archived.contains { $0.key.isMaster && $0.value > 0 }
    }

    /// Wrapped keys the key jobs still have to move off master keys other than `active`: not the ones set aside.
    public func remaining(active: KEKID) -> Int {
        references.reduce(0) { total, entry in
            guard entry.key.isMaster, entry.key != active else { return total }
            return total + entry.value - (setAside[entry.key] ?? 0)
        }
    }
}

/// A master key rotation and the progress of its rewrap job.
public struct RotationRecord: Sendable, Equatable {
    public var force: ForceID
    /// The new active version the job moves wrapped keys to.
    public var to: KEKID
    /// The version that was active before.
    public var from: KEKID?
    public var requestedBy: String
    public var startedAt: UnixTime
    public var finishedAt: UnixTime?
    /// Wrapped keys moved to `to` by this job so far.
    public var processed: Int64

    public init(force: ForceID, to: KEKID, from: KEKID?, requestedBy: String, startedAt: UnixTime,
                finishedAt: UnixTime? = nil, processed: Int64 = 0)
    {
        self.force = force
        self.to = to
        self.from = from
        self.requestedBy = requestedBy
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.processed = processed
    }

    public var json: JSONValue { RotationDocument(self).json }
}

/// The archive moved from its master key to its own archive key when it is archived (DESIGN section 4).
public struct ArchivalRewrap: Sendable {
    public let extract: ExtractID
    public let from: WrappedKey
    public let to: WrappedKey

    public init(extract: ExtractID, from: WrappedKey, to: WrappedKey) {
        self.extract = extract
        self.from = from
        self.to = to
    }
}

/// What committing an upload does to the records, the same in every catalog: the checks and the new records, which
/// each catalog then writes in its own transaction.
enum UploadCommit {
    /// The archive key was prepared for the extract that was current when the upload began committing; if another
    /// upload or a rotation changed it since, `stale_archival` tells the caller to prepare again.
    static func checkArchival(current previous: ExtractRecord?, archival: ArchivalRewrap?) throws {
        guard previous?.identity.extract == archival?.extract, previous == nil || previous?.wrappedKey == archival?.from
        else {
            throw VaultError(.staleArchival, "the dataset's current extract changed while the upload committed")
        }
    }

    /// The previous current extract as archived now: its retention starts, its key moves to its archive key.
    static func archived(_ previous: ExtractRecord, at now: UnixTime, retentionDays: Int, archival: ArchivalRewrap)
        -> ExtractRecord
    {
        var record = previous
        record.state = .archived
        record.archivedAt = now
        record.expiresAt = now + Int64(retentionDays) * 86_400
        record.wrappedKey = archival.to
        return record
    }

    /// The upload as committed now, with its final sizes and ciphertext digest.
    static func committed(_ uploading: ExtractRecord, at now: UnixTime,
                          sizes: (plaintext: UInt64, ciphertext: UInt64, sha256: [UInt8])) -> ExtractRecord
    {
        var record = uploading
        record.state = .current
        record.committedAt = now
        record.plaintextSize = sizes.plaintext
        record.ciphertextSize = sizes.ciphertext
        record.ciphertextSHA256 = sizes.sha256
        return record
    }
}

/// An analyst's request to read an archive, and the custodians' approvals (dual control, DESIGN section 7).
public struct Retrieval: Sendable, Equatable {
    public enum State: String, Sendable {
        /// Waiting for approvals.
        case pending
        /// Two different custodians approved; readable by the analyst until `expiresAt`.
        case granted
    }

    public var force: ForceID
    public var id: ResourceID
    public var extract: ExtractID
    public var dataset: DatasetID
    public var analyst: String
    public var useCase: ResourceID
    public var reason: String
    public var requestedAt: UnixTime
    public var approvals: [Approval]
    public var grantedAt: UnixTime?
    public var expiresAt: UnixTime?

    public struct Approval: Sendable, Equatable {
        public var custodian: String
        public var at: UnixTime

        public init(custodian: String, at: UnixTime) {
            self.custodian = custodian
            self.at = at
        }
    }

    public init(force: ForceID, id: ResourceID, extract: ExtractID, dataset: DatasetID, analyst: String,
                useCase: ResourceID, reason: String, requestedAt: UnixTime, approvals: [Approval] = [],
                grantedAt: UnixTime? = nil, expiresAt: UnixTime? = nil)
    {
        self.force = force
        self.id = id
        self.extract = extract
        self.dataset = dataset
        self.analyst = analyst
        self.useCase = useCase
        self.reason = reason
        self.requestedAt = requestedAt
        self.approvals = approvals
        self.grantedAt = grantedAt
        self.expiresAt = expiresAt
    }

    public var state: State { grantedAt == nil ? .pending : .granted }

    /// Granted and not expired at `now`.
    public func isUsable(at now: UnixTime) -> Bool {
        guard state == .granted, let expiresAt else { return false }
        return now < expiresAt
    }

    /// Why `approver` may not approve this retrieval now, or nil if they may (the custodian role aside): it is
    /// granted already, they asked for it, or they approved it already.
    public func approvalRefusal(by approver: String) -> VaultError? {
        guard grantedAt == nil else { return VaultError(.conflict, "retrieval \(id) is already granted") }
        guard analyst != approver else {
            return VaultError(.selfApproval, "\(approver) requested retrieval \(id) and cannot approve it")
        }
        guard !approvals.contains(where: { $0.custodian == approver }) else {
            return VaultError(.duplicateApproval, "\(approver) has approved retrieval \(id) already; a second, "
                                + "different custodian must approve")
        }
        return nil
    }

    public func json(now: UnixTime) -> JSONValue { RetrievalDocument(self, now: now).json }

    static func approvalsJSON(_ approvals: [Approval]) -> String {
        JSONValue.array(approvals.map { .object(["custodian": .string($0.custodian), "at": .integer($0.at)]) })
            .canonicalString
    }

    static func approvals(fromJSON text: String) -> [Approval] {
        ((try? JSONParser.parse(text))?.arrayValue ?? []).compactMap { item in
            guard let custodian = item["custodian"]?.stringValue, let at = item["at"]?.integerValue else { return nil }
            return Approval(custodian: custodian, at: at)
        }
    }
}

/// Why an extract is being shredded.
public enum ShredReason: String, Sendable {
    /// Its retention period ended (`vault shred --expired`, or vaultd's scheduler).
    case retentionExpired = "retention-expired"
    /// A custodian shredded it before its expiry.
    case early
}

/// An extract being shredded: what the finishing step needs, kept in the catalog so a crash can be resumed.
public struct ShredTicket: Sendable {
    public var record: ExtractRecord
    public var reason: ShredReason
    public var note: String?
    public var requestedBy: String
    public var startedAt: UnixTime

    public init(record: ExtractRecord, reason: ShredReason, note: String?, requestedBy: String, startedAt: UnixTime) {
        self.record = record
        self.reason = reason
        self.note = note
        self.requestedBy = requestedBy
        self.startedAt = startedAt
    }
}
