import Logging

/// The state of a key-encryption key (DESIGN 5.3).
public enum KeyState: String, Sendable, CaseIterable {
    /// Wraps and unwraps. Exactly one master key per force is active.
    case active
    /// Superseded by a newer master key; still unwraps while its wrapped keys are moved.
    case retiring
    /// Nothing should reference it any more; unwrap only.
    case retired
    /// The key bytes are gone; the entry stays as a tombstone for lineage.
    case destroyed
}

/// The kind of a key-encryption key.
public enum KeyKind: String, Sendable {
    case master
    case archive
}

/// What a custody backend says about one of its keys: never the key bytes. Also the entry of a `KeyTable`.
public struct KeyInfo: Sendable, Equatable {
    public let id: KEKID
    public let kind: KeyKind
    public internal(set) var state: KeyState
    /// RFC 3339 UTC creation time as recorded by the backend.
    public let created: String

    public init(id: KEKID, kind: KeyKind, state: KeyState, created: String) {
        self.id = id
        self.kind = kind
        self.state = state
        self.created = created
    }
}

extension [KeyInfo] {
    /// The active master key among these (exactly one in a consistent custody).
    public var activeMaster: KEKID? { first { $0.kind == .master && $0.state == .active }?.id }
}

/// A freshly generated extract key: the plaintext key (in secure memory) and its wrapped form.
public struct DataKey: Sendable {
    public let key: SecureBytes
    public let wrapped: WrappedKey

    public init(key: SecureBytes, wrapped: WrappedKey) {
        self.key = key
        self.wrapped = wrapped
    }
}

/// The custody protocol of DESIGN section 6: one interface, several backends (keyring file, PKCS#11, remote). The
/// vault never learns which backend it talks to.
///
/// Master keys (FMK) wrap the extract keys (EK) of current extracts; archive keys (AK) wrap the EK of one archived
/// extract. Extract keys leave custody only through `generateDataKey` and `unwrap`; `rewrap` moves a wrapped key to
/// another KEK without the key ever leaving custody code.
public protocol KeyCustodian: Sendable {
    /// The force whose keys this custody holds.
    var force: ForceID { get }

    /// The active master key.
    func activeMasterKey() async throws -> KEKID

    /// Creates master key version v+1 as active; the previous active version becomes `retiring`.
    func rotate() async throws -> KEKID

    /// A new random 256-bit extract key, wrapped under the active master key for `context`.
    func generateDataKey(for context: WrapContext) async throws -> DataKey

    /// The same, saying who it is for (purpose `upload`): a remote custody service records and checks it.
    func generateDataKey(for context: WrapContext, justification: Justification) async throws -> DataKey

    /// Unwraps an extract key, after checking the justification's purpose against the KEK's kind.
    func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes

    /// Re-encrypts a wrapped key under another KEK (the active master key, or an archive key).
    func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey

    /// Creates the archive key for an extract.
    func createArchiveKey(for extract: ExtractID) async throws -> KEKID

    /// Marks a `retiring` master key `retired`.
    func retire(_ kek: KEKID) async throws

    /// Destroys a key: its bytes are erased and a tombstone remains. Master keys must be `retired` first.
    func destroy(_ kek: KEKID) async throws

    /// Every key the backend holds, with kinds, states and dates, as the backend holds them now: a backend shared by
    /// several vaultd instances (a keyring in shared mode) reads its shared state again, so a decision taken on this
    /// list (what the rewrap job moves, which archive keys a shred destroys) never rests on a stale copy.
    func status() async throws -> [KeyInfo]

    /// Rewraps many keys under one KEK in one call (a rotation batch): one result per item, in order, so one bad
    /// wrapped key fails alone. Backends answer it with one lock and one log line instead of one per key.
    func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]

    /// Destroys several keys with one durable write (a shredding batch). Already destroyed keys are skipped.
    func destroy(_ keks: [KEKID]) async throws

    /// Removes the tombstones of destroyed archive keys that nothing needs any more (the vault calls it once their
    /// extracts' destruction certificates are complete), with one durable write, so the custody does not grow with
    /// every archive ever shredded. Keys already gone are skipped; a live key is refused. A remote force's custody
    /// service keeps its own tombstones (its log and its keyring are the force's).
    func forgetDestroyed(_ keks: [KEKID]) async throws

    /// `destroy(keks)`, then `forgetDestroyed(forgetting)`, with one durable write where the backend can (a
    /// shredding batch forgets the tombstones of the batch before it as it destroys its own keys).
    func destroy(_ keks: [KEKID], forgetting: [KEKID]) async throws

    /// The states of `keks` as the backend holds them now (read again like `status`); a key it does not hold is
    /// absent. A shredding batch needs a few dozen, not the list of every key.
    func states(of keks: Set<KEKID>) async throws -> [KEKID: KeyState]

    /// Moves the force onto another backend (`"pkcs11"`): creates the next master key version there as active and
    /// makes the current one retiring, so the rewrap job moves every wrapped key across, exactly as for a rotation.
    func migrate(to backend: String) async throws -> KEKID
}

extension KeyCustodian {
    public func destroy(_ keks: [KEKID], forgetting: [KEKID]) async throws {
        if !keks.isEmpty { try await destroy(keks) }
        if !forgetting.isEmpty { try await forgetDestroyed(forgetting) }
    }

    public func states(of keks: Set<KEKID>) async throws -> [KEKID: KeyState] {
        var states: [KEKID: KeyState] = [:]
        for info in try await status() where keks.contains(info.id) && states[info.id] == nil {
            states[info.id] = info.state
        }
        return states
    }
}

/// One wrapped key of a rewrap batch, with the context it is bound to.
public struct RewrapItem: Sendable {
    public let wrapped: WrappedKey
    public let context: WrapContext

    public init(wrapped: WrappedKey, context: WrapContext) {
        self.wrapped = wrapped
        self.context = context
    }

    /// The result of one item of a batch: a failure of this key is its result; a failure of the custody itself
    /// (transient) ends the batch, which is retried later.
    static func outcome(_ body: () async throws -> WrappedKey) async throws -> Result<WrappedKey, CustodyError> {
        do {
            return .success(try await body())
        } catch let error as CustodyError where !error.isTransient {
            return .failure(error)
        }
    }

    /// A batch rewrap to `kek`, `one` rewrapping each item after its route is checked: one result per item, and one
    /// log line for the batch.
    static func batch(_ items: [RewrapItem], to kek: KEKID, force: ForceID, justification: Justification,
                      logger: Logger, _ one: (RewrapItem) throws -> WrappedKey) throws
        -> [Result<WrappedKey, CustodyError>]
    {
        var failed = 0
        var results: [Result<WrappedKey, CustodyError>] = []
        results.reserveCapacity(items.count)
        for item in items {
            let result = try outcome {
                try KeyTable.checkRewrapRoute(from: item.wrapped.kek, to: kek, context: item.context)
                return try one(item)
            }
            if case .failure = result { failed += 1 }
            results.append(result)
        }
        logger.custodyRewrapBatch(force: force, to: kek, count: items.count, failed: failed,
                                  justification: justification)
        return results
    }

    /// `outcome`, for a synchronous body.
    static func outcome(_ body: () throws -> WrappedKey) throws -> Result<WrappedKey, CustodyError> {
        do {
            return .success(try body())
        } catch let error as CustodyError where !error.isTransient {
            return .failure(error)
        }
    }
}

extension KeyCustodian {
    /// Local backends log the upload's key like any other; the justification adds nothing they check.
    public func generateDataKey(for context: WrapContext, justification: Justification) async throws -> DataKey {
        try await generateDataKey(for: context)
    }

    /// One `rewrap` per item, for backends without a batch operation.
    public func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        var results: [Result<WrappedKey, CustodyError>] = []
        results.reserveCapacity(items.count)
        for item in items {
            results.append(try await RewrapItem.outcome {
                try await rewrap(item.wrapped, context: item.context, to: kek, justification: justification)
            })
        }
        return results
    }

    /// Backends that cannot take a force over refuse, naming what the custody file needs.
    public func migrate(to backend: String) async throws -> KEKID {
        throw CustodyError(.unsupportedBackend,
                           "force \(force) has no \(backend) token configured: set backend = \"pkcs11\" with module, "
                               + "token and pin_env (or pin_file) in its custody file table, keep its keyring lines, "
                               + "restart vaultd, then migrate")
    }

    /// One `destroy` per key, for backends without a batch operation.
    public func destroy(_ keks: [KEKID]) async throws {
        for kek in keks { try await destroy(kek) }
    }
}
