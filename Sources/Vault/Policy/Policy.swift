import KeyCustody

/// What a principal may do, per force (DESIGN section 3).
public enum Role: String, Sendable, CaseIterable {
    /// A force's ingestion job: uploads its own force's extracts, reads nothing.
    case uploader
    /// Reads current extracts of a force only through a use case that names them.
    case analyst
    /// Authorises use cases, approves archive retrieval, places legal holds, rotates keys.
    case custodian
    /// Runs the platform: metadata only, never decrypts.
    case ops
    /// Reads a force's audit trail.
    case auditor
}

/// An authenticated caller: an id and the forces each of its roles applies to.
public struct Principal: Sendable, Equatable, CustomStringConvertible {
    public let id: String
    public let grants: [Role: Set<ForceID>]

    public init(id: String, grants: [Role: Set<ForceID>]) {
        self.id = id
        self.grants = grants
    }

    public func has(_ role: Role, for force: ForceID) -> Bool { grants[role]?.contains(force) ?? false }
    public func hasAny(of roles: [Role], for force: ForceID) -> Bool { roles.contains { has($0, for: force) } }

    public var description: String { id }
}

/// Refusals, each naming the rule that refused. All answer 403 except where noted.
extension VaultError.Code {
    /// The principal holds the role, but for other forces: a cross-force attempt.
    public static let otherForce = VaultError.Code("other_force")
    /// The principal does not hold the role the action needs.
    public static let roleRequired = VaultError.Code("role_required")
    /// A read named no use case.
    public static let useCaseRequired = VaultError.Code("use_case_required")
    public static let noSuchUseCase = VaultError.Code("no_such_use_case")
    public static let useCaseRevoked = VaultError.Code("use_case_revoked")
    /// The use case exists but does not name this principal.
    public static let notNamed = VaultError.Code("not_named")
    public static let outsideValidityWindow = VaultError.Code("outside_validity_window")
    public static let datasetNotCovered = VaultError.Code("dataset_not_covered")
    /// The extract is archived: never readable on the live path.
    public static let archivedExtract = VaultError.Code("archived_extract")

    /// A custodian tried to approve a retrieval they requested themselves.
    public static let selfApproval = VaultError.Code("self_approval")
    /// The same custodian tried to approve a retrieval twice: dual control needs two different custodians.
    public static let duplicateApproval = VaultError.Code("duplicate_approval")
    /// An archive read with no granted retrieval for this analyst, use case and archive.
    public static let noGrant = VaultError.Code("no_grant")
    /// The retrieval grant's 24 hours (or configured period) are over.
    public static let grantExpired = VaultError.Code("grant_expired")
    /// The retrieval still waits for approvals.
    public static let approvalPending = VaultError.Code("approval_pending")

    /// Every refusal code.
    public static let denials: Set<VaultError.Code> = [
        .otherForce, .roleRequired, .useCaseRequired, .noSuchUseCase, .useCaseRevoked, .notNamed,
        .outsideValidityWindow, .datasetNotCovered, .archivedExtract, .selfApproval, .duplicateApproval, .noGrant,
        .grantExpired, .approvalPending,
        // The force's own custody service's refusals (DESIGN 6.3).
        .custodyRefused, .signedRequestRequired, .signedRequestInvalid, .signedRequestExpired, .signedRequestReplayed,
        .signedRequestMismatch, .witnessAlarm, .purposeNotServed,
    ]
}

/// The rules, kept apart from storage and transport so they can be read and tested on their own.
public enum Policy {
    /// Refuses unless `principal` holds `role` for `force`; says whether it was a cross-force attempt.
    public static func require(_ role: Role, of principal: Principal, for force: ForceID) throws {
        guard !principal.has(role, for: force) else { return }
        if let forces = principal.grants[role], !forces.isEmpty {
            throw VaultError(.otherForce, "\(principal) is \(role.rawValue) for other forces, not for \(force)")
        }
        throw VaultError(.roleRequired, "\(principal) is not \(role.rawValue) of force \(force)")
    }

    /// Refuses unless one of `roles` is held for `force`.
    public static func require(anyOf roles: [Role], of principal: Principal, for force: ForceID) throws {
        guard !principal.hasAny(of: roles, for: force) else { return }
        if roles.contains(where: { !(principal.grants[$0] ?? []).isEmpty }) {
            throw VaultError(.otherForce, "\(principal) has no role for force \(force)")
        }
        throw VaultError(.roleRequired,
                         "\(principal) needs one of \(roles.map(\.rawValue).joined(separator: ", ")) for force \(force)")
    }

    /// The use-case rules for a live read of `dataset` (after the analyst role was checked).
    public static func checkRead(
        useCase: UseCase?, useCaseID: String, principal: Principal, force: ForceID, dataset: DatasetID, now: UnixTime
    ) throws {
        guard let useCase else {
            throw VaultError(.noSuchUseCase, "force \(force) has no use case \(useCaseID)")
        }
        if let revoked = useCase.revokedAt, revoked <= now {
            throw VaultError(.useCaseRevoked, "use case \(useCase.id) was revoked")
        }
        guard useCase.principals.contains(principal.id) else {
            throw VaultError(.notNamed, "use case \(useCase.id) does not name \(principal)")
        }
        if let from = useCase.validFrom, now < from {
            throw VaultError(.outsideValidityWindow, "use case \(useCase.id) is valid only from "
                + Timestamp.format(secondsSinceEpoch: Int(from)))
        }
        if let until = useCase.validUntil, now >= until {
            throw VaultError(.outsideValidityWindow, "use case \(useCase.id) expired at "
                + Timestamp.format(secondsSinceEpoch: Int(until)))
        }
        guard useCase.datasets.contains(dataset) else {
            throw VaultError(.datasetNotCovered, "use case \(useCase.id) does not cover dataset \(dataset)")
        }
    }
}
