import Logging

/// What a local backend built on a `KeyTable` offers a `MigratingCustody` besides the custody protocol: its keys
/// as this copy knows them, and wrapping and unwrapping with the purpose already checked, so a key can leave one
/// backend's key and land under the other's without passing through anything else.
protocol TableCustodian: KeyCustodian, AnyObject {
    /// True when this copy of the table holds `kek` (destroyed or not), without reading the backend again.
    func holdsKnown(_ kek: KEKID) -> Bool
    var highestMasterVersion: Int { get }
    var activeMasterIfAny: KEKID? { get }
    /// Unwraps without a purpose check: for a rewrap whose purpose the caller has checked.
    func unwrapForRewrap(_ wrapped: WrappedKey, context: WrapContext) throws -> SecureBytes
    /// Wraps `key` under `kek`, which must be an active key of this backend.
    func wrap(_ key: SecureBytes, under kek: KEKID, context: WrapContext) throws -> WrappedKey
    /// Whatever a batch of wraps under `kek` checks once rather than per key.
    func prepareBatchTarget(_ kek: KEKID) throws
}

/// A force moving from its keyring to its PKCS#11 token (DESIGN 6.2): one custody over both, so neither backend
/// knows of the other.
///
/// Keys created before the move stay where they are and are used there: unwraps under the keyring's master keys,
/// archive keys created in the keyring until their archive is shredded, retiring and destroying its old master
/// keys. The first rotation (`vault keys migrate`) creates the next master key version on the token, above every
/// version the keyring has, and hands the keyring's active master key over (it becomes retiring), so the rewrap
/// job moves every wrapped key across exactly as for a rotation. From then on new keys are made on the token.
public final class MigratingCustody: KeyCustodian {
    public let earlier: KeyringCustody
    public let token: PKCS11Custody
    private let logger: Logger

    public var force: ForceID { token.force }

    /// Serves the force from `earlier` and `token`. In read-write mode a move interrupted after the token's key
    /// became active is finished: the keyring's active master key is handed over.
    public init(earlier: KeyringCustody, token: PKCS11Custody, logger: Logger) throws {
        guard earlier.force == token.force else {
            throw CustodyError(.wrongForce, "the earlier keyring belongs to force \(earlier.force), not \(token.force)")
        }
        self.earlier = earlier
        self.token = token
        self.logger = logger
        guard token.activeMasterIfAny != nil || earlier.activeMasterIfAny != nil else {
            throw CustodyError(.keyringInconsistent, "neither token \(token.tokenLabel) nor the earlier keyring "
                                + "holds an active master key of force \(token.force)")
        }
        if token.mode == .readWrite, token.activeMasterIfAny != nil, earlier.activeMasterIfAny != nil {
            try earlier.handOver()
        }
    }

    /// Opens the token (which may hold none of the force's keys yet) and serves it together with `earlier`.
    public static func open(
        module path: String, tokenLabel: String, pin: SecureBytes, force: ForceID, earlier: KeyringCustody,
        mode: KeyringCustody.Mode, logger: Logger
    ) throws -> MigratingCustody {
        if earlier.force != force {
            throw CustodyError(.wrongForce, "the earlier keyring belongs to force \(earlier.force), not \(force)")
        }
        let token = try PKCS11Custody.open(module: path, tokenLabel: tokenLabel, pin: pin, force: force, mode: mode,
                                           movingFromKeyring: true, logger: logger)
        return try MigratingCustody(earlier: earlier, token: token, logger: logger)
    }

    /// The backend holding `kek`: the keyring for a key it holds and the token does not know, else the token
    /// (which reads its record again for a key it does not know, in case another instance created it).
    private func holder(_ kek: KEKID) -> any TableCustodian {
        !token.holdsKnown(kek) && earlier.holdsKnown(kek) ? earlier : token
    }

    public func activeMasterKey() async throws -> KEKID {
        guard let active = token.activeMasterIfAny ?? earlier.activeMasterIfAny else {
            throw CustodyError(.keyringInconsistent, "force \(force) has no active master key")
        }
        return active
    }

    public func rotate() async throws -> KEKID {
        let next = try token.rotate(above: earlier.highestMasterVersion)
        // The first rotation onto the token ends the keyring's term as the active custody.
        if earlier.activeMasterIfAny != nil { try earlier.handOver() }
        return next
    }

    public func migrate(to backend: String) async throws -> KEKID {
        guard backend == "pkcs11" else {
            throw CustodyError(.unsupportedBackend, "force \(force) can move to \"pkcs11\" only, not \"\(backend)\"")
        }
        guard earlier.activeMasterIfAny != nil else { return try await token.migrate(to: backend) }
        return try await rotate()
    }

    public func generateDataKey(for context: WrapContext) async throws -> DataKey {
        token.activeMasterIfAny != nil
            ? try await token.generateDataKey(for: context) : try await earlier.generateDataKey(for: context)
    }

    public func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        try await holder(wrapped.kek).unwrap(wrapped, context: context, justification: justification)
    }

    public func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        let source = holder(wrapped.kek), target = holder(kek)
        if source === target {
            return try await target.rewrap(wrapped, context: context, to: kek, justification: justification)
        }
        try justification.checkRewrap()
        try KeyTable.checkRewrapRoute(from: wrapped.kek, to: kek, context: context)
        let result = try target.wrap(try source.unwrapForRewrap(wrapped, context: context), under: kek,
                                     context: context)
        logger.custodyRewrap(force: force, from: wrapped.kek, to: kek, context: context, justification: justification)
        return result
    }

    public func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        let target = holder(kek)
        if items.allSatisfy({ holder($0.wrapped.kek) === target }) {
            return try await target.rewrap(items, to: kek, justification: justification)
        }
        try justification.checkRewrap()
        try target.prepareBatchTarget(kek)
        return try RewrapItem.batch(items, to: kek, force: force, justification: justification, logger: logger) { item in
            let key = try holder(item.wrapped.kek).unwrapForRewrap(item.wrapped, context: item.context)
            return try target.wrap(key, under: kek, context: item.context)
        }
    }

    public func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        // Created in the keyring before the move (an archival retried across it): it stays there, one key per id.
        try await holder(.archive(force: force, extract: extract)).createArchiveKey(for: extract)
    }

    public func retire(_ kek: KEKID) async throws { try await holder(kek).retire(kek) }

    public func destroy(_ kek: KEKID) async throws { try await destroy([kek]) }

    public func destroy(_ keks: [KEKID]) async throws {
        let inKeyring = keks.filter { holder($0) === earlier }
        let onToken = keks.filter { holder($0) !== earlier }
        if !inKeyring.isEmpty { try await earlier.destroy(inKeyring) }
        if !onToken.isEmpty { try await token.destroy(onToken) }
    }

    public func forgetDestroyed(_ keks: [KEKID]) async throws {
        let inKeyring = keks.filter { holder($0) === earlier }
        let onToken = keks.filter { holder($0) !== earlier }
        if !inKeyring.isEmpty { try await earlier.forgetDestroyed(inKeyring) }
        if !onToken.isEmpty { try await token.forgetDestroyed(onToken) }
    }

    public func destroy(_ keks: [KEKID], forgetting: [KEKID]) async throws {
        try await earlier.destroy(keks.filter { holder($0) === earlier }, forgetting: forgetting.filter { holder($0) === earlier })
        try await token.destroy(keks.filter { holder($0) !== earlier }, forgetting: forgetting.filter { holder($0) !== earlier })
    }

    public func states(of keks: Set<KEKID>) async throws -> [KEKID: KeyState] {
        // The keyring's answer first, as `status` lists it first.
        try await token.states(of: keks).merging(try await earlier.states(of: keks)) { _, keyring in keyring }
    }

    public func status() async throws -> [KeyInfo] {
        try await earlier.status() + token.status()
    }
}
