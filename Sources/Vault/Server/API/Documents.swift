import KeyCustody

// The API's response documents, each written once: vaultd's routes make them from the engine's records and send
// `json`; `VaultClient` reads them back with `init(json:)`, so the CLI works with typed values, not string keys. The
// shapes are those the OpenAPI document (`openapi.json`) describes; `DocumentTests` checks each round trip.

/// Reads the members of a JSON object a server sent, failing with `malformed_response` (naming the document and the
/// member, never a value) when one is missing or of the wrong type.
struct DocumentReader {
    let members: [String: JSONValue]
    let what: String

    init(_ value: JSONValue, _ what: String) throws {
        guard let members = value.objectValue else {
            throw VaultError(.malformedResponse, "the server's \(what) is not a JSON object")
        }
        self.members = members
        self.what = what
    }

    private func missing(_ key: String) -> VaultError {
        VaultError(.malformedResponse, "the server's \(what) has no valid \(key)")
    }

    func string(_ key: String) throws -> String {
        guard let value = members[key]?.stringValue else { throw missing(key) }
        return value
    }

    func optionalString(_ key: String) throws -> String? {
        guard let value = members[key], value != .null else { return nil }
        guard let text = value.stringValue else { throw missing(key) }
        return text
    }

    func integer(_ key: String) throws -> Int64 {
        guard let value = members[key]?.integerValue else { throw missing(key) }
        return value
    }

    func bool(_ key: String) throws -> Bool {
        guard let value = members[key]?.boolValue else { throw missing(key) }
        return value
    }

    func strings(_ key: String) throws -> [String] {
        try array(key) { item in
            guard let text = item.stringValue else { throw missing(key) }
            return text
        }
    }

    func array<T>(_ key: String, _ each: (JSONValue) throws -> T) throws -> [T] {
        guard let items = members[key]?.arrayValue else { throw missing(key) }
        return try items.map(each)
    }

    func value(_ key: String) throws -> JSONValue {
        guard let value = members[key] else { throw missing(key) }
        return value
    }

    func optionalValue(_ key: String) -> JSONValue? {
        guard let value = members[key], value != .null else { return nil }
        return value
    }
}

/// The member that holds the items of a list answer: `{"extracts": [...]}`.
public enum ListKey: String, Sendable {
    case extracts, archives, retrievals, certificates, principals, alarms, tokens, datasets
    case useCases = "use_cases"

    /// The list answer holding `items`.
    public func document(_ items: [JSONValue]) -> JSONValue { .object([rawValue: .array(items)]) }
}

/// Members with optional values: only the present ones are sent.
private func object(_ members: [String: JSONValue?]) -> JSONValue {
    .object(members.compactMapValues { $0 })
}

private func wireTime(_ value: UnixTime) -> String { Timestamp.format(secondsSinceEpoch: Int(value)) }

/// An extract's metadata, for uploads and listings (no key material: the wrapped key is shown by its KEK id only).
public struct ExtractDocument: Sendable, Equatable {
    public var force: String
    public var dataset: String
    public var extract: String
    public var state: String
    public var plaintextSize: Int64
    public var ciphertextSize: Int64
    public var ciphertextSHA256: String
    public var source: String
    public var uploadedBy: String
    public var kek: String
    public var createdAt: String
    public var committedAt: String?
    public var archivedAt: String?
    public var expiresAt: String?
    public var hold: HoldDocument?
    public var shreddedAt: String?
    public var certificate: String?

    public init(_ record: ExtractRecord) {
        force = record.identity.force.rawValue
        dataset = record.identity.dataset.rawValue
        extract = record.identity.extract.rawValue
        state = record.state.rawValue
        plaintextSize = Int64(record.plaintextSize)
        ciphertextSize = Int64(record.ciphertextSize)
        ciphertextSHA256 = Hex.encode(record.ciphertextSHA256)
        source = record.source.rawValue
        uploadedBy = record.uploadedBy
        kek = record.wrappedKey.kek.description
        createdAt = wireTime(record.createdAt)
        committedAt = record.committedAt.map(wireTime)
        archivedAt = record.archivedAt.map(wireTime)
        expiresAt = record.expiresAt.map(wireTime)
        hold = record.hold.map(HoldDocument.init)
        shreddedAt = record.shreddedAt.map(wireTime)
        certificate = record.certificate
    }

    public var json: JSONValue {
        object([
            "force": .string(force), "dataset": .string(dataset), "extract": .string(extract), "state": .string(state),
            "plaintext_size": .integer(plaintextSize), "ciphertext_size": .integer(ciphertextSize),
            "ciphertext_sha256": .string(ciphertextSHA256), "source": .string(source),
            "uploaded_by": .string(uploadedBy), "kek": .string(kek), "created_at": .string(createdAt),
            "committed_at": committedAt.map(JSONValue.string), "archived_at": archivedAt.map(JSONValue.string),
            "expires_at": expiresAt.map(JSONValue.string), "hold": hold?.json,
            "shredded_at": shreddedAt.map(JSONValue.string), "certificate": certificate.map(JSONValue.string),
        ])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "extract")
        force = try reader.string("force")
        dataset = try reader.string("dataset")
        extract = try reader.string("extract")
        state = try reader.string("state")
        plaintextSize = try reader.integer("plaintext_size")
        ciphertextSize = try reader.integer("ciphertext_size")
        ciphertextSHA256 = try reader.string("ciphertext_sha256")
        source = try reader.string("source")
        uploadedBy = try reader.string("uploaded_by")
        kek = try reader.string("kek")
        createdAt = try reader.string("created_at")
        committedAt = try reader.optionalString("committed_at")
        archivedAt = try reader.optionalString("archived_at")
        expiresAt = try reader.optionalString("expires_at")
        hold = try reader.optionalValue("hold").map(HoldDocument.init(json:))
        shreddedAt = try reader.optionalString("shredded_at")
        certificate = try reader.optionalString("certificate")
    }
}

/// A legal hold on an archive.
public struct HoldDocument: Sendable, Equatable {
    public var reason: String
    public var placedBy: String
    public var placedAt: String

    public init(_ hold: LegalHold) {
        reason = hold.reason
        placedBy = hold.placedBy
        placedAt = wireTime(hold.placedAt)
    }

    public var json: JSONValue {
        .object(["reason": .string(reason), "placed_by": .string(placedBy), "placed_at": .string(placedAt)])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "legal hold")
        reason = try reader.string("reason")
        placedBy = try reader.string("placed_by")
        placedAt = try reader.string("placed_at")
    }
}

/// A use case as the API shows it.
public struct UseCaseDocument: Sendable, Equatable {
    public var force: String
    public var id: String
    public var description: String
    public var lawfulBasis: String
    public var datasets: [String]
    public var principals: [String]
    public var validFrom: String?
    public var validUntil: String?
    public var revokedAt: String?
    public var updatedAt: String
    public var revoked: Bool { revokedAt != nil }

    public init(_ useCase: UseCase) {
        force = useCase.force.rawValue
        id = useCase.id.rawValue
        description = useCase.description
        lawfulBasis = useCase.lawfulBasis
        datasets = useCase.datasets.map(\.rawValue)
        principals = useCase.principals
        validFrom = useCase.validFrom.map(wireTime)
        validUntil = useCase.validUntil.map(wireTime)
        revokedAt = useCase.revokedAt.map(wireTime)
        updatedAt = wireTime(useCase.updatedAt)
    }

    public var json: JSONValue {
        object([
            "force": .string(force), "id": .string(id), "description": .string(description),
            "lawful_basis": .string(lawfulBasis), "datasets": .array(datasets.map { .string($0) }),
            "principals": .array(principals.map { .string($0) }), "updated_at": .string(updatedAt),
            "revoked": .bool(revoked), "valid_from": validFrom.map(JSONValue.string),
            "valid_until": validUntil.map(JSONValue.string), "revoked_at": revokedAt.map(JSONValue.string),
        ])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "use case")
        force = try reader.string("force")
        id = try reader.string("id")
        description = try reader.string("description")
        lawfulBasis = try reader.string("lawful_basis")
        datasets = try reader.strings("datasets")
        principals = try reader.strings("principals")
        validFrom = try reader.optionalString("valid_from")
        validUntil = try reader.optionalString("valid_until")
        revokedAt = try reader.optionalString("revoked_at")
        updatedAt = try reader.string("updated_at")
    }
}

/// A rotation (or migration) and its rewrap job's progress.
public struct RotationDocument: Sendable, Equatable {
    public var from: String?
    public var to: String
    public var requestedBy: String
    public var processed: Int64
    public var startedAt: String
    public var finishedAt: String?
    public var state: String

    public init(_ rotation: RotationRecord) {
        from = rotation.from?.description
        to = rotation.to.description
        requestedBy = rotation.requestedBy
        processed = rotation.processed
        startedAt = wireTime(rotation.startedAt)
        finishedAt = rotation.finishedAt.map(wireTime)
        state = rotation.finishedAt == nil ? "running" : "finished"
    }

    public var json: JSONValue {
        object([
            "from": from.map(JSONValue.string), "to": .string(to), "requested_by": .string(requestedBy),
            "processed": .integer(processed), "started_at": .string(startedAt),
            "finished_at": finishedAt.map(JSONValue.string), "state": .string(state),
        ])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "rotation")
        from = try reader.optionalString("from")
        to = try reader.string("to")
        requestedBy = try reader.string("requested_by")
        processed = try reader.integer("processed")
        startedAt = try reader.string("started_at")
        finishedAt = try reader.optionalString("finished_at")
        state = try reader.string("state")
    }
}

/// A wrapped key custody could not rewrap.
public struct RewrapFailureDocument: Sendable, Equatable {
    public var extract: String
    public var kek: String
    public var code: String
    public var message: String
    public var time: String

    public init(_ failure: RewrapFailure) {
        extract = failure.extract.rawValue
        kek = failure.kek.description
        code = failure.code
        message = failure.message
        time = wireTime(failure.time)
    }

    public var json: JSONValue {
        .object(["extract": .string(extract), "kek": .string(kek), "code": .string(code), "message": .string(message),
                 "time": .string(time)])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "rewrap failure")
        extract = try reader.string("extract")
        kek = try reader.string("kek")
        code = try reader.string("code")
        message = try reader.string("message")
        time = try reader.string("time")
    }
}

/// A force's keys: master key versions, archive keys, and the rewrap job's progress.
public struct KeyStatusDocument: Sendable, Equatable {
    public struct MasterKey: Sendable, Equatable {
        public var id: String
        public var version: Int64
        public var state: String
        public var created: String
        public var wraps: Int64
    }

    public struct Rewrap: Sendable, Equatable {
        public var processed: Int64
        public var remaining: Int64
        public var failed: Int64
        /// `running`, `idle` or `needs attention`.
        public var state: String
        public var rotation: RotationDocument?
    }

    public var force: String
    public var active: String
    public var masterKeys: [MasterKey]
    public var activeArchiveKeys: Int64
    public var destroyedArchiveKeys: Int64
    public var rewrap: Rewrap
    public var rotations: [RotationDocument]
    public var failures: [RewrapFailureDocument]

    public init(_ status: KeyStatus) {
        force = status.force.rawValue
        active = status.active.description
        masterKeys = status.keys.filter { $0.kind == .master }.map { key in
            var version: Int64 = 0
            if case .master(_, let v) = key.id { version = Int64(v) }
            return MasterKey(id: key.id.description, version: version, state: key.state.rawValue, created: key.created,
                             wraps: Int64(status.references[key.id] ?? 0))
        }
        let archive = status.keys.filter { $0.kind == .archive }
        activeArchiveKeys = Int64(archive.filter { $0.state == .active }.count)
        destroyedArchiveKeys = Int64(archive.filter { $0.state == .destroyed }.count)
        let remaining = max(0, status.remaining)
        rewrap = Rewrap(processed: status.rotations.last?.processed ?? 0, remaining: Int64(remaining),
                        failed: Int64(status.failures.count),
                        state: remaining > 0 ? "running" : (status.failures.isEmpty ? "idle" : "needs attention"),
                        rotation: status.rotations.last.map(RotationDocument.init))
        rotations = status.rotations.map(RotationDocument.init)
        failures = status.failures.map(RewrapFailureDocument.init)
    }

    public var json: JSONValue {
        .object([
            "force": .string(force), "active": .string(active),
            "master_keys": .array(masterKeys.map { key in
                .object(["id": .string(key.id), "version": .integer(key.version), "state": .string(key.state),
                         "created": .string(key.created), "wraps": .integer(key.wraps)])
            }),
            "archive_keys": .object(["active": .integer(activeArchiveKeys), "destroyed": .integer(destroyedArchiveKeys)]),
            "rewrap": object([
                "processed": .integer(rewrap.processed), "remaining": .integer(rewrap.remaining),
                "failed": .integer(rewrap.failed), "state": .string(rewrap.state), "rotation": rewrap.rotation?.json,
            ]),
            "rotations": .array(rotations.map(\.json)), "failures": .array(failures.map(\.json)),
        ])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "key status")
        force = try reader.string("force")
        active = try reader.string("active")
        masterKeys = try reader.array("master_keys") { item in
            let key = try DocumentReader(item, "master key")
            return MasterKey(id: try key.string("id"), version: try key.integer("version"),
                             state: try key.string("state"), created: try key.string("created"),
                             wraps: try key.integer("wraps"))
        }
        let archive = try DocumentReader(try reader.value("archive_keys"), "archive key counts")
        activeArchiveKeys = try archive.integer("active")
        destroyedArchiveKeys = try archive.integer("destroyed")
        let progress = try DocumentReader(try reader.value("rewrap"), "rewrap progress")
        rewrap = Rewrap(processed: try progress.integer("processed"), remaining: try progress.integer("remaining"),
                        failed: try progress.integer("failed"), state: try progress.string("state"),
                        rotation: try progress.optionalValue("rotation").map(RotationDocument.init(json:)))
        rotations = try reader.array("rotations", RotationDocument.init(json:))
        failures = try reader.array("failures", RewrapFailureDocument.init(json:))
    }
}

/// A destroyed master key version, and the certificates re-issued because of it.
public struct KeyDestructionDocument: Sendable {
    public var destroyed: String
    public var reissuedCertificates: [DestructionCertificate]

    public init(destroyed: KEKID, reissued: [DestructionCertificate]) {
        self.destroyed = destroyed.description
        reissuedCertificates = reissued
    }

    public var json: JSONValue {
        .object(["destroyed": .string(destroyed), "reissued_certificates": .array(reissuedCertificates.map(\.json))])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "key destruction")
        destroyed = try reader.string("destroyed")
        reissuedCertificates = try reader.array("reissued_certificates", DestructionCertificate.init(json:))
    }
}

/// An archive retrieval: who asked for what, the approvals, and whether (and until when) it is granted.
public struct RetrievalDocument: Sendable, Equatable {
    public struct Approval: Sendable, Equatable {
        public var custodian: String
        public var at: String
    }

    public var force: String
    public var id: String
    public var extract: String
    public var dataset: String
    public var analyst: String
    public var useCase: String
    public var reason: String
    public var requestedAt: String
    public var approvals: [Approval]
    /// `pending`, `granted` or `expired`.
    public var state: String
    public var grantedAt: String?
    public var expiresAt: String?

    public init(_ retrieval: Retrieval, now: UnixTime) {
        force = retrieval.force.rawValue
        id = retrieval.id.rawValue
        extract = retrieval.extract.rawValue
        dataset = retrieval.dataset.rawValue
        analyst = retrieval.analyst
        useCase = retrieval.useCase.rawValue
        reason = retrieval.reason
        requestedAt = wireTime(retrieval.requestedAt)
        approvals = retrieval.approvals.map { Approval(custodian: $0.custodian, at: wireTime($0.at)) }
        state = retrieval.state == .granted && !retrieval.isUsable(at: now) ? "expired" : retrieval.state.rawValue
        grantedAt = retrieval.grantedAt.map(wireTime)
        expiresAt = retrieval.expiresAt.map(wireTime)
    }

    public var json: JSONValue {
        object([
            "force": .string(force), "id": .string(id), "extract": .string(extract), "dataset": .string(dataset),
            "analyst": .string(analyst), "use_case": .string(useCase), "reason": .string(reason),
            "requested_at": .string(requestedAt),
            "approvals": .array(approvals.map { .object(["custodian": .string($0.custodian), "at": .string($0.at)]) }),
            "state": .string(state), "granted_at": grantedAt.map(JSONValue.string),
            "expires_at": expiresAt.map(JSONValue.string),
        ])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "retrieval")
        force = try reader.string("force")
        id = try reader.string("id")
        extract = try reader.string("extract")
        dataset = try reader.string("dataset")
        analyst = try reader.string("analyst")
        useCase = try reader.string("use_case")
        reason = try reader.string("reason")
        requestedAt = try reader.string("requested_at")
        approvals = try reader.array("approvals") { item in
            let approval = try DocumentReader(item, "approval")
            return Approval(custodian: try approval.string("custodian"), at: try approval.string("at"))
        }
        state = try reader.string("state")
        grantedAt = try reader.optionalString("granted_at")
        expiresAt = try reader.optionalString("expires_at")
    }
}

/// What a shred sweep did (or, dry run, would do).
public struct ShredReportDocument: Sendable, Equatable {
    public struct Shredded: Sendable, Equatable {
        public var force: String
        public var extract: String
        public var certificate: String
        public var verdict: String
    }

    public struct Held: Sendable, Equatable {
        public var force: String
        public var extract: String
        public var reason: String
    }

    public var dryRun: Bool
    public var held: [Held]
    /// Dry run: the archives that would be shredded.
    public var candidates: [ExtractDocument]?
    public var shredded: [Shredded]?

    public init(_ report: ShredReport, dryRun: Bool) {
        self.dryRun = dryRun
        held = report.held.map {
            Held(force: $0.identity.force.rawValue, extract: $0.identity.extract.rawValue, reason: $0.hold?.reason ?? "")
        }
        candidates = dryRun ? report.candidates.map(ExtractDocument.init) : nil
        shredded = dryRun ? nil : report.certificates.map {
            Shredded(force: $0.force.rawValue, extract: $0.extract.rawValue, certificate: $0.id,
                     verdict: $0.verdict.rawValue)
        }
    }

    public var json: JSONValue {
        object([
            "dry_run": .bool(dryRun),
            "held": .array(held.map {
                .object(["force": .string($0.force), "extract": .string($0.extract), "reason": .string($0.reason)])
            }),
            "candidates": candidates.map { .array($0.map(\.json)) },
            "shredded": shredded.map { items in
                .array(items.map {
                    .object(["force": .string($0.force), "extract": .string($0.extract),
                             "certificate": .string($0.certificate), "verdict": .string($0.verdict)])
                })
            },
        ])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "shred report")
        dryRun = try reader.bool("dry_run")
        held = try reader.array("held") { item in
            let held = try DocumentReader(item, "held archive")
            return Held(force: try held.string("force"), extract: try held.string("extract"),
                        reason: try held.string("reason"))
        }
        candidates = try reader.optionalValue("candidates").map { _ in
            try reader.array("candidates", ExtractDocument.init(json:))
        }
        shredded = try reader.optionalValue("shredded").map { _ in
            try reader.array("shredded") { item in
                let shredded = try DocumentReader(item, "shredded archive")
                return Shredded(force: try shredded.string("force"), extract: try shredded.string("extract"),
                                certificate: try shredded.string("certificate"),
                                verdict: try shredded.string("verdict"))
            }
        }
    }
}

/// The body of `PUT .../use-cases/{id}` (the `UseCaseBody` schema): what a custodian authors. The CLI sends `json`;
/// the routes of vaultd and of the custody service read it with `init(json:)`, which holds the rules.
public struct UseCaseRequest: Sendable, Equatable {
    public var description: String
    public var lawfulBasis: String
    public var datasets: [DatasetID]
    public var principals: [String]
    public var validFrom: UnixTime?
    public var validUntil: UnixTime?

    static let members: Set<String> = ["description", "lawful_basis", "datasets", "principals", "valid_from",
                                       "valid_until"]

    public init(description: String, lawfulBasis: String, datasets: [DatasetID], principals: [String],
                validFrom: UnixTime? = nil, validUntil: UnixTime? = nil)
    {
        self.description = description
        self.lawfulBasis = lawfulBasis
        self.datasets = datasets
        self.principals = principals
        self.validFrom = validFrom
        self.validUntil = validUntil
    }

    public var json: JSONValue {
        object([
            "description": .string(description), "lawful_basis": .string(lawfulBasis),
            "datasets": .array(datasets.map { .string($0.rawValue) }), "principals": .array(principals.map { .string($0) }),
            "valid_from": validFrom.map { .string(wireTime($0)) }, "valid_until": validUntil.map { .string(wireTime($0)) },
        ])
    }

    /// Reads a body strictly: unknown members, wrong types, invalid ids and times are refused with the member named.
    public init(json: JSONValue) throws {
        let invalid = { (reason: String) in VaultError(.invalidParameter, "invalid use case: \(reason)") }
        let fields = try JSONFields(json, context: "use case")
        if let unknown = fields.members.keys.sorted().first(where: { !Self.members.contains($0) }) {
            throw invalid("unknown field \"\(unknown)\" (known: \(Self.members.sorted().joined(separator: ", ")))")
        }
        func time(_ key: String) throws -> UnixTime? {
            guard let value = fields.members[key], value != .null else { return nil }
            return try Self.time(value.stringValue ?? "", member: key)
        }
        datasets = try fields.array("datasets").map { value -> DatasetID in
            guard let text = value.stringValue else { throw invalid("datasets must be strings") }
            return try DatasetID(dataset: text)
        }
        principals = try fields.array("principals").map { value -> String in
            guard let text = value.stringValue, Principal.isValidID(text) else {
                throw invalid("principals must be principal ids")
            }
            return text
        }
        description = try fields.string("description")
        lawfulBasis = try fields.string("lawful_basis")
        validFrom = try time("valid_from")
        validUntil = try time("valid_until")
    }

    /// A validity time as the body carries it (RFC 3339 UTC); `member` names it in the error.
    public static func time(_ text: String, member: String) throws -> UnixTime {
        guard let seconds = Timestamp.parse(text) else {
            throw VaultError(.invalidParameter,
                             "invalid use case: \(member) must be an RFC 3339 UTC time like 2026-01-31T00:00:00Z")
        }
        return UnixTime(seconds)
    }

    /// The use case this body authors, as `force`'s use case `id`.
    public func useCase(force: ForceID, id: ResourceID) -> UseCase {
        UseCase(force: force, id: id, description: description, lawfulBasis: lawfulBasis, datasets: datasets,
                principals: principals, validFrom: validFrom, validUntil: validUntil)
    }
}

/// A small request body of string members only: the CLI makes it and sends `json`; vaultd's routes read it strictly
/// (`VaultAPI.body`: exactly these members, each a string, the required ones present).
public protocol SmallRequest: Sendable {
    static var members: Set<String> { get }
    /// The members as sent (every member is required).
    var fields: [String: String] { get }
    init(fields: [String: String])
}

extension SmallRequest {
    public var json: JSONValue { .object(fields.mapValues(JSONValue.string)) }
}

/// `{"reason": ...}`: why a legal hold is placed or lifted, why an archive is shredded early.
public struct ReasonRequest: SmallRequest, Equatable {
    public static let members: Set<String> = ["reason"]
    public var reason: String

    public init(reason: String) { self.reason = reason }
    public init(fields: [String: String]) { reason = fields["reason"] ?? "" }
    public var fields: [String: String] { ["reason": reason] }
}

/// An analyst's request to read an archive: the use case it is for, and why.
public struct RetrievalRequest: SmallRequest, Equatable {
    public static let members: Set<String> = ["use_case", "reason"]
    public var useCase: String
    public var reason: String

    public init(useCase: String, reason: String) {
        self.useCase = useCase
        self.reason = reason
    }

    public init(fields: [String: String]) {
        useCase = fields["use_case"] ?? ""
        reason = fields["reason"] ?? ""
    }

    public var fields: [String: String] { ["use_case": useCase, "reason": reason] }
}

/// The backend a force moves to (`pkcs11`).
public struct MigrationRequest: SmallRequest, Equatable {
    public static let members: Set<String> = ["to"]
    public var to: String

    public init(to: String) { self.to = to }
    public init(fields: [String: String]) { to = fields["to"] ?? "" }
    public var fields: [String: String] { ["to": to] }
}

/// A bearer token as listings show it: its id (the first hex digits of its hash), never the token.
public struct TokenDocument: Sendable, Equatable {
    public var id: String
    public var principal: String
    public var description: String
    public var createdAt: String
    public var expiresAt: String
    public var revokedAt: String?
    /// `active`, `expired` or `revoked`.
    public var state: String

    public init(_ token: TokenRecord, now: UnixTime) {
        id = token.id
        principal = token.principal
        description = token.description
        createdAt = wireTime(token.createdAt)
        expiresAt = wireTime(token.expiresAt)
        revokedAt = token.revokedAt.map(wireTime)
        state = token.state(at: now).rawValue
    }

    public var json: JSONValue {
        object(["id": .string(id), "principal": .string(principal), "description": .string(description),
                "created_at": .string(createdAt), "expires_at": .string(expiresAt), "state": .string(state),
                "revoked_at": revokedAt.map(JSONValue.string)])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "token")
        id = try reader.string("id")
        principal = try reader.string("principal")
        description = try reader.string("description")
        createdAt = try reader.string("created_at")
        expiresAt = try reader.string("expires_at")
        revokedAt = try reader.optionalString("revoked_at")
        state = try reader.string("state")
    }
}

/// A dataset as the API shows it: its retention for archives and its description.
public struct DatasetDocument: Sendable, Equatable {
    public var force: String
    public var id: String
    public var description: String
    public var retentionDays: Int64
    public var createdAt: String
    public var updatedAt: String?

    public init(_ dataset: DatasetRecord) {
        force = dataset.force.rawValue
        id = dataset.id.rawValue
        description = dataset.description
        retentionDays = Int64(dataset.retentionDays)
        createdAt = wireTime(dataset.createdAt)
        updatedAt = dataset.updatedAt.map(wireTime)
    }

    public var json: JSONValue {
        object(["force": .string(force), "id": .string(id), "description": .string(description),
                "retention_days": .integer(retentionDays), "created_at": .string(createdAt),
                "updated_at": updatedAt.map(JSONValue.string)])
    }

    public init(json: JSONValue) throws {
        let reader = try DocumentReader(json, "dataset")
        force = try reader.string("force")
        id = try reader.string("id")
        description = try reader.string("description")
        retentionDays = try reader.integer("retention_days")
        createdAt = try reader.string("created_at")
        updatedAt = try reader.optionalString("updated_at")
    }
}

/// A custodian's settings for a dataset: `{"retention_days": N, "description": "..."}` (description optional).
public struct DatasetRequest: Sendable, Equatable {
    public static let members: Set<String> = ["retention_days", "description"]
    public var retentionDays: Int
    public var description: String

    public init(retentionDays: Int, description: String) {
        self.retentionDays = retentionDays
        self.description = description
    }

    public var json: JSONValue {
        .object(["retention_days": .integer(Int64(retentionDays)), "description": .string(description)])
    }

    /// Reads a body strictly: unknown members and wrong types are refused with the member named.
    public init(requestBody body: [UInt8]) throws {
        do {
            let fields = try JSONFields(try JSONParser.parse(body), context: "dataset")
            if let unknown = fields.members.keys.sorted().first(where: { !Self.members.contains($0) }) {
                throw VaultError(.invalidParameter, "invalid dataset: unknown field \"\(unknown)\" (known: "
                                    + "description, retention_days)")
            }
            guard let days = Int(exactly: try fields.integer("retention_days")) else {
                throw VaultError(.invalidParameter, "invalid dataset: retention_days is out of range")
            }
            retentionDays = days
            description = fields.members["description"] == nil ? "" : try fields.string("description")
        } catch let error as CustodyError {
            throw VaultError(.invalidParameter, "invalid dataset: \(error.message)")
        }
    }
}
