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
    private struct FileStamp: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modified: Int64

        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
            size = Int64(info.st_size)
            modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        }
    }

    private struct Freshness {
        var stamp: FileStamp?
        var checked = ContinuousClock.now
    }

    private struct State: Sendable {
        /// In file order, so a rewrite keeps the order an operator sees.
        var entries: [KeyringEntry] { didSet { reindex() } }
        var salt: [UInt8]
        var parameters: Argon2id.Parameters
        var sealingKey: SecureBytes
        /// Counts the changes made to this copy (local writes and re-reads), so a re-read that raced a local write
        /// does not replace the newer state.
        var version = 0
        /// Position of each key in `entries`: unwrap is a hash lookup however many archive keys exist.
        private(set) var positions: [KEKID: Int] = [:]
        private(set) var activeMasterPosition: Int?

        init(entries: [KeyringEntry], salt: [UInt8], parameters: Argon2id.Parameters, sealingKey: SecureBytes) {
            self.entries = entries
            self.salt = salt
            self.parameters = parameters
            self.sealingKey = sealingKey
            reindex()
        }

        private mutating func reindex() {
            positions = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.id, $0) })
            activeMasterPosition = entries.firstIndex { $0.kind == .master && $0.state == .active }
        }

        func entry(_ id: KEKID) -> KeyringEntry? { positions[id].map { entries[$0] } }
        func index(_ id: KEKID) -> Int? { positions[id] }
        /// The active master key; nil only in a keyring handed over to a PKCS#11 token.
        var activeMaster: KeyringEntry? { activeMasterPosition.map { entries[$0] } }
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
        let entries = try document.open(sealingKey: current.sealingKey, path: path, allowHandedOver: true)
        var state = State(entries: entries, salt: current.salt, parameters: current.parameters,
                          sealingKey: current.sealingKey)
        state.version = current.version &+ 1
        return state
    }

    /// The entry of `kek`; in shared mode a key not known here is looked for in the file once more.
    private func entry(_ kek: KEKID) -> KeyringEntry? {
        if let found = state.withLock({ $0.entry(kek) }) { return found }
        guard mode == .shared else { return nil }
        refresh(now: true)
        return state.withLock { $0.entry(kek) }
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
        let first = KeyringEntry(id: .master(force: force, version: 1), kind: .master, state: .active,
                                 created: Timestamp.now(), key: SecureBytes.random(count: 32))
        let state = State(entries: [first], salt: salt, parameters: parameters, sealingKey: sealingKey)
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
        let entries = try document.open(sealingKey: sealingKey, path: path, allowHandedOver: allowHandedOver)
        let state = State(entries: entries, salt: document.salt, parameters: document.parameters,
                          sealingKey: sealingKey)
        return KeyringCustody(force: document.force, path: path, mode: mode, state: state, lock: lock,
                              serving: serving, recheckInterval: recheckInterval, logger: logger)
    }

    private static func write(_ state: State, force: ForceID, to path: String, replacing: Bool = true) throws {
        let document = try KeyringDocument.seal(entries: state.entries, force: force, salt: state.salt,
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

    public func activeMasterKey() async throws -> KEKID { try activeMasterEntry().id }

    private func activeMasterEntry() throws -> KeyringEntry {
        // What new keys are wrapped under: checked against the file's stamp on every call (a stat).
        refresh(now: true)
        guard let active = state.withLock({ $0.activeMaster }) else {
            throw CustodyError(.keyStateConflict, "the keyring of force \(force) has no active master key: the force "
                                + "moved to its PKCS#11 token")
        }
        return active
    }

    public func rotate() async throws -> KEKID {
        let id = try mutate("rotate") { state -> KEKID in
            let versions = state.entries.compactMap { entry -> Int? in
                if case .master(_, let version) = entry.id { return version }
                return nil
            }
            let next = KEKID.master(force: force, version: (versions.max() ?? 0) + 1)
            for index in state.entries.indices where state.entries[index].kind == .master
                && state.entries[index].state == .active
            {
                state.entries[index].state = .retiring
            }
            state.entries.append(KeyringEntry(id: next, kind: .master, state: .active, created: Timestamp.now(),
                                              key: SecureBytes.random(count: 32)))
            return next
        }
        logger.notice("master key rotated", metadata: ["force": "\(force)", "kek": "\(id)"])
        return id
    }

    public func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try checkForce(context)
        let active = try activeMasterEntry()
        let key = SecureBytes.random(count: 32)
        let wrapped = try Self.wrap(key, under: active, context: context)
        return DataKey(key: key, wrapped: wrapped)
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
        try Self.checkRewrapRoute(from: wrapped.kek, to: kek, context: context)
        guard let target = entry(kek) else {
            throw CustodyError(.unknownKey, "no key \(kek) in the keyring of force \(force)")
        }
        guard target.state == .active, target.key != nil else {
            throw CustodyError(.keyStateConflict, "cannot rewrap under \(kek): it is \(target.state.rawValue)")
        }
        let key = try unwrapChecked(wrapped, context: context)
        let result = try Self.wrap(key, under: target, context: context)
        logger.custodyRewrap(force: force, from: wrapped.kek, to: kek, context: context, justification: justification)
        return result
    }

    public func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        try justification.checkRewrap()
        guard let target = entry(kek) else {
            throw CustodyError(.unknownKey, "no key \(kek) in the keyring of force \(force)")
        }
        guard target.state == .active, target.key != nil else {
            throw CustodyError(.keyStateConflict, "cannot rewrap under \(kek): it is \(target.state.rawValue)")
        }
        // Source keys are looked up once per batch, not once per item.
        var sources: [KEKID: KeyringEntry] = [:]
        for item in items where sources[item.wrapped.kek] == nil {
            if let found = entry(item.wrapped.kek) { sources[item.wrapped.kek] = found }
        }
        var failed = 0
        let results = items.map { item -> Result<WrappedKey, CustodyError> in
            do {
                try Self.checkRewrapRoute(from: item.wrapped.kek, to: kek, context: item.context)
                let key = try unwrap(item.wrapped, context: item.context, source: sources[item.wrapped.kek])
                return .success(try Self.wrap(key, under: target, context: item.context))
            } catch let error as CustodyError {
                failed += 1
                return .failure(error)
            } catch {
                failed += 1
                return .failure(CustodyError(.cryptoLibraryFailure, String(describing: error)))
            }
        }
        logger.custodyRewrapBatch(force: force, to: kek, count: items.count, failed: failed,
                                  justification: justification)
        return results
    }

    public func destroy(_ keks: [KEKID]) async throws {
        guard !keks.isEmpty else { return }
        var destroyed: [KEKID] = []
        try mutate("destroy") { state in
            destroyed = []
            for kek in keks {
                guard let index = state.index(kek) else {
                    throw CustodyError(.unknownKey, "no key \(kek) in the keyring of force \(force)")
                }
                let entry = state.entries[index]
                switch (entry.kind, entry.state) {
                case (_, .destroyed): continue
                case (.master, .retired), (.archive, _):
                    state.entries[index].state = .destroyed
                    state.entries[index].key = nil
                    destroyed.append(kek)
                case (.master, let current):
                    throw CustodyError(.keyStateConflict,
                                       "\(kek) is \(current.rawValue): only a retired master key can be destroyed")
                }
            }
        }
        logger.notice("keys destroyed", metadata: ["force": "\(force)", "count": "\(destroyed.count)",
                                                   "first": "\(destroyed.first.map { "\($0)" } ?? "-")"])
    }

    /// Creates archive keys for many extracts with one durable write (used to seed benchmarks and bulk archival).
    public func createArchiveKeys(for extracts: [ExtractID]) throws -> [KEKID] {
        try mutate("create archive keys") { state in
            var ids: [KEKID] = []
            for extract in extracts {
                let id = KEKID.archive(force: force, extract: extract)
                if let existing = state.entry(id) {
                    guard existing.state == .active else {
                        throw CustodyError(.keyDestroyed, "archive key \(id) was destroyed and cannot be recreated")
                    }
                } else {
                    state.entries.append(KeyringEntry(id: id, kind: .archive, state: .active,
                                                      created: Timestamp.now(), key: SecureBytes.random(count: 32)))
                }
                ids.append(id)
            }
            return ids
        }
    }

    public func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        let id = KEKID.archive(force: force, extract: extract)
        try mutate("create an archive key") { state in
            if let existing = state.entry(id) {
                // Idempotent for a retried archival; a destroyed archive key is never brought back.
                guard existing.state == .active else {
                    throw CustodyError(.keyDestroyed, "archive key \(id) was destroyed and cannot be recreated")
                }
                return
            }
            state.entries.append(KeyringEntry(id: id, kind: .archive, state: .active, created: Timestamp.now(),
                                              key: SecureBytes.random(count: 32)))
        }
        logger.notice("archive key created", metadata: ["force": "\(force)", "kek": "\(id)"])
        return id
    }

    public func retire(_ kek: KEKID) async throws {
        try mutate("retire") { state in
            guard let index = state.index(kek) else {
                throw CustodyError(.unknownKey, "no key \(kek) in the keyring of force \(force)")
            }
            let entry = state.entries[index]
            guard entry.kind == .master else { throw CustodyError(.keyStateConflict, "\(kek) is not a master key") }
            switch entry.state {
            case .retiring: state.entries[index].state = .retired
            case .retired: return
            case .active:
                throw CustodyError(.keyStateConflict, "\(kek) is the active master key; rotate before retiring it")
            case .destroyed: throw CustodyError(.keyDestroyed, "\(kek) is already destroyed")
            }
        }
        logger.notice("master key retired", metadata: ["force": "\(force)", "kek": "\(kek)"])
    }

    public func destroy(_ kek: KEKID) async throws {
        try mutate("destroy") { state in
            guard let index = state.index(kek) else {
                throw CustodyError(.unknownKey, "no key \(kek) in the keyring of force \(force)")
            }
            let entry = state.entries[index]
            switch (entry.kind, entry.state) {
            case (_, .destroyed): return
            case (.master, .retired), (.archive, _):
                state.entries[index].state = .destroyed
                state.entries[index].key = nil
            case (.master, let current):
                throw CustodyError(.keyStateConflict,
                                   "\(kek) is \(current.rawValue): only a retired master key can be destroyed")
            }
        }
        logger.notice("key destroyed", metadata: ["force": "\(force)", "kek": "\(kek)"])
    }

    public func status() async throws -> [KeyInfo] {
        try reloadFromFile()
        return state.withLock { $0.entries.map(\.info) }
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

    // MARK: Used by the PKCS#11 custody while a force moves from this keyring to its token

    /// True when this keyring holds `kek` (destroyed or not).
    func holds(_ kek: KEKID) -> Bool { state.withLock { $0.entry(kek) != nil } }

    /// The highest master key version in this keyring.
    var highestMasterVersion: Int {
        state.withLock { state in
            state.entries.compactMap { entry -> Int? in
                if case .master(_, let version) = entry.id { return version }
                return nil
            }.max() ?? 0
        }
    }

    /// The active master key, if it is still active here (not yet handed over to a token).
    var activeMasterIfAny: KEKID? {
        state.withLock { state in
            state.entries.first { $0.kind == .master && $0.state == .active }?.id
        }
    }

    /// Unwraps without a purpose check: for a rewrap whose purpose the caller has checked.
    func unwrapForRewrap(_ wrapped: WrappedKey, context: WrapContext) throws -> SecureBytes {
        try unwrapChecked(wrapped, context: context)
    }

    /// Wraps `key` under `kek`, which must be an active key of this keyring.
    func wrap(_ key: SecureBytes, under kek: KEKID, context: WrapContext) throws -> WrappedKey {
        guard let target = entry(kek) else {
            throw CustodyError(.unknownKey, "no key \(kek) in the keyring of force \(force)")
        }
        guard target.state == .active, target.key != nil else {
            throw CustodyError(.keyStateConflict, "cannot wrap under \(kek): it is \(target.state.rawValue)")
        }
        return try Self.wrap(key, under: target, context: context)
    }

    /// Marks the active master key `retiring` without creating a new one: the new active master key now lives on
    /// the force's token. The keyring then has no active master key, which only the PKCS#11 custody accepts.
    func handOver() throws {
        try mutate("hand over to the token") { state in
            for index in state.entries.indices where state.entries[index].kind == .master
                && state.entries[index].state == .active
            {
                state.entries[index].state = .retiring
            }
        }
        logger.notice("keyring master key handed over to the force's token", metadata: ["force": "\(force)"])
    }

    // MARK: Wrapping

    private func checkForce(_ context: WrapContext) throws {
        guard context.force == force else {
            throw CustodyError(.wrongForce, "context is for force \(context.force); this custody holds force \(force)")
        }
    }

    private func unwrapChecked(_ wrapped: WrappedKey, context: WrapContext) throws -> SecureBytes {
        // Shared: a key another instance destroyed is gone here too within a second.
        refresh()
        return try unwrap(wrapped, context: context, source: entry(wrapped.kek))
    }

    /// Unwraps with the KEK's entry already looked up (nil when the keyring has no such key).
    private func unwrap(_ wrapped: WrappedKey, context: WrapContext, source: KeyringEntry?) throws -> SecureBytes {
        try checkForce(context)
        guard wrapped.kek.force == force else {
            throw CustodyError(.wrongForce, "wrapped key is under \(wrapped.kek), a key of another force")
        }
        guard let entry = source else {
            throw CustodyError(.unknownKey, "no key \(wrapped.kek) in the keyring of force \(force)")
        }
        guard let kek = entry.key else {
            throw CustodyError(.keyDestroyed, "\(wrapped.kek) was destroyed; what it wrapped cannot be recovered")
        }
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

    /// The only moves a wrapped key may make (DESIGN section 4): from a master key to the active master key
    /// (rotation), or from a master key to the archive key of its own extract (archival). A key under an archive key
    /// never moves again: it is read only through an approved retrieval and dies with that archive key.
    static func checkRewrapRoute(from source: KEKID, to target: KEKID, context: WrapContext) throws {
        guard case .master = source else {
            throw CustodyError(.purposeRefused,
                               "a key wrapped under archive key \(source) cannot be rewrapped; archives are read only "
                                   + "through an approved retrieval")
        }
        if case .archive(_, let extract) = target, extract != context.extract {
            throw CustodyError(.purposeRefused,
                               "\(target) is the archive key of another extract than \(context.extract)")
        }
    }

    static func wrap(_ key: SecureBytes, under entry: KeyringEntry, context: WrapContext) throws -> WrappedKey {
        guard let kek = entry.key else { throw CustodyError(.keyDestroyed, "\(entry.id) was destroyed") }
        let iv = SecureRandom.bytes(count: WrappedKey.ivByteCount)
        let (ciphertext, tag) = try key.withUnsafeBytes {
            try AESGCM.seal(key: kek, nonce: iv, plaintext: $0, aad: context.additionalData(kek: entry.id))
        }
        return try WrappedKey(kek: entry.id, iv: iv, ciphertext: ciphertext + tag)
    }
}
