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
/// A force that moved from a keyring keeps that keyring as its *earlier keyring*: keys created before the move are
/// read from it, its master keys become retiring and retired as the rewrap job moves their wrapped keys to the
/// token's master key, and a custodian then destroys them (`vault keys destroy`). Archive keys created before the
/// move stay in the keyring until their archive is shredded.
public final class PKCS11Custody: KeyCustodian {
    public let force: ForceID
    let token: PKCS11Token
    /// The force's keyring from before the move to the token, if it had one.
    let earlier: KeyringCustody?
    public let mode: KeyringCustody.Mode
    private let logger: Logger

    /// The label of the token holding the force's keys.
    public var tokenLabel: String { token.label }

    struct Entry: Sendable {
        let id: KEKID
        let kind: KeyKind
        var state: KeyState
        let created: String
        var info: KeyInfo { KeyInfo(id: id, kind: kind, state: state, created: created) }
    }

    private struct Record: Sendable {
        var entries: [Entry] { didSet { reindex() } }
        /// Incremented by every write; the newest record on the token wins.
        var generation: Int64
        private(set) var positions: [KEKID: Int] = [:]

        init(entries: [Entry], generation: Int64) {
            self.entries = entries
            self.generation = generation
            reindex()
        }

        private mutating func reindex() {
            positions = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.id, $0) })
        }

        func entry(_ id: KEKID) -> Entry? { positions[id].map { entries[$0] } }
        var activeMaster: Entry? { entries.first { $0.kind == .master && $0.state == .active } }
        var highestMasterVersion: Int {
            entries.compactMap { entry -> Int? in
                if case .master(_, let version) = entry.id { return version }
                return nil
            }.max() ?? 0
        }
    }

    private let record: Mutex<Record>
    /// Serialises changes to the record (and the token objects they describe) within this process.
    private let writer = Mutex(())

    static let recordFormat = "vault-pkcs11-state-v1"
    static let application = "police-data-vault"
    var recordLabel: String { "vault-state:\(force)" }

    private init(force: ForceID, token: PKCS11Token, earlier: KeyringCustody?, mode: KeyringCustody.Mode,
                 record: Record, logger: Logger)
    {
        self.force = force
        self.token = token
        self.earlier = earlier
        self.mode = mode
        self.record = Mutex(record)
        self.logger = logger
    }

    /// Opens the force's keys on the token labelled `tokenLabel` of `module`, logging in with `pin`.
    ///
    /// The token must hold the force's keys already (`initialize`), or `earlier` must name the keyring the force
    /// is moving from.
    public static func open(
        module path: String, tokenLabel: String, pin: SecureBytes, force: ForceID, earlier: KeyringCustody? = nil,
        mode: KeyringCustody.Mode, logger: Logger
    ) throws -> PKCS11Custody {
        if let earlier, earlier.force != force {
            throw CustodyError(.wrongForce, "the earlier keyring belongs to force \(earlier.force), not \(force)")
        }
        let module = try PKCS11Module.load(path)
        let token = try PKCS11Token(module: module, label: tokenLabel, pin: pin, logger: logger)
        let stored = try readRecordWithGeneration(token: token, force: force)
        let entries = stored?.entries ?? []
        let custody = PKCS11Custody(force: force, token: token, earlier: earlier, mode: mode,
                                    record: Record(entries: entries, generation: stored?.generation ?? 0),
                                    logger: logger)
        guard custody.record.withLock({ $0.activeMaster }) != nil || earlier?.activeMasterIfAny != nil else {
            if entries.isEmpty {
                throw CustodyError(.unknownKey, "token \(tokenLabel) holds no keys of force \(force) yet: create its "
                                    + "first master key with `vault hsm init --custody <custody file> --force \(force)`, "
                                    + "or name the keyring it moves from in the custody file and run `vault keys migrate`")
            }
            throw CustodyError(.keyringInconsistent, "token \(tokenLabel) holds no active master key of force \(force)")
        }
        // A move to the token interrupted after the token's key became active: finish handing over.
        if mode == .readWrite, custody.record.withLock({ $0.activeMaster }) != nil, let earlier,
           earlier.activeMasterIfAny != nil
        {
            try earlier.handOver()
        }
        try custody.checkObjects()
        return custody
    }

    /// Creates master key version 1 of `force` on a token that holds none of its keys yet.
    public static func initialize(
        module path: String, tokenLabel: String, pin: SecureBytes, force: ForceID, logger: Logger
    ) throws -> KeyInfo {
        let module = try PKCS11Module.load(path)
        let token = try PKCS11Token(module: module, label: tokenLabel, pin: pin, logger: logger)
        if let existing = try readRecord(token: token, force: force), !existing.isEmpty {
            throw CustodyError(.alreadyExists, "token \(tokenLabel) already holds \(existing.count) key(s) of force "
                                + "\(force); not creating another first master key")
        }
        let id = KEKID.master(force: force, version: 1)
        let entry = Entry(id: id, kind: .master, state: .active, created: Timestamp.now())
        try token.withSession("initialize") { session in
            if let orphan = try token.findKey(id.description, session: session) {
                try token.destroyObject(orphan, session: session)
                token.forget(id.description)
            }
            _ = try token.generateKey(label: id.description, session: session)
            try writeRecord([entry], generation: 1, token: token, force: force, session: session)
        }
        logger.notice("token initialised for force", metadata: ["force": "\(force)", "kek": "\(id)",
                                                                  "token": "\(tokenLabel)"])
        return entry.info
    }

    // MARK: The state record

    /// The newest record of the force on the token (highest generation), with its generation.
    private static func readRecord(token: PKCS11Token, force: ForceID) throws -> [Entry]? {
        try readRecordWithGeneration(token: token, force: force)?.entries
    }

    private static func readRecordWithGeneration(token: PKCS11Token, force: ForceID)
        throws -> (entries: [Entry], generation: Int64)?
    {
        let label = "vault-state:\(force)"
        let records = try token.withSession("read state") { session in
            try token.readData(label: label, application: application, session: session)
        }
        var newest: (entries: [Entry], generation: Int64)?
        for record in records {
            let parsed = try parseRecord(record.value, label: label, token: token, force: force)
            if newest == nil || parsed.generation > newest!.generation { newest = parsed }
        }
        return newest
    }

    private static func parseRecord(_ bytes: [UInt8], label: String, token: PKCS11Token, force: ForceID)
        throws -> (entries: [Entry], generation: Int64)
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
            var entries: [Entry] = []
            var seen = Set<KEKID>()
            for item in try fields.array("keys") {
                let key = try JSONFields(item, context: "\(label) key")
                let id = try KEKID(try key.string("id"))
                guard id.force == force, seen.insert(id).inserted else { throw inconsistent("\(id) is foreign or twice") }
                guard let kind = KeyKind(rawValue: try key.string("kind")), kind == (id.isMaster ? .master : .archive),
                      let state = KeyState(rawValue: try key.string("state"))
                else { throw inconsistent("\(id) has a wrong kind or state") }
                entries.append(Entry(id: id, kind: kind, state: state, created: try key.string("created")))
            }
            guard entries.filter({ $0.kind == .master && $0.state == .active }).count <= 1 else {
                throw inconsistent("more than one active master key")
            }
            return (entries, generation)
        } catch let error as CustodyError where error.code != .keyringInconsistent {
            throw inconsistent(error.message)
        }
    }

    /// Writes generation `generation` of the record, then removes every older one. A crash in between leaves two
    /// records; the reader takes the newest and the next write removes the other.
    private static func writeRecord(_ entries: [Entry], generation: Int64, token: PKCS11Token, force: ForceID,
                                    session: CK_SESSION_HANDLE) throws
    {
        let label = "vault-state:\(force)"
        let older = try token.readData(label: label, application: application, session: session)
        try token.createData(recordBytes(entries, generation: generation, force: force), label: label,
                             application: application, session: session)
        // Only records older than this one go; a newer one (another writer's) is never destroyed.
        for record in older {
            let stale = (try? parseRecord(record.value, label: label, token: token, force: force).generation)
                .map { $0 < generation } ?? true
            if stale { try token.destroyObject(record.handle, session: session) }
        }
    }

    private static func recordBytes(_ entries: [Entry], generation: Int64, force: ForceID) -> [UInt8] {
        JSONValue.object([
            "format": .string(recordFormat), "force": .string(force.rawValue), "generation": .integer(generation),
            "keys": .array(entries.map { entry in
                .object(["id": .string(entry.id.description), "kind": .string(entry.kind.rawValue),
                         "state": .string(entry.state.rawValue), "created": .string(entry.created)])
            }),
        ]).canonicalBytes()
    }

    /// Logs every key the record says is alive but whose object is gone from the token.
    private func checkObjects() throws {
        let alive = record.withLock { $0.entries.filter { $0.state != .destroyed }.map(\.id) }
        let missing = try token.withSession("check objects") { session in
            try alive.filter { try token.findKey($0.description, session: session) == nil }
        }
        for id in missing {
            logger.error("key object missing from the token: it was deleted outside the vault", metadata: [
                "force": "\(force)", "kek": "\(id)", "token": "\(token.label)",
            ])
        }
    }

    /// Applies `change` to a copy of the record, stores the copy on the token, and only then makes it current.
    private func mutate<R: Sendable>(_ operation: String, _ change: (inout Record, CK_SESSION_HANDLE) throws -> R)
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
                    if parsed.generation > next.generation {
                        next = Record(entries: parsed.entries, generation: parsed.generation)
                    }
                }
                let result = try change(&next, session)
                next.generation += 1
                try Self.writeRecord(next.entries, generation: next.generation, token: token, force: force,
                                     session: session)
                record.withLock { $0 = next }
                return result
            }
        }
    }

    // MARK: KeyCustodian

    public func activeMasterKey() async throws -> KEKID {
        if let active = record.withLock({ $0.activeMaster }) { return active.id }
        if let active = earlier?.activeMasterIfAny { return active }
        throw CustodyError(.keyringInconsistent, "force \(force) has no active master key")
    }

    public func rotate() async throws -> KEKID {
        let next = try mutate("rotate") { record, session -> KEKID in
            // Worked out under the writer lock from the newest record, so two rotations never pick one version.
            let next = KEKID.master(force: force, version: max(record.highestMasterVersion,
                                                               earlier?.highestMasterVersion ?? 0) + 1)
            guard record.entry(next) == nil else {
                throw CustodyError(.keyringInconsistent, "\(next) is already recorded on token \(token.label)")
            }
            // A key object left by a rotation interrupted before its record was written never wrapped anything.
            if let orphan = try token.findKey(next.description, session: session) {
                try token.destroyObject(orphan, session: session)
                token.forget(next.description)
            }
            _ = try token.generateKey(label: next.description, session: session)
            for index in record.entries.indices where record.entries[index].kind == .master
                && record.entries[index].state == .active
            {
                record.entries[index].state = .retiring
            }
            record.entries.append(Entry(id: next, kind: .master, state: .active, created: Timestamp.now()))
            return next
        }
        // The first rotation onto the token ends the earlier keyring's term as the active custody.
        if let earlier, earlier.activeMasterIfAny != nil { try earlier.handOver() }
        logger.notice("master key rotated", metadata: ["force": "\(force)", "kek": "\(next)",
                                                       "token": "\(token.label)"])
        return next
    }

    public func migrate(to backend: String) async throws -> KEKID {
        guard backend == "pkcs11" else {
            throw CustodyError(.unsupportedBackend, "force \(force) can move to \"pkcs11\" only, not \"\(backend)\"")
        }
        guard let earlier, earlier.activeMasterIfAny != nil else {
            throw CustodyError(.keyStateConflict, "force \(force)'s active master key is already on token "
                                + "\(token.label): there is nothing to migrate")
        }
        return try await rotate()
    }

    public func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try checkForce(context)
        guard let active = record.withLock({ $0.activeMaster }) else {
            guard let earlier else { throw CustodyError(.keyringInconsistent, "force \(force) has no active key") }
            return try await earlier.generateDataKey(for: context)
        }
        let key = SecureBytes.random(count: 32)
        return DataKey(key: key, wrapped: try wrap(key, under: active.id, context: context))
    }

    public func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        try justification.check(unwrapUnder: wrapped.kek)
        let key = try unwrapChecked(wrapped, context: context)
        logger.custodyUnwrap(force: force, kek: wrapped.kek, context: context, justification: justification)
        return key
    }

    public func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        try justification.checkRewrap()
        let result = try rewrapOne(wrapped, context: context, to: kek)
        logger.custodyRewrap(force: force, from: wrapped.kek, to: kek, context: context, justification: justification)
        return result
    }

    public func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        try justification.checkRewrap()
        // The target's handle is checked once for the batch, not once per key.
        if try tokenEntry(kek) != nil {
            let label = kek.description
            _ = try token.withSession("check target") { try token.key(label, session: $0, verified: true) }
        }
        var failed = 0
        var results: [Result<WrappedKey, CustodyError>] = []
        results.reserveCapacity(items.count)
        for item in items {
            do {
                results.append(.success(try rewrapOne(item.wrapped, context: item.context, to: kek,
                                                      targetVerified: true)))
            } catch let error as CustodyError where !error.isTransient {
                failed += 1
                results.append(.failure(error))
            }
        }
        logger.custodyRewrapBatch(force: force, to: kek, count: items.count, failed: failed,
                                  justification: justification)
        return results
    }

    public func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        let id = KEKID.archive(force: force, extract: extract)
        // Created in the keyring before the move (an archival retried across it): it stays there, one key per id.
        if record.withLock({ $0.entry(id) }) == nil, let earlier, earlier.holds(id) {
            return try await earlier.createArchiveKey(for: extract)
        }
        if let existing = record.withLock({ $0.entry(id) }) {
            // Idempotent for a retried archival; a destroyed archive key is never brought back.
            guard existing.state == .active else {
                throw CustodyError(.keyDestroyed, "archive key \(id) was destroyed and cannot be recreated")
            }
            return id
        }
        try mutate("create an archive key") { record, session in
            if record.entry(id) != nil { return }
            // An object left by an interrupted creation never wrapped anything; it is adopted.
            if try token.findKey(id.description, session: session) == nil {
                _ = try token.generateKey(label: id.description, session: session)
            }
            record.entries.append(Entry(id: id, kind: .archive, state: .active, created: Timestamp.now()))
        }
        logger.notice("archive key created", metadata: ["force": "\(force)", "kek": "\(id)"])
        return id
    }

    public func retire(_ kek: KEKID) async throws {
        if record.withLock({ $0.entry(kek) }) == nil, let earlier, earlier.holds(kek) {
            return try await earlier.retire(kek)
        }
        try mutate("retire") { record, _ in
            guard let index = record.positions[kek] else {
                throw CustodyError(.unknownKey, "no key \(kek) in the custody of force \(force)")
            }
            let entry = record.entries[index]
            guard entry.kind == .master else { throw CustodyError(.keyStateConflict, "\(kek) is not a master key") }
            switch entry.state {
            case .retiring: record.entries[index].state = .retired
            case .retired: return
            case .active:
                throw CustodyError(.keyStateConflict, "\(kek) is the active master key; rotate before retiring it")
            case .destroyed: throw CustodyError(.keyDestroyed, "\(kek) is already destroyed")
            }
        }
        logger.notice("master key retired", metadata: ["force": "\(force)", "kek": "\(kek)"])
    }

    public func destroy(_ kek: KEKID) async throws { try await destroy([kek]) }

    public func destroy(_ keks: [KEKID]) async throws {
        guard !keks.isEmpty else { return }
        let inEarlier = keks.filter { kek in record.withLock { $0.entry(kek) } == nil && earlier?.holds(kek) == true }
        if let earlier, !inEarlier.isEmpty { try await earlier.destroy(inEarlier) }
        let onToken = keks.filter { !inEarlier.contains($0) }
        guard !onToken.isEmpty else { return }
        var destroyed = 0
        try mutate("destroy") { record, session in
            destroyed = 0
            for kek in onToken {
                guard let index = record.positions[kek] else {
                    throw CustodyError(.unknownKey, "no key \(kek) in the custody of force \(force)")
                }
                let entry = record.entries[index]
                switch (entry.kind, entry.state) {
                case (_, .destroyed): continue
                case (.master, .retired), (.archive, _):
                    // Already gone (an interrupted destroy, or deleted outside the vault): the record catches up.
                    if let handle = try token.findKey(kek.description, session: session) {
                        try token.destroyObject(handle, session: session)
                    }
                    token.forget(kek.description)
                    record.entries[index].state = .destroyed
                    destroyed += 1
                case (.master, let current):
                    throw CustodyError(.keyStateConflict,
                                       "\(kek) is \(current.rawValue): only a retired master key can be destroyed")
                }
            }
        }
        logger.notice("keys destroyed", metadata: ["force": "\(force)", "count": "\(destroyed)",
                                                   "first": "\(onToken.first.map { "\($0)" } ?? "-")",
                                                   "token": "\(token.label)"])
    }

    public func status() async throws -> [KeyInfo] {
        // The token's record as it is now: another instance sharing the token may have changed it.
        try adoptNewerRecord()
        return (try await earlier?.status() ?? []) + record.withLock { $0.entries.map(\.info) }
    }

    /// Reads the newest state record on the token and keeps it when it is newer than the one held here.
    private func adoptNewerRecord() throws {
        guard let fresh = try Self.readRecordWithGeneration(token: token, force: force) else { return }
        writer.withLock { _ in
            record.withLock { current in
                if fresh.generation > current.generation {
                    current = Record(entries: fresh.entries, generation: fresh.generation)
                }
            }
        }
    }

    // MARK: Wrapping

    private func checkForce(_ context: WrapContext) throws {
        guard context.force == force else {
            throw CustodyError(.wrongForce, "context is for force \(context.force); this custody holds force \(force)")
        }
    }

    private func rewrapOne(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, targetVerified: Bool = false)
        throws -> WrappedKey
    {
        try KeyringCustody.checkRewrapRoute(from: wrapped.kek, to: kek, context: context)
        let key = try unwrapChecked(wrapped, context: context)
        return try wrap(key, under: kek, context: context, verified: !targetVerified)
    }

    /// The entry of a key held on the token; after a miss the record is read again, in case another vaultd
    /// instance sharing the token created the key.
    private func tokenEntry(_ kek: KEKID) throws -> Entry? {
        if let entry = record.withLock({ $0.entry(kek) }) { return entry }
        guard earlier?.holds(kek) != true else { return nil }
        try adoptNewerRecord()
        return record.withLock { $0.entry(kek) }
    }

    private func unwrapChecked(_ wrapped: WrappedKey, context: WrapContext) throws -> SecureBytes {
        try checkForce(context)
        guard wrapped.kek.force == force else {
            throw CustodyError(.wrongForce, "wrapped key is under \(wrapped.kek), a key of another force")
        }
        guard let entry = try tokenEntry(wrapped.kek) else {
            if let earlier, earlier.holds(wrapped.kek) {
                return try earlier.unwrapForRewrap(wrapped, context: context)
            }
            throw CustodyError(.unknownKey, "no key \(wrapped.kek) in the custody of force \(force)")
        }
        guard entry.state != .destroyed else {
            throw CustodyError(.keyDestroyed, "\(wrapped.kek) was destroyed; what it wrapped cannot be recovered")
        }
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

    /// `verified`: check the cached handle of `kek` still names it before wrapping (a batch checks it once).
    private func wrap(_ key: SecureBytes, under kek: KEKID, context: WrapContext, verified: Bool = true)
        throws -> WrappedKey
    {
        guard let target = try tokenEntry(kek) else {
            if let earlier, earlier.holds(kek) { return try earlier.wrap(key, under: kek, context: context) }
            throw CustodyError(.unknownKey, "no key \(kek) in the custody of force \(force)")
        }
        guard target.state == .active else {
            throw CustodyError(.keyStateConflict, "cannot wrap under \(kek): it is \(target.state.rawValue)")
        }
        let iv = SecureRandom.bytes(count: WrappedKey.ivByteCount)
        let label = kek.description
        let sealed = try token.withSession("wrap") { session in
            try token.encrypt(key: try token.key(label, session: session, verified: verified), iv: iv,
                              aad: context.additionalData(kek: kek), plaintext: key, session: session)
        }
        return try WrappedKey(kek: kek, iv: iv, ciphertext: sealed)
    }
}
