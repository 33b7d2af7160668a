import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Keyring custody (DESIGN 5.3 and 6.1): a force's keys in one passphrase-sealed file.
///
/// The passphrase is stretched once with Argon2id when the keyring is opened; the resulting sealing key and the
/// keys themselves stay in secure memory for the object's lifetime. A writable keyring holds an exclusive lock on
/// `PATH.lock`; every change is written durably (temporary file, fsync, rename, directory fsync) with a fresh nonce
/// before it takes effect in memory, so a failed write changes nothing.
public final class KeyringCustody: KeyCustodian {
    public enum Mode: Sendable {
        /// Reads and unwraps; every change is refused. Takes no lock.
        case readOnly
        /// Takes the writer lock for the object's lifetime.
        case readWrite
        /// For several vaultd instances sharing the keyring file: each change takes the writer lock only while it
        /// runs and starts from the file as it is then. `status()` reads the file again every time, and
        /// `activeMasterKey()` whenever the file changed, so decisions (what to rewrap, what to destroy, what to wrap
        /// under) never rest on a stale copy; unwrap picks other instances' changes up within `recheckInterval` (a
        /// second by default), and at once when it meets a key this copy does not know.
        case shared
    }

    /// When the keyring file was last read or written here, to notice other instances' changes.
    private struct Freshness {
        var stamp: FileStamp?
        var checked = ContinuousClock.now
    }

    private struct State: Sendable {
        /// Which keys exist and in which state: every rule of their use and change.
        var table: KeyTable
        /// The bytes of every key not destroyed.
        var keys: [KEKID: SecureBytes]
        var salt: [UInt8]
        var parameters: Argon2id.Parameters
        var sealingKey: SecureBytes
        /// Counts the changes made to this copy (local writes and re-reads), so a re-read that raced a local write
        /// does not replace the newer state.
        var version = 0

        init(table: KeyTable, keys: [KEKID: SecureBytes], salt: [UInt8], parameters: Argon2id.Parameters,
             sealingKey: SecureBytes)
        {
            self.table = table
            self.keys = keys
            self.salt = salt
            self.parameters = parameters
            self.sealingKey = sealingKey
        }

        /// The bytes of `kek` for wrapping under it: it must be active.
        func wrappingKey(_ kek: KEKID) throws -> (id: KEKID, key: SecureBytes) {
            let target = try table.wrapTarget(kek)
            guard let key = keys[target.id] else { throw CustodyError(.keyDestroyed, "\(kek) was destroyed") }
            return (target.id, key)
        }

        /// The bytes of the key `wrapped` is under, for unwrapping: of this force, present and not destroyed.
        func unwrappingKey(_ wrapped: WrappedKey, context: WrapContext) throws -> SecureBytes {
            _ = try table.unwrapSource(wrapped, context: context)
            guard let key = keys[wrapped.kek] else {
                throw CustodyError(.keyDestroyed, "\(wrapped.kek) was destroyed; what it wrapped cannot be recovered")
            }
            return key
        }
    }

    public let force: ForceID
    public let path: String
    public let mode: Mode
    private let state: Mutex<State>
    private let lock: ExclusiveFileLock?
    /// Held for the object's lifetime: shared in shared mode, exclusive for a lifetime writer.
    private let serving: ExclusiveFileLock?
    private let logger: Logger
    private let freshness: Mutex<Freshness>
    /// Shared mode: how long the unwrap path trusts its copy before it looks at the file's stamp again.
    private let recheckInterval: Duration

    private init(force: ForceID, path: String, mode: Mode, state: State, lock: ExclusiveFileLock?,
                 serving: ExclusiveFileLock? = nil, recheckInterval: Duration = .seconds(1), logger: Logger) {
        self.serving = serving
        self.recheckInterval = recheckInterval
        self.force = force
        self.path = path
        self.mode = mode
        self.state = Mutex(state)
        self.lock = lock
        self.logger = logger
        freshness = Mutex(Freshness(stamp: FileStamp(path: path)))
    }

    /// In shared mode, re-reads the keyring file if another instance changed it since it was last read here; at
    /// most once per `recheckInterval` unless `now`. A file that cannot be read or opened keeps the keys held in
    /// memory (logged).
    private func refresh(now: Bool = false) {
        guard mode == .shared else { return }
        let due = freshness.withLock { freshness -> Bool in
            guard now || freshness.checked.duration(to: .now) >= recheckInterval else { return false }
            freshness.checked = .now
            return true
        }
        guard due, let stamp = FileStamp(path: path) else { return }
        guard freshness.withLock({ $0.stamp }) != stamp else { return }
        do {
            try state.withLock { current in
                current = try reloaded(current)
                freshness.withLock { $0.stamp = stamp }
            }
        } catch {
            logger.error("cannot re-read the shared keyring; keeping the keys in memory",
                         metadata: ["force": "\(force)", "error": "\(error)"])
        }
    }

    /// In shared mode, the keyring as the file holds it now, whatever its stamp says (a shared mount may cache
    /// attributes). The file is read and opened outside the state lock, so unwraps go on meanwhile; a local change
    /// made in between is kept (it started from the file under the writer lock, so it is at least as new).
    private func reloadFromFile() throws {
        guard mode == .shared else { return }
        let stamp = FileStamp(path: path)
        let (copy, version) = state.withLock { ($0, $0.version) }
        let fresh: State
        do {
            fresh = try reloaded(copy)
        } catch let error as CustodyError {
            throw CustodyError(.io, "cannot read the shared keyring \(path): \(error.message)",
                               underlying: error.underlying)
        }
        state.withLock { current in
            guard current.version == version else { return }
            current = fresh
            freshness.withLock { $0.stamp = stamp }
        }
    }

    /// The keyring as the file holds it now, opened with the sealing key in memory (another instance cannot change
    /// the passphrase of a shared keyring without all instances restarting).
    private func reloaded(_ current: State) throws -> State {
        let bytes = try DurableFile.read(path, limit: KeyringDocument.maximumFileSize)
        let document = try KeyringDocument(bytes: bytes, path: path)
        guard document.force == force, document.salt == current.salt, document.parameters == current.parameters else {
            throw CustodyError(.keyStateConflict, "the shared keyring \(path) was re-sealed (new passphrase or force); "
                                + "restart every vaultd instance with the new passphrase")
        }
        let (table, keys) = try document.open(sealingKey: current.sealingKey, path: path, allowHandedOver: true)
        var state = State(table: table, keys: keys, salt: current.salt, parameters: current.parameters,
                          sealingKey: current.sealingKey)
        state.version = current.version &+ 1
        return state
    }

    /// In shared mode, looks in the file once more when this copy does not know `kek` (another instance may have
    /// created it).
    private func lookForUnknown(_ kek: KEKID) {
        guard mode == .shared, !state.withLock({ $0.table.holds(kek) }) else { return }
        refresh(now: true)
    }

    static func lockPath(_ path: String) -> String { path + ".lock" }

    /// Creates a keyring for `force` at `path` with master key version 1 active. Refuses to overwrite a file.
    public static func create(
        at path: String, force: ForceID, passphrase: SecureBytes, parameters: Argon2id.Parameters = .moderate,
        logger: Logger
    ) throws -> KeyringCustody {
        try Passphrase.checkStrength(passphrase)
        let lock = try ExclusiveFileLock(path: lockPath(path), protecting: "keyring \(path)")
        guard access(path, F_OK) != 0 else {
            throw CustodyError(.alreadyExists, "\(path) already exists; not overwriting it")
        }
        let salt = SecureRandom.bytes(count: Argon2id.saltByteCount)
        let sealingKey = try Argon2id.deriveKey(passphrase: passphrase, salt: salt, parameters: parameters)
        let table = KeyTable.first(force: force, created: Timestamp.now())
        let first = table.entries[0]
        let state = State(table: table, keys: [first.id: SecureBytes.random(count: 32)], salt: salt,
                          parameters: parameters, sealingKey: sealingKey)
        try write(state, force: force, to: path, replacing: false)
        logger.notice("keyring created", metadata: ["force": "\(force)", "kek": "\(first.id)", "path": "\(path)"])
        return KeyringCustody(force: force, path: path, mode: .readWrite, state: state, lock: lock, logger: logger)
    }

    /// Opens an existing keyring. With `expectedForce`, a keyring of another force is refused before the
    /// passphrase is even tried.
    /// `recheckInterval` (shared mode): how long unwraps trust this copy before looking at the file again.
    public static func open(
        at path: String, passphrase: SecureBytes, expectedForce: ForceID? = nil, mode: Mode = .readOnly,
        recheckInterval: Duration = .seconds(1), logger: Logger
    ) throws -> KeyringCustody {
        try open(at: path, passphrase: passphrase, expectedForce: expectedForce, mode: mode, allowHandedOver: false,
                 recheckInterval: recheckInterval, logger: logger)
    }

    /// `allowHandedOver`: the PKCS#11 custody opens the force's earlier keyring, which may have no active master key.
    static func open(
        at path: String, passphrase: SecureBytes, expectedForce: ForceID?, mode: Mode, allowHandedOver: Bool,
        recheckInterval: Duration = .seconds(1), logger: Logger
    ) throws -> KeyringCustody {
        // vaultd instances serving the keyring in shared mode hold `PATH.serving` shared; a lifetime writer (the
        // CLI, or vaultd on the embedded default) needs it exclusively, so it cannot change keys behind them.
        let serving: ExclusiveFileLock?
        switch mode {
        case .readOnly: serving = nil
        case .shared:
            serving = try ExclusiveFileLock(path: path + ".serving", protecting: "keyring \(path)", shared: true)
        case .readWrite:
            do {
                serving = try ExclusiveFileLock(path: path + ".serving", protecting: "keyring \(path)")
            } catch let error as CustodyError where error.code == .keyringLocked {
                throw CustodyError(.keyringLocked, "keyring \(path) is served by vaultd (shared mode); use "
                                    + "`vault keys ...` through vaultd")
            }
        }
        let lock = mode == .readWrite
            ? try ExclusiveFileLock(path: lockPath(path), protecting: "keyring \(path)") : nil
        let bytes: [UInt8]
        do {
            bytes = try DurableFile.read(path, limit: KeyringDocument.maximumFileSize)
        } catch let error as CustodyError {
            throw CustodyError(.io, "cannot read keyring: \(error.message)", underlying: error.underlying)
        }
        let document = try KeyringDocument(bytes: bytes, path: path)
        if let expectedForce, expectedForce != document.force {
            throw CustodyError(.wrongForce,
                               "keyring \(path) belongs to force \(document.force), not to force \(expectedForce)")
        }
        let sealingKey = try Argon2id.deriveKey(passphrase: passphrase, salt: document.salt,
                                                parameters: document.parameters)
        let (table, keys) = try document.open(sealingKey: sealingKey, path: path, allowHandedOver: allowHandedOver)
        let state = State(table: table, keys: keys, salt: document.salt, parameters: document.parameters,
                          sealingKey: sealingKey)
        return KeyringCustody(force: document.force, path: path, mode: mode, state: state, lock: lock,
                              serving: serving, recheckInterval: recheckInterval, logger: logger)
    }

    private static func write(_ state: State, force: ForceID, to path: String, replacing: Bool = true) throws {
        let document = try KeyringDocument.seal(table: state.table, keys: state.keys, salt: state.salt,
                                                parameters: state.parameters, sealingKey: state.sealingKey)
        try DurableFile.write(document.bytes, to: path, permissions: 0o600, replacing: replacing)
    }

    /// Applies `change` to a copy of the state, writes the copy durably, and only then makes it current.
    private func mutate<R>(_ operation: String, _ change: (inout State) throws -> R) throws -> R {
        guard mode != .readOnly else {
            throw CustodyError(.readOnly, "keyring \(path) is open read-only; \(operation) needs the writer lock")
        }
        // Shared: the writer lock for this change only, waiting up to 10 s for another instance's change to end.
        var changeLock: ExclusiveFileLock?
        if mode == .shared {
            let deadline = ContinuousClock.now.advanced(by: .seconds(10))
            while changeLock == nil {
                do {
                    changeLock = try ExclusiveFileLock(path: Self.lockPath(path), protecting: "keyring \(path)")
                } catch let error as CustodyError where error.code == .keyringLocked && ContinuousClock.now < deadline {
                    usleep(20_000)
                }
            }
        }
        defer { withExtendedLifetime(changeLock) {} }
        return try state.withLock { current in
            if mode == .shared {
                // Start from the file as it is now, whatever its stamp says (a shared mount may cache attributes):
                // another instance may have changed it.
                current = try reloaded(current)
            }
            var next = current
            let result = try change(&next)
            next.version = current.version &+ 1
            do {
                try Self.write(next, force: force, to: path)
            } catch let error as CustodyError where error.code == .notDurable {
                // The new keyring is already in place; memory must follow the file, or a later write would undo
                // this change (re-sealing a destroyed key, dropping a new master key).
                current = next
                throw error
            }
            current = next
            freshness.withLock { $0.stamp = FileStamp(path: path) }
            return result
        }
    }

    // MARK: KeyCustodian

    public func activeMasterKey() async throws -> KEKID { try activeMasterKeyBytes().id }

    private func activeMasterKeyBytes() throws -> (id: KEKID, key: SecureBytes) {
        // What new keys are wrapped under: checked against the file's stamp on every call (a stat).
        refresh(now: true)
        return try state.withLock { state in
            guard let active = state.table.activeMaster else {
                throw CustodyError(.keyStateConflict, "the keyring of force \(force) has no active master key: the "
                                    + "force moved to its PKCS#11 token")
            }
            return try state.wrappingKey(active.id)
        }
    }

    public func rotate() async throws -> KEKID {
        let id = try mutate("rotate") { state -> KEKID in
            let next = state.table.nextMaster()
            try state.table.rotate(to: next, created: Timestamp.now())
            state.keys[next] = SecureBytes.random(count: 32)
            return next
        }
        logger.notice("master key rotated", metadata: ["force": "\(force)", "kek": "\(id)"])
        return id
    }

    public func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try state.withLock { try $0.table.checkForce(context) }
        let active = try activeMasterKeyBytes()
        let key = SecureBytes.random(count: 32)
        return DataKey(key: key, wrapped: try wrap(key, under: active, context: context))
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
        lookForUnknown(kek)
        let target = try state.withLock { try $0.wrappingKey(kek) }
        let result = try wrap(try unwrapForRewrap(wrapped, context: context), under: target, context: context)
        logger.custodyRewrap(force: force, from: wrapped.kek, to: kek, context: context, justification: justification)
        return result
    }

    public func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        try justification.checkRewrap()
        refresh()
        lookForUnknown(kek)
        for source in Set(items.map(\.wrapped.kek)) { lookForUnknown(source) }
        // One look at the state for the whole batch, not one per key.
        let current = state.withLock { $0 }
        let target = try current.wrappingKey(kek)
        return try RewrapItem.batch(items, to: kek, force: force, justification: justification, logger: logger) { item in
            do {
                let key = try Self.open(item.wrapped, context: item.context,
                                        key: try current.unwrappingKey(item.wrapped, context: item.context))
                return try Self.seal(key, under: target, context: item.context)
            } catch let error as CustodyError {
                throw error
            } catch {
                throw CustodyError(.cryptoLibraryFailure, String(describing: error))
            }
        }
    }

    public func destroy(_ keks: [KEKID]) async throws { try await destroy(keks, forgetting: []) }

    public func forgetDestroyed(_ keks: [KEKID]) async throws { try await destroy([], forgetting: keks) }

    public func destroy(_ keks: [KEKID], forgetting: [KEKID]) async throws {
        guard !keks.isEmpty || !forgetting.isEmpty else { return }
        let (destroyed, forgotten) = try mutate(keks.isEmpty ? "forget destroyed keys" : "destroy") { state in
            let destroyed = try state.table.destroy(keks)
            for kek in destroyed { state.keys[kek] = nil }
            return (destroyed, forgetting.isEmpty ? [] : try state.table.forget(forgetting))
        }
        if !keks.isEmpty {
            logger.notice("keys destroyed", metadata: ["force": "\(force)", "count": "\(destroyed.count)",
                                                       "first": "\(destroyed.first.map { "\($0)" } ?? "-")"])
        }
        if !forgotten.isEmpty {
            logger.notice("destroyed archive keys' tombstones removed", metadata: [
                "force": "\(force)", "count": "\(forgotten.count)"])
        }
    }

    public func states(of keks: Set<KEKID>) async throws -> [KEKID: KeyState] {
        try reloadFromFile()
        return state.withLock { state in
            var states: [KEKID: KeyState] = [:]
            for kek in keks { if let entry = state.table.entry(kek) { states[kek] = entry.state } }
            return states
        }
    }

    /// Creates archive keys for many extracts with one durable write (used to seed benchmarks and bulk archival).
    public func createArchiveKeys(for extracts: [ExtractID]) throws -> [KEKID] {
        try mutate("create archive keys") { state in
            try extracts.map { extract in
                let id = KEKID.archive(force: force, extract: extract)
                if try state.table.addArchiveKey(id, created: Timestamp.now()) {
                    state.keys[id] = SecureBytes.random(count: 32)
                }
                return id
            }
        }
    }

    public func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        let id = try createArchiveKeys(for: [extract])[0]
        logger.notice("archive key created", metadata: ["force": "\(force)", "kek": "\(id)"])
        return id
    }

    public func retire(_ kek: KEKID) async throws {
        try mutate("retire") { state in _ = try state.table.retire(kek) }
        logger.notice("master key retired", metadata: ["force": "\(force)", "kek": "\(kek)"])
    }

    public func destroy(_ kek: KEKID) async throws { try await destroy([kek]) }

    public func status() async throws -> [KeyInfo] {
        try reloadFromFile()
        return state.withLock { $0.table.infos }
    }

    // MARK: Keyring-specific operations

    /// Re-seals the keyring under a new passphrase, with a new salt (and optionally new KDF limits).
    public func changePassphrase(to newPassphrase: SecureBytes, parameters: Argon2id.Parameters? = nil) throws {
        try Passphrase.checkStrength(newPassphrase)
        // Argon2id takes a while: derive before taking the lock so unwraps are not held up.
        let parameters = parameters ?? kdfParameters
        let salt = SecureRandom.bytes(count: Argon2id.saltByteCount)
        let sealingKey = try Argon2id.deriveKey(passphrase: newPassphrase, salt: salt, parameters: parameters)
        try mutate("change the passphrase") { state in
            state.sealingKey = sealingKey
            state.salt = salt
            state.parameters = parameters
        }
        logger.notice("keyring passphrase changed", metadata: ["force": "\(force)"])
    }

    /// The KDF limits the keyring is sealed with.
    public var kdfParameters: Argon2id.Parameters { state.withLock { $0.parameters } }

    /// Marks the active master key `retiring` without creating a new one: the new active master key now lives on
    /// the force's token. The keyring then has no active master key, which only a `MigratingCustody` accepts.
    func handOver() throws {
        try mutate("hand over to the token") { state in state.table.handOver() }
        logger.notice("keyring master key handed over to the force's token", metadata: ["force": "\(force)"])
    }

    // MARK: Wrapping

    /// Unwraps without a purpose check: for a rewrap whose purpose the caller has checked.
    func unwrapForRewrap(_ wrapped: WrappedKey, context: WrapContext) throws -> SecureBytes {
        // Shared: a key another instance destroyed is gone here too within a second.
        refresh()
        lookForUnknown(wrapped.kek)
        let key = try state.withLock { try $0.unwrappingKey(wrapped, context: context) }
        return try Self.open(wrapped, context: context, key: key)
    }

    /// Wraps `key` under `kek`, which must be an active key of this keyring.
    func wrap(_ key: SecureBytes, under kek: KEKID, context: WrapContext) throws -> WrappedKey {
        lookForUnknown(kek)
        return try wrap(key, under: try state.withLock { try $0.wrappingKey(kek) }, context: context)
    }

    private func wrap(_ key: SecureBytes, under target: (id: KEKID, key: SecureBytes), context: WrapContext) throws
        -> WrappedKey
    {
        try state.withLock { try $0.table.checkForce(context) }
        return try Self.seal(key, under: target, context: context)
    }

    private static func open(_ wrapped: WrappedKey, context: WrapContext, key kek: SecureBytes) throws -> SecureBytes {
        let ciphertext = Array(wrapped.ciphertext.prefix(32))
        let tag = Array(wrapped.ciphertext.suffix(16))
        do {
            return try AESGCM.open(key: kek, nonce: wrapped.iv, ciphertext: ciphertext, tag: tag,
                                   aad: context.additionalData(kek: wrapped.kek))
        } catch let error as CustodyError where error.code == .authenticationFailure {
            throw CustodyError(.contextMismatch,
                               "wrapped key under \(wrapped.kek) does not authenticate for \(context) "
                                   + "(it belongs to another extract, or was altered)")
        }
    }

    private static func seal(_ key: SecureBytes, under target: (id: KEKID, key: SecureBytes), context: WrapContext)
        throws -> WrappedKey
    {
        let iv = SecureRandom.bytes(count: WrappedKey.ivByteCount)
        let (ciphertext, tag) = try key.withUnsafeBytes {
            try AESGCM.seal(key: target.key, nonce: iv, plaintext: $0, aad: context.additionalData(kek: target.id))
        }
        return try WrappedKey(kek: target.id, iv: iv, ciphertext: ciphertext + tag)
    }
}

extension KeyringCustody: TableCustodian {
    func holdsKnown(_ kek: KEKID) -> Bool { state.withLock { $0.table.holds(kek) } }
    var highestMasterVersion: Int { state.withLock { $0.table.highestMasterVersion } }
    var activeMasterIfAny: KEKID? { state.withLock { $0.table.activeMaster?.id } }
    func prepareBatchTarget(_ kek: KEKID) throws {}
}
