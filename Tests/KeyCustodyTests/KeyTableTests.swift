import KeyCustody
import Testing
import VaultTestSupport

/// The key-state rules every local backend decides through, without any backend: no keyring file, no token.
@Suite("Key table rules")
struct KeyTableTests {
    let force = try! ForceID(force: "wmp")
    let now = "2026-12-03T10:00:00Z"

    func inconsistent(_ reason: String) -> CustodyError { CustodyError(.keyringInconsistent, reason) }
    func entry(_ id: String, _ kind: KeyKind, _ state: KeyState) throws -> KeyTable.Entry {
        KeyTable.Entry(id: try KEKID(id), kind: kind, state: state, created: now)
    }
    func context(_ extract: ExtractID) throws -> WrapContext {
        WrapContext(force: force, dataset: try DatasetID(dataset: "crime"), extract: extract)
    }

    @Test("a rotation makes the next version active and the previous one retiring; versions never repeat")
    func rotation() throws {
        var table = KeyTable.first(force: force, created: now)
        #expect(table.activeMaster?.id == .master(force: force, version: 1))
        let next = table.nextMaster()
        #expect(next == .master(force: force, version: 2))
        try table.rotate(to: next, created: now)
        #expect(table.activeMaster?.id == next)
        #expect(table.entry(.master(force: force, version: 1))?.state == .retiring)
        // A version at or below the highest, or of another force, is refused and changes nothing.
        let before = table
        #expect(throws: CustodyError(.keyringInconsistent, "")) {
            try table.rotate(to: .master(force: force, version: 2), created: now)
        }
        #expect(throws: CustodyError(.keyringInconsistent, "")) {
            try table.rotate(to: .master(force: try ForceID(force: "gmp"), version: 3), created: now)
        }
        #expect(table == before)
        // Above a floor (the keyring a force moves from): one above both.
        #expect(table.nextMaster(above: 7) == .master(force: force, version: 8))
    }

    @Test("retire and destroy follow the state machine: active never retires, only retired masters are destroyed")
    func lifecycle() throws {
        var table = KeyTable.first(force: force, created: now)
        let v1 = KEKID.master(force: force, version: 1)
        #expect(throws: CustodyError(.keyStateConflict, "")) { try table.retire(v1) }
        #expect(throws: CustodyError(.keyStateConflict, "")) { _ = try table.destroy([v1]) }
        try table.rotate(to: table.nextMaster(), created: now)
        #expect(throws: CustodyError(.keyStateConflict, "")) { _ = try table.destroy([v1]) }
        #expect(try table.retire(v1))
        #expect(try table.retire(v1) == false, "retiring twice changes nothing")
        #expect(try table.destroy([v1, v1]) == [v1])
        #expect(try table.destroy([v1]) == [], "a tombstone is skipped")
        #expect(table.entry(v1)?.state == .destroyed)
        #expect(throws: CustodyError(.keyDestroyed, "")) { try table.retire(v1) }
        #expect(throws: CustodyError(.unknownKey, "")) { try table.retire(.master(force: force, version: 9)) }
    }

    @Test("a batch destroy is all or nothing: one refused key leaves every key as it was")
    func destroyBatch() throws {
        var table = KeyTable.first(force: force, created: now)
        let archive = KEKID.archive(force: force, extract: ExtractID.generate())
        #expect(try table.addArchiveKey(archive, created: now))
        let before = table
        #expect(throws: CustodyError(.keyStateConflict, "")) {
            _ = try table.destroy([archive, .master(force: force, version: 1)])
        }
        #expect(table == before)
        #expect(throws: CustodyError(.unknownKey, "")) {
            _ = try table.destroy([archive, .archive(force: force, extract: ExtractID.generate())])
        }
        #expect(table == before)
        #expect(try table.destroy([archive]) == [archive])
    }

    @Test("archive keys: creation is idempotent, a destroyed one is never recreated, and only for this force")
    func archiveKeys() throws {
        var table = KeyTable.first(force: force, created: now)
        let id = KEKID.archive(force: force, extract: ExtractID.generate())
        #expect(try table.addArchiveKey(id, created: now))
        #expect(try table.addArchiveKey(id, created: now) == false)
        _ = try table.destroy([id])
        #expect(throws: CustodyError(.keyDestroyed, "")) { try table.addArchiveKey(id, created: now) }
        #expect(throws: CustodyError(.invalidIdentifier, "")) {
            try table.addArchiveKey(.archive(force: try ForceID(force: "gmp"), extract: ExtractID.generate()),
                                    created: now)
        }
        #expect(throws: CustodyError(.invalidIdentifier, "")) {
            try table.addArchiveKey(.master(force: force, version: 5), created: now)
        }
    }

    @Test("wrapping needs an active key; unwrapping refuses destroyed, unknown and other forces' keys")
    func use() throws {
        var table = KeyTable.first(force: force, created: now)
        let v1 = KEKID.master(force: force, version: 1)
        let extract = ExtractID.generate()
        let wrapped = try WrappedKey(kek: v1, iv: Array(repeating: 1, count: 12), ciphertext: Array(repeating: 2, count: 48))
        #expect(try table.wrapTarget(v1).id == v1)
        #expect(try table.unwrapSource(wrapped, context: try context(extract)).id == v1)
        try table.rotate(to: table.nextMaster(), created: now)
        #expect(throws: CustodyError(.keyStateConflict, "")) { _ = try table.wrapTarget(v1) }
        #expect(try table.unwrapSource(wrapped, context: try context(extract)).id == v1, "a retiring key still unwraps")
        try table.retire(v1)
        _ = try table.destroy([v1])
        #expect(throws: CustodyError(.keyDestroyed, "")) { _ = try table.unwrapSource(wrapped, context: try context(extract)) }
        let other = WrapContext(force: try ForceID(force: "gmp"), dataset: try DatasetID(dataset: "crime"), extract: extract)
        #expect(throws: CustodyError(.wrongForce, "")) { _ = try table.unwrapSource(wrapped, context: other) }
        let unknown = try WrappedKey(kek: .master(force: force, version: 9), iv: wrapped.iv, ciphertext: wrapped.ciphertext)
        #expect(throws: CustodyError(.unknownKey, "")) { _ = try table.unwrapSource(unknown, context: try context(extract)) }
    }

    @Test("rewrap routes: master to master or to its own extract's archive key; an archived key never moves")
    func routes() throws {
        let extract = ExtractID.generate()
        let v1 = KEKID.master(force: force, version: 1), v2 = KEKID.master(force: force, version: 2)
        try KeyTable.checkRewrapRoute(from: v1, to: v2, context: try context(extract))
        try KeyTable.checkRewrapRoute(from: v1, to: .archive(force: force, extract: extract), context: try context(extract))
        #expect(throws: CustodyError(.purposeRefused, "")) {
            try KeyTable.checkRewrapRoute(from: v1, to: .archive(force: force, extract: ExtractID.generate()),
                                          context: try context(extract))
        }
        #expect(throws: CustodyError(.purposeRefused, "")) {
            try KeyTable.checkRewrapRoute(from: .archive(force: force, extract: extract), to: v2,
                                          context: try context(extract))
        }
    }

    @Test("a table read from storage is checked: foreign or repeated keys, wrong kinds, two active masters")
    func validation() throws {
        let good = [try entry("fmk:wmp:1", .master, .retired), try entry("fmk:wmp:2", .master, .active)]
        #expect(try KeyTable(force: force, entries: good, inconsistent: inconsistent).activeMaster?.id
            == .master(force: force, version: 2))
        let bad: [[KeyTable.Entry]] = [
            [try entry("fmk:gmp:1", .master, .active)],
            [try entry("fmk:wmp:1", .master, .active), try entry("fmk:wmp:1", .master, .retired)],
            [try entry("fmk:wmp:1", .archive, .active)],
            [try entry("fmk:wmp:1", .master, .active), try entry("fmk:wmp:2", .master, .active)],
            [try entry("fmk:wmp:1", .master, .active), try entry("ak:wmp:\(ExtractID.generate())", .archive, .retiring)],
        ]
        for entries in bad {
            #expect(throws: CustodyError(.keyringInconsistent, "")) {
                _ = try KeyTable(force: force, entries: entries, inconsistent: inconsistent)
            }
        }
        // No active master key: only where the caller allows it (a handed-over keyring, a token being moved to).
        let handedOver = [try entry("fmk:wmp:1", .master, .retiring)]
        #expect(try KeyTable(force: force, entries: handedOver, inconsistent: inconsistent).activeMaster == nil)
        #expect(throws: CustodyError(.keyringInconsistent, "")) {
            _ = try KeyTable(force: force, entries: handedOver, allowNoActiveMaster: false, inconsistent: inconsistent)
        }
        var table = try KeyTable(force: force, entries: good, inconsistent: inconsistent)
        table.handOver()
        #expect(table.activeMaster == nil)
        #expect(table.entry(.master(force: force, version: 2))?.state == .retiring)
    }

    @Test("only a destroyed archive key's tombstone can be removed; unknown ids are skipped; nothing changes on refusal")
    func forgetTombstones() throws {
        let force = try ForceID(force: "wmp")
        var table = KeyTable.first(force: force, created: "2026-01-01T00:00:00Z")
        let a = KEKID.archive(force: force, extract: .generate())
        let b = KEKID.archive(force: force, extract: .generate())
        _ = try table.addArchiveKey(a, created: "2026-01-02T00:00:00Z")
        _ = try table.addArchiveKey(b, created: "2026-01-03T00:00:00Z")
        _ = try table.destroy([a])
        #expect(throws: CustodyError.self) { try table.forget([a, b]) }  // b is live
        #expect(throws: CustodyError.self) { try table.forget([.master(force: force, version: 1)]) }
        #expect(table.holds(a) && table.holds(b))
        #expect(try table.forget([a, .archive(force: force, extract: .generate())]) == [a])
        #expect(!table.holds(a) && table.holds(b) && table.activeMaster?.id == .master(force: force, version: 1))
        #expect(try table.forget([a]) == [])
        // Positions stay right after the removal.
        _ = try table.destroy([b])
        #expect(table.entry(b)?.state == .destroyed)
    }
}
