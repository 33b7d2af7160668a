internal import CPKCS11
import Logging
import Synchronization

/// PKCS#11 custody (DESIGN 6.2): a force's master key versions and archive keys are AES-256 secret-key objects on
/// its token (sensitive, not extractable), labelled with their KEK id. Wrapping is `C_Encrypt` with `CKM_AES_GCM`
/// under the DESIGN 5.2 AAD, so wrapped keys are byte for byte the same format as the keyring's; destruction is
/// `C_DestroyObject`.
///
/// Key states, kinds and creation times live in one data object on the token that the vault owns (label
/// `vault-state:<force>`, application `police-data-vault`), a canonical JSON document:
///
/// ```json
/// {"format":"vault-pkcs11-state-v1","force":"wmp",
///  "generation":7,"keys":[{"created":"2026-11-23T10:00:00Z","id":"fmk:wmp:4","kind":"master","state":"active"}]}
/// ```
///
/// It travels with the token and survives restarts. A destroyed key stays in it as a tombstone for lineage. Tokens
/// commonly refuse to change a data object's value, so each change writes generation n+1 and then removes the older
/// record; a reader takes the newest.
///
/// A force moving from a keyring to its token is served by a `MigratingCustody` over this custody and that keyring;
/// this type knows nothing of keyrings.
public final class PKCS11Custody: KeyCustodian {
    public let force: ForceID
    let token: PKCS11Token
    public let mode: KeyringCustody.Mode
    private let logger: Logger

    /// The label of the token holding the force's keys.
    public var tokenLabel: String { token.label }

    private struct Record: Sendable {
        /// Which keys exist and in which state: every rule of their use and change.
        var table: KeyTable
        /// Incremented by every write; the newest record on the token wins.
        var generation: Int64
    }

    private let record: Mutex<Record>
    /// Serialises changes to the record (and the token objects they describe) within this process.
    private let writer = Mutex(())

    static let recordFormat = "vault-pkcs11-state-v1"
    static let application = "police-data-vault"
    var recordLabel: String { "vault-state:\(force)" }

    private init(force: ForceID, token: PKCS11Token, mode: KeyringCustody.Mode, record: Record, logger: Logger) {
        self.force = force
        self.token = token
        self.mode = mode
        self.record = Mutex(record)
        self.logger = logger
    }

    /// Opens the force's keys on the token labelled `tokenLabel` of `module`, logging in with `pin`. The token
    /// must hold the force's keys already (`initialize`).
    public static func open(
        module path: String, tokenLabel: String, pin: SecureBytes, force: ForceID, mode: KeyringCustody.Mode,
        logger: Logger
    ) throws -> PKCS11Custody {
        let custody = try open(module: path, tokenLabel: tokenLabel, pin: pin, force: force, mode: mode,
                               movingFromKeyring: false, logger: logger)
        guard custody.activeMasterIfAny != nil else {
            if custody.record.withLock({ $0.table.isEmpty }) {
                throw CustodyError(.unknownKey, "token \(tokenLabel) holds no keys of force \(force) yet: create its "
                                    + "first master key with `vault hsm init --custody <custody file> --force \(force)`, "
                                    + "or name the keyring it moves from in the custody file and run `vault keys migrate`")
            }
            throw CustodyError(.keyringInconsistent, "token \(tokenLabel) holds no active master key of force \(force)")
        }
        return custody
    }

    /// `movingFromKeyring`: the token may hold no key of the force yet (a `MigratingCustody` checks the pair).
    static func open(
        module path: String, tokenLabel: String, pin: SecureBytes, force: ForceID, mode: KeyringCustody.Mode,
        movingFromKeyring: Bool, logger: Logger
    ) throws -> PKCS11Custody {
        let module = try PKCS11Module.load(path)
        let token = try PKCS11Token(module: module, label: tokenLabel, pin: pin, logger: logger)
        let none = { (reason: String) in CustodyError(.keyringInconsistent, reason) }
        let stored = try readRecord(token: token, force: force)
            ?? Record(table: try KeyTable(force: force, entries: [], inconsistent: none), generation: 0)
        let custody = PKCS11Custody(force: force, token: token, mode: mode, record: stored, logger: logger)
        try custody.checkObjects()
        return custody
    }

    /// Creates master key version 1 of `force` on a token that holds none of its keys yet.
    public static func initialize(
        module path: String, tokenLabel: String, pin: SecureBytes, force: ForceID, logger: Logger
    ) throws -> KeyInfo {
        let module = try PKCS11Module.load(path)
        let token = try PKCS11Token(module: module, label: tokenLabel, pin: pin, logger: logger)
        if let existing = try readRecord(token: token, force: force), !existing.table.isEmpty {
            throw CustodyError(.alreadyExists, "token \(tokenLabel) already holds \(existing.table.entries.count) "
                                + "key(s) of force \(force); not creating another first master key")
        }
        let table = KeyTable.first(force: force, created: Timestamp.now())
        let entry = table.entries[0]
        try token.withSession("initialize") { session in
            if let orphan = try token.findKey(entry.id.description, session: session) {
                try token.destroyObject(orphan, session: session)
                token.forget(entry.id.description)
            }
            _ = try token.generateKey(label: entry.id.description, session: session)
            try writeRecord(table, generation: 1, token: token, session: session)
        }
        logger.notice("token initialised for force", metadata: ["force": "\(force)", "kek": "\(entry.id)",
                                                                  "token": "\(tokenLabel)"])
        return entry
    }

    // MARK: The state record

    /// The newest record of the force on the token (highest generation).
    private static func readRecord(token: PKCS11Token, force: ForceID) throws -> Record? {
        let label = "vault-state:\(force)"
        let records = try token.withSession("read state") { session in
            try token.readData(label: label, application: application, session: session)
        }
        var newest: Record?
        for record in records {
            let parsed = try parseRecord(record.value, label: label, token: token, force: force)
            if newest == nil || parsed.generation > newest!.generation { newest = parsed }
        }
        return newest
    }

    private static func parseRecord(_ bytes: [UInt8], label: String, token: PKCS11Token, force: ForceID)
        throws -> Record
    {
        let inconsistent = { (reason: String) in
            CustodyError(.keyringInconsistent, "the vault's record \(label) on token \(token.label) is unusable: "
                            + reason)
        }
        do {
            let fields = try JSONFields(try JSONParser.parse(bytes), context: label)
            guard try fields.string("format") == recordFormat else { throw inconsistent("format is not \(recordFormat)") }
            guard try fields.string("force") == force.rawValue else { throw inconsistent("it is of another force") }
            let generation = try fields.integer("generation")
            var entries: [KeyTable.Entry] = []
            for item in try fields.array("keys") {
                let key = try JSONFields(item, context: "\(label) key")
                let id = try KEKID(try key.string("id"))
                guard let kind = KeyKind(rawValue: try key.string("kind")),
                      let state = KeyState(rawValue: try key.string("state"))
                else { throw inconsistent("\(id) has a wrong kind or state") }
                entries.append(KeyTable.Entry(id: id, kind: kind, state: state, created: try key.string("created")))
            }
            return Record(table: try KeyTable(force: force, entries: entries, inconsistent: inconsistent),
                          generation: generation)
        } catch let error as CustodyError where error.code != .keyringInconsistent {
            throw inconsistent(error.message)
        }
    }

    /// Writes generation `generation` of the record, then removes every older one. A crash in between leaves two
    /// records; the reader takes the newest and the next write removes the other.
    private static func writeRecord(_ table: KeyTable, generation: Int64, token: PKCS11Token,
                                    session: CK_SESSION_HANDLE) throws
    {
        let label = "vault-state:\(table.force)"
        let older = try token.readData(label: label, application: application, session: session)
        try token.createData(recordBytes(table, generation: generation), label: label, application: application,
                             session: session)
        // Only records older than this one go; a newer one (another writer's) is never destroyed.
        for record in older {
            let stale = (try? parseRecord(record.value, label: label, token: token, force: table.force).generation)
                .map { $0 < generation } ?? true
            if stale { try token.destroyObject(record.handle, session: session) }
        }
    }

    private static func recordBytes(_ table: KeyTable, generation: Int64) -> [UInt8] {
        JSONValue.object([
            "format": .string(recordFormat), "force": .string(table.force.rawValue),
            "generation": .integer(generation),
            "keys": .array(table.entries.map { entry in
                .object(["id": .string(entry.id.description), "kind": .string(entry.kind.rawValue),
                         "state": .string(entry.state.rawValue), "created": .string(entry.created)])
            }),
        ]).canonicalBytes()
    }

    /// Logs every key the record says is alive but whose object is gone from the token.
    private func checkObjects() throws {
        let alive = record.withLock { $0.table.entries.filter { $0.state != .destroyed }.map(\.id) }
        let missing = try token.withSession("check objects") { session in
            try alive.filter { kek in
                do { return try token.findKey(kek.description, session: session) == nil } catch let error
                    as CustodyError where error.code == .keyObjectUntrusted
                {
                    return false  // Reported by findKey, and refused whenever it would be used.
                }
            }
        }
        for id in missing {
            logger.error("key object missing from the token: it was deleted outside the vault", metadata: [
                "force": "\(force)", "kek": "\(id)", "token": "\(token.label)",
            ])
        }
    }

    /// Applies `change` to a copy of the record, stores the copy on the token, and only then makes it current.
    private func mutate<R: Sendable>(_ operation: String, _ change: (inout KeyTable, CK_SESSION_HANDLE) throws -> R)
        throws -> R
    {
        guard mode == .readWrite else {
            throw CustodyError(.readOnly, "the custody of force \(force) is open read-only; \(operation) needs "
                                + "read-write")
        }
        return try writer.withLock { _ in
            try token.withSession(operation) { session in
                var next = record.withLock { $0 }
                // Start from the newest record on the token: another vaultd sharing it may have written since.
                let stored = try token.readData(label: recordLabel, application: Self.application, session: session)
                for item in stored {
                    let parsed = try Self.parseRecord(item.value, label: recordLabel, token: token, force: force)
                    if parsed.generation > next.generation { next = parsed }
                }
                let result = try change(&next.table, session)
                next.generation += 1
                try Self.writeRecord(next.table, generation: next.generation, token: token, session: session)
                record.withLock { $0 = next }
                return result
            }
        }
    }

    // MARK: KeyCustodian

    public func activeMasterKey() async throws -> KEKID {
        guard let active = activeMasterIfAny else {
            throw CustodyError(.keyringInconsistent, "force \(force) has no active master key")
        }
        return active
    }

    public func rotate() async throws -> KEKID { try rotate(above: 0) }

    /// Rotation, with a version above `floor` too (the versions of the keyring a force moves from).
    func rotate(above floor: Int) throws -> KEKID {
        let next = try mutate("rotate") { table, session -> KEKID in
            // Worked out under the writer lock from the newest record, so two rotations never pick one version.
            let next = table.nextMaster(above: floor)
            // A key object left by a rotation interrupted before its record was written never wrapped anything.
            if let orphan = try token.findKey(next.description, session: session) {
                try token.destroyObject(orphan, session: session)
                token.forget(next.description)
            }
            _ = try token.generateKey(label: next.description, session: session)
            try table.rotate(to: next, created: Timestamp.now())
            return next
        }
        logger.notice("master key rotated", metadata: ["force": "\(force)", "kek": "\(next)",
                                                       "token": "\(token.label)"])
        return next
    }

    public func migrate(to backend: String) async throws -> KEKID {
        guard backend == "pkcs11" else {
            throw CustodyError(.unsupportedBackend, "force \(force) can move to \"pkcs11\" only, not \"\(backend)\"")
        }
        throw CustodyError(.keyStateConflict, "force \(force)'s active master key is already on token "
                            + "\(token.label): there is nothing to migrate")
    }

    public func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try record.withLock { try $0.table.checkForce(context) }
        let key = SecureBytes.random(count: 32)
        return DataKey(key: key, wrapped: try wrap(key, under: try await activeMasterKey(), context: context))
    }

    public func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        try justification.check(unwrapUnder: wrapped.kek)
        let key = try unwrapForRewrap(wrapped, context: context)
        logger.custodyUnwrap(force: force, kek: wrapped.kek, context: context, justification: justification)
        return key
    }

    public func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        try justification.checkRewrap()
        try KeyTable.checkRewrapRoute(from: wrapped.kek, to: kek, context: context)
        let result = try wrap(try unwrapForRewrap(wrapped, context: context), under: kek, context: context)
        logger.custodyRewrap(force: force, from: wrapped.kek, to: kek, context: context, justification: justification)
        return result
    }

    public func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        try justification.checkRewrap()
        try prepareBatchTarget(kek)
        return try RewrapItem.batch(items, to: kek, force: force, justification: justification, logger: logger) { item in
            try wrap(try unwrapForRewrap(item.wrapped, context: item.context), under: kek, context: item.context,
                     checkHandle: false)
        }
    }

    public func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        let id = KEKID.archive(force: force, extract: extract)
        // Idempotent for a retried archival (no write); a destroyed archive key is never brought back.
        var probe = record.withLock { $0.table }
        guard try probe.addArchiveKey(id, created: Timestamp.now()) else { return id }
        try mutate("create an archive key") { table, session in
            guard try table.addArchiveKey(id, created: Timestamp.now()) else { return }
            // An object left by an interrupted creation never wrapped anything; it is adopted if the vault generated
            // it (findKey refuses any other: a key imported under the label could be known to someone).
            if try token.findKey(id.description, session: session) == nil {
                _ = try token.generateKey(label: id.description, session: session)
            }
        }
        logger.notice("archive key created", metadata: ["force": "\(force)", "kek": "\(id)"])
        return id
    }

    public func retire(_ kek: KEKID) async throws {
        try mutate("retire") { table, _ in _ = try table.retire(kek) }
        logger.notice("master key retired", metadata: ["force": "\(force)", "kek": "\(kek)"])
    }

    public func destroy(_ kek: KEKID) async throws { try await destroy([kek]) }

    public func destroy(_ keks: [KEKID]) async throws {
        guard !keks.isEmpty else { return }
        let destroyed = try mutate("destroy") { table, session -> [KEKID] in
            // Every key is checked before any object goes.
            let destroyed = try table.destroy(keks)
            for kek in destroyed {
                // Already gone (an interrupted destroy, or deleted outside the vault): the record catches up.
                // Whatever object carries the label goes, trusted or not: nothing may open what it wrapped.
                if let handle = try token.findKey(kek.description, session: session, checkingProtection: false) {
                    try token.destroyObject(handle, session: session)
                }
                token.forget(kek.description)
            }
            return destroyed
        }
        logger.notice("keys destroyed", metadata: ["force": "\(force)", "count": "\(destroyed.count)",
                                                   "first": "\(keks.first.map { "\($0)" } ?? "-")",
                                                   "token": "\(token.label)"])
    }

    public func forgetDestroyed(_ keks: [KEKID]) async throws {
        guard !keks.isEmpty else { return }
        // The objects are gone already: only the record on the token changes.
        let forgotten = try mutate("forget destroyed keys") { table, _ in try table.forget(keks) }
        logger.notice("destroyed archive keys' tombstones removed", metadata: [
            "force": "\(force)", "count": "\(forgotten.count)", "token": "\(token.label)"])
    }

    public func status() async throws -> [KeyInfo] {
        // The token's record as it is now: another instance sharing the token may have changed it.
        try adoptNewerRecord()
        return record.withLock { $0.table.infos }
    }

    /// Reads the newest state record on the token and keeps it when it is newer than the one held here.
    private func adoptNewerRecord() throws {
        guard let fresh = try Self.readRecord(token: token, force: force) else { return }
        writer.withLock { _ in
            record.withLock { current in
                if fresh.generation > current.generation { current = fresh }
            }
        }
    }

    // MARK: Wrapping

    /// The table, read again from the token when it does not know `kek`, in case another vaultd instance sharing
    /// the token created the key.
    private func table(knowing kek: KEKID) throws -> KeyTable {
        let table = record.withLock { $0.table }
        guard !table.holds(kek) else { return table }
        try adoptNewerRecord()
        return record.withLock { $0.table }
    }

    /// Unwraps without a purpose check: for a rewrap whose purpose the caller has checked.
    func unwrapForRewrap(_ wrapped: WrappedKey, context: WrapContext) throws -> SecureBytes {
        _ = try table(knowing: wrapped.kek).unwrapSource(wrapped, context: context)
        let label = wrapped.kek.description
        do {
            return try token.withSession("unwrap") { session in
                try token.decrypt(key: try token.key(label, session: session), iv: wrapped.iv,
                                  aad: context.additionalData(kek: wrapped.kek), ciphertext: wrapped.ciphertext,
                                  session: session)
            }
        } catch let error as CustodyError where error.code == .contextMismatch {
            throw CustodyError(.contextMismatch,
                               "wrapped key under \(wrapped.kek) does not authenticate for \(context) "
                                   + "(it belongs to another extract, or was altered)", underlying: error.underlying)
        }
    }

    func wrap(_ key: SecureBytes, under kek: KEKID, context: WrapContext) throws -> WrappedKey {
        try wrap(key, under: kek, context: context, checkHandle: true)
    }

    /// `checkHandle`: check the cached handle of `kek` still names it before wrapping (a batch checks it once, in
    /// `prepareBatchTarget`).
    private func wrap(_ key: SecureBytes, under kek: KEKID, context: WrapContext, checkHandle: Bool)
        throws -> WrappedKey
    {
        let table = try table(knowing: kek)
        try table.checkForce(context)
        _ = try table.wrapTarget(kek)
        let iv = SecureRandom.bytes(count: WrappedKey.ivByteCount)
        let label = kek.description
        let sealed = try token.withSession("wrap") { session in
            try token.encrypt(key: try token.key(label, session: session, verified: checkHandle), iv: iv,
                              aad: context.additionalData(kek: kek), plaintext: key, session: session)
        }
        return try WrappedKey(kek: kek, iv: iv, ciphertext: sealed)
    }
}

extension PKCS11Custody: TableCustodian {
    func holdsKnown(_ kek: KEKID) -> Bool { record.withLock { $0.table.holds(kek) } }
    var highestMasterVersion: Int { record.withLock { $0.table.highestMasterVersion } }
    var activeMasterIfAny: KEKID? { record.withLock { $0.table.activeMaster?.id } }

    /// The target's handle is checked once for a batch, not once per key.
    func prepareBatchTarget(_ kek: KEKID) throws {
        guard try table(knowing: kek).holds(kek) else { return }
        let label = kek.description
        _ = try token.withSession("check target") { try token.key(label, session: $0, verified: true) }
    }
}
