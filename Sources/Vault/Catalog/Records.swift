#if canImport(Glibc)
import Glibc
#endif
import KeyCustody

/// Seconds since the Unix epoch (UTC). Catalog times are stored as integers and shown as RFC 3339.
public typealias UnixTime = Int64

public func currentUnixTime() -> UnixTime { UnixTime(time(nil)) }

/// Where an extract is in its life (DESIGN section 7).
public enum ExtractState: String, Sendable, CaseIterable {
    /// Bytes are arriving; invisible to every reader. An interrupted upload never leaves this state and is
    /// garbage-collected.
    case uploading
    /// The live extract of its dataset: at most one per dataset.
    case current
    /// Replaced by a newer extract; never readable on the live path; expires after the dataset's retention.
    case archived
    case shredding
    case shredded
}

/// How an extract reached the vault.
public enum ExtractSource: String, Sendable {
    /// Plaintext streamed to vaultd and encrypted as it arrived.
    case plaintext
    /// A sealed file encrypted at source (`vault encrypt`); vaultd never saw the plaintext.
    case sealed
}

/// One extract in the catalog: metadata and its wrapped key, never payload bytes.
public struct ExtractRecord: Sendable, Equatable {
    public var identity: ExtractIdentity
    public var state: ExtractState
    public var wrappedKey: WrappedKey
    public var plaintextSize: UInt64
    public var ciphertextSize: UInt64
    public var ciphertextSHA256: [UInt8]
    public var source: ExtractSource
    public var uploadedBy: String
    public var createdAt: UnixTime
    public var committedAt: UnixTime?
    public var archivedAt: UnixTime?
    public var expiresAt: UnixTime?
    /// Set while a legal hold is in place.
    public var hold: LegalHold?
    public var shreddedAt: UnixTime?
    /// The id of the latest destruction certificate, once shredded.
    public var certificate: String?

    public init(
        identity: ExtractIdentity, state: ExtractState, wrappedKey: WrappedKey, plaintextSize: UInt64,
        ciphertextSize: UInt64, ciphertextSHA256: [UInt8], source: ExtractSource, uploadedBy: String,
        createdAt: UnixTime, committedAt: UnixTime? = nil, archivedAt: UnixTime? = nil, expiresAt: UnixTime? = nil,
        hold: LegalHold? = nil, shreddedAt: UnixTime? = nil, certificate: String? = nil
    ) {
        self.hold = hold
        self.shreddedAt = shreddedAt
        self.certificate = certificate
        self.identity = identity
        self.state = state
        self.wrappedKey = wrappedKey
        self.plaintextSize = plaintextSize
        self.ciphertextSize = ciphertextSize
        self.ciphertextSHA256 = ciphertextSHA256
        self.source = source
        self.uploadedBy = uploadedBy
        self.createdAt = createdAt
        self.committedAt = committedAt
        self.archivedAt = archivedAt
        self.expiresAt = expiresAt
    }

    /// Metadata as JSON, for listings (`ExtractDocument`).
    public var json: JSONValue { ExtractDocument(self).json }

    /// Whether its retention has ended at `now` (a hold keeps it from being shredded all the same).
    public func isPastRetention(at now: UnixTime) -> Bool { (expiresAt ?? .max) <= now }
}

/// A dataset of a force, with its retention period for archives (DESIGN section 7): an archive expires
/// `retentionDays` after its archival.
public struct DatasetRecord: Sendable, Equatable {
    public static let defaultRetentionDays = 365
    /// Retention a custodian may set: a day to a hundred years (police records kept under MoPI can be kept that long).
    public static let retentionRange = 1...36_500
    public var force: ForceID
    public var id: DatasetID
    public var retentionDays: Int
    public var description: String
    public var createdAt: UnixTime
    /// When a custodian last set the retention or description (nil while the dataset has the defaults).
    public var updatedAt: UnixTime?

    public init(force: ForceID, id: DatasetID, retentionDays: Int, description: String = "", createdAt: UnixTime = 0,
                updatedAt: UnixTime? = nil)
    {
        self.force = force
        self.id = id
        self.retentionDays = retentionDays
        self.description = description
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }

    init(catalogRow row: CatalogRow) throws {
        self.init(force: try ForceID(force: try row.value("force")), id: try DatasetID(dataset: try row.value("id")),
                  retentionDays: try row.value("retention_days"), description: try row.value("description"),
                  createdAt: try row.value("created_at"), updatedAt: try row.value("updated_at"))
    }

    /// Refuses a retention outside `retentionRange` or a description over 1000 bytes or with control characters.
    public func validate() throws {
        guard Self.retentionRange.contains(retentionDays) else {
            throw VaultError(.invalidParameter, "retention_days must be from 1 to 36500")
        }
        guard description.utf8.count <= 1000, !description.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw VaultError(.invalidParameter, "a dataset description is at most 1000 bytes, on one line")
        }
    }

    /// Metadata as JSON, for listings (`DatasetDocument`).
    public var json: JSONValue { DatasetDocument(self).json }
}

/// A force's authorisation to decrypt some of its datasets for an analytic purpose (DESIGN section 3).
public struct UseCase: Sendable, Equatable {
    public var force: ForceID
    public var id: ResourceID
    public var description: String
    public var lawfulBasis: String
    public var datasets: [DatasetID]
    /// The principals (analysts, use-case services) named in the authorisation.
    public var principals: [String]
    public var validFrom: UnixTime?
    public var validUntil: UnixTime?
    public var revokedAt: UnixTime?
    public var updatedAt: UnixTime

    public init(
        force: ForceID, id: ResourceID, description: String, lawfulBasis: String, datasets: [DatasetID],
        principals: [String], validFrom: UnixTime? = nil, validUntil: UnixTime? = nil, revokedAt: UnixTime? = nil,
        updatedAt: UnixTime = currentUnixTime()
    ) {
        self.force = force
        self.id = id
        self.description = description
        self.lawfulBasis = lawfulBasis
        self.datasets = datasets
        self.principals = principals
        self.validFrom = validFrom
        self.validUntil = validUntil
        self.revokedAt = revokedAt
        self.updatedAt = updatedAt
    }

    /// As the API shows it (`UseCaseDocument`).
    public var json: JSONValue { UseCaseDocument(self).json }
}

extension UseCase {
    /// The rules a stored use case meets, wherever it is authored: a lawful basis, datasets and principals, and a
    /// validity window that is not empty.
    public func validate() throws {
        guard !principals.isEmpty, !datasets.isEmpty, !lawfulBasis.isEmpty else {
            throw VaultError(.invalidParameter, "a use case needs a lawful basis, datasets and principals")
        }
        if let from = validFrom, let until = validUntil, from >= until {
            throw VaultError(.invalidParameter, "valid_from must be before valid_until")
        }
    }

    /// The fields a custodian sends: `description`, `lawful_basis`, `datasets`, `principals`, and optionally
    /// `valid_from`/`valid_until` as RFC 3339 UTC. Unknown fields are refused, so a typo cannot drop an expiry.
    public init(requestBody body: [UInt8], force: ForceID, id: ResourceID) throws {
        let request: UseCaseRequest
        do {
            request = try UseCaseRequest(json: try JSONParser.parse(body))
        } catch let error as CustodyError {
            throw VaultError(.invalidParameter, "invalid use case: \(error.message)")
        }
        self = request.useCase(force: force, id: id)
    }
}
