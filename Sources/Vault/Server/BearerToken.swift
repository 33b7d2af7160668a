import KeyCustody

/// Bearer tokens: 32 random bytes shown once as `vt_<hex>`; only their SHA-256 is stored, with the principal, a
/// description, an expiry and, once revoked, when. A token is known by its id, the first 12 hex digits of its hash:
/// listings, revocations and audit records name it so, never by the token itself.
public enum BearerToken {
    public static let prefix = "vt_"
    /// A token's lifetime unless its issuer says otherwise: 30 days.
    public static let defaultLifetime: Int64 = 30 * 86_400
    /// The longest lifetime a token may be given: 365 days.
    public static let maximumLifetime: Int64 = 365 * 86_400
    /// Hex digits of the hash that name a token.
    public static let idLength = 12

    /// A new token (shown to the operator once) and the hash to store.
    public static func generate() -> (token: SecureBytes, hash: String) {
        let random = SecureBytes.random(count: 32)
        let text = random.withUnsafeBytes { Array((prefix + Hex.encode($0)).utf8) }
        var copy = text
        let token = SecureBytes(consuming: &copy)
        return (token, hash(token))
    }

    /// The stored form of a token: hex SHA-256. Tokens carry 256 bits of entropy, so a plain hash suffices.
    public static func hash(_ token: SecureBytes) -> String {
        token.withUnsafeBytes { Hex.encode(Digest.hash(.sha256, $0)) }
    }

    /// A lifetime written as a number and a unit, `90m`, `12h`, `30d` (or plain seconds, `3600s`), from a minute to
    /// `maximumLifetime`.
    public static func lifetime(_ text: String) throws -> Int64 {
        let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        let invalid = VaultError(.invalidParameter, "a token lifetime is a number and a unit (s, m, h or d), from 1m "
                                    + "to 365d, such as 12h or 30d")
        guard let unit = text.last.flatMap({ units[$0] }), let count = Int64(text.dropLast()), count > 0,
              count <= maximumLifetime / unit
        else { throw invalid }
        guard (60...maximumLifetime).contains(count * unit) else { throw invalid }
        return count * unit
    }

    /// Issues a token for `principal` valid for `lifetime` seconds and stores its hash, recording `token.create` in
    /// the audit chain of every force the principal holds a role for (in the same transaction). The token itself is
    /// returned once and never recorded.
    public static func issue(for principal: Principal, description: String, lifetime: Int64 = defaultLifetime,
                             catalog: any Catalog, now: UnixTime = currentUnixTime()) async throws -> SecureBytes
    {
        let forces = Set(principal.grants.values.flatMap { $0 }).sorted()
        guard !forces.isEmpty else {
            throw VaultError(.invalidParameter, "principal \(principal.id) holds no role for any force")
        }
        guard (60...maximumLifetime).contains(lifetime) else {
            throw VaultError(.invalidParameter, "a token lifetime is from 1 minute to 365 days")
        }
        guard description.utf8.count <= 200, !description.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw VaultError(.invalidParameter, "a token description is at most 200 bytes, on one line")
        }
        let (token, hash) = generate()
        let record = TokenRecord(id: String(hash.prefix(idLength)), principal: principal.id, description: description,
                                 createdAt: now, expiresAt: now + lifetime)
        let roles = principal.grants.keys.map(\.rawValue).sorted()
        let audit = forces.map { force in
            AuditEntry(force: force, time: now, principal: "vaultd-admin", action: "token.create",
                       target: "\(force)/principals/\(principal.id)", outcome: .allowed,
                       detail: ["principal": .string(principal.id), "token": .string(record.id),
                                "description": .string(description), "roles": .array(roles.map { .string($0) }),
                                "expires_at": .string(Timestamp.format(secondsSinceEpoch: Int(record.expiresAt)))],
                       requestID: "token-" + record.id)
        }
        try await catalog.addToken(record, hash: hash, audit: audit)
        return token
    }

    /// Whether a presented credential has the token shape (checked before hashing, so junk is refused early).
    public static func isWellFormed(_ token: UnsafeRawBufferPointer) -> Bool {
        guard token.count == prefix.utf8.count + 64, token.starts(with: prefix.utf8) else { return false }
        return token.dropFirst(prefix.utf8.count).allSatisfy(isLowerHex)
    }

    /// A token id as a caller wrote it: 12 to 64 lower-case hex digits of the hash.
    public static func id(_ text: String) throws -> String {
        guard (idLength...64).contains(text.utf8.count), text.utf8.allSatisfy(isLowerHex) else {
            throw VaultError(.invalidParameter, "a token id is the first 12 (or more) lower-case hex digits of its hash")
        }
        return text
    }

    private static func isLowerHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }
}

/// A stored bearer token, without its hash beyond its id.
public struct TokenRecord: Sendable, Equatable {
    public var id: String
    public var principal: String
    public var description: String
    public var createdAt: UnixTime
    public var expiresAt: UnixTime
    public var revokedAt: UnixTime?

    public init(id: String, principal: String, description: String, createdAt: UnixTime, expiresAt: UnixTime,
                revokedAt: UnixTime? = nil)
    {
        self.id = id
        self.principal = principal
        self.description = description
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.revokedAt = revokedAt
    }

    init(catalogRow row: CatalogRow) throws {
        let hash: String = try row.value("hash")
        self.init(id: String(hash.prefix(BearerToken.idLength)), principal: try row.value("principal"),
                  description: try row.value("description"), createdAt: try row.value("created_at"),
                  // A token left without an expiry by an unmigrated catalog counts as expired.
                  expiresAt: try row.value("expires_at", as: Int64?.self) ?? 0,
                  revokedAt: try row.value("revoked_at"))
    }

    public enum State: String, Sendable {
        case active, expired, revoked
    }

    public func state(at now: UnixTime) -> State {
        if revokedAt != nil { return .revoked }
        return now < expiresAt ? .active : .expired
    }
}

/// Listing and revoking tokens, for vaultd's API, `vaultd token` on the host and the custody service: one set of
/// rules. A principal sees and revokes its own tokens, and those of every principal with a role in a force it is
/// custodian or ops of; the host's administrator (no caller) sees and revokes every token. A revocation is recorded
/// in the chain of every force the token's principal holds a role for, and takes effect at the next request on every
/// instance (each request looks its token up in the catalog).
public struct TokenAdministration: Sendable {
    let catalog: any Catalog
    let principals: [String: Principal]
    let now: @Sendable () -> UnixTime

    public init(catalog: any Catalog, principals: [String: Principal],
                now: @escaping @Sendable () -> UnixTime = currentUnixTime)
    {
        self.catalog = catalog
        self.principals = principals
        self.now = now
    }

    /// The principals whose tokens `caller` manages (every principal for the host's administrator, nil).
    func managed(by caller: Principal?) -> Set<String>? {
        guard let caller else { return nil }
        return Set(principals.values.filter { Policy.mayManageTokens(of: $0, caller: caller) }.map(\.id))
            .union([caller.id])
    }

    public func list(caller: Principal?) async throws -> [TokenRecord] {
        try await catalog.tokens(principals: managed(by: caller))
    }

    /// Revokes token `id`; `not_found` when there is none the caller manages (whether or not another exists).
    public func revoke(id text: String, caller: Principal?, requestID: String) async throws -> TokenRecord {
        let id = try BearerToken.id(text)
        let managed = managed(by: caller)
        let principals = principals
        let time = now()
        let notFound = VaultError(.notFound, "no token \(id) that you may revoke")
        let by = caller?.id ?? "vaultd-admin"
        guard let token = try await catalog.revokeToken(id: id, at: time, audit: { token in
            guard managed?.contains(token.principal) ?? true else { throw notFound }
            guard token.revokedAt == nil else { return [] }
            let forces = Set(principals[token.principal]?.grants.values.flatMap { $0 } ?? []).sorted()
            return forces.map { force in
                AuditEntry(force: force, time: time, principal: by, action: "token.revoke",
                           target: "\(force)/principals/\(token.principal)", outcome: .allowed,
                           detail: ["principal": .string(token.principal), "token": .string(token.id)],
                           requestID: requestID)
            }
        }) else { throw notFound }
        return token
    }

    /// Revokes the live tokens of principals no longer in the configuration (at start), so that adding one back does
    /// not revive tokens issued to it before.
    public func revokeRemovedPrincipals() async throws -> [TokenRecord] {
        try await catalog.revokeTokens(ofPrincipalsNotIn: Set(principals.keys), at: now())
    }
}

extension TokenRecord {
    /// The token as the API and `vaultd token list` show it.
    public func document(now: UnixTime) -> TokenDocument { TokenDocument(self, now: now) }
}
