import Foundation
import KeyCustody
import Synchronization
import Testing
import VaultTestSupport

@testable import Vault

/// Two vault instances on one catalog and one blob store, each with its own copy of the force's keyring in shared
/// mode (as two vaultd processes on PostgreSQL), driven to the interleaving `TwoInstanceTests` met at random: one
/// instance rotates and runs three of four rewrap batches, then stops dead holding the job's lease (a SIGKILL: it
/// never renews nor releases it); the other instance's copy of the keyring was last read before the rotation. Its key
/// status must still describe one moment, it must take the job over once the lease expires, and every key must move
/// exactly once with its lineage. The same for a shred sweep and for an upload committed meanwhile. The unwrap path's
/// recheck interval is an hour here, so nothing depends on a background re-read happening in time.
@Suite(.serialized)
struct TakeoverTests {
    static let recheck = Duration.seconds(3600)

    func fixture() async throws -> EngineFixture {
        var settings = LifecycleSettings()
        settings.rewrapBatchSize = 4
        settings.shredBatchSize = 8
        // The lease keeper renews every third of this in real time: never during the test. Expiry follows the
        // fixture's clock, which the test moves.
        settings.leaseSeconds = 3_000
        settings.instance = "instance-a"
        return try await EngineFixture(settings: settings, sharedKeyringRecheck: Self.recheck)
    }

    func datasets(_ count: Int) throws -> [DatasetID] {
        try (0..<count).map { try DatasetID(dataset: "ds-\($0)") }
    }

    func masterKey(_ f: EngineFixture, _ version: Int) -> KEKID { .master(force: f.force, version: version) }

    @Test("the rewrap holder dies after three of four batches: status is one moment; the other instance finishes",
          arguments: TestBackend.storages)
    func rewrapTakeover(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let stall = Stall()
        let b = try f.secondInstance(name: "instance-b", wmp: StallingCustodian(
            base: try f.openSharedKeyring(recheck: Self.recheck), stall: stall, stallAtRewrapBatch: 4))
        try await f.engine.putUseCase(principal: f.custodian, UseCase(
            force: f.force, id: try ResourceID("all-datasets"), description: "Every dataset", lawfulBasis: "test",
            datasets: try datasets(16), principals: [f.analyst.id]), requestID: "setup")
        var current: [ExtractRecord] = []
        for dataset in try datasets(16) {
            current.append(try await f.upload(testBytes(count: 300, seed: 7), dataset: dataset))
        }
        // A reads its keyring now; then B rotates (the file changes under A's copy) and starts the rewrap job.
        let before = try await f.engine.keyStatus(force: f.force)
        #expect(before.active == masterKey(f, 1) && before.remaining == 0)
        _ = try await b.rotate(force: f.force, by: "custodian-wmp", requestID: "rotate")
        let dying = Task { try await b.runKeyJobs(force: f.force) }
        await stall.waitUntilStalled()
        // B's third batch commits while its fourth waits on custody, forever: B holds the lease and does nothing.
        try await waitFor("B's third batch is committed") {
            try await f.catalog.keyUsage(force: f.force).rotations.last?.processed == 12
        }
        // A's key status: 12 moved, 4 remaining, the rotation running; never "nothing remains" with 12 counted.
        let during = try await f.engine.keyStatus(force: f.force)
        #expect(during.active == masterKey(f, 2), "A's status names the new active version")
        #expect(during.remaining == 4, "\(during.json)")
        #expect(during.rotations.last?.processed == 12)
        #expect(during.rotations.last?.finishedAt == nil)
        #expect(during.json["rewrap"]?["state"] == .string("running"), "\(during.json)")
        // While B's lease lasts, A leaves the job alone.
        #expect(try await f.engine.runKeyJobs(force: f.force) == KeyJobReport())
        // B's lease expires; A takes the job over and moves exactly the four keys left.
        f.clock.advance(3_001)
        let report = try await f.engine.runKeyJobsToCompletion(force: f.force)
        #expect(report.rewrapped == 4)
        #expect(report.retired == [masterKey(f, 1)])
        let after = try await f.engine.keyStatus(force: f.force)
        #expect(after.remaining == 0)
        #expect(after.rotations.last?.processed == 16, "\(after.json)")
        #expect(after.rotations.last?.finishedAt != nil, "the rotation is finished")
        for record in current {
            let lineage = try await f.catalog.lineage(force: f.force, extract: record.identity.extract)
            #expect(lineage.map(\.kek) == [masterKey(f, 1), masterKey(f, 2)], "\(record.identity.extract)")
            let stored = try #require(try await f.catalog.extract(force: f.force, id: record.identity.extract))
            #expect(stored.wrappedKey.kek == masterKey(f, 2))
        }
        #expect(try await f.catalog.keyUsage(force: f.force).references == [masterKey(f, 2): 16])
        // B wakes up to find its lease gone: its stalled batch is not applied (the keys moved already).
        stall.release()
        await #expect(throws: (any Error).self) { try await dying.value }
        #expect(try await f.catalog.keyUsage(force: f.force).rotations.last?.processed == 16)
        for dataset in try datasets(16) {
            #expect(try await f.read(useCase: "all-datasets", dataset: dataset) == testBytes(count: 300, seed: 7))
        }
    } }

    @Test("while the rewrap job runs, every key status adds up: processed + remaining is every key",
          arguments: TestBackend.storages)
    func statusIsOneMoment(_ backend: TestBackend) async throws { try await backend.run {
        var settings = LifecycleSettings()
        settings.rewrapBatchSize = 1
        let f = try await EngineFixture(settings: settings, sharedKeyringRecheck: Self.recheck)
        for dataset in try datasets(40) {
            _ = try await f.upload(testBytes(count: 100, seed: 3), dataset: dataset)
        }
        _ = try await f.engine.rotate(force: f.force, by: "custodian-wmp", requestID: "rotate")
        let job = Task { try await f.engine.runKeyJobsToCompletion(force: f.force) }
        var observed = 0
        while true {
            let status = try await f.engine.keyStatus(force: f.force)
            let processed = Int(status.rotations.last?.processed ?? 0)
            #expect(processed + status.remaining == 40, "\(status.json)")
            observed += 1
            if status.remaining == 0 { break }
        }
        #expect(try await job.value.rewrapped == 40)
        #expect(observed >= 2, "the status was read while the job ran")
    } }

    @Test("a shred sweep sees archive keys another instance created; a sweep that died is finished once",
          arguments: TestBackend.storages)
    func shredTakeover(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let stall = Stall()
        let kb = try f.openSharedKeyring(recheck: Self.recheck)
        let b = try f.secondInstance(name: "instance-b", wmp: StallingCustodian(base: kb, stall: stall, stallDestroy: true))
        // A's copy of the keyring is read now; the archives (and their keys) are then made through B.
        _ = try await f.engine.keyStatus(force: f.force)
        var archived: [ExtractRecord] = []
        for dataset in try datasets(6) {
            archived.append(try await f.upload(testBytes(count: 200, seed: 1), dataset: dataset, through: b))
            _ = try await f.upload(testBytes(count: 200, seed: 2), dataset: dataset, through: b)
        }
        f.clock.advance(366 * 86_400)
        // B's sweep marks the first three archives shredding, then stalls destroying their keys, holding the lease.
        let archivesOfB = Array(archived.prefix(3))
        try await f.rawUpdate("UPDATE extracts SET expires_at = expires_at + 9999999 WHERE id IN (?, ?, ?)",
                              archived.suffix(3).map(\.identity.extract.rawValue))
        let dying = Task { try await b.shredPass(force: f.force) }
        await stall.waitUntilStalled()
        try await f.rawUpdate("UPDATE extracts SET expires_at = expires_at - 9999999 WHERE id IN (?, ?, ?)",
                              archived.suffix(3).map(\.identity.extract.rawValue))
        #expect(try await f.engine.shredPass(force: f.force).certificates.isEmpty, "B still holds the lease")
        f.clock.advance(3_001)
        let report = try await f.engine.shredPass(force: f.force)
        #expect(Set(report.certificates.map(\.extract)) == Set(archived.map(\.identity.extract)))
        // Every archive key is destroyed in the keyring file (A's copy had never seen them) and named so.
        let reopened = try KeyringCustody.open(at: f.directory.file("wmp.keyring"),
                                               passphrase: secret("wmp passphrase 123"), logger: logger)
        let states = Dictionary(uniqueKeysWithValues: try await reopened.status().map { ($0.id, $0.state) })
        for record in archived {
            let archiveKey = KEKID.archive(force: f.force, extract: record.identity.extract)
            #expect(states[archiveKey] == .destroyed, "\(archiveKey)")
            let certificate = try #require(report.certificates.first { $0.extract == record.identity.extract })
            #expect(certificate.body["keks_destroyed"] == .array([.string(archiveKey.description)]))
            #expect(try await f.blobBytes(record.identity) == nil)
        }
        // B wakes up: its archives are shredded already, and no second certificate appears.
        stall.release()
        _ = try? await dying.value
        for record in archivesOfB + archived.suffix(3) {
            #expect(try await f.catalog.certificates(force: f.force, extract: record.identity.extract).count == 1)
        }
    } }

    @Test("an upload committed just after another instance rotated is wrapped under the new version",
          arguments: TestBackend.storages)
    func uploadAfterRotationElsewhere(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let b = try f.secondInstance(name: "instance-b", wmp: try f.openSharedKeyring(recheck: Self.recheck))
        _ = try await f.upload(testBytes(count: 100, seed: 1))
        _ = try await b.rotate(force: f.force, by: "custodian-wmp", requestID: "rotate")
        let record = try await f.upload(testBytes(count: 100, seed: 2), dataset: try DatasetID(dataset: "other"))
        #expect(record.wrappedKey.kek == masterKey(f, 2))
        #expect(try await f.catalog.lineage(force: f.force, extract: record.identity.extract).map(\.kek)
            == [masterKey(f, 2)])
    } }

    /// Polls `condition` (no sleeping thread: the task yields); gives up after 300 s, a guard against a hang only (a
    /// busy test process can leave a task waiting for a thread for a long time).
    func waitFor(_ what: String, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now.advanced(by: .seconds(300))
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw TestVectors.VectorError(message: "timed out: \(what)") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// Where a stalled instance stops: the call suspends until `release`, then fails as an unreachable custody would.
final class Stall: Sendable {
    private struct State {
        var stalled = false
        var released = false
        var stalledWaiters: [CheckedContinuation<Void, Never>] = []
        var releaseWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    /// Called by the stalled instance.
    func stop() async throws -> Never {
        await withCheckedContinuation { continuation in
            let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.stalled = true
                if state.released {
                    continuation.resume()
                } else {
                    state.releaseWaiters.append(continuation)
                }
                defer { state.stalledWaiters = [] }
                return state.stalledWaiters
            }
            for waiter in waiters { waiter.resume() }
        }
        throw CustodyError(.io, "this instance was stopped by the test")
    }

    func waitUntilStalled() async {
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state -> Bool in
                if state.stalled { return true }
                state.stalledWaiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func release() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.released = true
            defer { state.releaseWaiters = [] }
            return state.releaseWaiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// A custody that behaves as `base` until the instance using it is stopped: at the N-th rewrap batch, or at the first
/// batch destroy.
final class StallingCustodian: KeyCustodian {
    let base: any KeyCustodian
    let stall: Stall
    let stallAtRewrapBatch: Int?
    let stallDestroy: Bool
    private let batches = Mutex(0)

    init(base: any KeyCustodian, stall: Stall, stallAtRewrapBatch: Int? = nil, stallDestroy: Bool = false) {
        self.base = base
        self.stall = stall
        self.stallAtRewrapBatch = stallAtRewrapBatch
        self.stallDestroy = stallDestroy
    }

    var force: ForceID { base.force }
    func activeMasterKey() async throws -> KEKID { try await base.activeMasterKey() }
    func rotate() async throws -> KEKID { try await base.rotate() }
    func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try await base.generateDataKey(for: context)
    }
    func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        try await base.unwrap(wrapped, context: context, justification: justification)
    }
    func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        try await base.rewrap(wrapped, context: context, to: kek, justification: justification)
    }
    func createArchiveKey(for extract: ExtractID) async throws -> KEKID { try await base.createArchiveKey(for: extract) }
    func retire(_ kek: KEKID) async throws { try await base.retire(kek) }
    func destroy(_ kek: KEKID) async throws { try await base.destroy(kek) }
    func status() async throws -> [KeyInfo] { try await base.status() }
    func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        let batch = batches.withLock { count in
            count += 1
            return count
        }
        if batch == stallAtRewrapBatch { try await stall.stop() }
        return try await base.rewrap(items, to: kek, justification: justification)
    }
    func destroy(_ keks: [KEKID]) async throws {
        if stallDestroy { try await stall.stop() }
        try await base.destroy(keks)
    }
    func forgetDestroyed(_ keks: [KEKID]) async throws { try await base.forgetDestroyed(keks) }
}
