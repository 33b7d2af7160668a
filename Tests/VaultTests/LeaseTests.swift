import Foundation
import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

/// Two vault engines on one catalog and one blob store, as two vaultd instances share PostgreSQL and a bucket
/// (and, on the embedded default, as two runs in one process): the key jobs and the shred sweep coordinate through
/// leases in the catalog, so nothing is rewrapped or shredded twice, and a lease left by a dead holder is taken over
/// once it expires. Runs on the storage under test (SQLite + files, or PostgreSQL + S3).
@Suite("job leases between two instances")
struct LeaseTests {
    func secondInstance(_ f: EngineFixture, name: String) throws -> VaultEngine {
        try f.secondInstance(name: name)
    }

    func fixture() async throws -> EngineFixture {
        var settings = LifecycleSettings()
        settings.rewrapBatchSize = 3
        settings.shredBatchSize = 2
        settings.instance = "instance-a"
        return try await EngineFixture(settings: settings)
    }

    @Test("a lease is exclusive, renewable by its holder, released, and taken over after it expires",
          arguments: TestBackend.all)
    func leaseRules(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let now = f.clock.now
        #expect(try await f.catalog.takeLease("job", holder: "a", seconds: 30, now: now))
        #expect(try await !f.catalog.takeLease("job", holder: "b", seconds: 30, now: now + 10))
        #expect(try await f.catalog.takeLease("job", holder: "a", seconds: 30, now: now + 20))  // renewed to +50
        #expect(try await !f.catalog.takeLease("job", holder: "b", seconds: 30, now: now + 40))
        #expect(try await f.catalog.takeLease("job", holder: "b", seconds: 30, now: now + 50))  // expired: taken over
        try await f.catalog.releaseLease("job", holder: "a")  // not a's any more: no effect
        #expect(try await !f.catalog.takeLease("job", holder: "a", seconds: 30, now: now + 51))
        try await f.catalog.releaseLease("job", holder: "b")
        #expect(try await f.catalog.takeLease("job", holder: "a", seconds: 30, now: now + 52))
        #expect(try await f.catalog.takeLease("other", holder: "b", seconds: 30, now: now + 52))
    } }

    @Test("two instances run a rewrap and a shred sweep at once: every key moves once, every archive shreds once",
          arguments: TestBackend.all)
    func concurrentJobs(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let b = try secondInstance(f, name: "instance-b")
        let datasets = try (0..<8).map { try DatasetID(dataset: "ds-\($0)") }
        var current: [ExtractRecord] = []
        for dataset in datasets {
            _ = try await f.upload(testBytes(count: 500, seed: 1), dataset: dataset)
            current.append(try await f.upload(testBytes(count: 700, seed: 2), dataset: dataset))
        }
        _ = try await f.engine.rotate(force: f.force, by: "custodian-wmp", requestID: "r")
        f.clock.advance(366 * 86_400)
        // Both instances start both jobs at the same moment, twice over.
        async let a1 = f.engine.runKeyJobsToCompletion(force: f.force)
        async let b1 = b.runKeyJobsToCompletion(force: f.force)
        async let a2 = f.engine.shredPass(force: f.force)
        async let b2 = b.shredPass(force: f.force)
        let (keysA, keysB, shredA, shredB) = try await (a1, b1, a2, b2)
        // Whoever lost the race for a lease did nothing; a later pass finishes what is left.
        let rest = try await b.runKeyJobsToCompletion(force: f.force)
        let restShred = try await f.engine.shredPass(force: f.force)
        #expect(keysA.rewrapped + keysB.rewrapped + rest.rewrapped == current.count)
        let certificates = shredA.certificates + shredB.certificates + restShred.certificates
        #expect(certificates.count == datasets.count)
        #expect(Set(certificates.map(\.extract)).count == datasets.count)
        // The catalog agrees: one certificate per archive, and each current extract's lineage gained v2 once.
        for dataset in datasets {
            let archived = try await f.catalog.extracts(force: f.force, dataset: dataset, states: [.shredded])
            #expect(archived.count == 1)
            #expect(try await f.catalog.certificates(force: f.force, extract: archived[0].identity.extract).count == 1)
        }
        for record in current {
            let lineage = try await f.catalog.lineage(force: f.force, extract: record.identity.extract)
            #expect(lineage.map(\.kek.description) == ["fmk:wmp:1", "fmk:wmp:2"])
        }
        // And every current extract still reads, under the new master key.
        for record in current {
            let stored = try #require(try await f.catalog.extract(force: f.force, id: record.identity.extract))
            #expect(stored.wrappedKey.kek.description == "fmk:wmp:2")
        }
    } }

    @Test("a job lease held by a killed instance blocks the others until it expires, then is taken over",
          arguments: TestBackend.all)
    func killedHolder(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let b = try secondInstance(f, name: "instance-b")
        for seed in 0..<4 { _ = try await f.upload(testBytes(count: 300, seed: UInt64(seed))) }
        _ = try await f.engine.rotate(force: f.force, by: "custodian-wmp", requestID: "r")
        // Instance "dead" took the rewrap lease and was killed (it never renews nor releases it).
        #expect(try await f.catalog.takeLease("key-jobs:wmp", holder: "dead#1", seconds: 30, now: f.clock.now))
        #expect(try await b.runKeyJobs(force: f.force) == KeyJobReport())
        let before = try #require(try await f.catalog.currentExtract(force: f.force, dataset: f.dataset))
        #expect(before.wrappedKey.kek.description == "fmk:wmp:1")
        f.clock.advance(31)
        let report = try await b.runKeyJobsToCompletion(force: f.force)
        #expect(report.rewrapped == 1)
        let after = try #require(try await f.catalog.currentExtract(force: f.force, dataset: f.dataset))
        #expect(after.wrappedKey.kek.description == "fmk:wmp:2")
    } }

    @Test("a shred request while another sweep of the force runs is a conflict, not an empty success",
          arguments: TestBackend.storages)
    func busyShred(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        _ = try await f.upload(testBytes(count: 500, seed: 1))
        _ = try await f.upload(testBytes(count: 600, seed: 2))
        f.clock.advance(366 * 86_400)
        // Another instance holds the force's sweep.
        #expect(try await f.catalog.takeLease("shred:wmp", holder: "instance-b#1", seconds: 600, now: f.clock.now))
        let elsewhere = await #expect(throws: VaultError.self) {
            _ = try await f.engine.shredExpired(principal: f.ops, force: f.force, dryRun: false, requestID: "s1")
        }
        #expect(elsewhere?.code == .conflict)
        #expect(elsewhere?.message.contains("another shred sweep of force wmp is running now") == true)
        try await f.catalog.releaseLease("shred:wmp", holder: "instance-b#1")
        // A sweep of this instance is running (as when two requests arrive together).
        f.engine.shredRunning.withLock { _ = $0.insert(f.force) }
        let here = await #expect(throws: VaultError.self) {
            _ = try await f.engine.shredExpired(principal: f.ops, force: nil, dryRun: false, requestID: "s2")
        }
        #expect(here?.code == .conflict)
        // The request named no force: the other force (gmp) was swept meanwhile, and the answer says so.
        #expect(here?.message.hasSuffix("the other forces were swept") == true)
        f.engine.shredRunning.withLock { _ = $0.remove(f.force) }
        let report = try await f.engine.shredExpired(principal: f.ops, force: f.force, dryRun: false, requestID: "s3")
        #expect(report.certificates.count == 1)
    } }
}
