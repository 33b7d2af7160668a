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

extension ForceID {
    /// The platform's own audit chain: refusals of principals with no role in the force they tried, and refusals for
    /// forces not served. Its exports and searches are for ops. No force may have this id.
    public static let platform = try! ForceID(force: "platform")
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
    /// The forces the principal holds any of `roles` for.
    public func forces(holding roles: [Role]) -> Set<ForceID> {
        roles.reduce(into: Set<ForceID>()) { $0.formUnion(grants[$1] ?? []) }
    }

    public var description: String { id }
}

extension UseCase {
    /// Where a use case stands at a moment, as a read under it is judged.
    public enum Standing: String, Sendable {
        case inForce = "in force"
        case revoked
        case notYetValid = "not yet valid"
        case expired
    }

    public func standing(at now: UnixTime) -> Standing {
        if let revoked = revokedAt, revoked <= now { return .revoked }
        if let from = validFrom, now < from { return .notYetValid }
        if let until = validUntil, now >= until { return .expired }
        return .inForce
    }
}

extension Policy {
    /// Who may read which metadata of a force. The engine checks these; the console shows a force's sections to the
    /// principals these lists admit (and the engine still decides each page).
    public enum Readers {
        public static let datasets = Role.allCases
        public static let currentExtracts: [Role] = [.uploader, .analyst, .custodian, .ops, .auditor]
        /// Archives are listed to custodians and ops, never to analysts.
        public static let archives: [Role] = [.custodian, .ops]
        public static let useCases: [Role] = [.custodian, .auditor, .analyst]
        public static let retrievals: [Role] = [.custodian, .auditor, .analyst]
        public static let keys: [Role] = [.custodian, .ops, .auditor]
        public static let certificates: [Role] = [.custodian, .auditor, .ops]
        public static let audit: [Role] = [.auditor]
        /// Counts per day, never content.
        public static let activity: [Role] = [.ops, .auditor]
    }
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

    /// Platform-wide metadata (the metrics of every force): for a principal holding `role` for at least one force.
    public static func requireAnyForce(_ role: Role, of principal: Principal, for what: String) throws {
        guard principal.grants[role]?.isEmpty == false else {
            throw VaultError(.roleRequired, "\(what) are for principals with the \(role.rawValue) role")
        }
    }

    /// The forces of `served` that `principal` holds `role` for; refuses when there are none (a sweep of every
    /// force one may act on).
    public static func forces(_ served: [ForceID], where principal: Principal, holds role: Role) throws -> [ForceID] {
        let forces = served.filter { principal.has(role, for: $0) }
        guard !forces.isEmpty else {
            throw VaultError(.roleRequired, "\(principal) is \(role.rawValue) of no force served here")
        }
        return forces
    }

    /// Whether `caller` may list and revoke the bearer tokens of `owner`: its own, or those of a principal with a
    /// role in a force the caller is custodian or ops of (a force cuts off its own people; the operator its platform's).
    public static func mayManageTokens(of owner: Principal, caller: Principal) -> Bool {
        guard owner.id != caller.id else { return true }
        let managing = caller.forces(holding: [.custodian, .ops])
        return !managing.isDisjoint(with: owner.forces(holding: Role.allCases))
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
        let standing = useCase.standing(at: now)
        if standing == .revoked {
            throw VaultError(.useCaseRevoked, "use case \(useCase.id) was revoked")
        }
        guard useCase.principals.contains(principal.id) else {
            throw VaultError(.notNamed, "use case \(useCase.id) does not name \(principal)")
        }
        if standing == .notYetValid, let from = useCase.validFrom {
            throw VaultError(.outsideValidityWindow, "use case \(useCase.id) is valid only from "
                + Timestamp.format(secondsSinceEpoch: Int(from)))
        }
        if standing == .expired, let until = useCase.validUntil {
            throw VaultError(.outsideValidityWindow, "use case \(useCase.id) expired at "
                + Timestamp.format(secondsSinceEpoch: Int(until)))
        }
        guard useCase.datasets.contains(dataset) else {
            throw VaultError(.datasetNotCovered, "use case \(useCase.id) does not cover dataset \(dataset)")
        }
    }
}
