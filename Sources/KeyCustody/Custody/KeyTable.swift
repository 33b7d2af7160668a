/// The key table of one force's custody (DESIGN 5.3): which keys exist, of which kind, in which state, and every
/// rule of how they may change and be used. Pure: no key bytes, no files, no tokens. The keyring and the PKCS#11
/// custody each keep one (beside the key bytes or the token objects it describes) and decide every change and every
/// use through it, so the rules exist once whichever backend holds the keys.
///
/// The states a key moves through:
///
/// ```
/// master:   active ──rotate──▶ retiring ──retire──▶ retired ──destroy──▶ destroyed (tombstone)
/// archive:  active ──────────────────────destroy──────────────────────▶ destroyed (tombstone)
/// ```
///
/// Exactly one master key is active, except in a keyring whose force moved to its token (`handOver`). New keys are
/// wrapped only under an active key; a destroyed key never unwraps and is never created again.
public struct KeyTable: Sendable, Equatable {
    /// A key's id, kind, state and creation time (RFC 3339 UTC): what the custody reports about it.
    public typealias Entry = KeyInfo

    public let force: ForceID
    /// In the order the keys were created, so a rewrite keeps the order an operator sees.
    public private(set) var entries: [Entry]
    /// Position of each key in `entries`: a lookup is a hash however many archive keys exist.
    private var positions: [KEKID: Int]
    private var activeMasterPosition: Int?

    /// The highest master key version a table holds, far beyond any rotation schedule: `nextMaster` can always add
    /// one without overflowing (a keyring naming `fmk:<force>:9223372036854775807` trapped its first rotation; found by
    /// the `keyring-contents` fuzz target).
    public static let maximumMasterVersion = Int(Int32.max)

    /// A table holding `entries`, checked against every invariant: each key of this force and listed once, its kind
    /// that of its id, archive keys only active or destroyed, at most one active master key (exactly one unless
    /// `allowNoActiveMaster`), master versions up to `maximumMasterVersion`. `inconsistent` words the error for the
    /// place the entries were read from.
    public init(force: ForceID, entries: [Entry], allowNoActiveMaster: Bool = true,
                inconsistent: (String) -> CustodyError) throws
    {
        var positions: [KEKID: Int] = [:]
        positions.reserveCapacity(entries.count)
        var activeMasters: [Int] = []
        for (position, entry) in entries.enumerated() {
            guard entry.id.force == force else { throw inconsistent("\(entry.id) belongs to another force") }
            guard positions.updateValue(position, forKey: entry.id) == nil else {
                throw inconsistent("\(entry.id) appears twice")
            }
            guard entry.kind == (entry.id.isMaster ? .master : .archive) else {
                throw inconsistent("\(entry.id) has a wrong kind")
            }
            guard entry.kind == .master || entry.state == .active || entry.state == .destroyed else {
                throw inconsistent("archive key \(entry.id) cannot be \(entry.state.rawValue)")
            }
            guard !entry.created.isEmpty else { throw inconsistent("\(entry.id) has no creation time") }
            if case .master(_, let version) = entry.id, version > Self.maximumMasterVersion {
                throw inconsistent("\(entry.id) is beyond the last master key version, \(Self.maximumMasterVersion)")
            }
            if entry.kind == .master, entry.state == .active { activeMasters.append(position) }
        }
        guard activeMasters.count <= 1 else {
            throw inconsistent("\(activeMasters.count) active master keys, expected exactly one")
        }
        guard activeMasters.count == 1 || allowNoActiveMaster else {
            throw inconsistent("no active master key")
        }
        self.force = force
        self.entries = entries
        self.positions = positions
        activeMasterPosition = activeMasters.first
    }

    /// A new force's table: master key version 1, active.
    public static func first(force: ForceID, created: String) -> KeyTable {
        let entry = Entry(id: .master(force: force, version: 1), kind: .master, state: .active, created: created)
        return KeyTable(force: force, checkedEntries: [entry])
    }

    private init(force: ForceID, checkedEntries: [Entry]) {
        self.force = force
        entries = checkedEntries
        positions = Dictionary(uniqueKeysWithValues: checkedEntries.enumerated().map { ($1.id, $0) })
        activeMasterPosition = checkedEntries.firstIndex { $0.kind == .master && $0.state == .active }
    }

    // MARK: Reading

    public var isEmpty: Bool { entries.isEmpty }
    public func entry(_ id: KEKID) -> Entry? { positions[id].map { entries[$0] } }
    public func holds(_ id: KEKID) -> Bool { positions[id] != nil }
    /// The active master key; nil only in a keyring handed over to a token, or a token the force is moving to.
    public var activeMaster: Entry? { activeMasterPosition.map { entries[$0] } }
    public var highestMasterVersion: Int {
        entries.reduce(0) { highest, entry in
            if case .master(_, let version) = entry.id { return max(highest, version) }
            return highest
        }
    }
    public var infos: [KeyInfo] { entries }

    /// The key `kek` as a wrapping key: it must exist and be active.
    public func wrapTarget(_ kek: KEKID) throws -> Entry {
        guard let target = entry(kek) else { throw unknown(kek) }
        guard target.state == .active else {
            throw CustodyError(.keyStateConflict, "cannot wrap under \(kek): it is \(target.state.rawValue)")
        }
        return target
    }

    /// The key a wrapped key is under, as an unwrapping key: it must be of this force, exist, and not be destroyed.
    /// `context` must be of this force too.
    public func unwrapSource(_ wrapped: WrappedKey, context: WrapContext) throws -> Entry {
        try checkForce(context)
        guard wrapped.kek.force == force else {
            throw CustodyError(.wrongForce, "wrapped key is under \(wrapped.kek), a key of another force")
        }
        guard let source = entry(wrapped.kek) else { throw unknown(wrapped.kek) }
        guard source.state != .destroyed else {
            throw CustodyError(.keyDestroyed, "\(wrapped.kek) was destroyed; what it wrapped cannot be recovered")
        }
        return source
    }

    /// Refuses a context of another force.
    public func checkForce(_ context: WrapContext) throws {
        guard context.force == force else {
            throw CustodyError(.wrongForce, "context is for force \(context.force); this custody holds force \(force)")
        }
    }

    /// The only moves a wrapped key may make (DESIGN section 4): from a master key to the active master key
    /// (rotation), or from a master key to the archive key of its own extract (archival). A key under an archive key
    /// never moves again: it is read only through an approved retrieval and dies with that archive key.
    public static func checkRewrapRoute(from source: KEKID, to target: KEKID, context: WrapContext) throws {
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

    /// The error for a key this table does not hold.
    public func unknown(_ kek: KEKID) -> CustodyError {
        CustodyError(.unknownKey, "no key \(kek) in the custody of force \(force)")
    }

    // MARK: Changes

    /// The id a rotation creates: one above every master version here and `floor` (the versions of a keyring the
    /// force is moving from, so at most `maximumMasterVersion` too).
    public func nextMaster(above floor: Int = 0) -> KEKID {
        .master(force: force, version: max(highestMasterVersion, floor) + 1)
    }

    /// Makes `next` (from `nextMaster`) the active master key; the active one becomes retiring.
    public mutating func rotate(to next: KEKID, created: String) throws {
        guard case .master(let owner, let version) = next, owner == force, version > highestMasterVersion else {
            throw CustodyError(.keyringInconsistent, "\(next) is not the next master key version of force \(force)")
        }
        guard version <= Self.maximumMasterVersion else {
            throw CustodyError(.keyStateConflict, "force \(force) has used every master key version up to "
                                + "\(Self.maximumMasterVersion)")
        }
        handOver()
        append(Entry(id: next, kind: .master, state: .active, created: created))
    }

    /// The active master key becomes retiring without a successor here: the force's new active master key lives
    /// in another custody (its token).
    public mutating func handOver() {
        if let position = activeMasterPosition { entries[position].state = .retiring }
        activeMasterPosition = nil
    }

    /// Adds the archive key of `extract`; true when it is new. Idempotent for a retried archival; a destroyed
    /// archive key is never brought back.
    @discardableResult
    public mutating func addArchiveKey(_ id: KEKID, created: String) throws -> Bool {
        guard case .archive(let owner, _) = id, owner == force else {
            throw CustodyError(.invalidIdentifier, "\(id) is not an archive key of force \(force)")
        }
        if let existing = entry(id) {
            guard existing.state == .active else {
                throw CustodyError(.keyDestroyed, "archive key \(id) was destroyed and cannot be recreated")
            }
            return false
        }
        append(Entry(id: id, kind: .archive, state: .active, created: created))
        return true
    }

    /// A retiring master key becomes retired; false when it already was.
    @discardableResult
    public mutating func retire(_ kek: KEKID) throws -> Bool {
        guard let position = positions[kek] else { throw unknown(kek) }
        guard entries[position].kind == .master else {
            throw CustodyError(.keyStateConflict, "\(kek) is not a master key")
        }
        switch entries[position].state {
        case .retiring:
            entries[position].state = .retired
            return true
        case .retired: return false
        case .active:
            throw CustodyError(.keyStateConflict, "\(kek) is the active master key; rotate before retiring it")
        case .destroyed: throw CustodyError(.keyDestroyed, "\(kek) is already destroyed")
        }
    }

    /// Checks that every key of `keks` may be destroyed (an archive key, or a retired master key), then marks them
    /// destroyed, leaving tombstones. Keys destroyed already are skipped. Returns the keys this call destroyed, in
    /// order; the table is unchanged when any key is refused.
    public mutating func destroy(_ keks: [KEKID]) throws -> [KEKID] {
        var destroyed: [KEKID] = []
        var seen = Set<KEKID>()
        for kek in keks where seen.insert(kek).inserted {
            guard let position = positions[kek] else { throw unknown(kek) }
            let entry = entries[position]
            switch (entry.kind, entry.state) {
            case (_, .destroyed): continue
            case (.master, .retired), (.archive, _): destroyed.append(kek)
            case (.master, let current):
                throw CustodyError(.keyStateConflict,
                                   "\(kek) is \(current.rawValue): only a retired master key can be destroyed")
            }
        }
        for kek in destroyed { entries[positions[kek]!].state = .destroyed }
        return destroyed
    }

    /// Removes the tombstones of destroyed archive keys in `keks` once nothing needs them (their extracts' destruction
    /// certificates are complete), so the table does not grow with every archive ever shredded. Keys not in the table
    /// are skipped (forgotten before); a live key or a master key is refused and nothing changes. Master key
    /// tombstones are kept: they are few, and every certificate pending on them needs them. Returns the keys removed.
    public mutating func forget(_ keks: [KEKID]) throws -> [KEKID] {
        var forgotten = Set<KEKID>()
        for kek in keks {
            guard let position = positions[kek] else { continue }
            let entry = entries[position]
            guard entry.kind == .archive, entry.state == .destroyed else {
                throw CustodyError(.keyStateConflict, "\(kek) is \(entry.state.rawValue) \(entry.kind.rawValue) key; "
                                    + "only a destroyed archive key's tombstone can be removed")
            }
            forgotten.insert(kek)
        }
        guard !forgotten.isEmpty else { return [] }
        self = KeyTable(force: force, checkedEntries: entries.filter { !forgotten.contains($0.id) })
        return keks.filter { forgotten.contains($0) }
    }

    private mutating func append(_ entry: Entry) {
        positions[entry.id] = entries.count
        if entry.kind == .master, entry.state == .active { activeMasterPosition = entries.count }
        entries.append(entry)
    }
}
