import KeyCustody

/// The one error type of the `Vault` module. Equality compares the code only; messages never hold key material,
/// passphrases, tokens or payload bytes.
public struct VaultError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Every code the vault answers with, declared here and nowhere else: stable across releases, so scripts and
    /// clients can rely on them. `HTTPErrorDescription.from` maps each one explicitly (no default), so a new code
    /// cannot reach a client as an unexplained 500.
    public enum Code: String, Sendable, CaseIterable, CustomStringConvertible {
        // Formats
        /// A chunk, tag or hash did not verify: the ciphertext was altered or belongs elsewhere.
        case integrityFailure = "integrity_failure"
        /// The ciphertext's length is impossible: cut short, or extended.
        case truncated
        /// The key commitment does not match: wrong key, or wrong force/dataset/extract context.
        case keyCommitmentMismatch = "key_commitment_mismatch"
        /// A sealed file's header is missing, not canonical JSON, or inconsistent.
        case malformedHeader = "malformed_header"
        /// The sealed file belongs to another force than the keyring offered.
        case wrongForce = "wrong_force"
        /// A parameter is outside what the format or the API allows.
        case invalidParameter = "invalid_parameter"
        /// A destruction certificate that cannot be parsed.
        case malformedCertificate = "malformed_certificate"
        /// An audit record, checkpoint or export line is not in the DESIGN 5.5 form.
        case malformedAudit = "malformed_audit"
        /// A server's answer is not the document the API describes (a client-side error: vaultd never sends it).
        case malformedResponse = "malformed_response"
        /// An audit export does not verify: a record was edited, removed, inserted or reordered, or a signature fails.
        case auditChainBroken = "audit_chain_broken"

        // Local files
        /// Reading or writing a file failed.
        case io
        /// An output file already exists and would be overwritten.
        case alreadyExists = "already_exists"

        // Refusals (`denials`): the rule that refused
        /// The principal holds the role, but for other forces: a cross-force attempt.
        case otherForce = "other_force"
        /// The principal does not hold the role the action needs.
        case roleRequired = "role_required"
        /// A read named no use case.
        case useCaseRequired = "use_case_required"
        /// The use case named does not exist for this force.
        case noSuchUseCase = "no_such_use_case"
        /// The use case was revoked.
        case useCaseRevoked = "use_case_revoked"
        /// The use case exists but does not name this principal.
        case notNamed = "not_named"
        /// The use case is not valid at this time.
        case outsideValidityWindow = "outside_validity_window"
        /// The use case does not cover this dataset.
        case datasetNotCovered = "dataset_not_covered"
        /// The extract is archived: never readable on the live path.
        case archivedExtract = "archived_extract"
        /// A custodian tried to approve a retrieval they requested themselves.
        case selfApproval = "self_approval"
        /// The same custodian tried to approve a retrieval twice: dual control needs two different custodians.
        case duplicateApproval = "duplicate_approval"
        /// An archive read with no granted retrieval for this analyst, use case and archive.
        case noGrant = "no_grant"
        /// The retrieval grant's 24 hours (or configured period) are over.
        case grantExpired = "grant_expired"
        /// The retrieval still waits for approvals.
        case approvalPending = "approval_pending"

        // The force's custody service (DESIGN 6.3)
        /// A read (or archive retrieval) came without the principal's signed request.
        case signedRequestRequired = "signed_request_required"
        /// The signed request's signature does not verify, or its principal has no registered key.
        case signedRequestInvalid = "signed_request_invalid"
        /// The signed request is expired, not yet valid, or lives longer than 300 s.
        case signedRequestExpired = "signed_request_expired"
        /// The signed request was used before.
        case signedRequestReplayed = "signed_request_replayed"
        /// The signed request names another force, dataset, extract, purpose, principal or use case than the unwrap.
        case signedRequestMismatch = "signed_request_mismatch"
        /// A witness alarm is raised: no unwrap until a custodian clears it.
        case witnessAlarm = "witness_alarm"
        /// The purpose may not be served here (an export never unwraps on the platform; a sealed upload only fresh).
        case purposeNotServed = "purpose_not_served"
        /// The force's custody service refused an unwrap (its own code is in the message).
        case custodyRefused = "custody_refused"
        /// The submission does not extend what the witness cosigned last (`details.size` is the witness's size).
        case sizeMismatch = "size_mismatch"
        /// The submitted chain does not verify, or hides an unwrap: refused, and an alarm raised.
        case witnessRefused = "witness_refused"
        /// A remote force's use cases are authored at its custody service, not through the platform.
        case managedByForceCustody = "managed_by_force_custody"

        // Catalog and lifecycle
        /// The extract id is already in the catalog (a sealed file uploaded twice).
        case duplicateExtract = "duplicate_extract"
        /// The catalog could not be read or written.
        case catalogUnavailable = "catalog_unavailable"
        /// The requested record does not exist.
        case notFound = "not_found"
        /// The operation conflicts with the record's state (e.g. committing an upload twice).
        case conflict
        /// The extract to archive changed under a commit; prepare the archival again.
        case staleArchival = "stale_archival"
        /// A master key still wraps extract keys and cannot be destroyed yet.
        case keyInUse = "key_in_use"
        /// The extract was crypto-shredded: it is gone for good (HTTP 410 with the certificate id).
        case shredded
        /// A legal hold forbids the action (shredding a held archive).
        case onHold = "on_hold"
        /// A background job's lease was taken over by another instance.
        case leaseLost = "lease_lost"
        /// The audit trail could not be written, so the action it would have recorded was not performed.
        case auditUnavailable = "audit_unavailable"

        // Blob store
        /// The S3 endpoint cannot be reached, answered 5xx or `SlowDown` after every retry, or the bucket is missing.
        case blobStoreUnavailable = "blob_store_unavailable"
        /// S3 refused the credentials or their permissions (`AccessDenied`, `InvalidAccessKeyId`,
        /// `SignatureDoesNotMatch`).
        case blobStoreDenied = "blob_store_denied"

        public var description: String { rawValue }

        /// Every refusal code: a principal was not allowed (403, recorded as `denied` in the force's chain).
        public static let denials: Set<Code> = [
            .otherForce, .roleRequired, .useCaseRequired, .noSuchUseCase, .useCaseRevoked, .notNamed,
            .outsideValidityWindow, .datasetNotCovered, .archivedExtract, .selfApproval, .duplicateApproval, .noGrant,
            .grantExpired, .approvalPending,
            // The force's own custody service's refusals (DESIGN 6.3).
            .custodyRefused, .signedRequestRequired, .signedRequestInvalid, .signedRequestExpired,
            .signedRequestReplayed, .signedRequestMismatch, .witnessAlarm, .purposeNotServed,
        ]
    }

    public let code: Code
    public let message: String
    public let underlying: String?
    /// Extra facts for the client (the certificate id of a shredded extract), shown in the JSON error beside the
    /// code and message. Never secrets.
    public let details: [String: String]
    /// The typed error this one was made from (a `CustodyError` whose code a caller may still want), kept for
    /// callers and logs; a client sees only `code` and `message`.
    public let cause: (any Error & Sendable)?
    public let file: String
    public let line: Int

    public init(_ code: Code, _ message: String, underlying: String? = nil, details: [String: String] = [:],
                cause: (any Error & Sendable)? = nil, file: String = #fileID, line: Int = #line)
    {
        self.code = code
        self.message = message
        self.underlying = underlying ?? (cause as? CustodyError)?.underlying
        self.details = details
        self.cause = cause
        self.file = file
        self.line = line
    }

    public var description: String {
        if let underlying { return "\(message) (\(underlying))" }
        return message
    }

    public static func == (lhs: VaultError, rhs: VaultError) -> Bool { lhs.code == rhs.code }
}
